//! The real `porthole` binary as a child process, for tests that measure what belongs to the process itself:
//! its resident memory, its log (stderr, kept in a file), its audit file, its open-files limit, and the TCP
//! connections it still holds.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{PATIENCE, TEST_TOKEN};

/// How often a [`RssSampler`] looks at the server's resident memory.
pub const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// One `porthole` process on `127.0.0.1:0`, signed in with [`TEST_TOKEN`], killed when dropped. Its stdout,
/// stderr (the log) and audit log are files in a temp dir of its own, removed when the test passed.
pub struct ServerProcess {
    child: Child,
    /// Where it listens, parsed from the line it prints on stdout.
    pub addr: SocketAddr,
    /// Its stderr: every log line.
    pub log: PathBuf,
    /// Its `--audit-log`.
    pub audit: PathBuf,
    dir: PathBuf,
}

impl ServerProcess {
    /// Starts the binary with `args` after the standard `--listen` (unless `args` has one), `--token` and
    /// `--audit-log`, and waits for it to listen. `RUST_LOG` is unset, so it logs at its default level (`info`).
    pub fn start(args: &[&str]) -> ServerProcess {
        ServerProcess::launch(None, args)
    }

    /// Like [`ServerProcess::start`], under `prlimit --nofile=SOFT:HARD`: the process starts with that
    /// open-files limit (prlimit sets it and execs the binary, so the process id is the server's).
    pub fn start_with_nofile(soft: u64, hard: u64, args: &[&str]) -> ServerProcess {
        ServerProcess::launch(Some((soft, hard)), args)
    }

    fn launch(nofile: Option<(u64, u64)>, args: &[&str]) -> ServerProcess {
        let dir = std::env::temp_dir().join(format!("porthole-proc-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (stdout, log, audit) = (dir.join("stdout"), dir.join("stderr.log"), dir.join("audit.jsonl"));
        // Set for the server's own tests; other packages' tests that share this harness do not start binaries.
        let Some(bin) = option_env!("CARGO_BIN_EXE_porthole") else {
            panic!("the porthole binary is known to the server's own tests only");
        };
        let mut cmd = match nofile {
            Some((soft, hard)) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={soft}:{hard}")).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(["--token", TEST_TOKEN, "--audit-log"]).arg(&audit).args(args);
        if !args.contains(&"--state-dir") {
            // Its own state (its own instance id), unless the test restarts a server on the same state.
            cmd.arg("--state-dir").arg(dir.join("state"));
        }
        // The flags' environment twins (PORTHOLE_*) of whoever runs the tests must not change this server;
        // where the Docker daemon is stays theirs to say.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key == "RUST_LOG" || (key.starts_with("PORTHOLE_") && key != "PORTHOLE_DOCKER_HOSTS") {
                cmd.env_remove(key);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
        let mut server = ServerProcess { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), log, audit, dir };

        // `Porthole is listening on http://127.0.0.1:PORT/?token=...`
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let out = std::fs::read_to_string(&stdout).unwrap_or_default();
            let addr = out
                .lines()
                .find_map(|l| l.strip_prefix("Porthole is listening on http://"))
                .and_then(|rest| rest.split('/').next())
                .and_then(|a| a.parse().ok());
            if let Some(addr) = addr {
                server.addr = addr;
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("porthole {args:?} exited with {status} before listening; its log:\n{}", server.log_text());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "porthole did not listen in time; log:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` (e.g. `TERM`, `KILL`) and waits for the process to end.
    pub fn stop_with(&mut self, signal: &str) -> std::process::ExitStatus {
        Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status().unwrap();
        self.child.wait().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The Engine.IO websocket endpoint, as a browser opens it.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/socket.io/?EIO=4&transport=websocket", self.addr)
    }

    /// Resident memory (`VmRSS` in `/proc/PID/status`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS for porthole (did it exit?); log:\n{}", self.log_tail()))
    }

    /// Samples [`ServerProcess::rss_kib`] every [`RSS_SAMPLE_EVERY`] until the sampler is dropped.
    pub fn sample_rss(&self) -> RssSampler {
        let path = format!("/proc/{}/status", self.pid());
        let peak = Arc::new(AtomicU64::new(self.rss_kib()));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                let status = std::fs::read_to_string(&path).unwrap_or_default();
                let rss = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()));
                if let Some(rss) = rss {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(RSS_SAMPLE_EVERY).await;
            }
        });
        RssSampler { peak, task }
    }

    /// Waits up to `within` for resident memory to be at most `limit_kib`; the last reading.
    pub async fn settle_rss(&self, limit_kib: u64, within: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let rss = self.rss_kib();
            if rss <= limit_kib || tokio::time::Instant::now() >= deadline {
                return rss;
            }
            tokio::time::sleep(RSS_SAMPLE_EVERY).await;
        }
    }

    /// The soft and hard open-files limits the process runs with (`/proc/PID/limits`).
    pub fn open_files_limit(&self) -> (u64, u64) {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).unwrap();
        let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_string();
        let nums: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        (nums[0], nums[1])
    }

    /// Where the log and the audit file end now; see [`Mark::growth`].
    pub fn mark(&self) -> Mark {
        Mark { log: file_len(&self.log), audit: file_len(&self.audit), at: tokio::time::Instant::now() }
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub fn audit_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.audit).unwrap_or_default()).into_owned()
    }

    /// Every audit record, parsed.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        self.audit_text().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Waits until the log contains `needle`; whether it did within `within`.
    pub async fn log_eventually_contains(&self, needle: &str, within: Duration) -> bool {
        eventually_in_file(&self.log, needle, within).await
    }

    /// Waits until the audit file contains `needle`; whether it did within `within`.
    pub async fn audit_eventually_contains(&self, needle: &str, within: Duration) -> bool {
        eventually_in_file(&self.audit, needle, within).await
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let start = text.len().saturating_sub(8 * 1024);
        let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
        text[start..].to_string()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- the end of porthole's log ({}):\n{}", self.log.display(), self.log_tail());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn eventually_in_file(path: &std::path::Path, needle: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
        if text.contains(needle) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// A point in the server's log and audit file, to measure what was written after it.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    pub log: u64,
    pub audit: u64,
    pub at: tokio::time::Instant,
}

/// Bytes written to the log and to the audit file since a [`Mark`].
#[derive(Debug, Clone, Copy)]
pub struct Growth {
    pub log: u64,
    pub audit: u64,
    /// How long since the mark.
    pub over: Duration,
}

impl Mark {
    /// What the server wrote since the mark, leaving out lines that contain `exclude` (a bystander's terminal
    /// id: its own records are not the abuser's).
    pub fn growth(&self, server: &ServerProcess, exclude: &str) -> Growth {
        let since = |path: &std::path::Path, from: u64| -> u64 {
            let bytes = std::fs::read(path).unwrap_or_default();
            let tail = bytes.get(from as usize..).unwrap_or_default();
            tail.split_inclusive(|&b| b == b'\n')
                .filter(|line| exclude.is_empty() || !line.windows(exclude.len()).any(|w| w == exclude.as_bytes()))
                .map(|line| line.len() as u64)
                .sum()
        };
        Growth { log: since(&server.log, self.log), audit: since(&server.audit, self.audit), over: self.at.elapsed() }
    }
}

/// The highest resident memory seen since it was started; stops sampling when dropped.
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP connection's state as the kernel reports it in `/proc/net/tcp` (IPv4; both ends are on loopback in
/// these tests, so the test's own end is in this network namespace's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    Established,
    /// The peer sent FIN: it closed its side.
    CloseWait,
    /// Any other state (the kernel's number).
    Other(u8),
}

/// The state of the connection from `local` to `remote`; `None` once the kernel has forgotten it (after a
/// reset, for example).
pub fn tcp_state(local: SocketAddr, remote: SocketAddr) -> Option<TcpState> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (l, r, st) = (parse_proc_addr(cols.get(1)?)?, parse_proc_addr(cols.get(2)?)?, cols.get(3)?);
        if SocketAddr::V4(l) != local || SocketAddr::V4(r) != remote {
            return None;
        }
        Some(match u8::from_str_radix(st, 16).ok()? {
            0x01 => TcpState::Established,
            0x08 => TcpState::CloseWait,
            n => TcpState::Other(n),
        })
    })
}

/// `0100007F:1F90`: the address as the kernel's in-memory (network order) bytes printed as a native u32, and
/// the port in hex.
fn parse_proc_addr(s: &str) -> Option<SocketAddrV4> {
    let (ip, port) = s.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), port))
}

#[test]
fn proc_net_tcp_addresses_parse() {
    // Little-endian machines print 127.0.0.1 as 0100007F.
    if cfg!(target_endian = "little") {
        assert_eq!(parse_proc_addr("0100007F:1F90"), Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080)));
    }
}
