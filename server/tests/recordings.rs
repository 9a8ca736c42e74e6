//! Recordings on the real engine: asciicast v2 files checked with the reference parser (PyPI asciinema 2.4.0),
//! byte-exact output, markers, timing, durability across `kill -9`, retention, search, access control, and
//! unusable directories or a full disk (the terminal goes on, the recording is marked failed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use app::protocol::{Recording, RecordingState, StartTerminal, TerminalId};
use common::jwt::*;
use common::process::ServerProcess;
use common::*;
use porthole_server::RunningServer;
use porthole_server::config::RecordFlag;
use serde_json::Value;
use sha2::Digest;

/// What the reference parser read from a file (see `scripts/castcheck.py`).
fn castcheck(path: &Path) -> Value {
    let python = std::env::var("PORTHOLE_ASCIINEMA_PYTHON").expect(
        "PORTHOLE_ASCIINEMA_PYTHON must name the python of a venv with asciinema 2.4.0 (scripts/test.sh sets it up)",
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/castcheck.py");
    let out = std::process::Command::new(python).arg(script).arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "the reference parser refused {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn markers(check: &Value) -> Vec<String> {
    check["markers"].as_array().unwrap().iter().map(|m| m[1].as_str().unwrap().to_string()).collect()
}

/// A local-token server recording at `level` into its own directory.
async fn recording_server(
    level: RecordFlag,
    tweak: impl FnOnce(&mut porthole_server::Config),
) -> (RunningServer, PathBuf) {
    let mut c = test_config();
    c.record = level;
    let dir = tempdir("recordings");
    c.recordings_dir = Some(dir.clone());
    tweak(&mut c);
    (start_server(c).await, dir)
}

async fn recording(url: &str, id: &TerminalId) -> Recording {
    let res = get(format!("{url}/api/v1/recordings/{}", id.0)).await;
    assert_eq!(res.status(), 200, "recording {id}");
    res.json().await.unwrap()
}

/// Waits until the recording is closed (finished or failed) and returns it.
async fn closed(url: &str, id: &TerminalId) -> Recording {
    closed_as(&http(), url, id).await
}

/// [`closed`], asking with `client`.
async fn closed_as(client: &reqwest::Client, url: &str, id: &TerminalId) -> Recording {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let res = client.get(format!("{url}/api/v1/recordings/{}", id.0)).send().await.unwrap();
        assert_eq!(res.status(), 200, "recording {id}");
        let r: Recording = res.json().await.unwrap();
        if r.state != RecordingState::Recording {
            return r;
        }
        assert!(Instant::now() < deadline, "recording {id} never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cast_file(dir: &Path, id: &TerminalId) -> PathBuf {
    dir.join(format!("{}.cast", id.0))
}

fn command(container: &str, script: &str) -> StartTerminal {
    StartTerminal {
        container_id: container.into(),
        cols: Some(100),
        rows: Some(30),
        command: Some(vec!["bash".into(), "-c".into(), script.into()]),
        flow_control: false,
        tty: true,
    }
}

#[tokio::test]
async fn output_is_byte_exact_and_every_file_parses_with_the_reference_parser() {
    let c = TestContainer::start("rec-exact", &bash_image()).await;
    let (server, dir) = recording_server(RecordFlag::Output, |_| {}).await;
    let url = base_url(&server);
    let client = TestClient::connect(&server).await;
    // 64 MiB of text, then a euro sign split across two writes (two reads).
    let script = "head -c 50331648 /dev/urandom | base64 -w 100; printf 'A\\342\\202'; sleep 0.5; printf '\\254B\\n'";
    let t = client.start(command(&c.name, script)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let exit = loop {
        if let Some(e) = client.exit_of(&t.terminal_id) {
            break e;
        }
        assert!(Instant::now() < deadline, "the 64 MiB cat did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(exit.exit_code, Some(0));
    let live = client.bytes(&t.terminal_id);
    assert!(live.len() > 64 * 1024 * 1024, "{} bytes", live.len());
    let r = closed(&url, &t.terminal_id).await;
    assert_eq!(
        (r.state, r.bytes, r.exit_code, r.missed_bytes),
        (RecordingState::Finished, live.len() as u64, Some(0), 0)
    );
    let file = cast_file(&dir, &t.terminal_id);
    let check = castcheck(&file);
    assert_eq!(check["output_len"].as_u64(), Some(live.len() as u64));
    assert_eq!(check["output_sha256"].as_str().unwrap(), hex(&sha2::Sha256::digest(&live)));
    assert_eq!(check["decreasing"].as_u64(), Some(0));
    let h = &check["header"];
    assert_eq!((h["version"].as_u64(), h["width"].as_u64(), h["height"].as_u64()), (Some(2), Some(100), Some(30)));
    assert_eq!(h["title"].as_str().unwrap(), format!("local@{}", c.name));
    assert_eq!(h["env"]["TERM"], "xterm-256color");
    assert_eq!(h["env"]["SHELL"], "bash");
    assert_eq!(shell_words::split(h["command"].as_str().unwrap()).unwrap(), ["bash", "-c", script]);
    assert!(h["timestamp"].as_u64().unwrap() * 1000 <= r.started_at);
    // The split character is one character in the file, never U+FFFD; the binary bytes are escapes.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("A€B") || text.contains("€B"), "the euro sign was split");
    assert!(!text.contains('\u{FFFD}') && !text.contains("\\udc"));
    assert_eq!(markers(&check).last().unwrap(), "exit 0 exited");

    // Bytes that are not UTF-8 at all, through a tty without output processing, with nobody attached (the
    // test client cannot take arbitrary binary): the file gives back exactly what the container wrote.
    let me = uuid::Uuid::new_v4().simple().to_string();
    let away = TestClient::connect_v2(&url, &me).await;
    let script = "sleep 1; stty -opost; head -c 65536 /dev/urandom > /tmp/bin.raw; cat /tmp/bin.raw";
    let t = away.start(command(&c.name, script)).await.unwrap();
    away.disconnect().await;
    let r = closed(&url, &t.terminal_id).await;
    assert_eq!((r.state, r.bytes), (RecordingState::Finished, 65536));
    let check = castcheck(&cast_file(&dir, &t.terminal_id));
    let (code, out) = c.exec(&["sha256sum", "/tmp/bin.raw"]).await;
    assert_eq!(code, 0);
    assert_eq!(check["output_sha256"].as_str().unwrap(), out.split_whitespace().next().unwrap());
    assert!(std::fs::read_to_string(cast_file(&dir, &t.terminal_id)).unwrap().contains("\\udc"));
    // Files are the user's alone.
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn input_resizes_markers_and_times_follow_what_the_viewers_saw() {
    let c = TestContainer::start("rec-events", &bash_image()).await;
    let audit = tempdir("rec-audit").join("audit.jsonl");
    let (server, dir) = recording_server(RecordFlag::All, |c| {
        c.audit_log = audit.display().to_string();
        c.grace_period_secs = 3;
    })
    .await;
    let url = base_url(&server);
    let me = uuid::Uuid::new_v4().simple().to_string();
    let first = TestClient::connect_v2(&url, &me).await;
    let t = first.shell(&c.name).await;
    let id = t.terminal_id.clone();
    first.run(&id, "echo in-put-$((6*7))", "in-put-42").await;
    first.resize(&id, 120, 40).await;
    first.run(&id, "stty size", "40 120").await;
    // A timed run whose arrival the client notes, to compare with the recorded times.
    first.input(&id, "for i in 1 2 3 4 5 6 7 8; do echo tick-$i; sleep 0.2; done\n").await;
    let mut seen: Vec<(usize, Instant)> = Vec::new();
    let start = Instant::now();
    while !first.screen(&id).contains("tick-8") {
        assert!(start.elapsed() < PATIENCE);
        let n = first.bytes(&id).len();
        if seen.last().is_none_or(|l| l.0 != n) {
            seen.push((n, Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let n = first.bytes(&id).len();
    seen.push((n, Instant::now()));
    // Nobody attached: the recording goes on, and the recorder does not count as a viewer.
    first.input(&id, "sleep 1; echo while-away\n").await;
    first.disconnect().await;
    eventually("nobody attached", || async { server.state().all_terminals().iter().any(|i| i.attached == 0) }).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = TestClient::connect_v2(&url, &me).await;
    second
        .attach(&app::protocol::AttachTerminal { terminal_id: id.clone(), since: Some(0), flow_control: false })
        .await
        .unwrap();
    second.wait_for(&id, "while-away").await;
    second.run(&id, "exit 3", "exit").await;
    let exit = second.wait_exit(&id).await;
    assert_eq!(exit.exit_code, Some(3));
    let r = closed(&url, &id).await;
    let check = castcheck(&cast_file(&dir, &id));
    assert_eq!(check["decreasing"].as_u64(), Some(0));
    assert!(check["input"].as_str().unwrap().contains("echo in-put-$((6*7))"), "{}", check["input"]);
    let resizes: Vec<&str> = check["resizes"].as_array().unwrap().iter().map(|r| r[1].as_str().unwrap()).collect();
    assert!(resizes.contains(&"120x40"), "{resizes:?}");
    let m = markers(&check);
    assert_eq!(m.first().map(String::as_str), Some("attach local"));
    assert!(m.contains(&"detach local".to_string()), "{m:?}");
    assert_eq!(m.iter().filter(|m| *m == "attach local").count(), 2, "{m:?}");
    assert_eq!(m.last().map(String::as_str), Some("exit 3 exited"));
    // Recorded times track what the client saw: for each recorded output end inside the timed run, the client's
    // first sight of that many bytes, measured from the run's first event.
    let events: Vec<(f64, u64)> =
        check["output"].as_array().unwrap().iter().map(|e| (e[0].as_f64().unwrap(), e[1].as_u64().unwrap())).collect();
    let first_seen = seen.first().unwrap();
    let in_run: Vec<&(f64, u64)> = events.iter().filter(|e| e.1 > first_seen.0 as u64 && e.1 <= n as u64).collect();
    assert!(in_run.len() >= 8, "{in_run:?}");
    let base_rec = in_run[0].0;
    let base_seen = seen.iter().find(|s| s.0 as u64 >= in_run[0].1).unwrap().1;
    for e in &in_run {
        let saw = seen.iter().find(|s| s.0 as u64 >= e.1).unwrap().1;
        let live = saw.duration_since(base_seen).as_secs_f64();
        let rec = e.0 - base_rec;
        assert!((live - rec).abs() < 0.05, "recorded {rec:.3} s, seen {live:.3} s");
    }
    // The audit records of the terminal carry its recording's id, and the index keeps theirs.
    let records: Vec<Value> =
        std::fs::read_to_string(&audit).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let about: Vec<&Value> = records.iter().filter(|r| r["recordingId"] == id.0.as_str()).collect();
    let actions: Vec<&str> = about.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"terminal.open") && actions.contains(&"terminal.attach"), "{actions:?}");
    for a in &about {
        assert!(r.audit_ids.contains(&a["id"].as_str().unwrap().to_string()), "{a} not in {:?}", r.audit_ids);
    }
    assert!(records.iter().all(|r| r["id"].as_str().is_some_and(|i| i.starts_with("a-"))));
}

#[tokio::test]
async fn a_recording_left_open_by_kill_9_parses_and_is_closed_at_the_next_start() {
    let c = TestContainer::start("rec-crash", &bash_image()).await;
    let (state, recs) = (tempdir("rec-crash-state"), tempdir("rec-crash-files"));
    let args =
        ["--record", "output", "--state-dir", state.to_str().unwrap(), "--recordings-dir", recs.to_str().unwrap()];
    let mut server = ServerProcess::start(&args);
    let client = TestClient::connect_url(&server.base_url(), rust_socketio::TransportType::Websocket).await;
    let t = client.start(command(&c.name, "while :; do seq 1 2000; sleep 0.01; done")).await.unwrap();
    client.wait_for_bytes(&t.terminal_id, 1 << 20).await;
    let started = recording(&server.base_url(), &t.terminal_id).await.started_at;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = now_ms();
    server.stop_with("KILL");
    drop(client);
    let file = cast_file(&recs, &t.terminal_id);
    let check = castcheck(&file);
    let last = check["output"].as_array().unwrap().last().unwrap()[0].as_f64().unwrap();
    let lost_ms = killed_at as f64 - (started as f64 + last * 1000.0);
    assert!(lost_ms < 1500.0, "the file lacks {lost_ms} ms, more than the last second");
    let restarted = ServerProcess::start(&args);
    let r = closed(&restarted.base_url(), &t.terminal_id).await;
    assert_eq!((r.state, r.exit_code), (RecordingState::Finished, None));
    let check = castcheck(&file);
    assert_eq!(markers(&check).last().unwrap(), "closed after restart");
    assert_eq!(check["output_len"].as_u64(), Some(r.bytes));
    assert!(r.ended_at.unwrap() >= r.started_at && r.duration_ms as f64 >= last * 1000.0 - 1.0);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test]
async fn retention_removes_only_finished_recordings_oldest_first() {
    let c = TestContainer::start("rec-retention", &bash_image()).await;
    let (server, dir) = recording_server(RecordFlag::Output, |c| c.recordings_max_bytes = Some(256 * 1024)).await;
    let url = base_url(&server);
    let client = TestClient::connect(&server).await;
    let live = client
        .start(command(&c.name, "head -c 300000 /dev/zero | tr '\\0' x; echo; echo LIVE; sleep 600"))
        .await
        .unwrap();
    client.wait_for(&live.terminal_id, "LIVE").await;
    let done = client.start(command(&c.name, "echo small")).await.unwrap();
    client.wait_exit(&done.terminal_id).await;
    // Over the budget (the live one alone is): the finished one goes, the live one stays.
    eventually("the finished recording removed", || async {
        get(format!("{url}/api/v1/recordings/{}", done.terminal_id.0)).await.status() == 404
    })
    .await;
    assert!(!cast_file(&dir, &done.terminal_id).exists());
    assert!(cast_file(&dir, &live.terminal_id).exists());
    assert_eq!(recording(&url, &live.terminal_id).await.state, RecordingState::Recording);
    castcheck(&cast_file(&dir, &live.terminal_id));
    client.close(&live.terminal_id).await.unwrap();
    eventually("the big one removed once finished", || async {
        get(format!("{url}/api/v1/recordings/{}", live.terminal_id.0)).await.status() == 404
    })
    .await;

    // By age: a finished recording older than the limit goes at the next pass, a live one older stays.
    let (server, dir) =
        recording_server(RecordFlag::Output, |c| c.recordings_max_age = Some(Duration::from_secs(1))).await;
    let url = base_url(&server);
    let client = TestClient::connect(&server).await;
    let old = client.start(command(&c.name, "echo old")).await.unwrap();
    client.wait_exit(&old.terminal_id).await;
    let running = client.start(command(&c.name, "echo running; sleep 600")).await.unwrap();
    closed(&url, &old.terminal_id).await;
    eventually("the old recording removed", || async {
        get(format!("{url}/api/v1/recordings/{}", old.terminal_id.0)).await.status() == 404
    })
    .await;
    tokio::time::sleep(porthole_server::recording::RETENTION_INTERVAL).await;
    assert!(cast_file(&dir, &running.terminal_id).exists());
    assert_eq!(recording(&url, &running.terminal_id).await.state, RecordingState::Recording);
}

#[tokio::test]
async fn search_finds_what_the_user_saw_and_the_api_refuses_bad_queries_clearly() {
    let c = TestContainer::start("rec-search", &bash_image()).await;
    let (server, dir) = recording_server(RecordFlag::Output, |_| {}).await;
    let url = base_url(&server);
    let client = TestClient::connect(&server).await;
    let t = client.shell(&c.name).await;
    let id = t.terminal_id.clone();
    client.run(&id, "sleep 1.2; echo slept-$((1+1))", "slept-2").await;
    // The prompt is back (readline has the terminal): keys typed before it would be echoed by the tty itself,
    // on a line of their own that readline then draws again.
    eventually("the prompt after slept-2", || async {
        let out = String::from_utf8_lossy(&client.bytes(&id)).into_owned();
        out.rsplit_once("slept-2\r\n").is_some_and(|(_, after)| after.contains("# "))
    })
    .await;
    // Typed with a mistake corrected by backspace (DEL), as a person types.
    client.input(&id, "echo porthole-hellp").await;
    client.wait_for(&id, "hellp").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.input(&id, "\x7fo wrld").await;
    client.wait_for(&id, "wrld").await;
    client.input(&id, "\x7f\x7f\x7forld\r").await;
    client.wait_for(&id, "porthole-hello world\r\n").await;
    // Follow the live file while it is written.
    let follow = tokio::spawn({
        let url = format!("{url}/api/v1/recordings/{}.cast?follow=true", id.0);
        async move {
            let res = http().get(url).send().await.unwrap();
            assert_eq!(res.headers()["content-type"], "application/x-asciicast");
            res.text().await.unwrap()
        }
    });
    client.run(&id, "echo followed-$((1+1))", "followed-2").await;
    client.input(&id, "exit\n").await;
    client.wait_exit(&id).await;
    let followed = tokio::time::timeout(PATIENCE, follow).await.unwrap().unwrap();
    assert!(followed.contains("followed-2") && followed.contains("exit 0 exited"), "{followed}");
    let r = closed(&url, &id).await;
    assert_eq!(r.state, RecordingState::Finished);
    let found: Vec<Recording> =
        get(format!("{url}/api/v1/recordings?q=porthole-hello%20world")).await.json().await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let hits = found[0].hits.as_ref().unwrap();
    let hit = hits.iter().find(|h| h.line.contains("echo porthole-hello world")).expect("the edited command line");
    // It appeared after the 1.2 s sleep, and before the end.
    assert!(hit.time_ms >= 1200 && hit.time_ms <= r.duration_ms, "{hit:?} in {r:?}");
    assert!(!hits.iter().any(|h| h.line.contains("hellp")));
    // The transcript as text, and the file in ranges.
    let txt = get(format!("{url}/api/v1/recordings/{}.txt", id.0)).await.text().await.unwrap();
    assert!(txt.contains("# echo porthole-hello world\nporthole-hello world\n"), "{txt}");
    let part = http()
        .get(format!("{url}/api/v1/recordings/{}.cast", id.0))
        .header("Range", "bytes=0-11")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap().as_ref(), b"{\"version\":2");
    castcheck(&cast_file(&dir, &id));
    // Words that look like FTS5 syntax are just words.
    for q in ["rm -rf", "\"unbalanced", "AND OR NOT", "a*", "NEAR(x y)", "col:umn", "^start"] {
        let res = http().get(format!("{url}/api/v1/recordings")).query(&[("q", q)]).send().await.unwrap();
        assert_eq!(res.status(), 200, "{q}");
        assert_eq!(res.json::<Vec<Recording>>().await.unwrap().len(), 0, "{q}");
    }
    for (query, needle) in [
        ("q=", "no words"),
        ("q=---", "no words"),
        ("q=a%00b", "control"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("since=yesterday", "since"),
        ("since=5&until=4", "since"),
        ("before=t-nope", "before"),
        ("colour=red", "colour"),
    ] {
        let res = get(format!("{url}/api/v1/recordings?{query}")).await;
        assert_eq!(res.status(), 400, "{query}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_payload", "{query}");
        assert!(body["error"]["message"].as_str().unwrap().contains(needle), "{query}: {body}");
    }
    let long = "x".repeat(300);
    assert_eq!(get(format!("{url}/api/v1/recordings?q={long}")).await.status(), 400);
    let missing = get(format!("{url}/api/v1/recordings/t-missing")).await;
    assert_eq!(outcome(missing).await, (404, "unknown_recording".into()));
    // Paging, newest first.
    let more = client.start(command(&c.name, "echo second")).await.unwrap();
    client.wait_exit(&more.terminal_id).await;
    closed(&url, &more.terminal_id).await;
    let page: Vec<Recording> = get(format!("{url}/api/v1/recordings?limit=1")).await.json().await.unwrap();
    assert_eq!(page[0].id, more.terminal_id.0);
    let next: Vec<Recording> =
        get(format!("{url}/api/v1/recordings?limit=1&before={}", page[0].id)).await.json().await.unwrap();
    assert_eq!(next[0].id, id.0);
    let by_container: Vec<Recording> =
        get(format!("{url}/api/v1/recordings?container={}", c.name)).await.json().await.unwrap();
    assert_eq!(by_container.len(), 2);
    let none: Vec<Recording> =
        get(format!("{url}/api/v1/recordings?since={}", now_ms() + 60_000)).await.json().await.unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn others_recordings_answer_like_missing_ones_and_only_all_may_delete() {
    let c = TestContainer::start("rec-access", &bash_image()).await;
    let (mut config, _audit) = jwt_config(RECORDING_POLICY);
    let config_dir = tempdir("rec-access");
    config.recordings_dir = Some(config_dir.clone());
    let server = start_server(config).await;
    let url = base_url(&server);
    let (alice, bob, carol) = (token("alice", &[]), token("bob", &[]), token("carol", &[]));
    let a = connect_as(&server, &alice).await.unwrap();
    let done = a.start(command(&c.name, "echo alice-secret")).await.unwrap();
    a.wait_exit(&done.terminal_id).await;
    let live = a.start(command(&c.name, "echo alice-live; sleep 600")).await.unwrap();
    a.wait_for(&live.terminal_id, "alice-live").await;
    closed_as(&http_as(&alice), &url, &done.terminal_id).await;
    let list = |tok: String, q: &'static str| {
        let url = url.clone();
        async move {
            http_as(&tok)
                .get(format!("{url}/api/v1/recordings?{q}"))
                .send()
                .await
                .unwrap()
                .json::<Vec<Recording>>()
                .await
                .unwrap()
        }
    };
    assert_eq!(list(alice.clone(), "").await.len(), 2);
    assert!(list(bob.clone(), "").await.is_empty());
    assert!(list(bob.clone(), "user=alice").await.is_empty());
    assert!(list(bob.clone(), "q=alice-secret").await.is_empty());
    assert_eq!(list(carol.clone(), "q=alice-secret").await.len(), 1);
    assert_eq!(list(carol.clone(), "user=alice").await.len(), 2);
    let path = |suffix: &str| format!("{url}/api/v1/recordings/{}{suffix}", done.terminal_id.0);
    for suffix in ["", ".cast", ".txt"] {
        let res = http_as(&bob).get(path(suffix)).send().await.unwrap();
        assert_eq!(outcome(res).await, (404, "unknown_recording".into()), "{suffix}");
        assert_eq!(http_as(&alice).get(path(suffix)).send().await.unwrap().status(), 200, "{suffix}");
    }
    let del = |tok: &str, id: &TerminalId| http_as(tok).delete(format!("{url}/api/v1/recordings/{}", id.0)).send();
    assert_eq!(outcome(del(&bob, &done.terminal_id).await.unwrap()).await, (404, "unknown_recording".into()));
    assert_eq!(outcome(del(&alice, &done.terminal_id).await.unwrap()).await, (403, "forbidden".into()));
    assert_eq!(outcome(del(&carol, &live.terminal_id).await.unwrap()).await, (409, "recording_in_progress".into()));
    let file = config_dir.join(format!("{}.cast", done.terminal_id.0));
    castcheck(&file);
    assert_eq!(del(&carol, &done.terminal_id).await.unwrap().status(), 204);
    assert!(!file.exists());
    assert_eq!(http_as(&alice).get(path("")).send().await.unwrap().status(), 404);
    assert_eq!(outcome(del(&carol, &done.terminal_id).await.unwrap()).await, (404, "unknown_recording".into()));
}

/// A tmpfs mounted at a new directory (root only: the test machines run the suite as root).
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(name: &str, options: &str) -> Mount {
        let dir = tempdir(name);
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(ok.success(), "mounting a tmpfs needs root");
        Mount(dir)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn unusable_directories_and_a_full_disk_fail_the_recording_never_the_terminal() {
    let c = TestContainer::start("rec-disk", &bash_image()).await;
    let read_only = Mount::tmpfs("rec-ro", "ro,size=1m");
    let file = tempdir("rec-notdir").join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    for (dir, why) in [(read_only.0.clone(), "Read-only file system"), (file.join("recordings"), "Not a directory")] {
        let audit = tempdir("rec-disk-audit").join("audit.jsonl");
        let (server, _) = recording_server(RecordFlag::Output, |c| {
            c.recordings_dir = Some(dir.clone());
            c.audit_log = audit.display().to_string();
        })
        .await;
        let url = base_url(&server);
        let client = TestClient::connect(&server).await;
        let t = client.shell(&c.name).await;
        client.run(&t.terminal_id, "echo still-$((2+2))", "still-4").await;
        let r = recording(&url, &t.terminal_id).await;
        assert_eq!(r.state, RecordingState::Failed);
        assert!(r.error.as_deref().unwrap().contains(why), "{r:?}");
        let text = std::fs::read_to_string(&audit).unwrap();
        assert!(text.contains("\"recording.failed\"") && text.contains(why), "{text}");
        client.close(&t.terminal_id).await.unwrap();
    }

    // A disk that fills up while recording: the file keeps its whole lines, the terminal goes on.
    let small = Mount::tmpfs("rec-full", "size=512k");
    let (server, _) = recording_server(RecordFlag::Output, |c| c.recordings_dir = Some(small.0.clone())).await;
    let url = base_url(&server);
    let client = TestClient::connect(&server).await;
    let t = client.shell(&c.name).await;
    let id = t.terminal_id.clone();
    client.run(&id, "head -c 3000000 /dev/zero | tr '\\0' y | fold -w 100; echo FILLED", "FILLED").await;
    let r = closed(&url, &id).await;
    assert_eq!(r.state, RecordingState::Failed);
    assert!(r.error.as_deref().unwrap().contains("No space left"), "{r:?}");
    client.run(&id, "echo after-$((3+3))", "after-6").await;
    let check = castcheck(&cast_file(&small.0, &id));
    assert!(check["output_len"].as_u64().unwrap() > 100_000);
    client.close(&id).await.unwrap();
}
