//! `porthole-cli` against a real server and the real Docker engine, driven as a person would: on a real pty
//! (portable-pty) for the terminal, through pipes for pipe mode, checking what shows on the screen, the exit
//! code, and what is left in the container.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../server/tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::TcpCutter;
use common::sandbox::{InstanceGuard, profiles_file};
use common::*;
use portable_pty::{CommandBuilder, PtySize, native_pty_system};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

const CLI: &str = env!("CARGO_BIN_EXE_porthole-cli");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/tests/fixtures").join(name)
}

/// The environment every client run gets: the server, the token, and a config directory of its own.
fn env_for(url: &str) -> Vec<(String, String)> {
    vec![
        ("PORTHOLE_URL".into(), url.into()),
        ("PORTHOLE_TOKEN".into(), TEST_TOKEN.into()),
        ("XDG_CONFIG_HOME".into(), tempdir("cli-config").display().to_string()),
    ]
}

/// The client on a real pty: what it wrote to the screen, keys typed into it, its window size, its exit.
struct Screen {
    child: Box<dyn portable_pty::Child + Send + Sync>,
    master: Box<dyn portable_pty::MasterPty + Send>,
    writer: Box<dyn Write + Send>,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Screen {
    fn spawn(args: &[&str], env: &[(String, String)], cols: u16, rows: u16) -> Screen {
        let pty = native_pty_system().openpty(PtySize { rows, cols, pixel_width: 0, pixel_height: 0 }).unwrap();
        let mut cmd = CommandBuilder::new(CLI);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = pty.slave.spawn_command(cmd).unwrap();
        drop(pty.slave);
        let mut reader = pty.master.try_clone_reader().unwrap();
        let writer = pty.master.take_writer().unwrap();
        let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
        let s = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Screen { child, master: pty.master, writer, seen }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn keys(&mut self, keys: &[u8]) {
        self.writer.write_all(keys).unwrap();
        self.writer.flush().unwrap();
    }

    /// Waits until `needle` shows after byte `from` of the screen's history; returns the text after `from`.
    async fn wait_for_after(&self, from: usize, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = String::from_utf8_lossy(&self.seen.lock().unwrap()[from..]).into_owned();
            if text.contains(needle) {
                return text;
            }
            assert!(Instant::now() < deadline, "{needle:?} never showed; the screen after byte {from}:\n{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_for(&self, needle: &str) -> String {
        self.wait_for_after(0, needle).await
    }

    /// Types a command line and waits for what it prints.
    async fn run(&mut self, line: &str, expect: &str) -> String {
        let from = self.len();
        self.keys(format!("{line}\r").as_bytes());
        self.wait_for_after(from, expect).await
    }

    fn resize(&self, cols: u16, rows: u16) {
        self.master.resize(PtySize { rows, cols, pixel_width: 0, pixel_height: 0 }).unwrap();
    }

    async fn exit_code(&mut self) -> u32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.exit_code();
            }
            assert!(Instant::now() < deadline, "the client did not exit; its screen:\n{}", self.text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// What a run of the client without a tty gave: exit code, stdout, stderr.
struct Ran {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs the client with `stdin` piped in (or none), not on a tty.
async fn run_cli(args: &[&str], env: &[(String, String)], stdin: Option<Vec<u8>>) -> Ran {
    let mut cmd = tokio::process::Command::new(CLI);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        tokio::spawn(async move {
            let _ = pipe.write_all(&data).await;
        });
    }
    let out = tokio::time::timeout(PATIENCE * 4, child.wait_with_output()).await.expect("the client finished").unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` bytes of noise (every byte value, 0x1e included), the same for the same seed.
fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// The terminal id a detach message names.
fn detached_id(screen: &str) -> String {
    let at = screen.find("detached from terminal ").expect("a detach message") + "detached from terminal ".len();
    screen[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect()
}

#[tokio::test]
async fn a_tty_echoes_follows_resizes_passes_ctrl_c_and_exits_with_the_code() {
    let c = TestContainer::start("cli-tty", &bash_image()).await;
    let server = start_server(test_config()).await;
    let env = env_for(&base_url(&server));
    let mut s = Screen::spawn(&["exec", &c.name], &env, 100, 30);
    s.wait_for("# ").await;
    s.run("echo hi-$((6*7))", "hi-42").await;
    s.run("stty size", "30 100").await;
    s.resize(132, 43);
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.run("stty size", "43 132").await;
    // Ctrl-C reaches the container's foreground process, not the client.
    let from = s.len();
    s.keys(b"sleep 30; echo slept\r");
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.keys(b"\x03");
    s.wait_for_after(from, "^C").await;
    s.run("echo after-$((1+1))", "after-2").await;
    assert!(!s.text().contains("\nslept\r\n"), "sleep was interrupted:\n{}", s.text());
    s.keys(b"exit 3\r");
    assert_eq!(s.exit_code().await, 3);
    assert!(c.wait_no_strays(PATIENCE).await.is_empty());
}

#[tokio::test]
async fn a_signal_death_exits_128_plus_the_signal() {
    let c = TestContainer::start("cli-signal", &bash_image()).await;
    let server = start_server(test_config()).await;
    let env = env_for(&base_url(&server));
    let mut s = Screen::spawn(&["exec", "-t", &c.name, "--", "sh", "-c", "kill -KILL $$"], &env, 80, 24);
    assert_eq!(s.exit_code().await, 137);
    let ran = run_cli(&["exec", &c.name, "--", "sh", "-c", "kill -TERM $$"], &env, None).await;
    assert_eq!(ran.code, 143, "{}", ran.stderr);
}

#[tokio::test]
async fn detach_keys_leave_the_terminal_running_and_attach_brings_it_back() {
    let c = TestContainer::start("cli-detach", &bash_image()).await;
    let server = start_server(test_config()).await;
    let url = base_url(&server);
    let env = env_for(&url);
    let mut s = Screen::spawn(&["exec", &c.name], &env, 80, 24);
    s.wait_for("# ").await;
    s.run("echo marker-$((2+3))", "marker-5").await;
    // Ctrl-P alone is held, then sent with the next key: `echo` still runs.
    s.run("echo \x10x-held", "x-held").await;
    s.keys(b"\x10\x11");
    assert_eq!(s.exit_code().await, 0);
    let screen = s.wait_for("Attach again with: porthole-cli attach t-").await;
    assert!(screen.contains("keeps it running for 10 min"), "the grace period is told:\n{screen}");
    let id = detached_id(&screen);

    // Both the REST API and `ls` show it running with nobody attached.
    let terminal: Value = get(format!("{url}/api/v1/terminals/{id}")).await.json().await.unwrap();
    assert_eq!(terminal["state"], "detached", "{terminal}");
    let ls = run_cli(&["ls", "--json"], &env, None).await;
    assert_eq!(ls.code, 0, "{}", ls.stderr);
    let listed: Value = serde_json::from_slice(&ls.stdout).unwrap();
    let found = listed["terminals"].as_array().unwrap().iter().find(|t| t["terminalId"] == id.as_str()).unwrap();
    assert_eq!(found["state"], "detached");
    assert!(listed["containers"].as_array().unwrap().iter().any(|x| x["name"] == c.name.as_str()));
    let table = run_cli(&["ls"], &env, None).await;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains(&id) && table.contains("detached"), "{table}");

    // `attach` replays the screen, goes live, and its own detach keys work.
    let mut a = Screen::spawn(&["attach", &id, "--detach-keys", "ctrl-x,x"], &env, 80, 24);
    a.wait_for("marker-5").await;
    a.run("echo back-$((3+4))", "back-7").await;
    a.keys(b"\x18x");
    assert_eq!(a.exit_code().await, 0);
    // A read-only attach watches: what it types goes nowhere.
    let mut r = Screen::spawn(&["attach", "--read-only", &id], &env, 80, 24);
    r.wait_for("back-7").await;
    r.keys(b"echo typed-$((1+8))\r");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!r.text().contains("typed-9"), "{}", r.text());
    r.keys(b"\x10\x11");
    assert_eq!(r.exit_code().await, 0);
    let mut b = Screen::spawn(&["attach", &id], &env, 80, 24);
    b.wait_for("back-7").await;
    b.keys(b"exit 4\r");
    assert_eq!(b.exit_code().await, 4);
}

#[tokio::test]
async fn a_cut_connection_resumes_with_nothing_lost_or_repeated() {
    let c = TestContainer::start("cli-resume", &bash_image()).await;
    let server = start_server(test_config()).await;
    let cutter = TcpCutter::to(server.addr()).await;
    let env = env_for(&cutter.url());

    // Pipe input: 16 MiB of noise into sha256sum, which starts reading only after a second (so the upload is
    // under way, held back by its window), the connection cut twice on the way.
    let data = noise(16 << 20, 7);
    let want = sha256_hex(&data);
    let args = ["exec", &c.name, "--", "sh", "-c", "sleep 1.5; sha256sum"];
    let run = run_cli(&args, &env, Some(data));
    let cuts = async {
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            cutter.cut();
        }
    };
    let (ran, ()) = tokio::join!(run, cuts);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(String::from_utf8_lossy(&ran.stdout).split_whitespace().next(), Some(want.as_str()), "{}", ran.stderr);
    assert!(ran.stderr.contains("reconnected; terminal"), "the client says it resumed: {}", ran.stderr);

    // Pipe output: a file the container made, read back through a cut connection.
    let (code, _) = c.exec(&["sh", "-c", "head -c 8388608 /dev/urandom > /tmp/blob"]).await;
    assert_eq!(code, 0);
    let (_, container_sum) = c.exec(&["sha256sum", "/tmp/blob"]).await;
    // Half of it, a pause in which the connection is cut, then the rest.
    let args = ["exec", &c.name, "--", "sh", "-c", "head -c 4194304 /tmp/blob; sleep 1.5; tail -c +4194305 /tmp/blob"];
    let run = run_cli(&args, &env, None);
    let cut = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        cutter.cut();
    };
    let (ran, ()) = tokio::join!(run, cut);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.stdout.len(), 8 << 20);
    assert_eq!(container_sum.split_whitespace().next(), Some(sha256_hex(&ran.stdout).as_str()));
    assert!(ran.stderr.contains("reconnected; terminal"), "the client says it resumed: {}", ran.stderr);

    // A tty: numbered lines while the connection is cut; every line arrives once, in order.
    let mut s = Screen::spawn(
        &[
            "exec",
            "-t",
            &c.name,
            "--",
            "awk",
            "BEGIN { for (i = 1; i <= 60000; i++) print \"line\", i; system(\"sleep 1\"); print \"end-of-lines\" }",
        ],
        &env,
        80,
        24,
    );
    s.wait_for("line 1\r\n").await;
    cutter.cut();
    s.wait_for("end-of-lines").await;
    assert_eq!(s.exit_code().await, 0);
    let mut text = s.text();
    assert!(text.contains("reconnected; terminal"), "the client says it resumed");
    // The client's notes (on stderr, the same pty) may land inside a line: take them out.
    while let Some(at) = text.find("\r\nporthole-cli: ") {
        let end = text[at + 2..].find("\r\n").map_or(text.len(), |e| at + 2 + e + 2);
        text.replace_range(at..end, "");
    }
    let numbers: Vec<u32> = text
        .split("\r\n")
        .filter_map(|l| l.rsplit("line ").next().filter(|_| l.contains("line ")).and_then(|n| n.trim().parse().ok()))
        .collect();
    assert_eq!(numbers, (1..=60000).collect::<Vec<_>>(), "lines lost or repeated");
}

#[tokio::test]
async fn the_event_rate_limit_holds_back_neither_a_bulk_upload_nor_a_writer_of_small_pieces() {
    let c = TestContainer::start("cli-pipe-rate", &bash_image()).await;
    // Bulk: 8 MiB is 128 events of 64 KiB, three times the burst of a socket allowed 20 events per second.
    let mut config = test_config();
    config.max_events_per_sec = 20;
    let server = start_server(config).await;
    let env = env_for(&base_url(&server));
    let data = noise(8 << 20, 7);
    let ran = run_cli(&["exec", "-i", &c.name, "--", "sha256sum"], &env, Some(data.clone())).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(String::from_utf8_lossy(&ran.stdout).split_whitespace().next(), Some(sha256_hex(&data).as_str()));
    // Small pieces: 8 MiB written 64 bytes at a time, as fast as they go, at the default rate (1000 per second,
    // bursts of 2000): sent as they were read, they would be tens of thousands of events.
    let server = start_server(test_config()).await;
    let env = env_for(&base_url(&server));
    let data = noise(8 << 20, 8);
    let mut cmd = tokio::process::Command::new(CLI);
    cmd.args(["exec", "-i", &c.name, "--", "sha256sum"]).kill_on_drop(true);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let pieces = data.clone();
    tokio::spawn(async move {
        for piece in pieces.chunks(64) {
            if pipe.write_all(piece).await.is_err() {
                return;
            }
        }
    });
    let out = tokio::time::timeout(PATIENCE * 4, child.wait_with_output()).await.expect("the client finished").unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).split_whitespace().next(), Some(sha256_hex(&data).as_str()));
}

#[tokio::test]
async fn with_two_docker_hosts_ls_names_each_and_exec_takes_host_slash_name() {
    let second = second_docker().await;
    let name = format!("porthole-it-cli-hosts-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let here = TestContainer::start_named(docker().await, &name, "cli-hosts", &bash_image(), &[]).await;
    let there = TestContainer::start_named(second, &name, "cli-hosts", &bash_image(), &[]).await;
    for (c, marker) in [(&here, "here"), (&there, "there")] {
        assert_eq!(c.exec(&["sh", "-c", &format!("echo {marker} > /tmp/where")]).await.0, 0);
    }
    let server = start_server(two_hosts_config()).await;
    let env = env_for(&base_url(&server));
    let ran = run_cli(&["ls"], &env, None).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let out = String::from_utf8_lossy(&ran.stdout).into_owned();
    for qualified in [format!("local/{name}"), format!("two/{name}")] {
        assert!(out.lines().any(|l| l.starts_with(&qualified)), "{qualified} in:\n{out}");
    }
    for (reference, marker) in [(format!("two/{name}"), "there"), (format!("local/{name}"), "here")] {
        let ran = run_cli(&["exec", &reference, "--", "cat", "/tmp/where"], &env, None).await;
        assert_eq!((ran.code, String::from_utf8_lossy(&ran.stdout).trim()), (0, marker), "{}", ran.stderr);
    }
    // The bare name is on both: refused as docker exec refuses (125), naming the code and the way out.
    let ran = run_cli(&["exec", &name, "--", "true"], &env, None).await;
    assert_eq!(ran.code, 125, "{}", ran.stderr);
    assert!(ran.stderr.contains("ambiguous_container") && ran.stderr.contains("HOST/"), "{}", ran.stderr);
}

#[tokio::test]
async fn pipes_move_64_mib_of_binary_end_stdin_and_keep_stderr_apart() {
    let c = TestContainer::start("cli-pipe", &bash_image()).await;
    let server = start_server(test_config()).await;
    let env = env_for(&base_url(&server));
    let data = noise(64 << 20, 42);
    let want = sha256_hex(&data);
    // In: stdin's end ends `cat`, then the container's checksum.
    let ran =
        run_cli(&["exec", "-i", &c.name, "--", "sh", "-c", "cat > /tmp/in && sha256sum < /tmp/in"], &env, Some(data))
            .await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(String::from_utf8_lossy(&ran.stdout).split_whitespace().next(), Some(want.as_str()));
    // Out: the same bytes back.
    let ran = run_cli(&["exec", &c.name, "--", "cat", "/tmp/in"], &env, None).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.stdout.len(), 64 << 20);
    assert_eq!(sha256_hex(&ran.stdout), want);
    // A process that ends before reading its input (or before the end of it arrives) exits with its own code.
    for _ in 0..5 {
        let ran = run_cli(&["exec", &c.name, "--", "true"], &env, Some(Vec::new())).await;
        assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "nothing to say about input nobody read");
    }
    let ran = run_cli(&["exec", &c.name, "--", "sh", "-c", "exit 4"], &env, Some(noise(4 << 20, 9))).await;
    assert_eq!(ran.code, 4, "{}", ran.stderr);
    // stdout and stderr stay apart.
    let ran = run_cli(
        &["exec", &c.name, "--", "sh", "-c", "echo to-out; echo to-err >&2; echo more-out; exit 5"],
        &env,
        None,
    )
    .await;
    assert_eq!(ran.code, 5);
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "to-out\nmore-out\n");
    assert_eq!(ran.stderr, "to-err\n");
    // A tar stream unpacks in the container.
    let dir = tempdir("cli-tar");
    std::fs::write(dir.join("a.bin"), noise(300_000, 3)).unwrap();
    std::fs::write(dir.join("b.txt"), "hello tar\n").unwrap();
    let tar = std::process::Command::new("tar").arg("c").arg("-C").arg(&dir).arg(".").output().unwrap().stdout;
    let ran = run_cli(
        &["exec", &c.name, "--", "sh", "-c", "mkdir -p /tmp/t && tar x -C /tmp/t && cat /tmp/t/b.txt"],
        &env,
        Some(tar),
    )
    .await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "hello tar\n");
    let (_, sum) = c.exec(&["sha256sum", "/tmp/t/a.bin"]).await;
    assert_eq!(sum.split_whitespace().next(), Some(sha256_hex(&noise(300_000, 3)).as_str()));
    assert!(c.wait_no_strays(PATIENCE).await.is_empty());
}

#[tokio::test]
async fn refusals_and_failures_exit_with_a_clear_message() {
    let c = TestContainer::start("cli-bad", &bash_image()).await;
    let server = start_server(test_config()).await;
    let url = base_url(&server);
    let env = env_for(&url);
    let mut wrong = env.clone();
    wrong[1].1 = "not-the-token-at-all".into();
    let ran = run_cli(&["exec", &c.name, "--", "true"], &wrong, None).await;
    assert_eq!((ran.code, ran.stderr.starts_with("porthole-cli: unauthenticated: ")), (125, true), "{}", ran.stderr);
    let ran = run_cli(&["exec", "no-such-container", "--", "true"], &env, None).await;
    assert_eq!(
        (ran.code, ran.stderr.starts_with("porthole-cli: container_not_found: ")),
        (125, true),
        "{}",
        ran.stderr
    );
    let ran = run_cli(&["exec", &c.name, "--", "definitely-not-installed"], &env, None).await;
    assert_eq!((ran.code, ran.stderr.starts_with("porthole-cli: command_not_found: ")), (127, true), "{}", ran.stderr);
    let ran = run_cli(&["exec", &c.name, "--", "/etc/passwd"], &env, None).await;
    assert_eq!(
        (ran.code, ran.stderr.starts_with("porthole-cli: command_not_executable: ")),
        (126, true),
        "{}",
        ran.stderr
    );
    assert_eq!(ran.stderr.lines().count(), 1, "one line: {}", ran.stderr);
    c.stop().await;
    let ran = run_cli(&["exec", &c.name, "--", "true"], &env, None).await;
    assert_eq!(
        (ran.code, ran.stderr.starts_with("porthole-cli: container_not_running: ")),
        (125, true),
        "{}",
        ran.stderr
    );

    // The server down.
    let addr = server.addr();
    server.shutdown(Duration::from_secs(10)).await.unwrap();
    let ran = run_cli(&["exec", &c.name, "--", "true"], &env, None).await;
    assert_eq!((ran.code, ran.stderr.starts_with("porthole-cli: unreachable: ")), (125, true), "{}", ran.stderr);
    assert!(ran.stderr.contains(&addr.to_string()), "{}", ran.stderr);
}

#[tokio::test]
async fn the_policy_refuses_a_command_with_125_naming_the_code() {
    let c = TestContainer::start_labeled("cli-policy", &bash_image(), &[("porthole.team", "cli")]).await;
    let policy = "[[rule]]\nsubjects = [\"erin\"]\nlabels = { \"porthole.team\" = \"cli\" }\nlogin_shell = false\ncommands = [[\"echo\", \"allowed\"]]\n";
    let (config, _audit) = common::jwt::jwt_config(policy);
    let server = start_server(config).await;
    let mut env = env_for(&base_url(&server));
    env[1].1 = common::jwt::token("erin", &[]);
    let ran = run_cli(&["exec", &c.name, "--", "echo", "allowed"], &env, None).await;
    assert_eq!(
        (ran.code, String::from_utf8_lossy(&ran.stdout).into_owned()),
        (0, "allowed\n".into()),
        "{}",
        ran.stderr
    );
    let ran = run_cli(&["exec", &c.name, "--", "sh", "-c", "id"], &env, None).await;
    assert_eq!(
        (ran.code, ran.stderr.starts_with("porthole-cli: command_not_allowed: ")),
        (125, true),
        "{}",
        ran.stderr
    );
    let ran = run_cli(&["exec", &c.name], &env, None).await;
    assert_eq!(
        (ran.code, ran.stderr.starts_with("porthole-cli: command_not_allowed: ")),
        (125, true),
        "{}",
        ran.stderr
    );
    assert!(c.wait_no_strays(PATIENCE).await.is_empty());
}

#[tokio::test]
async fn tls_is_verified_against_the_system_or_the_given_authority() {
    let c = TestContainer::start("cli-tls", &bash_image()).await;
    let mut config = test_config();
    config.tls_cert = Some(fixture("tls-cert.pem"));
    config.tls_key = Some(fixture("tls-key.pem"));
    let server = start_server(config).await;
    let url = format!("https://localhost:{}", server.addr().port());
    let env = env_for(&url);
    // The test certificate is nobody's the system trusts.
    let ran = run_cli(&["exec", &c.name, "--", "true"], &env, None).await;
    assert_eq!((ran.code, ran.stderr.starts_with("porthole-cli: tls_error: ")), (125, true), "{}", ran.stderr);
    let ran = run_cli(&["ls"], &env, None).await;
    assert_eq!((ran.code, ran.stderr.starts_with("porthole-cli: tls_error: ")), (125, true), "{}", ran.stderr);
    // Trusting it by --ca-file works, for the socket and for REST.
    let ca = fixture("tls-cert.pem").display().to_string();
    let ran = run_cli(&["--ca-file", &ca, "exec", &c.name, "--", "sh", "-c", "echo over-tls"], &env, None).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "over-tls\n");
    let ran = run_cli(&["--ca-file", &ca, "ls", "--json"], &env, None).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
}

#[tokio::test]
async fn login_saves_the_server_and_a_terminal_ended_elsewhere_exits_125() {
    let c = TestContainer::start("cli-login", &bash_image()).await;
    let server = start_server(test_config()).await;
    let url = base_url(&server);
    let config_home = tempdir("cli-login-config");
    let env = vec![("XDG_CONFIG_HOME".to_string(), config_home.display().to_string())];
    // A wrong token is refused and nothing is written.
    let ran = run_cli(&["login", &url], &env, Some(b"wrong-token-wrong-token\n".to_vec())).await;
    assert_eq!((ran.code, ran.stderr.starts_with("porthole-cli: unauthenticated: ")), (125, true), "{}", ran.stderr);
    let file = config_home.join("porthole/config.toml");
    assert!(!file.exists());
    let ran = run_cli(&["login", &url], &env, Some(format!("{TEST_TOKEN}\n").into_bytes())).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let saved: toml::Value = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(saved["url"].as_str(), Some(url.as_str()));
    assert_eq!(saved["token"].as_str(), Some(TEST_TOKEN));
    // Later commands need no flags.
    let ran = run_cli(&["exec", &c.name, "--", "echo", "from-config"], &env, None).await;
    assert_eq!(
        (ran.code, String::from_utf8_lossy(&ran.stdout).into_owned()),
        (0, "from-config\n".into()),
        "{}",
        ran.stderr
    );

    // A terminal closed elsewhere ends without an exit code of its own: 125, naming the reason.
    let mut s = Screen::spawn(&["exec", "-t", &c.name, "--", "sleep", "600"], &env, 80, 24);
    let deadline = Instant::now() + PATIENCE;
    let id = loop {
        let list: Vec<Value> = get(format!("{url}/api/v1/terminals")).await.json().await.unwrap();
        if let Some(t) = list.iter().find(|t| t["command"][0] == "sleep" && t["state"] == "running") {
            break t["terminalId"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the terminal never showed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let res = http().delete(format!("{url}/api/v1/terminals/{id}")).send().await.unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(s.exit_code().await, 125);
    s.wait_for("porthole-cli: closed: terminal").await;
}

#[tokio::test]
async fn sandboxes_and_recordings_from_the_command_line() {
    let mut config = test_config();
    config.sandboxes = Some(profiles_file("[profile.scratch]\nimage = \"IMAGE\"\nmemory = \"64m\"\npids = 64\n"));
    config.record = porthole_server::config::RecordFlag::Output;
    config.recordings_dir = Some(tempdir("cli-recordings"));
    let server = start_server(config).await;
    let _guard = InstanceGuard(server.state().sandbox_manager().instance().to_string());
    let url = base_url(&server);
    let env = env_for(&url);
    let mut s = Screen::spawn(&["sandbox", "new", "scratch"], &env, 80, 24);
    let screen = s.wait_for("porthole-cli sandbox rm ").await;
    let name: String = screen[screen.find("sandbox rm ").unwrap() + "sandbox rm ".len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    s.wait_for("$ ").await;
    s.run("echo needle-$((40+2)); sleep 1; echo after-pause", "after-pause").await;
    // `ls` shows the sandbox with its profile.
    let ls = run_cli(&["ls"], &env, None).await;
    let table = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(table.contains(&name) && table.contains("profile scratch"), "{table}");
    s.keys(b"exit\r");
    assert_eq!(s.exit_code().await, 0);

    // The recording is listed, found by a word on screen, and plays.
    let deadline = Instant::now() + PATIENCE;
    let id = loop {
        let ran = run_cli(&["rec", "search", "needle-42", "--json"], &env, None).await;
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        let hits: Vec<Value> = serde_json::from_slice(&ran.stdout).unwrap();
        if let Some(r) = hits.first() {
            break r["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the recording was never found");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ran = run_cli(&["rec", "ls"], &env, None).await;
    assert!(String::from_utf8_lossy(&ran.stdout).contains(&id), "{}", ran.stderr);
    // At recorded speed the one-second pause shows; compressed, it does not.
    let t0 = Instant::now();
    let ran = run_cli(&["rec", "play", &id], &env, None).await;
    let real = t0.elapsed();
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(String::from_utf8_lossy(&ran.stdout).contains("after-pause"));
    assert!(real >= Duration::from_millis(900), "played in {real:?}");
    let t0 = Instant::now();
    let ran = run_cli(&["rec", "play", &id, "--speed", "4", "--idle-time-limit", "0.1"], &env, None).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(t0.elapsed() < real, "compressed playback is quicker ({:?} vs {real:?})", t0.elapsed());
    let ran = run_cli(&["rec", "play", "t-0123456789abcdef0123456789abcdef"], &env, None).await;
    assert_eq!((ran.code, ran.stderr.starts_with("porthole-cli: unknown_recording: ")), (125, true), "{}", ran.stderr);

    let ran = run_cli(&["sandbox", "rm", &name], &env, None).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let ran = run_cli(&["sandbox", "rm", &name], &env, None).await;
    assert_eq!(
        (ran.code, ran.stderr.starts_with("porthole-cli: container_not_found: ")),
        (125, true),
        "{}",
        ran.stderr
    );
}
