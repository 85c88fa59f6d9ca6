//! Backups and disaster recovery with real processes: `kura snapshot save` from a live
//! cluster, `verify` offline (and a damaged copy refused), `restore` as a new cluster
//! on new nodes; and bk alone made a new cluster (`kura force-new-cluster`, refused
//! while the others answer) that main and dr rejoin through `kura member add`, with
//! every acknowledged write that had reached bk.

use kura_cluster_tests::procs::{tokenize_request, wait_for, ProcCluster};
use std::time::Duration;

fn pan(i: u32) -> String {
    (0..10)
        .map(|d| format!("4{:08}519{:03}{d}", 33_000_000 + i, i % 1000))
        .find(|p| kura_node::vault::card::luhn_valid(p))
        .expect("one check digit fits")
}

fn run(c: &ProcCluster, args: &[&str]) -> (bool, String) {
    let out = c.kura(args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_is_saved_verified_and_restored_as_a_new_cluster() {
    let c = ProcCluster::start("");
    c.init().await;
    c.wait_leader().await;
    let key = c.merchant("backup").await;
    let client = c.client(&[0, 1, 2], &key);
    let mut tokens = Vec::new();
    for i in 0..50 {
        let t = client
            .tokenize(&tokenize_request(&pan(i), Some(&format!("m{i}"))))
            .await
            .expect("tokenize");
        tokens.push(t.token);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vault.kbak");
    let file_s = file.to_str().unwrap();
    let config = c.config(0).to_str().unwrap().to_owned();
    let (ok, out) = run(&c, &["snapshot", "save", file_s, "--config", &config]);
    assert!(ok, "save: {out}");
    // Still encrypted: no card number in the file.
    let bytes = std::fs::read(&file).unwrap();
    for i in 0..50 {
        let p = pan(i);
        assert!(
            !bytes.windows(p.len()).any(|w| w == p.as_bytes()),
            "a PAN in clear in the backup"
        );
    }
    let (ok, out) = run(&c, &["snapshot", "verify", file_s]);
    assert!(ok, "verify: {out}");
    for needle in [
        "checksums OK",
        "validate(): OK (50 tokens)",
        "audit trail chain: OK",
    ] {
        assert!(out.contains(needle), "{needle:?} not in:\n{out}");
    }
    // One byte changed anywhere in the snapshot: refused.
    let damaged = dir.path().join("damaged.kbak");
    let mut copy = bytes.clone();
    let at = copy.len() - 100;
    copy[at] ^= 0x40;
    std::fs::write(&damaged, &copy).unwrap();
    let (ok, out) = run(&c, &["snapshot", "verify", damaged.to_str().unwrap()]);
    assert!(!ok, "a damaged backup passed: {out}");
    // Truncated: refused too.
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, _) = run(&c, &["snapshot", "verify", damaged.to_str().unwrap()]);
    assert!(!ok, "a truncated backup passed");

    // Three new nodes restored from it form a new cluster with the same vault.
    let mut d = ProcCluster::prepare("");
    for i in 0..3 {
        let (ok, out) = run(
            &d,
            &[
                "snapshot",
                "restore",
                file_s,
                "--config",
                d.config(i).to_str().unwrap(),
            ],
        );
        assert!(ok, "restore on node {i}: {out}");
    }
    // Not into a directory that holds a node's state.
    let (ok, out) = run(
        &d,
        &[
            "snapshot",
            "restore",
            file_s,
            "--config",
            d.config(0).to_str().unwrap(),
        ],
    );
    assert!(!ok && out.contains("not empty"), "{out}");
    for i in 0..3 {
        d.restart(i);
    }
    d.wait_leader().await;
    let old_id = c.admin_status(0).await.unwrap()["cluster_id"].clone();
    let ids: Vec<_> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(d.admin_status(i).await.unwrap()["cluster_id"].clone());
        }
        v
    };
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    assert_ne!(ids[0], old_id, "a restore is a new cluster");
    let restored = d.client(&[0, 1, 2], &key);
    for t in &tokens {
        restored.get_token(t).await.expect("every token restored");
    }
    restored
        .tokenize(&tokenize_request(&pan(900), Some("after")))
        .await
        .expect("the restored cluster takes writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bk_alone_becomes_a_new_cluster_that_main_and_dr_rejoin_with_every_acknowledged_write() {
    let mut c = ProcCluster::prepare_opts("", &[2]);
    for i in 0..3 {
        c.restart(i);
    }
    c.init().await;
    c.wait_leader().await;
    let key = c.merchant("dr-test").await;
    let client = c.client(&[0, 1], &key);
    let mut tokens = Vec::new();
    for i in 0..80 {
        let t = client
            .tokenize(&tokenize_request(&pan(1000 + i), Some(&format!("m{i}"))))
            .await
            .expect("tokenize");
        tokens.push(t.token);
    }
    let leader = c.wait_leader().await;
    let target = c.status(leader).await.unwrap()["last_log_index"]
        .as_u64()
        .unwrap();
    // Every acknowledged write has reached bk's log.
    wait_for(
        "bk to hold every entry",
        Duration::from_secs(30),
        || async {
            c.status(2)
                .await
                .is_some_and(|s| s["last_log_index"].as_u64().unwrap_or(0) >= target)
        },
    )
    .await;
    let old_id = c.admin_status(2).await.unwrap()["cluster_id"].clone();
    let bk_config = c.config(2).to_str().unwrap().to_owned();

    c.kill(2);
    let (ok, out) = run(&c, &["force-new-cluster", "--config", &bk_config]);
    assert!(!ok && out.contains("refused"), "with main and dr up: {out}");
    c.kill(0);
    c.kill(1);
    let (ok, out) = run(&c, &["force-new-cluster", "--config", &bk_config]);
    assert!(ok, "force-new-cluster: {out}");

    c.restart(2);
    wait_for(
        "bk to lead its cluster of one",
        Duration::from_secs(30),
        || async { c.status(2).await.is_some_and(|s| s["state"] == "leader") },
    )
    .await;
    // main and dr come back as new, empty nodes and join.
    for i in [0, 1] {
        std::fs::remove_dir_all(c.data_dir(i)).unwrap();
        std::fs::create_dir_all(c.data_dir(i)).unwrap();
        c.restart(i);
    }
    for (i, name, role) in [(0, "main", "main"), (1, "dr", "dr")] {
        let id = (i + 1).to_string();
        let (ok, out) = run(
            &c,
            &[
                "member",
                "add",
                name,
                "--id",
                &id,
                "--role",
                role,
                "--api",
                &c.api[i],
                "--raft",
                &c.raft[i],
                "--admin",
                &c.admin[i],
                "--never-lead",
                "false",
                "--config",
                &bk_config,
            ],
        );
        assert!(ok, "member add {name}: {out}");
    }
    let s = c.status(2).await.unwrap();
    let voters = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .count();
    assert_eq!(voters, 3, "{s}");
    let new_id = c.admin_status(2).await.unwrap()["cluster_id"].clone();
    assert_ne!(new_id, old_id);
    let everyone = c.client(&[0, 1, 2], &key);
    for t in &tokens {
        everyone
            .get_token(t)
            .await
            .expect("every acknowledged write is there");
    }
    // The recovery is in the audit trail.
    let page = c
        .admin()
        .call(
            http::Method::GET,
            "/admin/v1/audit?from_seq=0&limit=1000",
            None,
        )
        .await
        .unwrap()
        .body;
    let text = page.to_string();
    assert!(text.contains("cluster.force_new_cluster"), "{text}");
    everyone
        .tokenize(&tokenize_request(&pan(5000), Some("after")))
        .await
        .expect("writes after the recovery");
}
