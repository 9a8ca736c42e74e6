//! The `cluster` part: two nodes in cluster mode (a `redis-server` of the benchmark's own, on loopback), one
//! terminal owned by node a, reached directly on a and through node b's relay, in one run:
//! - echo: one keystroke to `cat` until its echo is back, p50 and p99, direct and relayed;
//! - throughput: `cat` of the text file, first byte to last, seen by a socket on a and by one on b (the
//!   terminal's starter having left, so each run has exactly one viewer).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use app::protocol::{AttachTerminal, ErrorCode, TerminalId, event};
use porthole_client::{Connection, Incoming, Options};

#[path = "../../server/tests/common/nginx.rs"]
mod nginx;

use super::{
    Args, Container, MIB, Server, WAIT, answering, echo_on, median, open_cats, percentiles, ratio, start_terminal,
};

/// A `redis-server` without persistence on a free port, killed when dropped.
struct Redis {
    child: Child,
    url: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Redis {
    fn start() -> anyhow::Result<Redis> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (scripts/testbed.sh installs it)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server does not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Redis { child, url: format!("redis://127.0.0.1:{port}/") })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster node on `redis`.
fn node(args: &Args, id: &str, redis: &Redis, secret: &std::path::Path) -> anyhow::Result<Server> {
    let listen = format!("127.0.0.1:{}", free_port()?);
    let secret = secret.display().to_string();
    let flags = ["--listen", &listen, "--advertise", &listen, "--node-id", id, "--cluster-redis", &redis.url];
    // Behind nginx every client has nginx's address (with --trusted-proxy the forwarded one, here the same
    // loopback address for all): the per-address caps would refuse the benchmark's own crowd.
    let caps = [
        "--max-connections",
        "16384",
        "--max-connections-per-address",
        "4096",
        "--max-unauthenticated-per-address",
        "1024",
    ];
    Server::start_with(&args.bin, &[&flags[..], &["--cluster-secret-file", &secret], &caps[..]].concat())
}

/// Attaches `client` to `id` from `since`, retrying while `id` is not in the directory yet.
async fn attach(client: &Connection, id: &TerminalId, since: Option<u64>) -> anyhow::Result<()> {
    let req = AttachTerminal { terminal_id: id.clone(), since, flow_control: false };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.request::<event::AttachTerminal>(&req).await? {
            Ok(_) => return Ok(()),
            Err(e) if e.code == ErrorCode::UnknownTerminal && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => bail!("attach: {}: {}", e.code, e.message),
        }
    }
}

/// Bytes of `id` received on `rx` until its exit, and the seconds from the first to the last.
async fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Incoming>, id: &TerminalId) -> anyhow::Result<(u64, f64)> {
    let (mut total, mut first, mut last) = (0u64, None, Instant::now());
    while let Some(m) = tokio::time::timeout(WAIT, rx.recv()).await? {
        match m {
            Incoming::Output(o) if &o.terminal_id == id => {
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
                total += o.data.0.len() as u64;
            }
            Incoming::Exit(e) if &e.terminal_id == id => break,
            Incoming::Closed => bail!("the connection closed"),
            _ => {}
        }
    }
    Ok((total, first.map_or(0.0, |t: Instant| last.duration_since(t).as_secs_f64())))
}

/// `cat` of the text file in a terminal a client on `owner` starts and leaves at once, watched from `viewer`:
/// MiB/s and bytes.
async fn cat_seen_from(owner: &Server, viewer: &Server, container: &str) -> anyhow::Result<(f64, u64)> {
    let options = Options {
        timeout: WAIT,
        client_id: Some("bench-starter".into()),
        ..Options::new(owner.base.as_str(), owner.token.as_str())
    };
    let (starter, _) = Connection::connect(&options).await?;
    let id = start_terminal(&starter, container, &["sh", "-c", "sleep 2; cat /tmp/big.txt"], false).await?;
    starter.disconnect().await;
    let (client, mut rx) = viewer.client().await?;
    attach(&client, &id, Some(0)).await?;
    let (bytes, secs) = drain(&mut rx, &id).await?;
    Ok((bytes as f64 / MIB / secs.max(1e-9), bytes))
}

/// `clients` clients through nginx (the configuration of `docs/deploy.md`), each with a terminal on whichever
/// node nginx sent it to; nginx is restarted (SIGTERM, then started again) and every client reconnects through
/// it and re-attaches: the time until each has, and until all have.
async fn resume_after_nginx_restart(args: &Args, nodes: [&Server; 3], container: &str) -> anyhow::Result<String> {
    let n = args.cluster_resume;
    eprintln!("[bench] cluster: {n} clients resuming after nginx restarts");
    let addr =
        |s: &Server| -> anyhow::Result<std::net::SocketAddr> { Ok(s.base.trim_start_matches("http://").parse()?) };
    let mut proxy = nginx::Nginx::start(&[addr(nodes[0])?, addr(nodes[1])?, addr(nodes[2])?]);
    let url = nginx::Nginx::url(proxy.cookie);
    let options = |i: usize| Options {
        timeout: WAIT,
        client_id: Some(format!("bench-resume-{i}")),
        transport: porthole_client::Transport::Native,
        ..Options::new(url.as_str(), nodes[0].token.as_str())
    };
    let mut clients = Vec::with_capacity(n);
    let all: Vec<usize> = (0..n).collect();
    for batch in all.chunks(32) {
        let opened = futures_util::future::join_all(batch.iter().map(|&i| async move {
            let (client, rx) = Connection::connect(&options(i)).await?;
            let id = start_terminal(&client, container, &["cat"], false).await?;
            anyhow::Ok((client, rx, id))
        }))
        .await;
        for o in opened {
            clients.push(o?);
        }
    }
    proxy.stop();
    let mut ids = Vec::with_capacity(n);
    for (client, mut rx, id) in clients {
        // Each sees its connection end.
        while let Some(m) = tokio::time::timeout(WAIT, rx.recv()).await? {
            if m == Incoming::Closed {
                break;
            }
        }
        client.disconnect().await;
        ids.push(id);
    }
    proxy.restart();
    let t0 = Instant::now();
    let resumed = futures_util::future::join_all(ids.iter().enumerate().map(|(i, id)| {
        let options = options(i);
        async move {
            let (client, _rx) = Connection::connect(&options).await?;
            let req = AttachTerminal { terminal_id: id.clone(), since: Some(0), flow_control: false };
            client
                .request::<event::AttachTerminal>(&req)
                .await?
                .map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.message))?;
            let took = t0.elapsed().as_secs_f64() * 1000.0;
            anyhow::Ok((took, client, id.clone()))
        }
    }))
    .await;
    let all = t0.elapsed().as_secs_f64();
    let (mut ms, mut failed, mut open) = (Vec::new(), 0, Vec::new());
    for r in resumed {
        match r {
            Ok((t, client, id)) => {
                ms.push(t);
                open.push((client, id));
            }
            Err(e) => {
                failed += 1;
                eprintln!("[bench] cluster: a client did not resume: {e:#}");
            }
        }
    }
    // Closed, their processes gone, before the nodes stop; 32 at a time, as they were opened.
    for batch in open.chunks(32) {
        let closes = futures_util::future::join_all(batch.iter().map(|(client, id)| async move {
            let answer = close(client, id).await;
            client.close().await;
            answer
        }))
        .await;
        closes.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    }
    let done = ms.len();
    let p = percentiles(ms);
    Ok(format!(
        "{n} clients through nginx (`docs/deploy.md`'s configuration), each with a terminal; nginx restarted \
         (SIGTERM, started again), then every client reconnects and re-attaches at once: {done} resumed, {failed} \
         failed; all within {all:.2} s; per client p50 {:.0} ms, p99 {:.0} ms.\n\n",
        p.p50, p.p99
    ))
}

/// Closes terminal `id` through `client`, waiting until its processes are gone.
async fn close(client: &Connection, id: &TerminalId) -> anyhow::Result<()> {
    let req = app::protocol::CloseTerminal { terminal_id: id.clone() };
    client
        .request::<event::CloseTerminal>(&req)
        .await?
        .map_err(|e| anyhow::anyhow!("close {id}: {}: {}", e.code, e.message))?;
    Ok(())
}

/// Closes every terminal of `ids` through `client`, 32 at a time.
async fn close_all(client: &Connection, ids: &[TerminalId]) -> anyhow::Result<()> {
    for batch in ids.chunks(32) {
        let closes = futures_util::future::join_all(batch.iter().map(|id| close(client, id))).await;
        closes.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    }
    Ok(())
}

pub(crate) async fn report(args: &Args, docker: &bollard::Docker) -> anyhow::Result<String> {
    let redis = Redis::start()?;
    let secret = std::env::temp_dir().join(format!("porthole-bench-cluster-secret-{}", std::process::id()));
    std::fs::write(&secret, "porthole-benchmark-cluster-secret-0123456789abcdef\n")?;
    let c = Container::start(docker, &args.image, "cluster").await?;
    // The container goes whatever happens: a failed run must not leave its thousands of processes behind.
    let measured = measure(args, &redis, &secret, &c).await;
    c.remove().await;
    let _ = std::fs::remove_file(&secret);
    measured
}

async fn measure(args: &Args, redis: &Redis, secret: &std::path::Path, c: &Container) -> anyhow::Result<String> {
    let a = node(args, "a", redis, secret)?;
    let b = node(args, "b", redis, secret)?;
    c.write_big_file(args.mib).await?;

    eprintln!("[bench] cluster: echo");
    let (on_a, _rx_a) = a.client().await?;
    let id = start_terminal(&on_a, &c.name, &["cat"], false).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (direct, _) = echo_on(&a, &on_a, &id, args.samples).await?;
    let (on_b, _rx_b) = b.client().await?;
    attach(&on_b, &id, None).await?;
    // The attach replays the terminal's recent output (the direct run's echoes): let it arrive first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (relayed, _) = echo_on(&b, &on_b, &id, args.samples).await?;
    let (direct, relayed) = (percentiles(direct), percentiles(relayed));

    let (mut dt, mut rt, mut bytes) = (Vec::new(), Vec::new(), [0u64; 2]);
    for round in 0..args.rounds {
        eprintln!("[bench] cluster: throughput, round {}", round + 1);
        let (rate, n) = cat_seen_from(&a, &a, &c.name).await?;
        dt.push(rate);
        bytes[0] = n;
        let (rate, n) = cat_seen_from(&a, &b, &c.name).await?;
        rt.push(rate);
        bytes[1] = n;
    }
    // Idle terminals spread over three nodes, each opened by a socket on its node: RSS per terminal per node,
    // and every one answering a keystroke typed from another node (through its relay).
    eprintln!("[bench] cluster: {} idle terminals over three nodes", args.cluster_idle);
    let third = node(args, "c", redis, secret)?;
    let nodes = [&a, &b, &third];
    let mut spread = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let (client, _rx) = n.client().await?;
        let warm = start_terminal(&client, &c.name, &["cat"], false).await?;
        let _ = client.request::<event::CloseTerminal>(&app::protocol::CloseTerminal { terminal_id: warm }).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = n.rss_kib();
        let share = args.cluster_idle / 3 + usize::from(i < args.cluster_idle % 3);
        let (ids, failed, first) = open_cats(&client, &c.name, share).await;
        if let Some(e) = first {
            eprintln!("[bench] cluster: {failed} of {share} did not open on node {i}: {e}");
        }
        spread.push((client, ids, before));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut rows = String::new();
    // The owners' sockets stay (their terminals end when they leave) until the end.
    for (i, (_owner, ids, before)) in spread.iter().enumerate() {
        let after = nodes[i].rss_kib();
        // From the next node: attach to every one, then type into every one.
        let (from, mut rx) = nodes[(i + 1) % 3].client().await?;
        for id in ids {
            attach(&from, id, None).await?;
        }
        while rx.try_recv().is_ok() {}
        let answered = answering(&from, &mut rx, ids).await?;
        let per = after.saturating_sub(*before) as f64 / ids.len().max(1) as f64;
        rows += &format!(
            "| {} | {} | {:.1} | {:.1} | {per:.1} | {answered} of {} |\n",
            ["a", "b", "c"][i],
            ids.len(),
            *before as f64 / 1024.0,
            after as f64 / 1024.0,
            ids.len()
        );
    }
    // Closed, their processes gone, before the resume part (on a quiet cluster); 32 at a time.
    for (owner, ids, _) in &spread {
        close_all(owner, ids).await?;
    }
    drop(spread);
    let resumed = resume_after_nginx_restart(args, nodes, &c.name).await?;
    drop((a, b, third));
    let (dt, rt) = (median(dt), median(rt));
    Ok(format!(
        "## Two nodes (`--only cluster`)\n\n\
         A terminal owned by node a, reached by a socket on a (direct) and by one on b (relayed: b's relay to a), \
         both nodes and Redis on this machine's loopback; throughput medians of {} rounds.\n\n\
         | | direct | relayed | relayed / direct | target |\n\
         |---|---|---|---|---|\n\
         | keystroke echo p50 to `cat`, ms ({} samples) | {:.3} | {:.3} | {} | |\n\
         | keystroke echo p99, ms | {:.3} | {:.3} | {} | ≤ 2x |\n\
         | throughput, `cat` of {} MiB of text ({:.1} / {:.1} MiB read), MiB/s | {dt:.1} | {rt:.1} | {} | ≥ 0.8x |\n\n\
         {} idle terminals running `cat` spread over three nodes, each opened on its node; then a socket on the \
         next node attaches to each and types a key into each (through its relay to the owner):\n\n\
         | node | terminals | RSS before, MiB | RSS after, MiB | KiB per terminal | answered through another node |\n\
         |---|---|---|---|---|---|\n{rows}\n{resumed}",
        args.rounds,
        args.samples,
        direct.p50,
        relayed.p50,
        ratio(relayed.p50, direct.p50),
        direct.p99,
        relayed.p99,
        ratio(relayed.p99, direct.p99),
        args.mib,
        bytes[0] as f64 / MIB,
        bytes[1] as f64 / MIB,
        ratio(rt, dt),
        args.cluster_idle,
    ))
}
