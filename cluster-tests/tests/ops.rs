//! What SREs get in `ops/`: the alert rules pass `promtool` and their unit tests, every
//! alert has a runbook entry, the Grafana dashboards are well formed, every PromQL
//! expression in them parses, and every metric they name is one a live node exports —
//! on a scrape `promtool check metrics` finds clean. Then a real Prometheus, loaded
//! with `ops/prometheus`, scrapes a real cluster and raises the leader-change alert
//! when the leader is killed and the routes alert when both acquirer routes are lost.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package, which
//! `scripts/test` installs.

use kura_cluster_tests::procs::{
    acquirer_toml, free_port, tokenize_request, wait_for, AcquirerSim, ProcCluster,
};
use promql_parser::parser::{self, Expr};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// A Prometheus tool from Debian's package, or a clear failure naming the script that
/// installs it.
fn tool(name: &str) -> Command {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{name} is not installed: scripts/test installs Debian's prometheus package \
         (or: apt-get install prometheus)"
    );
    Command::new(name)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Every alerting rule in `ops/prometheus/kura-alerts.yml`.
fn alert_rules() -> Vec<serde_yaml::Value> {
    let path = repo().join("ops/prometheus/kura-alerts.yml");
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).expect("rules YAML");
    doc["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

/// The PromQL of every panel target in both dashboards, with Grafana's variables
/// replaced by values Prometheus would see.
fn dashboard_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (file, d) in dashboards() {
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().expect("every target has an expr");
                out.push((
                    format!("{file}: {}", p["title"]),
                    expr.replace("$__rate_interval", "1m")
                        .replace("$__interval", "1m")
                        .replace("$job", ".*")
                        .replace("$instance", ".*"),
                ));
            }
        }
    }
    out
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = repo().join("ops/grafana");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "a cluster and a payments dashboard");
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            let v = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", f.display()));
            (f.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect()
}

/// Metric names an expression selects.
fn metric_names(expr: &str) -> BTreeSet<String> {
    struct Names(BTreeSet<String>);
    impl ExprVisitor for Names {
        type Error = ();
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, ()> {
            let vs = match e {
                Expr::VectorSelector(vs) => Some(vs),
                Expr::MatrixSelector(m) => Some(&m.vs),
                _ => None,
            };
            if let Some(name) = vs.and_then(|vs| vs.name.clone()) {
                self.0.insert(name);
            }
            Ok(true)
        }
    }
    let parsed = parser::parse(expr).unwrap_or_else(|e| panic!("{expr:?} does not parse: {e}"));
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &parsed).unwrap();
    names.0
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = repo().join("ops/prometheus");
    run_ok(
        tool("promtool")
            .arg("check")
            .arg("rules")
            .arg(dir.join("kura-alerts.yml")),
    );
    let out = run_ok(tool("promtool").current_dir(dir.join("tests")).args([
        "test",
        "rules",
        "kura-alerts.test.yml",
    ]));
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_a_severity_a_summary_a_runbook_entry_and_tests_both_ways() {
    let runbook = std::fs::read_to_string(repo().join("docs/runbook.md")).unwrap();
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    let tests =
        std::fs::read_to_string(repo().join("ops/prometheus/tests/kura-alerts.test.yml")).unwrap();
    let tests: serde_yaml::Value = serde_yaml::from_str(&tests).unwrap();
    // alertname -> (ever expected to fire, ever expected silent)
    let mut seen: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for t in tests["tests"].as_sequence().unwrap() {
        for a in t["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = a["alertname"].as_str().unwrap().to_owned();
            let fires = a["exp_alerts"].as_sequence().is_some_and(|s| !s.is_empty());
            let e = seen.entry(name).or_default();
            if fires {
                e.0 = true;
            } else {
                e.1 = true;
            }
        }
    }
    let rules = alert_rules();
    assert!(rules.len() >= 18, "{} alerts", rules.len());
    for r in rules {
        let name = r["alert"].as_str().expect("alerting rules only");
        let severity = r["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        assert!(
            !r["annotations"]["summary"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{name} has no summary"
        );
        let url = r["annotations"]["runbook_url"].as_str().unwrap_or_default();
        let anchor = url
            .strip_prefix("docs/runbook.md#")
            .unwrap_or_else(|| panic!("{name}: runbook_url {url:?}"));
        assert!(
            anchors.contains(anchor),
            "{name} links #{anchor}, which docs/runbook.md has no heading for"
        );
        assert_eq!(
            seen.get(name),
            Some(&(true, true)),
            "{name} needs a unit test where it fires and one where it does not"
        );
        metric_names(r["expr"].as_str().unwrap());
    }
}

#[test]
fn the_dashboards_are_well_formed_and_their_queries_parse() {
    for (file, d) in dashboards() {
        let vars = d["templating"]["list"].as_array().expect("templating");
        assert!(
            vars.iter()
                .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
            "{file}: a Prometheus datasource variable"
        );
        let panels = d["panels"].as_array().unwrap();
        assert!(panels.len() > 5, "{file}");
        let mut ids = BTreeSet::new();
        let mut cells: BTreeMap<(i64, i64), String> = BTreeMap::new();
        for p in panels {
            let title = p["title"].as_str().unwrap_or_default().to_owned();
            assert!(
                ids.insert(p["id"].as_i64().expect("panel id")),
                "{file}: panel id {} used twice",
                p["id"]
            );
            let g = &p["gridPos"];
            let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_i64().expect("gridPos"));
            assert!(
                x >= 0 && w > 0 && x + w <= 24 && h > 0,
                "{file}: {title} at {g}"
            );
            for cx in x..x + w {
                for cy in y..y + h {
                    if let Some(other) = cells.insert((cx, cy), title.clone()) {
                        panic!("{file}: {title:?} overlaps {other:?} at ({cx}, {cy})");
                    }
                }
            }
            if p["type"] != "row" {
                assert_eq!(
                    p["datasource"]["uid"], "${datasource}",
                    "{file}: {title} must use the datasource variable"
                );
                assert!(
                    p["targets"].as_array().is_some_and(|t| !t.is_empty()),
                    "{file}: {title} has no query"
                );
            }
        }
    }
    for (panel, expr) in dashboard_exprs() {
        assert!(
            !metric_names(&expr).is_empty(),
            "{panel}: {expr} selects nothing"
        );
    }
}

/// A node's scrape, in the Prometheus text format.
async fn scrape(c: &ProcCluster, i: usize) -> String {
    c.client(&[i], "")
        .call(http::Method::GET, "/metrics", None)
        .await
        .expect("metrics")
        .body
        .as_str()
        .expect("text")
        .to_owned()
}

fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// A cluster with both acquirer routes, small snapshots (so snapshot metrics exist),
/// one payment made and every node having taken a snapshot (a compaction mark).
async fn busy_cluster(cafis: &AcquirerSim, cardnet: &AcquirerSim) -> ProcCluster {
    let c = ProcCluster::start(&format!(
        "{}\n[raft]\nsnapshot_every_entries = 20\nlog_entries_kept_after_snapshot = 5\n",
        acquirer_toml(cafis, cardnet, 3_000)
    ));
    c.init().await;
    c.wait_leader().await;
    let sk = c.merchant("ops").await;
    let client = c.client(&[0, 1, 2], &sk);
    let mut token = String::new();
    for i in 0..30 {
        let pan = (0..10)
            .map(|d| format!("4{:014}{d}", 4_242_000 + i))
            .find(|p| kura_node::vault::card::luhn_valid(p))
            .unwrap();
        token = client
            .tokenize(&tokenize_request(&pan, Some("m1")))
            .await
            .expect("tokenize")
            .token;
    }
    let pay = kura_sdk::AuthorizeIn {
        token,
        amount: 1000,
        currency: "JPY".into(),
        order_id: "ops-1".into(),
        capture: true,
        three_d_secure: None,
    };
    client.authorize(&pay, "ops-1").await.expect("authorise");
    for i in 0..3 {
        // A scheduled snapshot is a compaction mark (decision 0020): timed like a
        // build, with a size of 0.
        wait_for(
            "every node to take a snapshot",
            Duration::from_secs(30),
            || async {
                c.metric(i, "kura_raft_snapshot_duration_seconds_count")
                    .await
                    > 0.0
            },
        )
        .await;
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scrape_is_clean_and_has_every_metric_the_rules_and_dashboards_use() {
    let (cafis, cardnet) = (AcquirerSim::start().await, AcquirerSim::start().await);
    let c = busy_cluster(&cafis, &cardnet).await;
    let mut exported = BTreeSet::new();
    for i in 0..3 {
        let text = scrape(&c, i).await;
        let mut check = tool("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        let problems = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && problems.trim().is_empty(),
            "promtool check metrics on node {i}:\n{problems}"
        );
        exported.extend(sample_names(&text));
    }
    // Prometheus makes `up` itself.
    exported.insert("up".into());
    let mut used: BTreeMap<String, String> = BTreeMap::new();
    for r in alert_rules() {
        for n in metric_names(r["expr"].as_str().unwrap()) {
            used.insert(n, format!("alert {}", r["alert"].as_str().unwrap()));
        }
    }
    for (panel, expr) in dashboard_exprs() {
        for n in metric_names(&expr) {
            used.insert(n, format!("dashboard panel {panel}"));
        }
    }
    let missing: Vec<String> = used
        .iter()
        .filter(|(n, _)| !exported.contains(*n))
        .map(|(n, by)| format!("{n} (used by {by})"))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics no live node exports:\n{}",
        missing.join("\n")
    );
}

/// A Prometheus server on loopback, with `ops/prometheus`'s rules, scraping the cluster
/// every second over TLS. Dropping it kills it.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(c: &ProcCluster) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = repo().join("ops/prometheus/kura-alerts.yml");
        let targets: Vec<String> = c.api.iter().map(|a| format!("\"{a}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: kura\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n    static_configs:\n      - targets: [{targets}]\n",
            rules = rules.display(),
            ca = c.dir.path().join("certs/ca.crt").display(),
            targets = targets.join(", "),
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = tool("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// GETs `path` from Prometheus's HTTP API over plain HTTP on loopback.
    async fn api(&self, path: &str) -> Option<Value> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&self.addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let body = text.split_once("\r\n\r\n")?.1;
        serde_json::from_str(body).ok()
    }

    /// The alerts in `state` (`pending` or `firing`) now.
    async fn alerts(&self) -> Vec<Value> {
        self.api("/api/v1/alerts").await.map_or(Vec::new(), |v| {
            v["data"]["alerts"].as_array().cloned().unwrap_or_default()
        })
    }

    async fn wait_firing(&self, name: &str, labels: &[(&str, &str)], within: Duration) -> Value {
        let started = std::time::Instant::now();
        loop {
            let alerts = self.alerts().await;
            if let Some(a) = alerts.iter().find(|a| {
                a["labels"]["alertname"] == name
                    && a["state"] == "firing"
                    && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
            }) {
                return a.clone();
            }
            assert!(
                started.elapsed() < within,
                "{name} {labels:?} did not fire within {within:?}; alerts now: {alerts:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until every node is scraped healthy.
    async fn wait_targets_up(&self, n: usize) {
        wait_for(
            "Prometheus to scrape every node",
            Duration::from_secs(60),
            || async {
                self.api("/api/v1/query?query=sum(up%7Bjob%3D%22kura%22%7D)")
                    .await
                    .and_then(|v| {
                        v["data"]["result"][0]["value"][1]
                            .as_str()
                            .map(|s| s == n.to_string())
                    })
                    .unwrap_or(false)
            },
        )
        .await;
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_with_the_rules_alerts_on_a_killed_leader_and_on_lost_routes() {
    let (mut cafis, mut cardnet) = (AcquirerSim::start().await, AcquirerSim::start().await);
    let mut c = ProcCluster::start(&acquirer_toml(&cafis, &cardnet, 3_000));
    c.init().await;
    let leader = c.wait_leader().await;
    let prom = Prometheus::start(&c);
    prom.wait_targets_up(3).await;
    // A formed cluster raises nothing: its first leader is a formation, not a change.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quiet = prom.alerts().await;
    assert!(
        quiet
            .iter()
            .all(|a| a["labels"]["alertname"] != "KuraLeaderChanged"),
        "{quiet:?}"
    );

    c.kill(leader);
    let alert = prom
        .wait_firing(
            "KuraLeaderChanged",
            &[("cause", "crash_or_partition")],
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(alert["labels"]["severity"], "warning");
    assert_eq!(
        alert["annotations"]["runbook_url"],
        "docs/runbook.md#kuraleaderchanged"
    );

    // Both routes lost: each surviving node's health checks find no route (`for: 15s`).
    cafis.kill();
    cardnet.kill();
    let survivor = (leader + 1) % 3;
    let instance = c.api[survivor].clone();
    let alert = prom
        .wait_firing(
            "KuraAcquirerAllRoutesDown",
            &[("instance", &instance)],
            Duration::from_secs(90),
        )
        .await;
    assert_eq!(alert["labels"]["severity"], "critical");
}

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit = std::fs::read_to_string(repo().join("ops/systemd/kura.service")).unwrap();
    let set = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
            .collect()
    };
    for (key, value) in [
        ("User", "kura"),
        // A node whose storage failed exits (status 74) to be started again until the
        // storage is sound: restarted on failure, and never given up on.
        ("Restart", "on-failure"),
        ("StartLimitIntervalSec", "0"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("LimitCORE", "0"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("CapabilityBoundingSet", ""),
        ("SystemCallFilter", "@system-service"),
    ] {
        assert!(
            set(key).iter().any(|v| v == value),
            "kura.service must set {key}={value}"
        );
    }
    assert_eq!(set("ReadWritePaths"), ["/var/lib/kura"]);
    // The config the unit names must keep its data where the unit lets it write.
    let main = std::fs::read_to_string(repo().join("ops/main.toml")).unwrap();
    assert!(main.contains("data_dir = \"/var/lib/kura\""));
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "systemd-analyze is not installed: the unit's directives were checked, not verified"
        );
        return;
    }
    // `verify` also checks that ExecStart's binary exists: point it at the one built.
    let dir = tempfile::tempdir().unwrap();
    let bin = kura_cluster_tests::procs::kura_bin();
    let copy = dir.path().join("kura.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/kura", &bin.display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("kura.service"),
        "systemd-analyze verify:\n{text}"
    );
}
