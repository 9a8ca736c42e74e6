//! Isolation, proven inside real sandboxes on the real engine, under runc and under gVisor (runsc): what a user
//! in a sandbox cannot do, measured from inside (their terminal) and from outside (Docker's view of the
//! container's cgroup).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use app::protocol::{CreateSandbox, ExitReason, SandboxCreated, event};
use bollard::query_parameters::StatsOptionsBuilder;
use common::sandbox::*;
use common::*;
use futures_util::StreamExt;
use porthole_server::RunningServer;

const PROFILES: &str = r#"
[profile.runc]
image = "IMAGE"
memory = "64m"
cpus = 0.5
pids = 64
tmpfs = { "/tmp" = "4m", "/home/sandbox" = "4m" }

[profile.gvisor]
image = "IMAGE"
runtime = "runsc"
memory = "64m"
cpus = 0.5
pids = 512
tmpfs = { "/tmp" = "4m", "/home/sandbox" = "4m" }

[profile.oom]
image = "IMAGE"
memory = "32m"
command = ["sh", "-c", "sleep 4; exec tail /dev/zero"]
"#;

/// The tests that load the machine (a busy loop measured, a fork bomb, memory hogs) run one at a time, so one's
/// load does not skew another's measurement.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn server() -> (RunningServer, InstanceGuard) {
    let mut c = test_config();
    c.sandboxes = Some(profiles_file(PROFILES));
    let server = start_server(c).await;
    let guard = InstanceGuard(server.state().sandbox_manager().instance().to_string());
    (server, guard)
}

async fn sandbox(client: &TestClient, profile: &str) -> SandboxCreated {
    let req = CreateSandbox { profile: profile.into(), cols: Some(200), rows: Some(50), flow_control: false };
    client.request(event::CREATE_SANDBOX, &req).await.unwrap_or_else(|e| panic!("create-sandbox {profile}: {e:?}"))
}

/// Runs `command` in the sandbox's first terminal and returns what it printed, up to `marker`.
async fn run(client: &TestClient, created: &SandboxCreated, command: &str, marker: &str) -> String {
    run_in(client, &created.terminal.terminal_id, command, marker).await
}

/// Runs `command` then `echo marker` in terminal `id`; returns what it printed, up to the marker's own line.
async fn run_in(client: &TestClient, id: &app::protocol::TerminalId, command: &str, marker: &str) -> String {
    let before = client.bytes(id).len();
    client.input(id, &format!("{command}; echo {marker}\n")).await;
    // The echoed command line holds the marker too; wait for it on a line of its own.
    let out = client.wait_for(id, &format!("\n{marker}")).await;
    out[before.min(out.len())..].to_string()
}

#[tokio::test]
async fn privileges_network_and_filesystem_are_locked_down_under_runc_and_gvisor() {
    init_tracing();
    let (server, _guard) = server().await;
    let client = TestClient::connect(&server).await;
    for profile in ["runc", "gvisor"] {
        let s = sandbox(&client, profile).await;
        let out = run(&client, &s, "grep CapEff /proc/self/status", "caps-done").await;
        assert!(out.contains("CapEff:\t0000000000000000"), "{profile}: no effective capabilities:\n{out}");
        let out = run(&client, &s, "echo uid=$(id -u):$(id -g)", "uid-done").await;
        assert!(out.contains("uid=65534:65534"), "{profile}: the profile's user:\n{out}");
        if profile == "runc" {
            // gVisor's /proc/self/status has no NoNewPrivs line; Docker's setting is checked from outside.
            let out = run(&client, &s, "grep NoNewPrivs /proc/self/status", "nnp-done").await;
            assert!(out.contains("NoNewPrivs:\t1"), "{profile}:\n{out}");
        }
        assert_eq!(inspect(&s.sandbox.id).unwrap()["HostConfig"]["SecurityOpt"][0], "no-new-privileges:true");
        let out = run(&client, &s, "mount -t tmpfs x /tmp 2>/dev/null || echo mount-refused", "mount-done").await;
        assert!(out.contains("\nmount-refused"), "{profile}: mount must fail:\n{out}");
        let out = run(&client, &s, "chroot / true 2>/dev/null || echo chroot-refused", "chroot-done").await;
        assert!(out.contains("\nchroot-refused"), "{profile}: chroot must fail:\n{out}");

        // Network: only the loopback interface, and the host cannot be reached.
        let out = run(&client, &s, "echo nets=$(ls /sys/class/net | tr '\\n' ,)", "nets-done").await;
        assert!(out.contains("nets=lo,"), "{profile}: only lo:\n{out}");
        let out =
            run(&client, &s, "bash -c 'echo > /dev/tcp/172.17.0.1/7' 2>/dev/null || echo host-unreachable", "tcp-done")
                .await;
        assert!(out.contains("\nhost-unreachable"), "{profile}: a connection to the host must fail:\n{out}");

        // Filesystem: the root is read-only; a tmpfs holds no more than its size.
        let out = run(&client, &s, "(echo x > /rootfile) 2>/dev/null || echo rootfs-refused", "rootfs-done").await;
        assert!(out.contains("\nrootfs-refused"), "{profile}: the root filesystem must refuse writes:\n{out}");
        let out = run(
            &client,
            &s,
            "e=$(dd if=/dev/zero of=/tmp/big bs=1M count=8 2>&1) || echo tmpfs-full $(wc -c < /tmp/big) $e; rm -f /tmp/big",
            "tmpfs-done",
        )
        .await;
        let line = out.lines().find(|l| l.starts_with("tmpfs-full")).unwrap_or_else(|| panic!("{profile}:\n{out}"));
        let written: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(written <= 4 << 20, "{profile}: {written} bytes went into a 4m tmpfs");
        assert!(line.contains("No space left on device"), "{profile}: ENOSPC:\n{line}");
        let removed: app::protocol::RemoveSandbox = client
            .request(event::REMOVE_SANDBOX, &app::protocol::RemoveSandbox { id: s.sandbox.id.clone() })
            .await
            .unwrap();
        assert_eq!(removed.id, s.sandbox.id);
        assert!(inspect(&s.sandbox.id).is_none(), "{profile}: nothing left after removal");
    }
    client.disconnect().await;
}

/// Host pids of a container's processes (`docker top`).
fn host_pids(id: &str) -> Vec<u32> {
    let out = std::process::Command::new("docker").args(["top", id, "-eo", "pid"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().skip(1).filter_map(|l| l.trim().parse().ok()).collect()
}

#[tokio::test]
async fn closing_a_terminal_in_a_sandbox_leaves_no_process_and_removal_leaves_nothing() {
    init_tracing();
    let (server, _guard) = server().await;
    let client = TestClient::connect(&server).await;
    for profile in ["runc", "gvisor"] {
        let s = sandbox(&client, profile).await;
        let watcher = client.shell(&s.sandbox.id).await;
        client.run(&watcher.terminal_id, "echo watching", "watching").await;
        let t = &s.terminal.terminal_id;
        client.run(t, "sleep 1001 & sleep 1002 & echo started-$((2*3))", "started-6").await;
        client.close(t).await.expect("close-terminal");
        // Root in the sandbox has no CAP_KILL over the profile's user: the reaper must run as that user.
        let count =
            "echo left=$(cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -o 'sleep 100[12]' | wc -l)";
        let out = run_in(&client, &watcher.terminal_id, count, "count-done").await;
        let left = out.rsplit("left=").next().unwrap_or_default();
        assert!(left.trim_start().starts_with('0'), "{profile}: the closed terminal's processes remain:\n{out}");
        let pids = if profile == "runc" { host_pids(&s.sandbox.id) } else { Vec::new() };
        let api = Rest { base: base_url(&server), http: http() };
        assert_eq!(api.remove(&s.sandbox.id).await, (204, String::new()));
        assert_eq!(client.wait_exit(&watcher.terminal_id).await.reason, ExitReason::SandboxRemoved);
        assert!(inspect(&s.sandbox.id).is_none(), "{profile}: the container is gone");
        for pid in pids {
            assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "{profile}: host pid {pid} survived");
        }
    }
    client.disconnect().await;
}

#[tokio::test]
async fn memory_past_the_limit_is_oom_killed_and_an_oom_killed_sandbox_says_so() {
    init_tracing();
    let _alone = HEAVY.lock().await;
    let (server, _guard) = server().await;
    let client = TestClient::connect(&server).await;
    for profile in ["runc", "gvisor"] {
        let s = sandbox(&client, profile).await;
        let host = &inspect(&s.sandbox.id).unwrap()["HostConfig"];
        assert_eq!((host["Memory"].as_i64(), host["MemorySwap"].as_i64()), (Some(64 << 20), Some(64 << 20)));
        let id = &s.terminal.terminal_id;
        client.input(id, "tail /dev/zero; echo hog=$?\n").await;
        if profile == "runc" {
            let out = client.wait_for(id, "hog=137").await;
            assert!(out.contains("hog=137"), "a process past the memory limit is killed (SIGKILL)");
            let out = run(&client, &s, "echo alive-$((1+1))", "alive-done").await;
            assert!(out.contains("alive-2"), "the terminal survives its process's OOM kill:\n{out}");
        } else {
            // Under gVisor the host kills the sandbox's kernel, the largest process in the cgroup: the whole
            // sandbox goes, and its terminal says why.
            let exit = client.wait_exit(id).await;
            assert_eq!(exit.reason, ExitReason::Oom, "{profile}: {exit:?}");
        }
    }

    // The sandbox's own main process runs out of memory: its terminals end with `oom`.
    let doomed = sandbox(&client, "oom").await;
    let exit = client.wait_exit(&doomed.terminal.terminal_id).await;
    assert_eq!(exit.reason, ExitReason::Oom, "{exit:?}");
    client.disconnect().await;
}

/// CPU time the container has used, in nanoseconds (Docker's stats).
async fn cpu_ns(id: &str) -> u64 {
    let docker = docker().await;
    // One sample at once (without one_shot Docker waits a second for a second sample).
    let options = StatsOptionsBuilder::new().stream(false).one_shot(true).build();
    let stats = docker.stats(id, Some(options)).next().await.unwrap().unwrap();
    stats.cpu_stats.and_then(|c| c.cpu_usage).and_then(|u| u.total_usage).unwrap()
}

#[tokio::test]
async fn a_busy_loop_gets_no_more_than_its_cpus() {
    init_tracing();
    let _alone = HEAVY.lock().await;
    let (server, _guard) = server().await;
    let client = TestClient::connect(&server).await;
    for profile in ["runc", "gvisor"] {
        let s = sandbox(&client, profile).await;
        // Two busy loops on a 2-core machine would take both cores without the limit.
        run(&client, &s, "for i in 1 2; do (while :; do :; done) & done", "spinning").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let u0 = cpu_ns(&s.sandbox.id).await;
        let t0 = std::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(4)).await;
        let u1 = cpu_ns(&s.sandbox.id).await;
        let t1 = std::time::Instant::now();
        let cpus = (u1 - u0) as f64 / (t1 - t0).as_nanos() as f64;
        // CFS quota periods are 100 ms; over 4 s the average is within a few percent of the limit.
        assert!(cpus <= 0.5 * 1.15, "{profile}: a cpus = 0.5 sandbox used {cpus:.2} CPUs");
        assert!(cpus >= 0.3, "{profile}: the loops ran ({cpus:.2} CPUs): the measurement measures something");
        let api = Rest { base: base_url(&server), http: http() };
        assert_eq!(api.remove(&s.sandbox.id).await, (204, String::new()));
    }
    client.disconnect().await;
}

#[tokio::test]
async fn a_fork_bomb_stays_inside_its_pids_limit_and_harms_nobody_else() {
    init_tracing();
    let _alone = HEAVY.lock().await;
    let (server, _guard) = server().await;
    let bystander_box = TestContainer::start("iso-bystander", &bash_image()).await;
    let client = TestClient::connect(&server).await;
    let bystander = TestClient::connect(&server).await;
    let b = bystander.shell(&bystander_box.name).await;
    let docker = docker().await;
    for (profile, limit) in [("runc", 64), ("gvisor", 512)] {
        let s = sandbox(&client, profile).await;
        client.input(&s.terminal.terminal_id, "bomb() { bomb | bomb & }; bomb\n").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        for round in 0..5 {
            let options = StatsOptionsBuilder::new().stream(false).one_shot(true).build();
            let stats = docker.stats(&s.sandbox.id, Some(options)).next().await.unwrap().unwrap();
            let pids = stats.pids_stats.and_then(|p| p.current).unwrap_or(0);
            assert!(pids <= limit, "{profile} round {round}: {pids} processes in a pids = {limit} sandbox");
            let marker = format!("still-here-{profile}-{round}");
            bystander.run(&b.terminal_id, &format!("echo {marker}"), &format!("\n{marker}")).await;
        }
        // A new sandbox can still be made meanwhile.
        let other = sandbox(&bystander, "runc").await;
        run(&bystander, &other, "echo fresh-$((3*3))", "fresh-done").await;
        let api = Rest { base: base_url(&server), http: http() };
        for id in [&s.sandbox.id, &other.sandbox.id] {
            assert_eq!(api.remove(id).await, (204, String::new()));
            assert!(inspect(id).is_none(), "{profile}: the sandbox is gone");
        }
    }
    client.disconnect().await;
    bystander.disconnect().await;
}
