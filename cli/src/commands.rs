//! The commands that are one or two REST requests: `login`, `ls`, `sandbox rm`, `rec ls|search|play`.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use app::protocol::{self, ContainerSummary, Recording, TerminalInfo, WhoAmI, rest};
use futures_util::StreamExt;
use serde_json::Value;

use crate::config::{self, ConfigFile, Server};
use crate::{Failure, ServerArgs};

/// Longest token read from stdin (the server refuses longer ones anyway).
const MAX_TOKEN_INPUT: u64 = 64 * 1024;
/// Longest line of a recording the player takes (a server's event lines are at most a few hundred KiB).
const MAX_CAST_LINE: usize = 16 * 1024 * 1024;

/// `login URL`: reads the token (a prompt without echo on a tty), checks it with the server, saves it.
pub async fn login(args: &ServerArgs, url: &str) -> Result<u8, Failure> {
    let token = match &args.token {
        Some(t) => t.clone(),
        None if std::io::stdin().is_terminal() => rpassword::prompt_password(format!("Token for {url}: "))
            .map_err(|e| Failure::refused("token", format!("cannot read the token: {e}")))?,
        None => {
            let mut t = String::new();
            std::io::stdin()
                .take(MAX_TOKEN_INPUT)
                .read_to_string(&mut t)
                .map_err(|e| Failure::refused("token", format!("cannot read the token from stdin: {e}")))?;
            t
        }
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(Failure::refused("unauthenticated", "no token given on stdin"));
    }
    let server = Server::new(url, token.clone(), args.ca_file.as_deref())?;
    let who: WhoAmI = server.get(rest::WHOAMI, &[]).await?;
    let path = config::config_path()?;
    let ca_file = args.ca_file.as_ref().map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()));
    config::write_config(&path, &ConfigFile { url: Some(server.url.clone()), token: Some(token), ca_file })?;
    println!("Signed in to {} as {}; saved to {}", server.url, who.subject, path.display());
    Ok(0)
}

/// `ls`: containers (sandboxes with their profiles) and terminals.
pub async fn ls(server: &Server, json: bool) -> Result<u8, Failure> {
    let (containers, terminals) =
        tokio::try_join!(server.get::<Value>(rest::CONTAINERS, &[]), server.get::<Value>(rest::TERMINALS, &[]))?;
    if json {
        let all = serde_json::json!({ "containers": containers, "terminals": terminals });
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
        return Ok(0);
    }
    let containers: Vec<ContainerSummary> = parse(containers)?;
    let terminals: Vec<TerminalInfo> = parse(terminals)?;
    // With more than one Docker host, a container is named as `exec` takes it there: HOST/NAME.
    let several = ContainerSummary::several_hosts(&containers);
    let named = |host: &str, name: &str| if several { format!("{host}/{name}") } else { name.to_string() };
    let mut rows = vec![["CONTAINER".to_string(), "STATE".into(), "IMAGE".into(), "SANDBOX".into()]];
    for c in &containers {
        let sandbox = c.sandbox.as_ref().map_or(String::new(), |s| format!("profile {}, owner {}", s.profile, s.owner));
        rows.push([named(&c.host, &c.name), c.state.clone(), c.image.clone(), sandbox]);
    }
    print_table(&rows);
    println!();
    let mut rows = vec![[
        "TERMINAL".to_string(),
        "CONTAINER".into(),
        "COMMAND".into(),
        "STATE".into(),
        "ATTACHED".into(),
        "USER".into(),
    ]];
    for t in &terminals {
        let state = match (&t.state, &t.exit, t.grace_left_ms) {
            (_, Some(exit), _) => {
                format!("exited ({})", exit.exit_code.map_or(exit.reason.to_string(), |c| c.to_string()))
            }
            (protocol::TerminalState::Detached, _, Some(ms)) => format!("detached ({} s left)", ms / 1000),
            (s, _, _) => format!("{s:?}").to_lowercase(),
        };
        rows.push([
            t.terminal_id.0.clone(),
            named(&t.host, &t.container_name),
            t.command.join(" "),
            state,
            t.attached.to_string(),
            t.user.clone(),
        ]);
    }
    print_table(&rows);
    Ok(0)
}

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Failure> {
    serde_json::from_value(v).map_err(|e| Failure::refused("protocol", format!("unexpected answer: {e}")))
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    for r in rows {
        let line: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
}

/// `sandbox rm`.
pub async fn sandbox_rm(server: &Server, sandbox: &str) -> Result<u8, Failure> {
    let path = rest::SANDBOX.replace("{id}", sandbox);
    server.send(server.http()?.delete(format!("{}{path}", server.url))).await?;
    println!("removed sandbox {sandbox}");
    Ok(0)
}

/// `rec ls` and `rec search`.
pub async fn rec_list(server: &Server, query: Option<String>, limit: u32, json: bool) -> Result<u8, Failure> {
    let mut params = vec![("limit", limit.to_string())];
    if let Some(q) = query {
        params.push(("q", q));
    }
    let list: Value = server.get(rest::RECORDINGS, &params).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
        return Ok(0);
    }
    let recordings: Vec<Recording> = parse(list)?;
    let mut rows = vec![[
        "RECORDING".to_string(),
        "USER".into(),
        "CONTAINER".into(),
        "STARTED".into(),
        "LENGTH".into(),
        "STATE".into(),
        "COMMAND".into(),
    ]];
    for r in &recordings {
        rows.push([
            r.id.clone(),
            r.user.clone(),
            r.container.clone(),
            format!("{} s ago", crate::config::now_ms().saturating_sub(r.started_at) / 1000),
            format!("{:.1} s", r.duration_ms as f64 / 1000.0),
            format!("{:?}", r.state).to_lowercase(),
            r.command.clone(),
        ]);
    }
    print_table(&rows);
    for r in recordings.iter().filter(|r| r.hits.as_ref().is_some_and(|h| !h.is_empty())) {
        println!("\n{}:", r.id);
        for hit in r.hits.iter().flatten() {
            println!("  {:>8.1} s  {}", hit.time_ms as f64 / 1000.0, hit.line);
        }
    }
    Ok(0)
}

/// `rec play`: the recording's output at its pace (`speed` times faster, pauses cut to `idle_limit`).
pub async fn rec_play(server: &Server, id: &str, speed: f64, idle_limit: Option<f64>) -> Result<u8, Failure> {
    if !(speed.is_finite() && speed > 0.0) {
        return Err(Failure::refused("invalid_argument", "--speed must be a positive number"));
    }
    if idle_limit.is_some_and(|l| !(l.is_finite() && l > 0.0)) {
        return Err(Failure::refused("invalid_argument", "--idle-time-limit must be a positive number of seconds"));
    }
    let path = rest::RECORDING.replace("{file}", &format!("{id}.cast"));
    let res = server.send(server.http()?.get(format!("{}{path}", server.url)).timeout(Duration::MAX / 4)).await?;
    let mut body = res.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut player = Player { speed, idle_limit, last_us: 0, header_seen: false, out: std::io::stdout() };
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| server.unreachable(&e))?;
        pending.extend_from_slice(&chunk);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            player.line(&line[..line.len() - 1]).await?;
        }
        if pending.len() > MAX_CAST_LINE {
            return Err(Failure::refused("invalid_recording", "a line of the recording is too long"));
        }
    }
    if !pending.is_empty() {
        player.line(&pending).await?;
    }
    Ok(0)
}

struct Player {
    speed: f64,
    idle_limit: Option<f64>,
    last_us: u64,
    header_seen: bool,
    out: std::io::Stdout,
}

impl Player {
    async fn line(&mut self, line: &[u8]) -> Result<(), Failure> {
        let text = String::from_utf8_lossy(line);
        if !self.header_seen {
            self.header_seen = true;
            if serde_json::from_str::<app::cast::Header>(&text).is_err() {
                return Err(Failure::refused(
                    "invalid_recording",
                    "the recording does not start with an asciicast v2 header",
                ));
            }
            return Ok(());
        }
        let Some(event) = app::cast::parse_event(&text) else { return Ok(()) };
        // Only output is shown: pauses are measured from one output to the next.
        if event.code != "o" {
            return Ok(());
        }
        let mut pause = event.at_us.saturating_sub(self.last_us) as f64 / 1e6;
        self.last_us = event.at_us.max(self.last_us);
        if let Some(limit) = self.idle_limit {
            pause = pause.min(limit);
        }
        let pause = pause / self.speed;
        if pause > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(pause)).await;
        }
        let mut out = self.out.lock();
        out.write_all(&event.data)
            .and_then(|()| out.flush())
            .map_err(|e| Failure { code: 141, message: format!("cannot write: {e}") })
    }
}
