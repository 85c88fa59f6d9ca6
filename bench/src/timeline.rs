//! Where one write's time goes: one client tokenizing against a fresh cluster whose
//! nodes record wall-clock marks along the write's path (`kura node --timeline`, a
//! build with kura-node's `timeline` feature; `scripts/bench timeline` builds one).
//! The marks of the three nodes share one clock (`CLOCK_MONOTONIC`) and are lined up by
//! log index: for every write, each step of its critical path — the API, the leader's
//! Raft core, the trip to the follower that answered first, that follower's core,
//! writer thread and `fdatasync`, the answer's trip back, the apply and the response —
//! with the fsync floor and the replication skeleton of the same run beside it.

use crate::report;
use crate::wrk::{Cell, Script, Scripts};
use kura_cluster_tests::procs::ProcCluster;
use kura_node::timeline::{now_ns, Stage};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Args {
    pub warmup: Duration,
    pub measure: Duration,
    pub results: PathBuf,
}

/// One node's marks.
#[derive(Default)]
struct Node {
    /// Marks without an index (requests and responses), by time.
    unindexed: BTreeMap<Stage, Vec<u64>>,
    /// The first mark of each (stage, peer) at each log index; peer 0 where the stage
    /// has none.
    indexed: BTreeMap<(Stage, u64), BTreeMap<u64, u64>>,
    /// Apply batches of `ApplyStart` and `ApplyEnd`: by last index, the first index and
    /// the first mark's time.
    applies: BTreeMap<Stage, BTreeMap<u64, (u64, u64)>>,
}

impl Node {
    fn parse(text: &str) -> Node {
        let mut n = Node::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [stage, index, peer, ns] = f[..] else {
                continue;
            };
            let (Some(stage), Ok(index), Ok(peer), Ok(ns)) = (
                Stage::parse(stage),
                index.parse::<u64>(),
                peer.parse::<u64>(),
                ns.parse::<u64>(),
            ) else {
                continue;
            };
            n.add(stage, index, peer, ns);
        }
        for v in n.unindexed.values_mut() {
            v.sort_unstable();
        }
        n
    }

    fn add(&mut self, stage: Stage, index: u64, peer: u64, ns: u64) {
        match stage {
            Stage::Request | Stage::Response => self.unindexed.entry(stage).or_default().push(ns),
            Stage::ApplyStart | Stage::ApplyEnd => {
                self.applies
                    .entry(stage)
                    .or_default()
                    .entry(index)
                    .or_insert((peer, ns));
            }
            _ => {
                // Only the peer of a replica's stages tells marks apart; the others'
                // is a count.
                let peer = if matches!(stage, Stage::ReplicaSend | Stage::ReplicaAck) {
                    peer
                } else {
                    0
                };
                self.indexed
                    .entry((stage, peer))
                    .or_default()
                    .entry(index)
                    .or_insert(ns);
            }
        }
    }

    /// When `stage` (to or from `peer`) first covered entry `index`: its first mark at
    /// the lowest index at or above it (a batch ending later carries the entry too).
    fn at(&self, stage: Stage, peer: u64, index: u64) -> Option<u64> {
        self.indexed
            .get(&(stage, peer))?
            .range(index..)
            .next()
            .map(|(_, &ns)| ns)
    }

    /// When the apply batch holding `index` began (`ApplyStart`) or ended: the batch
    /// ending first at or after it, if it starts at or before it.
    fn apply(&self, stage: Stage, index: u64) -> Option<u64> {
        let (_, &(first, ns)) = self.applies.get(&stage)?.range(index..).next()?;
        (first <= index).then_some(ns)
    }

    /// The last unindexed `stage` at or before `ns`.
    fn before(&self, stage: Stage, ns: u64) -> Option<u64> {
        let v = self.unindexed.get(&stage)?;
        let k = v.partition_point(|&t| t <= ns);
        k.checked_sub(1).map(|k| v[k])
    }

    /// The first unindexed `stage` at or after `ns`.
    fn after(&self, stage: Stage, ns: u64) -> Option<u64> {
        let v = self.unindexed.get(&stage)?;
        v.get(v.partition_point(|&t| t < ns)).copied()
    }
}

/// The steps of a write's critical path, in order: each from the previous point to
/// this one. The follower is the one whose answer reached the leader first.
const STEPS: [(&str, &str); 13] = [
    ("request", "the request's head is read (TLS, HTTP)"),
    (
        "propose",
        "API: authentication, JSON, the card sealed and fingerprinted",
    ),
    ("leader log", "into the leader's Raft core and its log"),
    ("sent", "replication picks the entry up, sends it"),
    (
        "follower receives",
        "to the follower: TLS, loopback, a wake-up, decoding",
    ),
    ("follower log", "the follower's Raft core, into its log"),
    ("follower writer", "to the follower's writer thread"),
    ("follower synced", "appended and `fdatasync`ed"),
    ("follower answers", "back to the follower's Raft core"),
    (
        "leader has it",
        "the answer encoded, to the leader: TLS, loopback, a wake-up",
    ),
    ("apply starts", "committed; the apply begins"),
    ("applied", "the apply"),
    ("answered", "to the API, the response handed to hyper"),
];

/// Each write's path, as the times of its points ([`STEPS`]) after the request.
struct Paths {
    /// Per step: the step's own duration (from the previous point), one per write, µs.
    steps: Vec<Vec<f64>>,
    /// Request to response, µs.
    total: Vec<f64>,
    /// The leader's own append: to its writer, and the writer's `fdatasync`, µs.
    leader_writer: Vec<f64>,
    leader_sync: Vec<f64>,
    /// Writes lined up, of those proposed in the window.
    writes: usize,
    proposed: usize,
    /// Writes not lined up, by why.
    skipped: BTreeMap<String, usize>,
}

/// Lines up the writes the leader proposed between `from` and `to` (ns).
fn paths(nodes: &BTreeMap<u64, Node>, from: u64, to: u64) -> Result<Paths, String> {
    let count = |n: &Node| {
        n.indexed
            .get(&(Stage::Propose, 0))
            .map_or(0, |m| m.values().filter(|&&t| t >= from && t <= to).count())
    };
    let (&leader, l) = nodes
        .iter()
        .max_by_key(|(_, n)| count(n))
        .ok_or("no marks")?;
    let proposals: Vec<(u64, u64)> = l
        .indexed
        .get(&(Stage::Propose, 0))
        .map(|m| {
            m.iter()
                .filter(|&(_, &t)| t >= from && t <= to)
                .map(|(&i, &t)| (i, t))
                .collect()
        })
        .unwrap_or_default();
    let mut p = Paths {
        steps: vec![Vec::new(); STEPS.len()],
        total: Vec::new(),
        leader_writer: Vec::new(),
        leader_sync: Vec::new(),
        writes: 0,
        proposed: proposals.len(),
        skipped: BTreeMap::new(),
    };
    for (index, propose) in proposals {
        let points = match path(nodes, leader, index, propose) {
            Ok(points) => points,
            Err(why) => {
                *p.skipped.entry(why).or_default() += 1;
                continue;
            }
        };
        let us = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1000.0;
        for (k, w) in points.windows(2).enumerate() {
            p.steps[k + 1].push(us(w[0], w[1]));
        }
        p.steps[0].push(0.0);
        p.total.push(us(points[0], points[points.len() - 1]));
        if let (Some(a), Some(s), Some(d)) = (
            l.at(Stage::LogAppend, 0, index),
            l.at(Stage::WriterStart, 0, index),
            l.at(Stage::WriterSynced, 0, index),
        ) {
            p.leader_writer.push(us(a, s));
            p.leader_sync.push(us(s, d));
        }
        p.writes += 1;
    }
    if p.writes == 0 {
        return Err(format!(
            "none of the {} writes proposed could be followed through every node's marks: {:?}",
            p.proposed, p.skipped
        ));
    }
    Ok(p)
}

/// The points of one write's path ([`STEPS`]), or why it cannot be followed: a mark
/// missing, or out of order (a mark of another write, or a retry's).
fn path(
    nodes: &BTreeMap<u64, Node>,
    leader: u64,
    index: u64,
    propose: u64,
) -> Result<Vec<u64>, String> {
    let l = &nodes[&leader];
    // The follower whose answer came first.
    let (follower, ack) = nodes
        .keys()
        .filter(|&&id| id != leader)
        .filter_map(|&id| Some((id, l.at(Stage::ReplicaAck, id, index)?)))
        .min_by_key(|&(_, t)| t)
        .ok_or("no follower's answer")?;
    let f = &nodes[&follower];
    let proposed = l.at(Stage::Proposed, 0, index);
    let points = [
        l.before(Stage::Request, propose),
        Some(propose),
        l.at(Stage::LogAppend, 0, index),
        l.at(Stage::ReplicaSend, follower, index),
        f.at(Stage::FollowerReceive, 0, index),
        f.at(Stage::LogAppend, 0, index),
        f.at(Stage::WriterStart, 0, index),
        f.at(Stage::WriterSynced, 0, index),
        f.at(Stage::FollowerAnswer, 0, index),
        Some(ack),
        l.apply(Stage::ApplyStart, index),
        l.apply(Stage::ApplyEnd, index),
        proposed.and_then(|p| l.after(Stage::Response, p)),
    ];
    let mut out = Vec::with_capacity(points.len());
    for (k, p) in points.into_iter().enumerate() {
        let p = p.ok_or_else(|| format!("no mark for \"{}\"", STEPS[k].0))?;
        if out.last().is_some_and(|&last| p < last) {
            return Err(format!("\"{}\" before the point ahead of it", STEPS[k].0));
        }
        out.push(p);
    }
    Ok(out)
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

fn render(
    p: &Paths,
    cell: &Cell,
    fsync_ms: f64,
    rtt_ms: f64,
    skeleton: &crate::skeleton::Skeleton,
) -> String {
    let mut t = String::new();
    let server = quantile(&p.total, 0.5);
    t.push_str(&format!(
        "\nOne client, wrk, {} writes lined up across the three nodes ({} proposed in the window). wrk saw **p50 {:.3} ms** (p99 {:.3} ms); inside the leader, request to response, p50 {:.3} ms: the rest is wrk's side of the connection (its TLS, the two loopback trips and the leader's API thread waking).\n\nThe target's floor: fsync p50 {fsync_ms:.3} ms + loopback round trip {rtt_ms:.3} ms → target {:.3} ms. The replication skeleton: p50 {:.3} ms ({:.3} ms without the `fdatasync`).\n",
        p.writes,
        p.proposed,
        cell.ms(cell.p50_us),
        cell.ms(cell.p99_us),
        server / 1000.0,
        1.5 * (fsync_ms + rtt_ms),
        skeleton.p50_ms,
        skeleton.no_fsync_p50_ms,
    ));
    if !p.skipped.is_empty() {
        let why: Vec<String> = p.skipped.iter().map(|(w, n)| format!("{w}: {n}")).collect();
        t.push_str(&format!(
            "\nWrites not lined up, by why: {}.\n",
            why.join("; ")
        ));
    }
    t.push_str("\n## The critical path, step by step (µs; each step from the point before)\n\n| point | the step to it | p10 | p50 | p90 | p50 after the request |\n|---|---|---:|---:|---:|---:|\n");
    let mut at = 0.0;
    for (k, (point, what)) in STEPS.iter().enumerate() {
        let v = &p.steps[k];
        let p50 = quantile(v, 0.5);
        at += p50;
        t.push_str(&format!(
            "| {point} | {what} | {:.1} | {p50:.1} | {:.1} | {at:.1} |\n",
            quantile(v, 0.1),
            quantile(v, 0.9),
        ));
    }
    t.push_str(&format!(
        "| | request to response (its own p50; the steps' p50s add up to {at:.1}) | {:.1} | {server:.1} | {:.1} | |\n",
        quantile(&p.total, 0.1),
        quantile(&p.total, 0.9),
    ));
    let sync = quantile(&p.steps[7], 0.5);
    let hops = [2usize, 3, 6, 8, 10, 12]
        .iter()
        .map(|&k| quantile(&p.steps[k], 0.5))
        .sum::<f64>();
    t.push_str(&format!(
        "\nOff the critical path, the leader's own append: to its writer p50 {:.1} µs, `fdatasync` p50 {:.1} µs.\n\nOf the steps' p50s ({at:.1} µs), the follower's `fdatasync` is {sync:.1} µs; the hand-offs between threads inside the nodes (into the leader's core, to replication, to and from the follower's writer, to the apply, back to the API) are {hops:.1} µs. The skeleton has the disk and the loopback trips and none of those hand-offs.\n",
        quantile(&p.leader_writer, 0.5),
        quantile(&p.leader_sync, 0.5),
    ));
    t
}

/// Reads `DIR/<id>.tl` of the three nodes.
fn read_marks(dir: &Path) -> Result<BTreeMap<u64, Node>, String> {
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        let path = dir.join(format!("{id}.tl"));
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        nodes.insert(id, Node::parse(&text));
    }
    Ok(nodes)
}

pub async fn run(args: Args) -> Result<(), String> {
    let probe_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let fsync = report::fsync_floor(probe_dir.path()).map_err(|e| format!("fsync probe: {e}"))?;
    let rtt_ms = report::loopback_rtt_ms().map_err(|e| format!("loopback probe: {e}"))?;
    let skeleton = crate::skeleton::measure(probe_dir.path())?;
    eprintln!("{}\n{}", fsync.line(), skeleton.line());

    let marks = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut c = ProcCluster::prepare(crate::harness::BENCH_LIMITS);
    c.node_args = vec!["--timeline".into(), marks.path().display().to_string()];
    for i in 0..3 {
        c.restart(i);
    }
    // A node built without the feature refuses the flag and exits: say so.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if !(1..=3).all(|id| marks.path().join(format!("{id}.tl")).exists()) {
        return Err(
            "the nodes wrote no marks: KURA_BIN must be built with kura-node's `timeline` feature (scripts/bench timeline builds one)".into(),
        );
    }
    c.init().await;
    let leader = c.wait_leader().await;
    let key = c.merchant("bench").await;
    let url = c.api_url(leader);
    let pids: Vec<u32> = (0..3).filter_map(|i| c.pid(i)).collect();
    let scripts = Scripts::write(probe_dir.path())?;
    let (head, mid, tail) = crate::vs_etcd::tokenize_template();
    // Each run its own cards (the script numbers them from its second argument).
    let one_client = |seq: &'static str, duration: Duration| {
        let script_args = [
            key.clone(),
            seq.to_owned(),
            head.clone(),
            mid.clone(),
            tail.clone(),
        ];
        let (scripts, url, pids) = (&scripts, &url, &pids);
        async move {
            scripts
                .run(Script::KuraTokenize, url, 1, duration, &script_args, pids)
                .await
        }
    };
    one_client("10000000", args.warmup).await?;
    let from = now_ns();
    let cell = one_client("20000000", args.measure).await?;
    let to = now_ns();
    eprintln!("  one client  {}", cell.line());
    // The nodes write their marks out every 200 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let nodes = read_marks(marks.path())?;
    let p = paths(&nodes, from, to)?;
    let mut text = report::header("Where one write's time goes", c.dir.path());
    text.push_str(&render(&p, &cell, fsync.p50_ms, rtt_ms, &skeleton));
    drop(c);
    report::publish(&args.results, "timeline", &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three nodes' files for writes 10..=12, the leader node 1, follower 3 answering
    /// first; each write starts `start` ns apart and every step takes its index's
    /// microseconds times the step number, so each step's duration is known.
    fn files() -> BTreeMap<u64, Node> {
        let (mut l, mut f2, mut f3) = (String::new(), String::new(), String::new());
        for (w, index) in (10u64..=12).enumerate() {
            let t0 = 1_000_000 * (w as u64 + 1);
            let at = |k: u64| t0 + 1_000 * k;
            let line = |s: &mut String, stage: &str, i: u64, peer: u64, t: u64| {
                s.push_str(&format!("{stage} {i} {peer} {t}\n"))
            };
            line(&mut l, "request", 0, 0, at(0));
            line(&mut l, "propose", index, 0, at(1));
            line(&mut l, "log_append", index, index, at(2));
            line(&mut l, "writer_start", index, 1, at(3));
            line(&mut l, "replica_send", index, 2, at(3));
            line(&mut l, "replica_send", index, 3, at(3));
            line(&mut l, "writer_synced", index, 0, at(5));
            for (f, slow) in [(&mut f3, 0), (&mut f2, 50)] {
                line(f, "follower_receive", index, 1, at(4) + slow);
                line(f, "log_append", index, index, at(5) + slow);
                line(f, "writer_start", index, 1, at(6) + slow);
                line(f, "writer_synced", index, 0, at(7) + slow);
                line(f, "follower_answer", index, 0, at(8) + slow);
            }
            line(&mut l, "replica_ack", index, 3, at(9));
            line(&mut l, "replica_ack", index, 2, at(9) + 60);
            line(&mut l, "apply_start", index, index, at(10));
            line(&mut l, "apply_end", index, index, at(11));
            line(&mut l, "proposed", index, 0, at(11) + 500);
            line(&mut l, "response", 0, 0, at(12));
        }
        [(1, l), (2, f2), (3, f3)]
            .into_iter()
            .map(|(id, t)| (id, Node::parse(&t)))
            .collect()
    }

    #[test]
    fn each_write_is_followed_through_the_follower_that_answered_first() {
        let nodes = files();
        let p = paths(&nodes, 0, u64::MAX).unwrap();
        assert_eq!((p.writes, p.proposed), (3, 3));
        // Every step took 1 µs (1,000 ns), the follower's steps included: the slower
        // follower (50 ns later at each of its points) is not the one followed.
        for (k, v) in p.steps.iter().enumerate().skip(1) {
            assert_eq!(v, &vec![1.0; 3], "step {k}: {}", STEPS[k].0);
        }
        assert_eq!(p.total, vec![12.0; 3]);
        assert_eq!(p.leader_writer, vec![1.0; 3]);
        assert_eq!(p.leader_sync, vec![2.0; 3]);
    }

    #[test]
    fn only_writes_proposed_in_the_window_count() {
        let nodes = files();
        // The second write is proposed at 2,001,000 ns.
        let p = paths(&nodes, 1_500_000, 2_500_000).unwrap();
        assert_eq!((p.writes, p.proposed), (1, 1));
        assert!(paths(&nodes, 5_000_000, 6_000_000).is_err());
    }

    #[test]
    fn a_write_with_a_missing_or_misplaced_mark_is_left_out() {
        let mut nodes = files();
        // Follower 3's synced mark of write 11 lost: write 12's is taken for it (a batch
        // ending later would carry it), which comes after the answer: skipped.
        nodes
            .get_mut(&3)
            .unwrap()
            .indexed
            .get_mut(&(Stage::WriterSynced, 0))
            .unwrap()
            .remove(&11);
        // Write 12's append mark on the leader moved before its proposal.
        nodes
            .get_mut(&1)
            .unwrap()
            .indexed
            .get_mut(&(Stage::LogAppend, 0))
            .unwrap()
            .insert(12, 0);
        let p = paths(&nodes, 0, u64::MAX).unwrap();
        assert_eq!((p.writes, p.proposed), (1, 3));
        let why: Vec<(&str, usize)> = p.skipped.iter().map(|(w, n)| (w.as_str(), *n)).collect();
        assert_eq!(
            why,
            [
                ("\"follower answers\" before the point ahead of it", 1),
                ("\"leader log\" before the point ahead of it", 1)
            ]
        );
    }

    #[test]
    fn a_batch_carries_the_entries_before_its_last() {
        let mut n = Node::default();
        n.add(Stage::ReplicaSend, 7, 2, 100);
        n.add(Stage::ReplicaSend, 9, 2, 200);
        n.add(Stage::ApplyStart, 9, 8, 300);
        assert_eq!(n.at(Stage::ReplicaSend, 2, 8), Some(200));
        assert_eq!(n.at(Stage::ReplicaSend, 2, 7), Some(100));
        assert_eq!(n.at(Stage::ReplicaSend, 3, 7), None);
        assert_eq!(n.apply(Stage::ApplyStart, 8), Some(300));
        assert_eq!(n.apply(Stage::ApplyStart, 7), None);
    }
}
