//! Closed-loop throughput driven by `wrk` (C, Debian's package): a load generator far
//! lighter than the systems it drives, so that what a cell reports is the system's
//! rate, not the harness's. `kura-bench`'s own harness used about a quarter of the two
//! cores at 256 clients and compressed both systems' rates; it stays for open-loop
//! latency, payments and failover. Each request body comes from a Lua script in
//! `bench/lua/`; wrk runs one thread, and its CPU time is measured (`wait4`'s
//! `rusage`) and reported with every cell.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const COMMON: &str = include_str!("../lua/common.lua");

/// The workloads, each a Lua script.
#[derive(Debug, Clone, Copy)]
pub enum Script {
    KuraTokenize,
    KuraRead,
    EtcdPut,
    EtcdRange,
}

impl Script {
    fn source(self) -> &'static str {
        match self {
            Script::KuraTokenize => include_str!("../lua/kura_tokenize.lua"),
            Script::KuraRead => include_str!("../lua/kura_read.lua"),
            Script::EtcdPut => include_str!("../lua/etcd_put.lua"),
            Script::EtcdRange => include_str!("../lua/etcd_range.lua"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Script::KuraTokenize => "kura_tokenize",
            Script::KuraRead => "kura_read",
            Script::EtcdPut => "etcd_put",
            Script::EtcdRange => "etcd_range",
        }
    }
}

/// What one wrk run measured.
#[derive(Debug, Clone)]
pub struct Cell {
    pub requests: u64,
    /// Non-2xx/3xx answers, connect, read and write errors, timeouts.
    pub errors: u64,
    pub seconds: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// CPU seconds wrk itself used (user + system).
    pub wrk_cpu_s: f64,
    /// CPU seconds the system under test used meanwhile (its processes, summed).
    pub system_cpu_s: f64,
}

impl Cell {
    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.requests.saturating_sub(self.errors) as f64 / self.seconds.max(1e-9)
    }

    pub fn ms(&self, us: u64) -> f64 {
        us as f64 / 1000.0
    }

    /// wrk's share of the machine's CPU over the cell.
    pub fn wrk_share(&self) -> f64 {
        self.wrk_cpu_s / (self.seconds.max(1e-9) * cores())
    }

    /// The system's share of the machine's CPU over the cell.
    pub fn system_share(&self) -> f64 {
        self.system_cpu_s / (self.seconds.max(1e-9) * cores())
    }

    /// One human line.
    pub fn line(&self) -> String {
        format!(
            "{:>9.0} ok/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>7.2} ms  ({} requests, {} errors; wrk {:.0}% of the machine, system {:.0}%)",
            self.throughput(),
            self.ms(self.p50_us),
            self.ms(self.p99_us),
            self.ms(self.p999_us),
            self.ms(self.max_us),
            self.requests,
            self.errors,
            100.0 * self.wrk_share(),
            100.0 * self.system_share(),
        )
    }
}

/// The machine's cores.
pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// wrk's version line, or `None` when it is not installed.
pub fn version() -> Option<String> {
    let out = Command::new("wrk").arg("-v").output().ok()?;
    // wrk prints its version (and usage) to stdout or stderr and exits non-zero.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find(|l| l.starts_with("wrk "))
        .map(|l| l.split(" [").next().unwrap_or(l).trim().to_owned())
}

/// The scripts, written once into a directory for the run.
pub struct Scripts {
    dir: PathBuf,
}

impl Scripts {
    pub fn write(dir: &Path) -> Result<Scripts, String> {
        let dir = dir.join("wrk");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        for s in [
            Script::KuraTokenize,
            Script::KuraRead,
            Script::EtcdPut,
            Script::EtcdRange,
        ] {
            std::fs::write(
                dir.join(format!("{}.lua", s.name())),
                format!("{COMMON}\n{}", s.source()),
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(Scripts { dir })
    }

    /// A file in the scripts' directory (token and key lists).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs `script` against `url` with `connections` for `duration`, passing `args` to
    /// the script; `pids` are the system's processes, whose CPU time is summed over the
    /// run.
    pub async fn run(
        &self,
        script: Script,
        url: &str,
        connections: u32,
        duration: Duration,
        args: &[String],
        pids: &[u32],
    ) -> Result<Cell, String> {
        let path = self.dir.join(format!("{}.lua", script.name()));
        let mut cmd = Command::new("wrk");
        cmd.arg("-t1")
            .arg(format!("-c{connections}"))
            .arg(format!("-d{}s", duration.as_secs().max(1)))
            .arg("--timeout")
            .arg("10s")
            .arg("-s")
            .arg(&path)
            .arg(url)
            .arg("--")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let pids = pids.to_vec();
        tokio::task::spawn_blocking(move || {
            let before = cpu_seconds_of(&pids);
            let child = cmd
                .spawn()
                .map_err(|e| format!("cannot start wrk (is it installed?): {e}"))?;
            let (out, wrk_cpu_s) = wait_with_rusage(child)?;
            let after = cpu_seconds_of(&pids);
            let mut cell = parse(&out)?;
            cell.wrk_cpu_s = wrk_cpu_s;
            cell.system_cpu_s = (after - before).max(0.0);
            Ok(cell)
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// Waits for `child`, collecting its output and the CPU time it used.
fn wait_with_rusage(mut child: std::process::Child) -> Result<(String, f64), String> {
    use std::io::Read;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut out = String::new();
    stdout.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value, and wait4 writes a whole one.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child by pid; `status` and `usage` outlive the call.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let err = err_reader.join().unwrap_or_default();
    if r < 0 {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("wrk failed ({status}): {err}{out}"));
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((out, secs(usage.ru_utime) + secs(usage.ru_stime)))
}

/// CPU seconds `pids` have used together so far.
pub fn cpu_seconds_of(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

/// CPU seconds (user + system) process `pid` has used so far; 0 if it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name is in parentheses and may hold spaces: count from after it.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line (utime, stime) are 12 and 13 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// The `KURA_BENCH {...}` line the scripts' `done` prints.
fn parse(out: &str) -> Result<Cell, String> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("KURA_BENCH "))
        .ok_or_else(|| format!("wrk printed no report: {out}"))?;
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    Ok(Cell {
        requests: n("requests"),
        errors: n("status_errors")
            + n("connect_errors")
            + n("read_errors")
            + n("write_errors")
            + n("timeouts"),
        seconds: n("duration_us") as f64 / 1e6,
        p50_us: n("p50_us"),
        p99_us: n("p99_us"),
        p999_us: n("p999_us"),
        max_us: n("max_us"),
        wrk_cpu_s: 0.0,
        system_cpu_s: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_line_is_read_and_errors_summed() {
        let out = "Running 8s test\nKURA_BENCH {\"requests\":1000,\"duration_us\":2000000,\"status_errors\":3,\"connect_errors\":1,\"read_errors\":0,\"write_errors\":0,\"timeouts\":1,\"p50_us\":900,\"p99_us\":4000,\"p999_us\":9000,\"max_us\":12000}\n";
        let c = parse(out).unwrap();
        assert_eq!((c.requests, c.errors), (1000, 5));
        assert!((c.throughput() - 497.5).abs() < 1e-9);
        assert_eq!(c.p99_us, 4000);
        assert!(parse("no report here").is_err());
    }

    #[test]
    fn this_process_has_used_cpu_time_and_a_missing_one_none() {
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(std::process::id()) > 0.0);
        assert_eq!(cpu_seconds(u32::MAX), 0.0);
    }
}
