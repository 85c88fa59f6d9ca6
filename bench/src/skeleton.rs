//! The replication skeleton: the least a replicated durable write can cost on this
//! machine, whatever does it.
//!
//! Four processes on loopback: a client, a leader and two followers. The client sends
//! an entry to the leader; the leader sends it to both followers; each follower appends
//! it to a file and `fdatasync`s it, then acknowledges; the leader answers the client at
//! the first acknowledgement (a majority of three with its own copy, written in
//! parallel in any real system and left out here). That is every hop and the one
//! `fdatasync` a replicated write cannot avoid, and nothing else: no TLS, no HTTP, no
//! encoding, no consensus bookkeeping, blocking sockets with `TCP_NODELAY`. A real
//! system's one-client latency is this plus what it does on the way.
//!
//! `kura-bench skeleton follower|leader` are the roles (hidden subcommands, each in its
//! own process, as the nodes of a cluster are); [`measure`] starts them and is the
//! client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// Bytes of one entry: about a tokenize command's entry in kura's log.
pub const ENTRY: usize = 512;
/// Bytes of the leader's answer.
const ANSWER: usize = 64;
const WARMUP: u32 = 200;
const WRITES: u32 = 3_000;

/// The skeleton's one-client latency, with the followers' `fdatasync` and without.
pub struct Skeleton {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub no_fsync_p50_ms: f64,
}

impl Skeleton {
    pub fn line(&self) -> String {
        format!(
            "replication skeleton (a client, a leader and two followers as processes on loopback, plain TCP, a {ENTRY}-byte entry appended and `fdatasync`ed by each follower, answered at the first acknowledgement; no TLS, HTTP, encoding or consensus): p50 {:.3} ms, p99 {:.3} ms; p50 {:.3} ms without the `fdatasync`",
            self.p50_ms, self.p99_ms, self.no_fsync_p50_ms
        )
    }
}

/// Runs the skeleton twice, with and without `fdatasync`, its followers' files in `dir`.
pub fn measure(dir: &Path) -> Result<Skeleton, String> {
    let (p50_ms, p99_ms) = run_processes(dir, true)?;
    let (no_fsync_p50_ms, _) = run_processes(dir, false)?;
    Ok(Skeleton {
        p50_ms,
        p99_ms,
        no_fsync_p50_ms,
    })
}

/// The role processes, killed when dropped.
struct Roles(Vec<Child>);

impl Drop for Roles {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Roles {
    /// Starts `kura-bench skeleton <args>` and reads the address it listens on.
    fn spawn(&mut self, args: &[String]) -> Result<SocketAddr, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg("skeleton")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the skeleton's {}: {e}", args[0]))?;
        let stdout = child.stdout.take().expect("piped");
        self.0.push(child);
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        line.trim()
            .parse()
            .map_err(|_| format!("the skeleton's {} printed {line:?}", args[0]))
    }
}

fn run_processes(dir: &Path, fsync: bool) -> Result<(f64, f64), String> {
    let mut roles = Roles(Vec::new());
    let mut followers = Vec::new();
    for i in 0..2 {
        let file = dir.join(format!("skeleton-follower-{i}"));
        let mut args = vec!["follower".into(), file.display().to_string()];
        if !fsync {
            args.push("--no-fsync".into());
        }
        followers.push(roles.spawn(&args)?.to_string());
    }
    let leader = roles.spawn(&["leader".into(), followers.join(",")])?;
    let h = client(leader, WARMUP, WRITES).map_err(|e| format!("skeleton client: {e}"))?;
    drop(roles);
    for i in 0..2 {
        let _ = std::fs::remove_file(dir.join(format!("skeleton-follower-{i}")));
    }
    Ok((
        crate::harness::quantile_ms(&h, 0.5),
        crate::harness::quantile_ms(&h, 0.99),
    ))
}

/// `kura-bench skeleton ROLE ...`: binds a loopback port, prints it, then serves.
pub fn serve(role: &str, arg: &str, no_fsync: bool) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    println!("{}", listener.local_addr().map_err(|e| e.to_string())?);
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let served = match role {
        "follower" => follower(&listener, Path::new(arg), !no_fsync),
        "leader" => {
            let addrs: Result<Vec<SocketAddr>, _> = arg.split(',').map(str::parse).collect();
            leader(&listener, &addrs.map_err(|e| format!("{arg}: {e}"))?)
        }
        other => return Err(format!("no skeleton role {other}")),
    };
    served.map_err(|e| format!("skeleton {role}: {e}"))
}

/// Accepts one leader; appends each entry to `file` (and `fdatasync`s it), then
/// acknowledges it with one byte. Returns when the leader goes.
fn follower(listener: &TcpListener, file: &Path, fsync: bool) -> std::io::Result<()> {
    let f = std::fs::File::create(file)?;
    let (mut s, _) = listener.accept()?;
    s.set_nodelay(true)?;
    let mut entry = [0u8; ENTRY];
    let mut end = 0u64;
    while s.read_exact(&mut entry).is_ok() {
        f.write_all_at(&entry, end)?;
        end += ENTRY as u64;
        if fsync {
            f.sync_data()?;
        }
        s.write_all(&[1])?;
    }
    Ok(())
}

/// Connects to the followers, accepts one client, and for each entry it sends: sends the
/// entry to every follower and answers at the first acknowledgement. Returns when the
/// client goes.
fn leader(listener: &TcpListener, followers: &[SocketAddr]) -> std::io::Result<()> {
    let mut peers = Vec::new();
    for a in followers {
        let s = TcpStream::connect(a)?;
        s.set_nodelay(true)?;
        peers.push(s);
    }
    let (mut client, _) = listener.accept()?;
    client.set_nodelay(true)?;
    let mut entry = [0u8; ENTRY];
    // Acknowledgements received from each follower: entry k is committed once any
    // follower has acknowledged k entries (each acknowledges in order).
    let mut acked = vec![0u64; peers.len()];
    let mut sent = 0u64;
    let mut fds: Vec<libc::pollfd> = peers
        .iter()
        .map(|p| libc::pollfd {
            fd: p.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut acks = [0u8; 256];
    while client.read_exact(&mut entry).is_ok() {
        for p in &mut peers {
            p.write_all(&entry)?;
        }
        sent += 1;
        while acked.iter().all(|&a| a < sent) {
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs that lives
            // across the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for (i, fd) in fds.iter_mut().enumerate() {
                if fd.revents != 0 {
                    fd.revents = 0;
                    let got = peers[i].read(&mut acks)?;
                    if got == 0 {
                        // That follower went: wait on the others only.
                        fd.fd = -1;
                        acked[i] = 0;
                    } else {
                        acked[i] += got as u64;
                    }
                }
            }
            if fds.iter().all(|f| f.fd < 0) {
                return Ok(());
            }
        }
        client.write_all(&entry[..ANSWER])?;
    }
    Ok(())
}

/// One client: `warmup` writes, then `writes` timed ones, one at a time.
fn client(
    leader: SocketAddr,
    warmup: u32,
    writes: u32,
) -> std::io::Result<hdrhistogram::Histogram<u64>> {
    let mut s = TcpStream::connect(leader)?;
    s.set_nodelay(true)?;
    let entry = [0x5au8; ENTRY];
    let mut answer = [0u8; ANSWER];
    let mut h = crate::harness::histogram();
    for i in 0..warmup + writes {
        let t = Instant::now();
        s.write_all(&entry)?;
        s.read_exact(&mut answer)?;
        if i >= warmup {
            crate::harness::record(&mut h, t.elapsed());
        }
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A follower on a thread, its file in `dir`.
    fn spawn_follower(dir: &Path, i: u32) -> (SocketAddr, std::path::PathBuf) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let file = dir.join(format!("f{i}"));
        let f = file.clone();
        std::thread::spawn(move || follower(&l, &f, true));
        (addr, file)
    }

    /// A follower that reads every entry and never acknowledges one.
    fn spawn_silent() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut sink = [0u8; 4096];
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        });
        addr
    }

    fn spawn_leader(followers: Vec<SocketAddr>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || leader(&l, &followers));
        addr
    }

    #[test]
    fn the_leader_answers_at_the_first_acknowledgement_after_that_follower_wrote_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (good, file) = spawn_follower(dir.path(), 0);
        let leader = spawn_leader(vec![spawn_silent(), good]);
        let mut s = TcpStream::connect(leader).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut answer = [0u8; ANSWER];
        for k in 1..=25u64 {
            s.write_all(&[k as u8; ENTRY]).unwrap();
            s.read_exact(&mut answer)
                .unwrap_or_else(|e| panic!("write {k} was not answered: {e}"));
            // The answer came after the acknowledging follower had written the entry.
            let len = std::fs::metadata(&file).unwrap().len();
            assert_eq!(len, k * ENTRY as u64, "after write {k}");
        }
    }

    #[test]
    fn without_any_acknowledgement_the_leader_does_not_answer() {
        let leader = spawn_leader(vec![spawn_silent(), spawn_silent()]);
        let mut s = TcpStream::connect(leader).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s.write_all(&[1u8; ENTRY]).unwrap();
        let mut answer = [0u8; ANSWER];
        let err = s.read_exact(&mut answer).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{err}"
        );
    }
}
