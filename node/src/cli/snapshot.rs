//! `kura snapshot save | verify | restore` and `kura force-new-cluster`: backups taken
//! over the admin plane, checked offline, restored as a new cluster; and disaster
//! recovery from one surviving node.

use super::client::admin_config_for;
use crate::config::NodeConfig;
use crate::store::backup::{self, Header};
use crate::store::{Store, SyncPolicy, WriterMode};
use clap::Subcommand;
use http_body_util::BodyExt;
use kura_sdk::wire::{Connector, TcpConnector};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `kura snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Take a backup from the leader over the admin plane into FILE (a snapshot built
    /// now; cards stay sealed, the KEK is never in it).
    Save {
        file: PathBuf,
        #[arg(long, default_value = super::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check a backup offline: both checksums and every frame, then `validate()` and the
    /// audit chain on a vault built from it.
    Verify { file: PathBuf },
    /// Restore a backup into this node's (empty) data directory as the state of a new
    /// cluster whose members are the config's peers. Run it on every new member with
    /// the same backup; they agree on the new cluster id (or pass --cluster-id).
    Restore {
        file: PathBuf,
        /// The new node's config (its node_id, data_dir and the new cluster's peers).
        #[arg(long)]
        config: PathBuf,
        /// The new cluster's id (default: derived from the backup and the peers).
        #[arg(long)]
        cluster_id: Option<String>,
    },
}

/// Runs `kura snapshot ...`.
pub async fn run(cmd: SnapshotCmd) -> Result<bool, String> {
    match cmd {
        SnapshotCmd::Save { file, config } => save(&file, &config).await.map(|()| true),
        SnapshotCmd::Verify { file } => verify(&file),
        SnapshotCmd::Restore {
            file,
            config,
            cluster_id,
        } => restore(&file, &config, cluster_id).await.map(|()| true),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Streams `GET /admin/v1/snapshot` from the leader (else any admin endpoint that
/// answers) into `file`, printing progress; the file appears only once complete.
async fn save(file: &Path, config: &Path) -> Result<(), String> {
    let cfg = NodeConfig::load(config).map_err(|e| e.to_string())?;
    let mut endpoints = cfg.admin_endpoints();
    // The leader first: its snapshot is the newest.
    let statuses =
        super::fetch_statuses(&cfg.api_endpoints(), super::config_trust(&cfg)?.as_ref()).await;
    if let Some(leader) = statuses
        .iter()
        .filter_map(|(_, s)| s.as_ref())
        .find(|s| s["state"] == "leader")
        .and_then(|s| s["name"].as_str())
    {
        if let Some(p) = cfg.peers.iter().find(|p| p.name == leader) {
            endpoints.retain(|e| *e != p.admin_addr);
            endpoints.insert(0, p.admin_addr.clone());
        }
    }
    let client = admin_config_for(&cfg, config, endpoints.clone())?;
    let connector: Arc<dyn Connector> = match &client.tls {
        Some(tls) => Arc::new(kura_sdk::tls::TlsConnector::fixed(
            Arc::new(TcpConnector),
            (**tls).clone(),
        )),
        None => Arc::new(TcpConnector),
    };
    let mut last_err = String::from("no admin endpoint");
    for addr in &endpoints {
        match download(&*connector, addr, &client.bearer, file).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                // Said, not only kept: a node with no room for the snapshot's file
                // (`insufficient_storage`) is something to mend even if another
                // node gives the backup.
                eprintln!("  {addr}: {e}");
                last_err = format!("{addr}: {e}");
            }
        }
    }
    Err(last_err)
}

async fn download(
    connector: &dyn Connector,
    addr: &str,
    bearer: &str,
    file: &Path,
) -> Result<(), String> {
    let io = connector.connect(addr).await.map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = http::Request::get("/admin/v1/snapshot").header(http::header::HOST, addr);
    if !bearer.is_empty() {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {bearer}"));
    }
    let req = req
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("a valid request");
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(format!("{status}: {text}"));
    }
    let partial = file.with_extension("partial");
    let mut out = std::fs::File::create(&partial)
        .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    let (mut written, started, mut reported) = (0u64, Instant::now(), Instant::now());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the download broke off: {e}"))?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data).map_err(|e| e.to_string())?;
            written += data.len() as u64;
            if reported.elapsed() >= Duration::from_secs(1) {
                eprintln!("  {} MiB received", written >> 20);
                reported = Instant::now();
            }
        }
    }
    out.sync_all().map_err(|e| e.to_string())?;
    drop(out);
    // Check before keeping it: a truncated or damaged download never becomes FILE.
    let header = check_file(&partial, |_| {})?;
    std::fs::rename(&partial, file).map_err(|e| e.to_string())?;
    println!(
        "backup of cluster {} at index {} (term {}): {} ({} bytes) in {:.1} s",
        header.cluster_id,
        header.last_log_id.index,
        header.last_log_id.leader_id.term,
        file.display(),
        written,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Checks a backup's checksums and frames; returns its header.
fn check_file(file: &Path, progress: impl FnMut(u64)) -> Result<Header, String> {
    let unpacked =
        backup::unpack(file, progress).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(unpacked.header)
}

/// `kura snapshot verify FILE`.
fn verify(file: &Path) -> Result<bool, String> {
    let mut reported = Instant::now();
    let u = backup::unpack(file, |bytes| {
        if reported.elapsed() >= Duration::from_secs(1) {
            eprintln!("  {} MiB checked", bytes >> 20);
            reported = Instant::now();
        }
    })
    .map_err(|e| format!("{}: {e}", file.display()))?;
    let h = &u.header;
    println!(
        "backup of cluster {} at index {} (term {}), taken at {} ms; {} bytes, sha256 {}: checksums OK, {} records",
        h.cluster_id,
        h.last_log_id.index,
        h.last_log_id.leader_id.term,
        h.taken_at_ms,
        h.snapshot_bytes,
        h.snapshot_sha256,
        u.records
    );
    let mut ok = true;
    match u.vault.validate() {
        Ok(()) => println!("vault validate(): OK ({} tokens)", u.vault.token_count()),
        Err(v) => {
            println!("vault validate(): FAILED: {v}");
            ok = false;
        }
    }
    match u.vault.audit().verify() {
        Ok(n) => println!("audit trail chain: OK ({n} records)"),
        Err(e) => {
            println!("audit trail chain: BROKEN: {e:?}");
            ok = false;
        }
    }
    Ok(ok)
}

/// The cluster id every member restored from the same backup with the same peers
/// derives alike.
fn derived_cluster_id(h: &Header, cfg: &NodeConfig) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(h.snapshot_sha256.as_bytes());
    let mut peers: Vec<_> = cfg
        .peers
        .iter()
        .map(|p| (p.id, &p.name, &p.raft_addr))
        .collect();
    peers.sort();
    for (id, name, addr) in peers {
        hash.update(format!("{id}/{name}/{addr};").as_bytes());
    }
    let digest = hash.finalize();
    let n = u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"));
    format!("kc_{}", crate::vault::token::base62_u128(n))
}

/// Restores `file` into the data directory `cfg` names, for the members it lists.
async fn restore(file: &Path, config: &Path, cluster_id: Option<String>) -> Result<(), String> {
    let cfg = NodeConfig::load(config).map_err(|e| e.to_string())?;
    let f =
        std::fs::File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let header = Header::read(&mut r).map_err(|e| format!("{}: {e}", file.display()))?;
    let id = cluster_id.unwrap_or_else(|| derived_cluster_id(&header, &cfg));
    let records = restore_into(&cfg, &header, r, cfg.members(), &id).await?;
    println!(
        "restored {} records at index {} into {} as node {} of new cluster {id} ({} members); start it with `kura node --config {}`",
        records,
        header.last_log_id.index,
        cfg.data_dir.display(),
        cfg.node_id,
        cfg.peers.len(),
        config.display()
    );
    Ok(())
}

async fn restore_into(
    cfg: &NodeConfig,
    header: &Header,
    r: impl std::io::Read + Send + 'static,
    members: std::collections::BTreeMap<u64, crate::member::Member>,
    cluster_id: &str,
) -> Result<u64, String> {
    let dir = &cfg.data_dir;
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| e.to_string())?
            .next()
            .is_some()
    {
        return Err(format!(
            "{} is not empty: restore into a new node's empty data directory",
            dir.display()
        ));
    }
    crate::files::create_private_dir(dir).map_err(|e| e.to_string())?;
    let store = Store::open(
        &dir.join("kura.redb"),
        WriterMode::Threaded,
        SyncPolicy::Fsync,
        Arc::new(|_| {}),
    )
    .map_err(|e| format!("cannot create the store in {}: {e}", dir.display()))?;
    store
        .restore(header, r, members, cfg.node_id, cluster_id)
        .await
        .map_err(|e| format!("restore failed: {e}"))
}

/// `kura force-new-cluster --config FILE`: makes the stopped node's data a new
/// one-member cluster. Refused while any other member answers.
pub async fn force_new_cluster(config: &Path) -> Result<(), String> {
    let cfg = NodeConfig::load(config).map_err(|e| e.to_string())?;
    let me = cfg
        .peers
        .iter()
        .find(|p| p.id == cfg.node_id)
        .ok_or("the config's node_id is not among its peers")?
        .clone();
    // Only when the others are gone: a member that answers may still hold a quorum.
    for p in cfg.peers.iter().filter(|p| p.id != cfg.node_id) {
        for addr in [&p.raft_addr, &p.api_addr] {
            let reach = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect(addr.as_str()),
            )
            .await;
            if matches!(reach, Ok(Ok(_))) {
                return Err(format!(
                    "refused: member {} answers at {addr}; force a new cluster only when the other members are lost for good",
                    p.name
                ));
            }
        }
    }
    let db = cfg.data_dir.join("kura.redb");
    if !db.exists() {
        return Err(format!("no node state in {}", cfg.data_dir.display()));
    }
    let stamp = now_ms();
    let parent = cfg.data_dir.parent().unwrap_or(Path::new("."));
    let name = cfg
        .data_dir
        .file_name()
        .map_or("data".into(), |n| n.to_string_lossy().into_owned());
    let kept = parent.join(format!("{name}.before-force-new-cluster-{stamp}"));
    let recovered = parent.join(format!("{name}.recovered-{stamp}.kbak"));
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let lost: Vec<&str> = cfg
        .peers
        .iter()
        .filter(|p| p.id != cfg.node_id)
        .map(|p| p.name.as_str())
        .collect();
    let header = {
        let (db_path, recovered, detail) = (
            db.clone(),
            recovered.clone(),
            format!(
                "{} formed a new one-member cluster from its own data; lost: {}",
                me.name,
                lost.join(", ")
            ),
        );
        tokio::task::spawn_blocking(move || {
            backup::force_new_cluster_backup(
                &db_path,
                "cluster.force_new_cluster",
                detail,
                format!("local:{user}"),
                &recovered,
                stamp,
            )
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot read {}: {e}", db.display()))?
    };
    std::fs::rename(&cfg.data_dir, &kept).map_err(|e| {
        format!(
            "cannot move {} aside to {}: {e}",
            cfg.data_dir.display(),
            kept.display()
        )
    })?;
    let f = std::fs::File::open(&recovered).map_err(|e| e.to_string())?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    Header::read(&mut r).map_err(|e| e.to_string())?;
    let members = std::collections::BTreeMap::from([(cfg.node_id, me.member.clone())]);
    let new_id = format!(
        "kc_{}",
        crate::vault::token::base62_u128(u128::from_be_bytes(crate::crypto::Entropy::Os.bytes()))
    );
    let records = restore_into(&cfg, &header, r, members, &new_id).await?;
    println!(
        "{} now holds a new one-member cluster {new_id} ({} records, up to index {}, every entry of its log applied; recorded in the audit trail).\n\
         Its old data: {}; the recovered state: {}.\n\
         Next: start it (`kura node --config {}`), then add the new members with `kura member add NAME --id ID --role ROLE --api ... --raft ... --admin ...`.",
        me.name,
        records,
        header.last_log_id.index,
        kept.display(),
        recovered.display(),
        config.display()
    );
    Ok(())
}
