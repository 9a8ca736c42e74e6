//! The `sandbox` part: request to first prompt byte for a cold create (Docker create, start, exec) and a warm
//! claim from the pool, beside `docker run -it` of the same image with the same limits; then many sandboxes
//! created at once (time, server RSS) and nothing left after their removal.

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use app::protocol::{CreateSandbox, LABEL_INSTANCE, LABEL_POOL, LABEL_PROFILE, Sandbox, event};
use bollard::Docker;
use bollard::query_parameters::ListContainersOptionsBuilder;
use porthole_client::Incoming;

use super::{Args, Percentiles, Server, WAIT, percentiles, ratio};

/// The limits of both profiles and of the `docker run` baseline.
const LIMITS: &str = r#"memory = "256m"
cpus = 1.0
pids = 256
tmpfs = { "/tmp" = "64m", "/home/sandbox" = "64m" }"#;

/// Containers labelled with `label=value` pairs, running or not.
async fn labelled(docker: &Docker, labels: &[String]) -> anyhow::Result<Vec<String>> {
    let filters = std::collections::HashMap::from([("label", labels.iter().map(String::as_str).collect::<Vec<_>>())]);
    let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    Ok(docker.list_containers(Some(options)).await?.into_iter().filter_map(|c| c.id).collect())
}

/// Waits until two warm containers (`labels`) run, and a moment more for the refill's own Docker calls to settle,
/// as on a server between requests.
async fn wait_for_pool(docker: &Docker, labels: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while labelled(docker, labels).await?.len() < 2 {
        if Instant::now() > deadline {
            bail!("the warm pool did not fill");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// Request to the terminal's first output byte, through `create-sandbox`; the sandbox is removed afterwards.
async fn to_prompt(server: &Server, profile: &str) -> anyhow::Result<(f64, Sandbox)> {
    let (client, mut rx) = server.client().await?;
    let req = CreateSandbox { profile: profile.into(), cols: Some(200), rows: Some(50), flow_control: false };
    let t0 = Instant::now();
    let created = client
        .request::<event::CreateSandbox>(&req)
        .await?
        .map_err(|e| anyhow::anyhow!("create-sandbox {profile}: {}: {}", e.code, e.message))?;
    let first = tokio::time::timeout(WAIT, async {
        while let Some(m) = rx.recv().await {
            if let Incoming::Output(o) = m
                && o.terminal_id == created.terminal.terminal_id
                && !o.data.0.is_empty()
            {
                return Ok(t0.elapsed());
            }
        }
        bail!("the connection ended before the prompt")
    })
    .await
    .context("no prompt")??;
    if let Ok(c) = std::sync::Arc::try_unwrap(client) {
        c.disconnect().await;
    }
    Ok((first.as_secs_f64() * 1000.0, created.sandbox))
}

async fn remove(http: &reqwest::Client, server: &Server, id: &str) -> anyhow::Result<()> {
    let res = http.delete(format!("{}/api/v1/sandboxes/{id}", server.base)).send().await?;
    if res.status() != 204 {
        bail!("removing {id}: {}", res.status());
    }
    Ok(())
}

/// `docker run -it --rm` of the image with the same limits: spawn to the first byte on its tty.
fn docker_run(image: &str) -> anyhow::Result<f64> {
    let pty = nix::pty::openpty(None, None)?;
    let slave = std::fs::File::from(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let t0 = Instant::now();
    let mut child = Command::new("docker")
        .args(["run", "-it", "--rm", "--init", "--network", "none", "--memory", "256m", "--memory-swap", "256m"])
        .args(["--cpus", "1", "--pids-limit", "256", "--read-only", "--tmpfs", "/tmp:size=64m,mode=1777"])
        .args(["--tmpfs", "/home/sandbox:size=64m,mode=1777", "--user", "65534:65534", "--cap-drop", "ALL"])
        .args(["--security-opt", "no-new-privileges:true", "-w", "/home/sandbox", "-e", "HOME=/home/sandbox"])
        .args(["--label", "porthole.bench=1", image, "bash", "-l"])
        .stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave)
        .spawn()?;
    let mut buf = [0u8; 4096];
    let n = master.read(&mut buf)?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    if n == 0 {
        bail!("docker run printed nothing");
    }
    master.write_all(b"exit\n")?;
    let _ = child.wait();
    Ok(ms)
}

/// The raw Engine API doing what a cold create does: create, start, exec the login shell, to its first byte.
async fn raw_cold(engine: &porthole_server::docker::engine::Engine, image: &str) -> anyhow::Result<f64> {
    use porthole_server::docker::{ContainerRuntime, ContainerSpec, ExecSpec};
    use tokio::io::AsyncReadExt;
    let spec = ContainerSpec {
        image: image.into(),
        labels: [("porthole.bench".to_string(), "1".to_string())].into(),
        user: Some("65534:65534".into()),
        memory_bytes: Some(256 << 20),
        cpus: Some(1.0),
        pids: Some(256),
        tmpfs: [("/tmp", "size=64m,mode=1777"), ("/home/sandbox", "size=64m,mode=1777")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        network: "none".into(),
        read_only_rootfs: true,
        env: vec!["HOME=/home/sandbox".into()],
        working_dir: Some("/home/sandbox".into()),
        init: true,
        ..Default::default()
    };
    let t0 = Instant::now();
    let id = engine.create_container(&spec).await?;
    engine.start_container(&id).await?;
    let exec = ExecSpec { cmd: vec!["bash".into(), "-l".into()], env: vec![], user: None, tty: true };
    let mut stream = engine.start_exec(&id, &exec).await?;
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(WAIT, stream.output.read(&mut buf)).await??;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    drop(stream);
    engine.remove_container(&id).await?;
    if n == 0 {
        bail!("the raw exec printed nothing");
    }
    Ok(ms)
}

fn row(what: &str, p: Percentiles, base: f64) -> String {
    format!("| {what} | {:.1} | {:.1} | {} |\n", p.p50, p.p95, ratio(p.p50, base))
}

pub async fn report(
    args: &Args,
    docker: &Docker,
    engine: &porthole_server::docker::engine::Engine,
) -> anyhow::Result<String> {
    let dir = std::env::temp_dir().join(format!("porthole-bench-sandbox-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let profiles = dir.join("profiles.toml");
    std::fs::write(
        &profiles,
        format!(
            "[profile.cold]\nimage = {image:?}\n{LIMITS}\n\n[profile.warm]\nimage = {image:?}\n{LIMITS}\npool = 2\n",
            image = args.image
        ),
    )?;
    let (profiles, state) = (profiles.display().to_string(), dir.join("state").display().to_string());
    let server = Server::start_with(
        &args.bin,
        &[
            "--sandboxes",
            &profiles,
            "--state-dir",
            &state,
            "--max-sandboxes-per-user",
            "1000",
            "--max-sandbox-creates-per-sec",
            "1000",
        ],
    )?;
    let http = reqwest::Client::builder()
        .default_headers(reqwest::header::HeaderMap::from_iter([(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", server.token).parse()?,
        )]))
        .build()?;
    let n = args.sandbox_samples;
    // The pool fills at start; cold samples taken meanwhile would measure the refill's load too.
    wait_for_pool(docker, &[format!("{LABEL_PROFILE}=warm"), format!("{LABEL_POOL}=1")]).await?;

    // Cold: a profile without a pool.
    let mut cold = Vec::new();
    let mut instance = String::new();
    for _ in 0..n {
        let (ms, s) = to_prompt(&server, "cold").await?;
        if instance.is_empty() {
            instance = docker
                .inspect_container(&s.id, None)
                .await?
                .config
                .and_then(|c| c.labels)
                .and_then(|l| l.get(LABEL_INSTANCE).cloned())
                .unwrap_or_default();
        }
        cold.push(ms);
        remove(&http, &server, &s.id).await?;
    }
    // Warm: a full pool before each claim (it refills in the background after each).
    let pool = [format!("{LABEL_INSTANCE}={instance}"), format!("{LABEL_PROFILE}=warm"), format!("{LABEL_POOL}=1")];
    let mut warm = Vec::new();
    for _ in 0..n {
        wait_for_pool(docker, &pool).await?;
        let (ms, s) = to_prompt(&server, "warm").await?;
        warm.push(ms);
        remove(&http, &server, &s.id).await?;
    }
    let (mut run, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..n {
        run.push(docker_run(&args.image)?);
        raw.push(raw_cold(engine, &args.image).await?);
    }
    let (cold, warm, run, raw) = (percentiles(cold), percentiles(warm), percentiles(run), percentiles(raw));

    // Many at once.
    let burst = args.sandbox_burst;
    let rss_before = server.rss_kib();
    let t0 = Instant::now();
    let creates = futures_util::future::join_all((0..burst).map(|_| {
        let http = http.clone();
        let url = format!("{}/api/v1/sandboxes", server.base);
        async move {
            let res = http.post(url).json(&serde_json::json!({"profile": "cold"})).send().await?;
            if res.status() != 201 {
                bail!("create: {} {}", res.status(), res.text().await.unwrap_or_default());
            }
            Ok::<Sandbox, anyhow::Error>(res.json().await?)
        }
    }))
    .await;
    let burst_secs = t0.elapsed().as_secs_f64();
    let rss_peak = server.rss_kib();
    let made: Vec<Sandbox> = creates.into_iter().collect::<Result<_, _>>()?;
    let t0 = Instant::now();
    let removals = futures_util::future::join_all(made.iter().map(|s| remove(&http, &server, &s.id))).await;
    let removal_secs = t0.elapsed().as_secs_f64();
    removals.into_iter().collect::<Result<Vec<_>, _>>()?;
    drop(server);
    // The pool goes with a clean shutdown; a kill leaves it for the next start. Either way: clean it here.
    let ours = labelled(docker, &[format!("{LABEL_INSTANCE}={instance}"), format!("{LABEL_POOL}=0")]).await?;
    for id in labelled(docker, &[format!("{LABEL_INSTANCE}={instance}"), format!("{LABEL_POOL}=1")]).await? {
        let _ = docker
            .remove_container(
                &id,
                Some(bollard::query_parameters::RemoveContainerOptions { force: true, ..Default::default() }),
            )
            .await;
    }
    let _ = std::fs::remove_dir_all(&dir);

    let mut out = String::from("## Sandboxes\n\n");
    out += &format!(
        "Request to the first prompt byte, ms, {n} samples each; the image {} with 256m, 1 CPU, 256 pids, a \
         read-only root and two tmpfs mounts; `docker run -it` with the same limits is the CLI baseline.\n\n",
        args.image
    );
    out +=
        &format!("Porthole cold vs the raw Engine API doing the same calls: {} at p50.\n\n", ratio(cold.p50, raw.p50));
    out += "| | p50 | p95 | p50 vs docker run |\n|---|---|---|---|\n";
    out += &row("Porthole, warm claim (`create-sandbox`, pool of 2)", warm, run.p50);
    out += &row("Porthole, cold (create + start + exec)", cold, run.p50);
    out += &row("raw Engine API, the same create + start + exec", raw, run.p50);
    out += &row("`docker run -it --rm`", run, run.p50);
    out += &format!(
        "\n{burst} sandboxes created at once over REST: {burst_secs:.1} s; server RSS {:.1} MiB before, {:.1} MiB \
         right after; removed at once in {removal_secs:.1} s; sandbox containers left after removal: {}.\n\n",
        rss_before as f64 / 1024.0,
        rss_peak as f64 / 1024.0,
        ours.len()
    );
    Ok(out)
}
