//! `porthole-bench`: Porthole beside the raw Engine API exec stream and the `docker exec` CLI, in one run, on
//! the same container and the same work. Prints one Markdown report (and writes it with `--out`).
//!
//! - Throughput: `cat` of a 64 MiB text file through a tty, to a native client.
//! - Echo: one keystroke to `cat` in a tty, until its echo is back; p50/p95/p99.
//! - Memory: server RSS per idle terminal with 1,000 open (all must answer an echo), against one `docker exec`
//!   CLI process per terminal.
//! - Flood: 100 terminals running `yes`, the client consuming 1 MiB/s in all (acknowledging what it consumed):
//!   server RSS, bytes the server read versus consumed (the writers must be paused, not buffered), and echo of a
//!   quiet terminal on the same socket.
//!
//! Client and server CPU are reported with each, so a slow client is not mistaken for a slow server.

mod cli;
mod cluster;
mod recording;
mod sandbox;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use app::protocol::{CloseTerminal, StartTerminal, TerminalId, event};
use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use clap::Parser;
use futures_util::StreamExt;
use porthole_client::{Connection, Incoming, Options};
use porthole_server::docker::{ContainerRuntime, ExecSpec};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: f64 = 1024.0 * 1024.0;
const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(about = "Porthole beside the raw Engine API and the docker exec CLI, in one run")]
struct Args {
    /// The porthole binary to benchmark (release build).
    #[arg(long, env = "PORTHOLE_BIN", default_value = "target/release/porthole")]
    bin: PathBuf,
    /// Image with sh, cat and yes (scripts/testbed.sh builds it).
    #[arg(long, default_value = "porthole-test/bash:2")]
    image: String,
    /// Size of the file `cat` prints, MiB.
    #[arg(long, default_value_t = 64)]
    mib: usize,
    /// Throughput rounds per contender (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Echo samples per contender.
    #[arg(long, default_value_t = 500)]
    samples: usize,
    /// Idle terminals opened at once.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Flooding terminals.
    #[arg(long, default_value_t = 100)]
    flood: usize,
    /// Idle terminals spread over the three nodes of the cluster part.
    #[arg(long, default_value_t = 1500)]
    cluster_idle: usize,
    /// Clients resuming through nginx after it restarts, in the cluster part.
    #[arg(long, default_value_t = 500)]
    cluster_resume: usize,
    /// Seconds of steady flood measured.
    #[arg(long, default_value_t = 10)]
    flood_secs: u64,
    /// Terminals opened at once, by Porthole (one socket of the JavaScript client) and by as many `docker exec`
    /// CLIs, in a busybox-only container.
    #[arg(long, default_value_t = 50)]
    opens: usize,
    /// Terminals opened at once to check that all are answered.
    #[arg(long, default_value_t = 200)]
    opens_max: usize,
    /// Image for the opens: busybox only, no bash (scripts/testbed.sh builds it).
    #[arg(long, default_value = "porthole-test/sh:2")]
    sh_image: String,
    /// The JavaScript benchmark client (its `npm ci` done).
    #[arg(long, default_value = "bench/js/client.mjs")]
    js: PathBuf,
    /// Sandbox samples per contender (cold create, warm claim, `docker run -it`).
    #[arg(long, default_value_t = 30)]
    sandbox_samples: usize,
    /// Sandboxes created at once.
    #[arg(long, default_value_t = 50)]
    sandbox_burst: usize,
    /// Recordings made for the search timing.
    #[arg(long, default_value_t = 1000)]
    search_recordings: usize,
    /// Output of each of those recordings, MiB.
    #[arg(long, default_value_t = 1)]
    search_mib: usize,
    /// The command-line client to benchmark (release build).
    #[arg(long, env = "PORTHOLE_CLI_BIN", default_value = "target/release/porthole-cli")]
    cli_bin: PathBuf,
    /// Write the report here too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only these parts (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Throughput and echo.
    Stream,
    /// Throughput, echo and concurrent opens with the official JavaScript client.
    Js,
    Idle,
    Flood,
    /// Sandboxes: cold create and warm claim beside `docker run -it`, and many at once.
    Sandbox,
    /// Throughput with recording off and all, disk bytes per MiB, and searching many recordings.
    Recording,
    /// `porthole-cli` beside the `docker` CLI: tty throughput and echo on a pty, pipe throughput.
    Cli,
    /// Two cluster nodes: echo and throughput of a terminal reached on its owner and through another node.
    Cluster,
}

impl Args {
    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Processes: RSS and CPU from /proc

fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) used so far by `pid` ("self" for this process).
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// The Docker daemon's pid, to see how much CPU moving the bytes costs it.
fn dockerd_pid() -> Option<String> {
    let out = Command::new("pidof").arg("dockerd").output().ok()?;
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().map(str::to_string)
}

/// CPU % of one core used by `pid` while `f` runs.
async fn cpu_of<T>(pid: &str, f: impl std::future::Future<Output = T>) -> (T, f64) {
    let (c0, t0) = (cpu_secs(pid), Instant::now());
    let out = f.await;
    (out, (cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64().max(1e-9) * 100.0)
}

/// CPU use of this process and the server over a measured stretch.
struct CpuMeter {
    server: u32,
    start: Instant,
    me: f64,
    srv: f64,
}

impl CpuMeter {
    fn start(server: u32) -> CpuMeter {
        CpuMeter { server, start: Instant::now(), me: cpu_secs("self"), srv: cpu_secs(&server.to_string()) }
    }

    /// (client %, server %) of one core.
    fn stop(&self) -> (f64, f64) {
        let wall = self.start.elapsed().as_secs_f64().max(1e-9);
        let me = (cpu_secs("self") - self.me) / wall * 100.0;
        let srv = (cpu_secs(&self.server.to_string()) - self.srv) / wall * 100.0;
        (me, srv)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Test bed

struct Container {
    docker: Docker,
    name: String,
}

impl Container {
    async fn start(docker: &Docker, image: &str, what: &str) -> anyhow::Result<Container> {
        let name = format!("porthole-bench-{what}-{}", std::process::id());
        let _ = docker.remove_container(&name, Some(RemoveContainerOptionsBuilder::new().force(true).build())).await;
        let body = ContainerCreateBody {
            image: Some(image.into()),
            cmd: Some(vec!["sleep".into(), "infinity".into()]),
            labels: Some([("porthole.bench".to_string(), what.to_string())].into()),
            host_config: Some(HostConfig { init: Some(true), ..Default::default() }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        docker.create_container(Some(options), body).await.context("creating the benchmark container")?;
        docker.start_container(&name, None).await?;
        Ok(Container { docker: docker.clone(), name })
    }

    /// Runs `sh -c script` to completion (no tty).
    /// Writes `/tmp/big.txt`, `mib` MiB of text lines, for the throughput runs.
    async fn write_big_file(&self, mib: usize) -> anyhow::Result<()> {
        self.sh(&format!(
            "yes 'porthole benchmark: plain text lines of about sixty-four bytes, 0123456789' | head -c {} > /tmp/big.txt",
            mib * 1024 * 1024
        ))
        .await
    }

    async fn sh(&self, script: &str) -> anyhow::Result<()> {
        let exec = self
            .docker
            .create_exec(
                &self.name,
                CreateExecOptions::<String> {
                    cmd: Some(vec!["sh".into(), "-c".into(), script.into()]),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await?;
        if let StartExecResults::Attached { mut output, .. } = self.docker.start_exec(&exec.id, None).await? {
            while output.next().await.is_some() {}
        }
        Ok(())
    }

    async fn remove(self) {
        let _ = self
            .docker
            .remove_container(&self.name, Some(RemoveContainerOptionsBuilder::new().force(true).build()))
            .await;
    }
}

/// Where the servers' logs go: `porthole-bench-server.log` in the temp dir (appended).
fn server_log() -> Stdio {
    let path = std::env::temp_dir().join("porthole-bench-server.log");
    match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        Ok(f) => Stdio::from(f),
        Err(_) => Stdio::null(),
    }
}

/// A running `porthole` with the limits raised for the benchmark.
struct Server {
    child: Child,
    base: String,
    token: String,
}

impl Server {
    fn start(bin: &PathBuf) -> anyhow::Result<Server> {
        Server::start_with(bin, &[])
    }

    /// [`Server::start`] with more flags.
    fn start_with(bin: &PathBuf, extra: &[&str]) -> anyhow::Result<Server> {
        let token = "benchmark-token-0123456789";
        let mut cmd = Command::new(bin);
        if !extra.contains(&"--state-dir") {
            // Its own state, never the state of a Porthole the person running the benchmark uses.
            cmd.arg("--state-dir")
                .arg(std::env::temp_dir().join(format!("porthole-bench-state-{}", std::process::id())));
        }
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .args(["--token", token, "--audit-log", "/dev/null"])
            .args(extra)
            .args(["--max-terminals-per-socket", "4000", "--max-terminals", "4000", "--max-terminals-per-user", "4000"])
            .args(["--max-events-per-sec", "1000000"])
            .env("RUST_LOG", std::env::var("PORTHOLE_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(server_log())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut line = String::new();
        let mut stdout = std::io::BufReader::new(child.stdout.take().context("no stdout")?);
        std::io::BufRead::read_line(&mut stdout, &mut line)?;
        let url = line.trim().strip_prefix("Porthole is listening on ").context("no URL printed")?;
        let base = url.split("/?").next().unwrap_or(url).to_string();
        Ok(Server { child, base, token: token.into() })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kib(&self) -> u64 {
        proc_rss_kib(self.pid())
    }

    async fn client(
        &self,
    ) -> anyhow::Result<(std::sync::Arc<Connection>, tokio::sync::mpsc::UnboundedReceiver<Incoming>)> {
        let options = Options { timeout: WAIT, ..Options::new(self.base.as_str(), self.token.as_str()) };
        let (conn, rx) = Connection::connect(&options).await?;
        Ok((std::sync::Arc::new(conn), rx))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_terminal(client: &Connection, container: &str, cmd: &[&str], flow: bool) -> anyhow::Result<TerminalId> {
    let req = StartTerminal {
        container_id: container.into(),
        cols: Some(200),
        rows: Some(50),
        command: Some(cmd.iter().map(|s| s.to_string()).collect()),
        flow_control: flow,
        tty: true,
    };
    let started = client
        .request::<event::StartTerminal>(&req)
        .await?
        .map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.message))?;
    Ok(started.terminal_id)
}

// ---------------------------------------------------------------------------------------------------------------
// Statistics

#[derive(Debug, Clone, Copy, Default)]
struct Percentiles {
    p50: f64,
    p95: f64,
    p99: f64,
}

fn percentiles(mut ms: Vec<f64>) -> Percentiles {
    if ms.is_empty() {
        return Percentiles::default();
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    Percentiles { p50: at(0.50), p95: at(0.95), p99: at(0.99) }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------------------------
// Throughput

/// The raw Engine API stream: Porthole's own hijacked `POST /exec/{id}/start`, read directly with reads of at
/// most `read_size` bytes.
async fn raw_cat(
    engine: &porthole_server::docker::engine::Engine,
    container: &str,
    read_size: usize,
) -> anyhow::Result<(u64, f64)> {
    let spec = ExecSpec { cmd: vec!["cat".into(), "/tmp/big.txt".into()], env: vec![], user: None, tty: true };
    let mut stream = engine.start_exec(container, &spec).await?;
    let mut buf = vec![0u8; read_size];
    let mut total = 0u64;
    let (mut first, mut last) = (None, Instant::now());
    loop {
        // The daemon sometimes keeps the stream open after the process ended (Porthole's read pump watches
        // for that with exec inspect); here a quiet second after the data means the end. Timing stops at the
        // last byte either way.
        let n = match tokio::time::timeout(Duration::from_secs(1), stream.output.read(&mut buf)).await {
            Ok(r) => r?,
            Err(_) if first.is_some() => 0,
            Err(_) => continue,
        };
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        last = Instant::now();
        total += n as u64;
    }
    Ok((total, first.map_or(0.0, |t: Instant| last.duration_since(t).as_secs_f64())))
}

/// `docker exec -t <container> cat /tmp/big.txt`, its stdout read here.
fn cli_cat(container: &str) -> anyhow::Result<(u64, f64)> {
    let mut child = Command::new("docker")
        .args(["exec", "-t", container, "cat", "/tmp/big.txt"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()?;
    let mut out = child.stdout.take().context("no stdout")?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut first = None;
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        total += n as u64;
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    child.wait()?;
    Ok((total, secs))
}

/// The same `cat` through Porthole to a native Socket.IO client.
async fn porthole_cat(server: &Server, container: &str) -> anyhow::Result<(u64, f64, (f64, f64))> {
    let (client, mut rx) = server.client().await?;
    let cpu = CpuMeter::start(server.pid());
    let id = start_terminal(&client, container, &["cat", "/tmp/big.txt"], false).await?;
    let mut total = 0u64;
    let (mut first, mut last) = (None, Instant::now());
    while let Some(m) = tokio::time::timeout(WAIT, rx.recv()).await? {
        match m {
            Incoming::Output(o) if o.terminal_id == id => {
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
                total += o.data.0.len() as u64;
            }
            Incoming::Exit(e) if e.terminal_id == id => break,
            _ => {}
        }
    }
    let secs = first.map_or(0.0, |t: Instant| last.duration_since(t).as_secs_f64());
    Ok((total, secs, cpu.stop()))
}

// ---------------------------------------------------------------------------------------------------------------
// Echo

const KEYS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

async fn raw_echo(
    engine: &porthole_server::docker::engine::Engine,
    container: &str,
    samples: usize,
) -> anyhow::Result<Vec<f64>> {
    let spec = ExecSpec { cmd: vec!["cat".into()], env: vec![], user: None, tty: true };
    let mut s = engine.start_exec(container, &spec).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut buf = [0u8; 4096];
    let mut out = Vec::new();
    for i in 0..samples + 20 {
        let key = KEYS[i % KEYS.len()];
        let t0 = Instant::now();
        s.input.write_all(&[key]).await?;
        s.input.flush().await?;
        loop {
            let n = tokio::time::timeout(WAIT, s.output.read(&mut buf)).await??;
            if n == 0 {
                bail!("raw stream ended");
            }
            if buf[..n].contains(&key) {
                break;
            }
        }
        if i >= 20 {
            out.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(out)
}

/// `docker exec -it <container> cat` on a pty of ours (the CLI needs a terminal for `-t` with `-i`): the
/// process and the pty's master side.
fn cli_on_pty(container: &str) -> anyhow::Result<(Child, std::fs::File)> {
    let mut cmd = Command::new("docker");
    cmd.args(["exec", "-it", container, "cat"]);
    cli::on_pty(cmd)
}

/// Echo through the CLI.
fn cli_echo(container: &str, samples: usize) -> anyhow::Result<Vec<f64>> {
    let (child, master) = cli_on_pty(container)?;
    pty_echo(child, master, samples)
}

/// Keystroke echo through a client running `cat` on a pty (`master` its other side), ms per sample after 20
/// warm-ups; the client is killed after.
fn pty_echo(mut child: Child, mut master: std::fs::File, samples: usize) -> anyhow::Result<Vec<f64>> {
    std::thread::sleep(Duration::from_millis(1000));
    let mut buf = [0u8; 4096];
    let mut out = Vec::new();
    for i in 0..samples + 20 {
        let key = KEYS[i % KEYS.len()];
        let t0 = Instant::now();
        master.write_all(&[key])?;
        loop {
            let n = master.read(&mut buf)?;
            if n == 0 {
                bail!("docker exec ended");
            }
            if buf[..n].contains(&key) {
                break;
            }
        }
        if i >= 20 {
            out.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(out)
}

async fn porthole_echo(server: &Server, container: &str, samples: usize) -> anyhow::Result<(Vec<f64>, (f64, f64))> {
    let (client, _rx) = server.client().await?;
    let id = start_terminal(&client, container, &["cat"], false).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    echo_on(server, &client, &id, samples).await
}

/// Echo of `samples` keystrokes (after 20 unmeasured) typed by `client` into terminal `id`, which runs `cat`;
/// the CPU `server` used meanwhile.
async fn echo_on(
    server: &Server,
    client: &Connection,
    id: &TerminalId,
    samples: usize,
) -> anyhow::Result<(Vec<f64>, (f64, f64))> {
    let cpu = CpuMeter::start(server.pid());
    let mut out = Vec::new();
    for i in 0..samples + 20 {
        let key = KEYS[i % KEYS.len()] as char;
        let next = client.next_output(id);
        let t0 = Instant::now();
        client.input(id, &key.to_string()).await?;
        let (at, data) = tokio::time::timeout(WAIT, next).await??;
        if !data.contains(&(key as u8)) {
            bail!("echo of {key:?} came back as {data:?}");
        }
        if i >= 20 {
            out.push(at.duration_since(t0).as_secs_f64() * 1000.0);
        }
    }
    Ok((out, cpu.stop()))
}

// ---------------------------------------------------------------------------------------------------------------
// Memory: many idle terminals

struct Idle {
    opened: usize,
    failed: usize,
    first_failure: Option<String>,
    answered: usize,
    open_secs: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    cli_rss_kib: u64,
}

/// Opens `n` terminals running `cat` in `container`, 32 at a time: their ids, how many failed, and the first
/// failure.
async fn open_cats(client: &Connection, container: &str, n: usize) -> (Vec<TerminalId>, usize, Option<String>) {
    let mut ids = Vec::with_capacity(n);
    let (mut failed, mut first_failure) = (0, None);
    let all: Vec<usize> = (0..n).collect();
    for batch in all.chunks(32) {
        let starts = batch.iter().map(|_| start_terminal(client, container, &["cat"], false));
        for r in futures_util::future::join_all(starts).await {
            match r {
                Ok(id) => ids.push(id),
                Err(e) => {
                    failed += 1;
                    first_failure.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
    }
    (ids, failed, first_failure)
}

/// Types `e` into every terminal of `ids` (each running `cat`): how many echo it back.
async fn answering(
    client: &Connection,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Incoming>,
    ids: &[TerminalId],
) -> anyhow::Result<usize> {
    for id in ids {
        client.input(id, "e").await?;
    }
    let mut answered = std::collections::HashSet::new();
    let deadline = Instant::now() + WAIT;
    while answered.len() < ids.len() && Instant::now() < deadline {
        if let Ok(Some(Incoming::Output(o))) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await
            && o.data.0.contains(&b'e')
        {
            answered.insert(o.terminal_id);
        }
    }
    Ok(answered.len())
}

async fn idle_terminals(args: &Args, docker: &Docker) -> anyhow::Result<Idle> {
    let container = Container::start(docker, &args.image, "idle").await?;
    let server = Server::start(&args.bin)?;
    let (client, mut rx) = server.client().await?;
    // Warm up the server (first exec, allocator) before the baseline.
    let warm = start_terminal(&client, &container.name, &["cat"], false).await?;
    let _ = client.request::<event::CloseTerminal>(&CloseTerminal { terminal_id: warm }).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = server.rss_kib();
    let t0 = Instant::now();
    let (ids, failed, first_failure) = open_cats(&client, &container.name, args.idle).await;
    let open_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    while rx.try_recv().is_ok() {}
    let rss_after_kib = server.rss_kib();
    let answered = answering(&client, &mut rx, &ids).await?;
    // One docker exec CLI process per terminal, as the CLI-based peers spend: measured on 10.
    let mut clis = Vec::new();
    for _ in 0..10 {
        clis.push(cli_on_pty(&container.name)?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cli_rss_kib = clis.iter().map(|(c, _)| proc_rss_kib(c.id())).sum::<u64>() / clis.len() as u64;
    for (mut c, _) in clis {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(server);
    container.remove().await;
    Ok(Idle {
        opened: ids.len(),
        failed,
        first_failure,
        answered,
        open_secs,
        rss_before_kib,
        rss_after_kib,
        cli_rss_kib,
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Flood with a slow consumer

struct Flood {
    rss_peak_kib: u64,
    rss_base_kib: u64,
    read_mib: f64,
    consumed_mib: f64,
    echo: Percentiles,
    echo_samples: usize,
    cpu: (f64, f64),
}

async fn flood(args: &Args, docker: &Docker) -> anyhow::Result<Flood> {
    let container = Container::start(docker, &args.image, "flood").await?;
    let server = Server::start(&args.bin)?;
    let (client, mut rx) = server.client().await?;
    let quiet = start_terminal(&client, &container.name, &["cat"], true).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_base_kib = server.rss_kib();
    let mut floods = Vec::new();
    for _ in 0..args.flood {
        floods.push(start_terminal(&client, &container.name, &["yes", "porthole flood line"], true).await?);
    }
    // The consumer: takes output in arrival order at 1 MiB/s in all and acknowledges what it took.
    let consumed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let consumer = {
        let (client, consumed) = (client.clone(), consumed.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let mut taken = 0u64;
            let mut acked: std::collections::HashMap<TerminalId, u64> = Default::default();
            while let Some(m) = rx.recv().await {
                if let Incoming::Output(o) = m {
                    taken += o.data.0.len() as u64;
                    consumed.store(taken, std::sync::atomic::Ordering::Relaxed);
                    let due = start + Duration::from_secs_f64(taken as f64 / MIB);
                    tokio::time::sleep_until(due.into()).await;
                    let end = o.offset + o.data.0.len() as u64;
                    let a = acked.entry(o.terminal_id.clone()).or_default();
                    *a = (*a).max(end);
                    let _ = client.ack_output(&o.terminal_id, *a).await;
                }
            }
        })
    };
    // Settle, then measure: echo on the quiet terminal every 50 ms, RSS every 100 ms.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let info_total = |list: &Value| -> u64 {
        list.as_array().map_or(0, |a| a.iter().map(|t| t["bytesOut"].as_u64().unwrap_or(0)).sum())
    };
    let http = reqwest::Client::new();
    let terminals = format!("{}/api/v1/terminals", server.base);
    let read_before: Value = http.get(&terminals).bearer_auth(&server.token).send().await?.json().await?;
    let consumed_before = consumed.load(std::sync::atomic::Ordering::Relaxed);
    let cpu = CpuMeter::start(server.pid());
    let mut echo = Vec::new();
    let mut rss_peak_kib = 0;
    let until = Instant::now() + Duration::from_secs(args.flood_secs);
    let mut i = 0usize;
    while Instant::now() < until {
        let key = KEYS[i % KEYS.len()] as char;
        i += 1;
        let next = client.next_output(&quiet);
        let t0 = Instant::now();
        client.input(&quiet, &key.to_string()).await?;
        if let Ok(Ok((at, _))) = tokio::time::timeout(Duration::from_secs(5), next).await {
            echo.push(at.duration_since(t0).as_secs_f64() * 1000.0);
        }
        rss_peak_kib = rss_peak_kib.max(server.rss_kib());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu = cpu.stop();
    let read_after: Value = http.get(&terminals).bearer_auth(&server.token).send().await?.json().await?;
    let consumed_after = consumed.load(std::sync::atomic::Ordering::Relaxed);
    consumer.abort();
    let read_mib = (info_total(&read_after) - info_total(&read_before)) as f64 / MIB;
    let consumed_mib = (consumed_after - consumed_before) as f64 / MIB;
    drop(server);
    container.remove().await;
    Ok(Flood {
        rss_peak_kib,
        rss_base_kib,
        read_mib,
        consumed_mib,
        echo_samples: echo.len(),
        echo: percentiles(echo),
        cpu,
    })
}

// ---------------------------------------------------------------------------------------------------------------

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(0.0, |kib| kib / MIB);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let docker = Command::new("docker")
        .args(["version", "-f", "{{.Server.Version}}"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem:.0} GiB RAM, Linux {kernel}, Docker Engine {docker}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let docker = Docker::connect_with_local_defaults()?;
    let engine = porthole_server::docker::engine::Engine::new(
        porthole_server::docker::engine::Endpoint::from_env().map_err(anyhow::Error::msg)?,
    );
    let mut report = format!("Machine: {}. Porthole {}.\n\n", machine(), env!("CARGO_PKG_VERSION"));

    if args.runs(Part::Stream) {
        report += &stream(&args, &docker, &engine).await?;
    }
    if args.runs(Part::Js) {
        report += &js_report(&args, &docker, &engine).await?;
    }
    if args.runs(Part::Idle) {
        report += &idle_report(&args, &docker).await?;
    }
    if args.runs(Part::Flood) {
        report += &flood_report(&args, &docker).await?;
    }
    if args.runs(Part::Sandbox) {
        report += &sandbox::report(&args, &docker, &engine).await?;
    }
    if args.runs(Part::Recording) {
        report += &recording::report(&args, &docker).await?;
    }
    if args.runs(Part::Cli) {
        report += &cli::report(&args, &docker).await?;
    }
    if args.runs(Part::Cluster) {
        report += &cluster::report(&args, &docker).await?;
    }
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// Throughput and echo on one container and one server.
async fn stream(
    args: &Args,
    docker: &Docker,
    engine: &porthole_server::docker::engine::Engine,
) -> anyhow::Result<String> {
    let mut report = String::new();
    let container = Container::start(docker, &args.image, "main").await?;
    eprintln!("[bench] writing {} MiB of text in the container", args.mib);
    container.write_big_file(args.mib).await?;
    let server = Server::start(&args.bin)?;
    let (mut raw, mut raw4, mut cli, mut web, mut cpus) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let dockerd = dockerd_pid().unwrap_or_default();
    let mut daemon_cpu = [Vec::new(), Vec::new(), Vec::new()];
    let mut bytes = 0;
    for round in 0..args.rounds {
        eprintln!("[bench] throughput round {}", round + 1);
        let (b, s) = raw_cat(engine, &container.name, 4 * 1024).await?;
        raw4.push(b as f64 / MIB / s);
        let (r, d) = cpu_of(&dockerd, raw_cat(engine, &container.name, 64 * 1024)).await;
        let (b, s) = r?;
        raw.push(b as f64 / MIB / s);
        daemon_cpu[0].push(d);
        bytes = b;
        let (r, d) = cpu_of(&dockerd, async { cli_cat(&container.name) }).await;
        let (b, s) = r?;
        cli.push(b as f64 / MIB / s);
        daemon_cpu[1].push(d);
        let (r, d) = cpu_of(&dockerd, porthole_cat(&server, &container.name)).await;
        let (b, s, cpu) = r?;
        daemon_cpu[2].push(d);
        if b != bytes {
            bail!("Porthole delivered {b} bytes, the raw stream {bytes}");
        }
        web.push(b as f64 / MIB / s);
        cpus.push(cpu);
    }
    let (raw_t, raw4_t, cli_t, web_t) = (median(raw), median(raw4), median(cli), median(web));
    let cpu_t = cpus[cpus.len() / 2];
    eprintln!("[bench] echo");
    let raw_e = percentiles(raw_echo(engine, &container.name, args.samples).await?);
    let cli_e = percentiles(cli_echo(&container.name, args.samples)?);
    let (web_e, cpu_e) = porthole_echo(&server, &container.name, args.samples).await?;
    let web_e = percentiles(web_e);
    drop(server);
    container.remove().await;

    report += &format!(
        "| | raw Engine API stream | `docker exec` CLI | Porthole | Porthole / raw | Porthole / CLI | target |\n\
         |---|---|---|---|---|---|---|\n\
         | throughput, `cat` of {} MiB through a tty ({:.1} MiB delivered, first to last byte), MiB/s, median of {}; raw reader with 64 KiB reads | {raw_t:.1} | {cli_t:.1} | {web_t:.1} | {} | {} | ≥ 1.0x raw, ≥ 1.3x CLI |\n\
         | the same, raw reader with 4 KiB reads (the issue's reference reader) | {raw4_t:.1} | | | {} | | ≥ 1.0x |\n",
        args.mib,
        bytes as f64 / MIB,
        args.rounds,
        ratio(web_t, raw_t),
        ratio(web_t, cli_t),
        ratio(web_t, raw4_t),
    );
    type Row = (&'static str, fn(&Percentiles) -> f64, &'static str);
    let rows: [Row; 3] = [("p50", |p| p.p50, "≤ 0.35 ms"), ("p95", |p| p.p95, ""), ("p99", |p| p.p99, "≤ 0.7 ms")];
    for (name, f, target) in rows {
        report += &format!(
            "| keystroke echo {name}, ms ({} samples) | {:.3} | {:.3} | {:.3} | {} | {} | {target} |\n",
            args.samples,
            f(&raw_e),
            f(&cli_e),
            f(&web_e),
            ratio(f(&web_e), f(&raw_e)),
            ratio(f(&web_e), f(&cli_e)),
        );
    }
    let [d_raw, d_cli, d_web] = daemon_cpu.map(median);
    report += &format!(
        "\nCPU, % of one core. Porthole's throughput run: client {:.0}%, server {:.0}%; its echo run: client {:.0}%, \
         server {:.0}%. The Docker daemon during the throughput runs: {d_raw:.0}% (raw), {d_cli:.0}% (CLI), \
         {d_web:.0}% (Porthole).\n",
        cpu_t.0, cpu_t.1, cpu_e.0, cpu_e.1
    );

    Ok(report)
}

async fn idle_report(args: &Args, docker: &Docker) -> anyhow::Result<String> {
    eprintln!("[bench] {} idle terminals", args.idle);
    let idle = idle_terminals(args, docker).await?;
    let per = (idle.rss_after_kib.saturating_sub(idle.rss_before_kib)) as f64 / idle.opened.max(1) as f64;
    Ok(format!(
        "\n| {} idle terminals | Porthole | `docker exec` CLI | target |\n|---|---|---|---|\n\
         | memory per open terminal | {per:.0} KiB (server RSS {:.1} → {:.1} MiB) | {:.1} MiB (one CLI process each) | ≤ 200 KiB |\n\
         | opened | {} of {}{} | | all |\n\
         | answered an echo | {} of {} | | all |\n\
         | time to open them, 32 at a time | {:.1} s | | |\n",
        args.idle,
        idle.rss_before_kib as f64 / 1024.0,
        idle.rss_after_kib as f64 / 1024.0,
        idle.cli_rss_kib as f64 / 1024.0,
        idle.opened,
        args.idle,
        idle.first_failure.as_ref().map_or(String::new(), |e| format!(" ({} failed; first: {e})", idle.failed)),
        idle.answered,
        idle.opened,
        idle.open_secs,
    ))
}

async fn flood_report(args: &Args, docker: &Docker) -> anyhow::Result<String> {
    eprintln!("[bench] flood: {} terminals running yes, consumed at 1 MiB/s", args.flood);
    let f = flood(args, docker).await?;
    Ok(format!(
        "\n| flood: {} terminals running `yes`, client consuming 1 MiB/s, {} s measured | Porthole | target |\n|---|---|---|\n\
         | server RSS, peak | {:.1} MiB (before the flood {:.1} MiB) | < 128 MiB |\n\
         | bytes the server read from the containers / bytes the client consumed | {:.1} MiB / {:.1} MiB | writers paused, not buffered |\n\
         | quiet terminal on the same socket: echo p50 / p95 / p99 ({} samples) | {:.2} / {:.2} / {:.2} ms | p99 < 50 ms |\n\
         | CPU: client / server, % of one core | {:.0}% / {:.0}% | |\n",
        args.flood,
        args.flood_secs,
        f.rss_peak_kib as f64 / 1024.0,
        f.rss_base_kib as f64 / 1024.0,
        f.read_mib,
        f.consumed_mib,
        f.echo_samples,
        f.echo.p50,
        f.echo.p95,
        f.echo.p99,
        f.cpu.0,
        f.cpu.1,
    ))
}

// ---------------------------------------------------------------------------------------------------------------
// The official JavaScript client, and concurrent opens

/// Runs `bench/js/client.mjs MODE ...` against `server` and parses the JSON it prints.
fn js(args: &Args, server: &Server, container: &str, mode: &[&str]) -> anyhow::Result<Value> {
    let out = Command::new("node")
        .arg(&args.js)
        .args(mode)
        .args(["--url", &server.base, "--token", &server.token, "--container", container])
        .stderr(Stdio::piped())
        .output()
        .context("running node (the JavaScript benchmark client)")?;
    if !out.status.success() {
        bail!("the JavaScript client failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).context("the JavaScript client's output")
}

/// `n` `docker exec -it CONTAINER sh -l` CLIs started at once: milliseconds until each showed its first byte
/// (the prompt), and how many did not within 20 s.
fn cli_opens(container: &str, n: usize) -> anyhow::Result<(Vec<f64>, usize)> {
    let t0 = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut children = Vec::new();
    for _ in 0..n {
        let pty = nix::pty::openpty(None, None)?;
        let slave = std::fs::File::from(pty.slave);
        let child = Command::new("docker")
            .args(["exec", "-it", container, "sh", "-l"])
            .stdin(slave.try_clone()?)
            .stdout(slave.try_clone()?)
            .stderr(slave)
            .spawn()?;
        children.push(child);
        let mut master = std::fs::File::from(pty.master);
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            if matches!(master.read(&mut byte), Ok(1)) {
                let _ = tx.send(t0.elapsed().as_secs_f64() * 1000.0);
            }
            // Keep the pty open until the CLI is killed.
            let _ = std::io::copy(&mut master, &mut std::io::sink());
        });
    }
    drop(tx);
    let mut ready = Vec::new();
    let deadline = t0 + Duration::from_secs(20);
    while ready.len() < n {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(ms) => ready.push(ms),
            Err(_) => break,
        }
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let failed = n - ready.len();
    Ok((ready, failed))
}

/// `a` as a multiple of `b`, for the report (`-` without `b`).
fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 { format!("{:.2}x", a / b) } else { "-".into() }
}

fn max_of(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn ms_list(v: &Value, key: &str) -> Vec<f64> {
    v[key].as_array().map_or_else(Vec::new, |a| a.iter().filter_map(Value::as_f64).collect())
}

/// What a real JavaScript client sees: throughput and echo beside the raw stream and the CLI, and concurrent
/// opens beside as many `docker exec` CLIs.
async fn js_report(
    args: &Args,
    docker: &Docker,
    engine: &porthole_server::docker::engine::Engine,
) -> anyhow::Result<String> {
    let container = Container::start(docker, &args.image, "js").await?;
    container.write_big_file(args.mib).await?;
    let server = Server::start(&args.bin)?;
    let (mut raw, mut web, mut msgs, mut cli) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut delivered = 0u64;
    for round in 0..args.rounds {
        eprintln!("[bench] JavaScript client: throughput round {}", round + 1);
        let (b, s) = raw_cat(engine, &container.name, 64 * 1024).await?;
        raw.push(b as f64 / MIB / s);
        let (b, s) = cli_cat(&container.name)?;
        cli.push(b as f64 / MIB / s);
        let t = js(args, &server, &container.name, &["throughput", "--file", "/tmp/big.txt"])?;
        let (bytes, secs) = (t["bytes"].as_f64().unwrap_or(0.0), t["secs"].as_f64().unwrap_or(0.0));
        if bytes as u64 != b {
            bail!("the JavaScript client got {bytes} bytes, the raw stream {b}");
        }
        delivered = b;
        web.push(bytes / MIB / secs.max(1e-9));
        msgs.push(t["messages"].as_f64().unwrap_or(0.0));
    }
    let (raw_t, web_t, cli_t, messages) = (median(raw), median(web), median(cli), median(msgs));
    eprintln!("[bench] JavaScript client: echo");
    let cli_e = percentiles(cli_echo(&container.name, args.samples)?);
    let samples = args.samples.to_string();
    let web_e =
        percentiles(ms_list(&js(args, &server, &container.name, &["echo", "--samples", &samples])?, "samples_ms"));
    drop(server);
    container.remove().await;

    eprintln!("[bench] {} terminals opened at once, and {}", args.opens, args.opens_max);
    let sh = Container::start(docker, &args.sh_image, "opens").await?;
    let (cli_ready, cli_failed) = cli_opens(&sh.name, args.opens)?;
    let server = Server::start(&args.bin)?;
    let count = args.opens.to_string();
    let o = js(args, &server, &sh.name, &["opens", "--count", &count])?;
    let ready = ms_list(&o, "ready_ms");
    let count = args.opens_max.to_string();
    let big = js(args, &server, &sh.name, &["opens", "--count", &count])?;
    let big_ready = ms_list(&big, "ready_ms");
    drop(server);
    sh.remove().await;

    let mut report = format!(
        "\n| with the official JavaScript `socket.io-client` | raw Engine API stream (64 KiB reads) | `docker exec` CLI | Porthole | Porthole / raw | Porthole / CLI | target |\n\
         |---|---|---|---|---|---|---|\n\
         | throughput, `cat` of {} MiB, MiB/s, median of {} ({messages:.0} output messages, {:.1} KiB each) | {raw_t:.1} | {cli_t:.1} | {web_t:.1} | {} | {} | ≥ 0.9x raw |\n",
        args.mib,
        args.rounds,
        delivered as f64 / 1024.0 / messages.max(1.0),
        ratio(web_t, raw_t),
        ratio(web_t, cli_t),
    );
    type Row = (&'static str, fn(&Percentiles) -> f64);
    let rows: [Row; 2] = [("p50", |p| p.p50), ("p99", |p| p.p99)];
    for (name, f) in rows {
        report += &format!(
            "| keystroke echo {name}, ms ({} samples) | | {:.3} | {:.3} | | {} | ≤ CLI |\n",
            args.samples,
            f(&cli_e),
            f(&web_e),
            ratio(f(&web_e), f(&cli_e)),
        );
    }
    report += &format!(
        "| {} default shells opened at once (busybox only), all ready after, ms | | {:.0} ({} failed) | {:.0} ({} failed) | | {} | ≤ CLI |\n\
         | closing those {}, all acknowledged after, ms | | | {:.0} | | | |\n\
         | {} opened at once: answered / failed; median and last ready, ms | | | {} / {}; {:.0} / {:.0} | | | all, none |\n",
        args.opens,
        max_of(&cli_ready),
        cli_failed,
        max_of(&ready),
        o["failed"].as_u64().unwrap_or(0),
        ratio(max_of(&ready), max_of(&cli_ready)),
        args.opens,
        o["close_ms"].as_f64().unwrap_or(0.0),
        args.opens_max,
        big_ready.len(),
        big["failed"].as_u64().unwrap_or(0),
        median(big_ready.clone()),
        max_of(&big_ready),
    );
    if let Some(errors) = big["errors"].as_array().filter(|e| !e.is_empty()) {
        report += &format!("\nFirst failures of the {}: {}\n", args.opens_max, Value::Array(errors.clone()));
    }
    Ok(report)
}
