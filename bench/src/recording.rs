//! The `recording` part: throughput with recording `off` and `all` in one run (the same container, file and
//! client, rounds alternating), the disk bytes written per MiB of output, and the time to search many recordings
//! (each about 1 MiB of varied text output) through `GET /api/v1/recordings?q=`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use app::protocol::{Recording, RecordingState};
use porthole_client::Incoming;

use super::{Args, Container, MIB, Server, WAIT, median, percentiles, porthole_cat, ratio, start_terminal};

/// Terminals making recordings for the search at once.
const MAKE_AT_ONCE: usize = 16;
/// Searches timed per query.
const SEARCHES: usize = 50;

fn rest(server: &Server) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", server.token).parse()?);
    Ok(reqwest::Client::builder().default_headers(headers).build()?)
}

async fn recordings(http: &reqwest::Client, server: &Server, query: &str) -> anyhow::Result<Vec<Recording>> {
    let res = http.get(format!("{}/api/v1/recordings?{query}", server.base)).send().await?;
    if !res.status().is_success() {
        bail!("GET recordings?{query}: {}", res.status());
    }
    Ok(res.json().await?)
}

/// Waits until no recording is being written (transcripts indexed), so the next round does not share the CPU
/// with the last one's indexing.
async fn settle(http: &reqwest::Client, server: &Server) -> anyhow::Result<Vec<Recording>> {
    let deadline = Instant::now() + WAIT * 5;
    loop {
        let list = recordings(http, server, "limit=500").await?;
        if list.iter().all(|r| r.state != RecordingState::Recording) {
            return Ok(list);
        }
        if Instant::now() > deadline {
            bail!("recordings were still being written after {:?}", WAIT * 5);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the server is idle (under 3% of a core over 300 ms): a recording's transcript is made after its
/// end is indexed, and must not share the CPU with the next measurement.
async fn quiet(server: &Server) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT * 5;
    loop {
        let meter = super::CpuMeter::start(server.pid());
        tokio::time::sleep(Duration::from_millis(300)).await;
        if meter.stop().1 < 3.0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the server stayed busy for {:?}", WAIT * 5);
        }
    }
}

fn temp(what: &str) -> String {
    std::env::temp_dir().join(format!("porthole-bench-{what}-{}", std::process::id())).display().to_string()
}

pub async fn report(args: &Args, docker: &bollard::Docker) -> anyhow::Result<String> {
    let container = Container::start(docker, &args.image, "rec").await?;
    eprintln!("[bench] recording: writing {} MiB of text in the container", args.mib);
    container.write_big_file(args.mib).await?;
    let (dir, state) = (temp("recordings"), temp("rec-state"));
    let off = Server::start(&args.bin)?;
    let on = Server::start_with(&args.bin, &["--record", "all", "--recordings-dir", &dir, "--state-dir", &state])?;
    let http = rest(&on)?;
    let (mut plain, mut recorded, mut cpu_off, mut cpu_on) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0;
    for round in 0..args.rounds {
        eprintln!("[bench] recording: throughput round {}", round + 1);
        let (b, s, c) = porthole_cat(&off, &container.name).await?;
        plain.push(b as f64 / MIB / s);
        cpu_off.push(c.1);
        let (b2, s2, c2) = porthole_cat(&on, &container.name).await?;
        if b2 != b {
            bail!("with recording on Porthole delivered {b2} bytes, without {b}");
        }
        recorded.push(b2 as f64 / MIB / s2);
        cpu_on.push(c2.1);
        bytes = b;
        settle(&http, &on).await?;
        quiet(&on).await?;
    }
    let list = settle(&http, &on).await?;
    let files: Vec<&Recording> = list.iter().filter(|r| r.bytes == bytes).collect();
    let file_bytes = files.iter().map(|r| r.file_bytes).sum::<u64>() as f64 / files.len().max(1) as f64;
    let per_mib = file_bytes / (bytes as f64 / MIB);
    let (plain_t, rec_t) = (median(plain), median(recorded));
    drop(off);

    eprintln!("[bench] recording: making {} recordings of about {} MiB each", args.search_recordings, args.search_mib);
    let made = Instant::now();
    let lines = args.search_mib * 1024 * 1024 / 68;
    let (client, mut rx) = on.client().await?;
    let mut left = args.search_recordings;
    let mut i = 0usize;
    while left > 0 {
        let batch = left.min(MAKE_AT_ONCE);
        let mut open = std::collections::HashSet::new();
        for _ in 0..batch {
            let script = format!(
                "awk 'BEGIN {{ for (n = 1; n <= {lines}; n++) printf \"row %06d of recording {i}: plain words in a terminal for searching\\n\", n }}'; echo needle-{i}-found"
            );
            open.insert(start_terminal(&client, &container.name, &["sh", "-c", &script], false).await?);
            i += 1;
        }
        while !open.is_empty() {
            if let Incoming::Exit(e) = tokio::time::timeout(WAIT, rx.recv()).await?.context("the client stopped")? {
                open.remove(&e.terminal_id);
            }
        }
        left -= batch;
    }
    settle(&http, &on).await?;
    quiet(&on).await?;
    let made_secs = made.elapsed().as_secs_f64();
    let searched = args.search_recordings;
    let timed = |q: String| {
        let (http, on) = (&http, &on);
        async move {
            let mut ms = Vec::new();
            let mut hits = 0;
            for _ in 0..SEARCHES {
                let t0 = Instant::now();
                let found = recordings(http, on, &format!("q={q}")).await?;
                ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                hits = found.len();
            }
            anyhow::Ok((percentiles(ms), hits))
        }
    };
    let needle = args.search_recordings / 2;
    let (rare, rare_hits) = timed(format!("needle-{needle}-found")).await?;
    let (two, two_hits) = timed(format!("row%20000042%20recording%20{needle}")).await?;
    let (common, common_hits) = timed("plain%20words".to_string()).await?;
    let index = std::fs::metadata(std::path::Path::new(&state).join("recordings.db")).map(|m| m.len()).unwrap_or(0);
    drop(on);
    container.remove().await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&state);

    Ok(format!(
        "### Recording (issue 12)\n\n\
         | `cat` of {} MiB through a tty ({:.1} MiB delivered), MiB/s, median of {} | recording off | recording all | all / off | target |\n\
         |---|---|---|---|---|\n\
         | throughput | {plain_t:.1} | {rec_t:.1} | {} | ≥ 0.95x |\n\
         | server CPU, % of one core (median) | {:.0}% | {:.0}% | | |\n\n\
         Disk: {per_mib:.0} bytes of `.cast` file per MiB of output ({:.2}x).\n\n\
         Search over {searched} recordings of about {} MiB each (made in {made_secs:.0} s; index {:.0} MiB), {SEARCHES} \
         searches per query, ms:\n\n\
         | query | recordings found | p50 | p95 | target |\n\
         |---|---|---|---|---|\n\
         | one rare word (`needle-{needle}-found`) | {rare_hits} | {:.1} | {:.1} | p50 ≤ 50 |\n\
         | four words on one line of one recording (`row 000042 recording N`) | {two_hits} | {:.1} | {:.1} | |\n\
         | two words on every line of every recording (`plain words`, first page of 50) | {common_hits} | {:.1} | {:.1} | |\n\n",
        args.mib,
        bytes as f64 / MIB,
        args.rounds,
        ratio(rec_t, plain_t),
        median(cpu_off),
        median(cpu_on),
        per_mib / MIB,
        args.search_mib,
        index as f64 / MIB,
        rare.p50,
        rare.p95,
        two.p50,
        two.p95,
        common.p50,
        common.p95,
    ))
}
