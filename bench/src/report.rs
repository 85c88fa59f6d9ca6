//! What every result file starts with (date, commit, machine), the fsync floor, and
//! writing results under `bench/results/`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn proc_field(file: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// Date, commit and machine, as Markdown lines.
pub fn header(title: &str, data_dir: &Path) -> String {
    let date = run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let commit = run("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = run("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    let cpu = proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = proc_field("/proc/meminfo", "MemTotal")
        .and_then(|m| m.split_whitespace().next()?.parse::<u64>().ok())
        .map_or_else(
            || "?".into(),
            |kib| format!("{:.1} GiB", kib as f64 / 1048576.0),
        );
    let kernel = run("uname", &["-r"]).unwrap_or_default();
    let fs = run("stat", &["-f", "-c", "%T", &data_dir.display().to_string()]).unwrap_or_default();
    format!(
        "# {title}\n\n- Date: {date}\n- Commit: `{commit}`{}\n- Machine: {cpu}, {cores} cores, {mem} RAM, Linux {kernel}; data on {fs} ({})\n",
        if dirty { " (with uncommitted changes)" } else { "" },
        data_dir.display()
    )
}

/// fsync latency of this machine's disk where the data lives: 4 KiB appends, each
/// followed by `fdatasync`, as etcd's WAL does. One durable write can be no faster.
pub struct Fsync {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub per_second: f64,
}

pub fn fsync_floor(dir: &Path) -> std::io::Result<Fsync> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let mut h = crate::harness::histogram();
    let started = Instant::now();
    let mut n = 0u32;
    while n < 200 || (started.elapsed().as_secs_f64() < 3.0 && n < 5_000) {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        crate::harness::record(&mut h, t.elapsed());
        n += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(Fsync {
        p50_ms: crate::harness::quantile_ms(&h, 0.5),
        p99_ms: crate::harness::quantile_ms(&h, 0.99),
        per_second: f64::from(n) / secs,
    })
}

impl Fsync {
    pub fn line(&self) -> String {
        format!(
            "fsync floor (4 KiB append + fdatasync, one writer): p50 {:.2} ms, p99 {:.2} ms, {:.0} per second",
            self.p50_ms, self.p99_ms, self.per_second
        )
    }
}

/// Writes `text` to `<results_dir>/<name>-<date>.md` (`<name>-<date>-<HHMM>.md` when a
/// report of that day is there already: an earlier run's report is never overwritten)
/// and `<name>-latest.md`, prints it, and says where it went.
pub fn publish(results_dir: &Path, name: &str, text: &str) -> Result<(), String> {
    let save = || -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(results_dir)?;
        let date = run("date", &["-u", "+%Y-%m-%d"]).unwrap_or_else(|| "undated".into());
        let mut dated = results_dir.join(format!("{name}-{date}.md"));
        if dated.exists() {
            let time = run("date", &["-u", "+%H%M"]).unwrap_or_else(|| "later".into());
            dated = results_dir.join(format!("{name}-{date}-{time}.md"));
        }
        std::fs::write(&dated, text)?;
        std::fs::write(results_dir.join(format!("{name}-latest.md")), text)?;
        Ok(dated)
    };
    let path = save().map_err(|e| format!("writing the {name} report: {e}"))?;
    println!("{text}");
    eprintln!("report written to {}", path.display());
    Ok(())
}

/// `a / b` as "1.23×", or "–" when b is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

/// Round trip of 64 bytes over a loopback TCP connection (one thread each side, no TLS):
/// the network's share of the fastest replicated write. Median, in milliseconds.
pub fn loopback_rtt_ms() -> std::io::Result<f64> {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        loop {
            match s.read_exact(&mut buf) {
                Ok(()) => s.write_all(&buf)?,
                Err(_) => return Ok(()),
            }
        }
    });
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut h = crate::harness::histogram();
    let mut buf = [7u8; 64];
    for _ in 0..2_000 {
        let t = Instant::now();
        s.write_all(&buf)?;
        s.read_exact(&mut buf)?;
        crate::harness::record(&mut h, t.elapsed());
    }
    drop(s);
    let _ = echo.join();
    Ok(crate::harness::quantile_ms(&h, 0.5))
}
