//! The session core on the fake echo runtime: lifecycle, viewers, taps, quotas. (Everything that needs a real
//! container is in the integration tests.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::protocol::{ErrorCode, Exit, ExitReason, Owner, TerminalId};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::launch::StartPlan;
use super::log::Event;
use super::terminal::Phase;
use super::{AttachOptions, Limits, Offer, OwnerId, Sessions, TerminalSink, ViewerId};
use crate::docker::echo::{CONTAINER, EchoRuntime};

#[derive(Default)]
struct Collect {
    out: Mutex<Vec<u8>>,
    exits: Mutex<Vec<Exit>>,
    viewers: Mutex<Vec<usize>>,
}

impl TerminalSink for Collect {
    fn output(&self, _: &TerminalId, _: u64, data: &Bytes, _: app::protocol::OutputStream) -> Offer {
        self.out.lock().unwrap().extend_from_slice(data);
        Offer::Delivered
    }
    fn viewers(&self, _: &TerminalId, attached: usize) {
        self.viewers.lock().unwrap().push(attached);
    }
    fn exit(&self, exit: &Exit) {
        self.exits.lock().unwrap().push(exit.clone());
    }
}

fn limits(grace: Duration) -> Limits {
    Limits { per_client: 2, per_user: 8, total: 16, grace, log_bytes: 1 << 20 }
}

fn owner() -> OwnerId {
    OwnerId { user: "ann".into(), client: Owner::Client("c1".into()) }
}

fn plan(command: Option<&[&str]>) -> StartPlan {
    StartPlan {
        container_ref: CONTAINER.into(),
        cols: 80,
        rows: 24,
        command: command.map(|c| c.iter().map(|s| s.to_string()).collect()),
        flow_control: false,
        tty: true,
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn started(sessions: &Arc<Sessions>, runtime: &Arc<EchoRuntime>) -> Arc<super::Terminal> {
    let target = runtime.resolve_target().await;
    sessions.start(&owner(), target, &plan(Some(&["cat"])), None, None).await.unwrap().0
}

impl EchoRuntime {
    async fn resolve_target(&self) -> crate::docker::ContainerTarget {
        use crate::docker::ContainerRuntime;
        self.resolve(CONTAINER).await.unwrap()
    }
}

#[tokio::test]
async fn input_comes_back_in_order_and_close_leaves_no_process() {
    let runtime = Arc::new(EchoRuntime::default());
    let sessions = Sessions::new(runtime.clone(), limits(Duration::from_secs(60)));
    let t = started(&sessions, &runtime).await;
    let gone = CancellationToken::new();
    let (attachment, ack) = sessions.attach(&t, ViewerId("s1".into()), AttachOptions::default(), &gone).unwrap();
    assert_eq!((ack.offset, ack.ended, ack.read_only), (0, false, false));
    let sink = Arc::new(Collect::default());
    attachment.start(sink.clone());
    for word in ["one ", "two ", "three"] {
        t.send_input(Bytes::from(word), false, None, None).unwrap();
    }
    eventually("the echo", || sink.out.lock().unwrap().as_slice() == b"one two three").await;
    assert_eq!(sink.viewers.lock().unwrap().first(), Some(&1));
    sessions.close(&t, ExitReason::Closed).await.unwrap();
    assert!(matches!(t.phase(), Phase::Ended(Exit { reason: ExitReason::Closed, .. })));
    assert_eq!(runtime.running(), 0, "a closed terminal leaves no process");
    eventually("the exit", || sink.exits.lock().unwrap().len() == 1).await;
    // Closed terminals leave the list; closing again is fine.
    assert!(sessions.find(t.id()).is_err());
    sessions.close(&t, ExitReason::Closed).await.unwrap();
}

#[tokio::test]
async fn a_tap_is_never_counted_and_never_holds_the_grace_period() {
    let runtime = Arc::new(EchoRuntime::default());
    let sessions = Sessions::new(runtime.clone(), limits(Duration::from_millis(200)));
    let t = started(&sessions, &runtime).await;
    let mut tap = t.log().tap(true);
    let gone = CancellationToken::new();
    let viewer = ViewerId("s1".into());
    let (attachment, _) = sessions.attach(&t, viewer.clone(), AttachOptions::default(), &gone).unwrap();
    let sink = Arc::new(Collect::default());
    attachment.start(sink.clone());
    t.send_input(Bytes::from_static(b"hi"), false, None, None).unwrap();
    eventually("the echo", || sink.out.lock().unwrap().as_slice() == b"hi").await;
    assert_eq!(sessions.info(&t).attached, 1);
    sessions.detach(&t, &viewer);
    assert_eq!(sessions.info(&t).attached, 0);
    // Nobody but the tap follows it: the grace period runs out and the terminal is abandoned.
    tokio::time::timeout(Duration::from_secs(5), t.ended()).await.unwrap();
    assert!(matches!(t.phase(), Phase::Ended(Exit { reason: ExitReason::Abandoned, .. })));
    let mut kinds = Vec::new();
    while let Some(e) = tap.next().await {
        kinds.push(match e {
            Event::Output { data, .. } => format!("o:{}", String::from_utf8_lossy(&data)),
            Event::Input { data, .. } => format!("i:{}", String::from_utf8_lossy(&data)),
            Event::Resize { cols, rows, .. } => format!("r:{cols}x{rows}"),
            Event::Gap { missed, .. } => format!("gap:{missed}"),
            Event::Marker { text, .. } => format!("m:{text}"),
            Event::Exit { exit, .. } => format!("exit:{}", exit.reason),
        });
    }
    assert!(kinds.iter().any(|k| k.starts_with("m:detach ")), "{kinds:?}");
    assert_eq!(kinds.first().map(String::as_str), Some("m:attach "));
    assert_eq!(kinds.get(1).map(String::as_str), Some("r:80x24"));
    assert!(kinds.contains(&"i:hi".to_string()) && kinds.contains(&"o:hi".to_string()), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("exit:abandoned"));
}

#[tokio::test]
async fn a_viewer_coming_back_within_the_grace_period_keeps_the_terminal() {
    let runtime = Arc::new(EchoRuntime::default());
    let sessions = Sessions::new(runtime.clone(), limits(Duration::from_millis(300)));
    let t = started(&sessions, &runtime).await;
    let gone = CancellationToken::new();
    let viewer = ViewerId("s1".into());
    let (a, _) = sessions.attach(&t, viewer.clone(), AttachOptions::default(), &gone).unwrap();
    a.start(Arc::new(Collect::default()));
    sessions.detach(&t, &viewer);
    eventually("the grace timer", || sessions.info(&t).grace_left_ms.is_some()).await;
    let (a, _) = sessions.attach(&t, ViewerId("s2".into()), AttachOptions::default(), &gone).unwrap();
    a.start(Arc::new(Collect::default()));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!t.has_ended(), "a returning viewer cancels the grace period");
    assert_eq!(sessions.info(&t).grace_left_ms, None);
    sessions.close(&t, ExitReason::Closed).await.unwrap();
}

#[tokio::test]
async fn a_protocol_1_viewer_leaving_ends_the_terminal_at_once() {
    let runtime = Arc::new(EchoRuntime::default());
    let sessions = Sessions::new(runtime.clone(), limits(Duration::from_secs(60)));
    let t = started(&sessions, &runtime).await;
    let viewer = ViewerId("s1".into());
    let how = AttachOptions { ends_on_leave: true, ..AttachOptions::default() };
    let (a, _) = sessions.attach(&t, viewer.clone(), how, &CancellationToken::new()).unwrap();
    a.start(Arc::new(Collect::default()));
    sessions.detach_everywhere(&viewer).await;
    tokio::time::timeout(Duration::from_secs(5), t.ended()).await.unwrap();
    assert!(matches!(t.phase(), Phase::Ended(Exit { reason: ExitReason::Disconnected, .. })));
    assert_eq!(runtime.running(), 0);
}

#[tokio::test]
async fn quotas_count_starting_and_running_terminals_and_failed_starts_give_their_slot_back() {
    let runtime = Arc::new(EchoRuntime::default());
    let sessions = Sessions::new(runtime.clone(), limits(Duration::from_secs(60)));
    let target = runtime.resolve_target().await;
    let e = sessions.start(&owner(), target.clone(), &plan(Some(&["missing"])), None, None).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::CommandNotFound);
    assert_eq!(e.message, "missing not found in container echo");
    let a = started(&sessions, &runtime).await;
    let _b = started(&sessions, &runtime).await;
    let e = sessions.start(&owner(), target.clone(), &plan(Some(&["cat"])), None, None).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::TooManyTerminals);
    // A user quota from the policy applies to another client of the same user.
    let other = OwnerId { user: "ann".into(), client: Owner::Socket("s9".into()) };
    let e = sessions.start(&other, target.clone(), &plan(Some(&["cat"])), Some(2), None).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::QuotaExceeded);
    sessions.close(&a, ExitReason::Closed).await.unwrap();
    sessions.start(&owner(), target, &plan(Some(&["cat"])), None, None).await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_every_terminal_and_refuses_new_ones() {
    let runtime = Arc::new(EchoRuntime::default());
    let sessions = Sessions::new(runtime.clone(), limits(Duration::from_secs(60)));
    let a = started(&sessions, &runtime).await;
    sessions.shutdown().await;
    assert!(matches!(a.phase(), Phase::Ended(Exit { reason: ExitReason::ServerShutdown, .. })));
    let target = runtime.resolve_target().await;
    assert!(sessions.start(&owner(), target, &plan(None), None, None).await.is_err());
    assert_eq!(runtime.running(), 0);
}

#[tokio::test]
async fn an_attach_whose_answer_never_arrived_leaves_the_grace_period_running() {
    let runtime = Arc::new(EchoRuntime::default());
    let sessions = Sessions::new(runtime.clone(), limits(Duration::from_millis(300)));
    let t = started(&sessions, &runtime).await;
    let gone = CancellationToken::new();
    let (a, _) = sessions.attach(&t, ViewerId("s1".into()), AttachOptions::default(), &gone).unwrap();
    a.start(Arc::new(Collect::default()));
    sessions.detach(&t, &ViewerId("s1".into()));
    // A reconnecting client attaches, and its socket drops before the answer goes out.
    let (b, _) = sessions.attach(&t, ViewerId("s2".into()), AttachOptions::default(), &gone).unwrap();
    sessions.undo_attach(b);
    assert_eq!(sessions.info(&t).attached, 0);
    tokio::time::timeout(Duration::from_secs(5), t.ended()).await.expect("the grace period ran out");
    assert!(matches!(t.phase(), Phase::Ended(Exit { reason: ExitReason::Abandoned, .. })));
}

#[tokio::test]
async fn a_flow_controlled_viewer_gets_the_rest_and_the_exit_of_a_closed_terminal_without_acking() {
    let runtime = Arc::new(EchoRuntime::default());
    let sessions = Sessions::new(runtime.clone(), limits(Duration::from_secs(60)));
    let t = started(&sessions, &runtime).await;
    let how = AttachOptions { flow_control: true, ..AttachOptions::default() };
    let (a, _) = sessions.attach(&t, ViewerId("s1".into()), how, &CancellationToken::new()).unwrap();
    let sink = Arc::new(Collect::default());
    a.start(sink.clone());
    // More than the flow-control window, never acknowledged.
    let chunk = vec![b'x'; 60 * 1024];
    for _ in 0..12 {
        t.send_input(Bytes::from(chunk.clone()), false, None, None).unwrap();
    }
    eventually("the window to fill", || sink.out.lock().unwrap().len() as u64 >= app::protocol::FLOW_HIGH_WATERMARK)
        .await;
    sessions.close(&t, ExitReason::Closed).await.unwrap();
    eventually("the exit", || sink.exits.lock().unwrap().len() == 1).await;
}
