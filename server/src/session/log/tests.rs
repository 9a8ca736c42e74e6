//! Unit tests of the event log.

use super::*;
use app::protocol::{ExitReason, TerminalId};

fn exit() -> Exit {
    Exit { terminal_id: TerminalId("t-1".into()), exit_code: Some(0), reason: ExitReason::Exited }
}

fn viewer(log: &Arc<EventLog>, id: &str, since: Option<u64>, flow: bool) -> (ViewerSub, ViewerStart) {
    log.attach_viewer(ViewerId(id.into()), "u", since, flow, false, &CancellationToken::new()).unwrap()
}

fn output(d: Option<Delivery>) -> (u64, Vec<u8>) {
    match d {
        Some(Delivery::Output { offset, data, .. }) => (offset, data.to_vec()),
        other => panic!("expected output, got {other:?}"),
    }
}

#[test]
fn offsets_count_every_output_byte_and_reads_join_chunks() {
    let log = EventLog::with_limits(1024, 0, 0);
    log.push_output(Bytes::from_static(b"hello "));
    log.push_resize(100, 30);
    log.push_output(Bytes::from_static(b"world"));
    assert_eq!(log.end(), 11);
    let (v, start) = viewer(&log, "a", None, false);
    assert_eq!(start, ViewerStart { offset: 0, end: 11, truncated: false });
    assert_eq!(output(v.peek(64)), (0, b"hello world".to_vec()));
    // A read from inside a chunk starts there, and `max` cuts it.
    let (v, _) = viewer(&log, "b", Some(3), false);
    assert_eq!(output(v.peek(4)), (3, b"lo w".to_vec()));
    assert!(log.attach_viewer(ViewerId("c".into()), "u", Some(12), false, false, &CancellationToken::new()).is_err());
}

#[test]
fn truncation_keeps_the_newest_bytes_and_reads_across_the_truncation_point_start_at_the_oldest_kept() {
    let log = EventLog::with_limits(10, 0, 0);
    for chunk in [&b"aaaa"[..], b"bbbb", b"cccc", b"dddd"] {
        log.push_output(Bytes::copy_from_slice(chunk));
    }
    // 16 bytes published, 10 kept at most: the first two chunks are gone.
    assert_eq!(log.end(), 16);
    let (v, start) = viewer(&log, "a", Some(2), false);
    assert_eq!(start, ViewerStart { offset: 8, end: 16, truncated: true });
    assert_eq!(output(v.peek(100)), (8, b"ccccdddd".to_vec()));
    // The newest chunk stays even when it alone is over the cap.
    log.push_output(Bytes::from(vec![b'e'; 50]));
    let (v, start) = viewer(&log, "b", None, false);
    assert_eq!((start.offset, start.truncated), (16, false));
    assert_eq!(output(v.peek(100)).1.len(), 50);
}

#[test]
fn a_viewer_reading_when_its_cursor_falls_off_the_log_continues_at_the_oldest_kept_byte() {
    let log = EventLog::with_limits(8, 0, 0);
    log.push_output(Bytes::from_static(b"0123"));
    let (mut v, _) = viewer(&log, "a", Some(0), false);
    assert_eq!(output(v.peek(2)), (0, b"01".to_vec()));
    v.delivered(0, 2);
    log.push_output(Bytes::from_static(b"4567"));
    log.push_output(Bytes::from_static(b"89ab"));
    // Bytes 2..4 fell off; the read moves to 4.
    assert_eq!(output(v.peek(100)), (4, b"456789ab".to_vec()));
}

#[test]
fn timestamps_never_decrease_and_taps_see_every_event_in_order() {
    let log = EventLog::with_limits(1 << 20, 0, 0);
    let mut tap = log.tap(true);
    log.push_output(Bytes::from_static(b"$ "));
    log.push_input(&Bytes::from_static(b"ls\r"));
    log.push_resize(120, 40);
    log.push_output(Bytes::from_static(b"a b c"));
    log.finish(exit());
    log.push_output(Bytes::from_static(b"after the exit"));
    let mut events = Vec::new();
    while let Some(e) = tap.try_next() {
        events.push(e);
    }
    let ats: Vec<Duration> = events
        .iter()
        .map(|e| match e {
            Event::Output { at, .. }
            | Event::Resize { at, .. }
            | Event::Input { at, .. }
            | Event::Gap { at, .. }
            | Event::Marker { at, .. }
            | Event::Exit { at, .. } => *at,
        })
        .collect();
    assert!(ats.windows(2).all(|w| w[0] <= w[1]), "{ats:?}");
    assert!(matches!(&events[0], Event::Output { offset: 0, data, .. } if &data[..] == b"$ "));
    assert!(matches!(&events[1], Event::Input { data, .. } if &data[..] == b"ls\r"));
    assert!(matches!(events[2], Event::Resize { cols: 120, rows: 40, .. }));
    assert!(matches!(&events[3], Event::Output { offset: 2, .. }));
    assert!(matches!(&events[4], Event::Exit { exit: e, .. } if e.exit_code == Some(0)));
    assert_eq!(events.len(), 5);
}

#[test]
fn input_is_kept_only_while_a_tap_asks_for_it() {
    let log = EventLog::with_limits(1 << 20, 0, 0);
    let mut plain = log.tap(false);
    log.push_input(&Bytes::from_static(b"secret"));
    let with_input = log.tap(true);
    log.push_input(&Bytes::from_static(b"typed"));
    drop(with_input);
    log.push_input(&Bytes::from_static(b"later"));
    log.push_output(Bytes::from_static(b"x"));
    let mut tap = log.tap(true);
    let mut seen = Vec::new();
    while let Some(e) = tap.try_next() {
        seen.push(e);
    }
    assert!(matches!(&seen[0], Event::Input { data, .. } if &data[..] == b"typed"));
    assert!(matches!(&seen[1], Event::Output { .. }));
    assert_eq!(seen.len(), 2);
    // The plain tap never sees input.
    assert!(matches!(plain.try_next(), Some(Event::Output { .. })));
}

#[test]
fn a_slow_tap_gets_a_gap_and_never_holds_the_terminal_back() {
    let log = EventLog::with_limits(8, 0, 0);
    let mut tap = log.tap(false);
    log.push_output(Bytes::from_static(b"0123"));
    assert!(matches!(tap.try_next(), Some(Event::Output { offset: 0, .. })));
    for chunk in [&b"4567"[..], b"89ab", b"cdef"] {
        log.push_output(Bytes::copy_from_slice(chunk));
    }
    // Taps are not viewers: nothing waits for them.
    assert_eq!((log.viewers(), log.lag()), (0, 0));
    // 4..8 fell off before the tap read it.
    assert_eq!(tap.try_next().map(|e| matches!(e, Event::Gap { missed: 4, .. })), Some(true));
    assert!(matches!(tap.try_next(), Some(Event::Output { offset: 8, .. })));
    assert!(matches!(tap.try_next(), Some(Event::Output { offset: 12, .. })));
    assert_eq!(tap.try_next(), None);
}

#[test]
fn the_log_keeps_what_a_tap_has_not_read_within_the_slack() {
    let log = EventLog::with_limits(8, 0, 4);
    let mut tap = log.tap(false);
    log.push_output(Bytes::from_static(b"0123"));
    assert!(matches!(tap.try_next(), Some(Event::Output { offset: 0, .. })));
    for chunk in [&b"4567"[..], b"89ab", b"cdef"] {
        log.push_output(Bytes::copy_from_slice(chunk));
    }
    // 12 bytes are kept (8 + the slack of 4): everything the tap has not read.
    let got: Vec<u64> = std::iter::from_fn(|| match tap.try_next() {
        Some(Event::Output { offset, .. }) => Some(offset),
        _ => None,
    })
    .collect();
    assert_eq!(got, [4, 8, 12]);
    // Beyond the slack, the oldest unread goes and the tap gets a gap.
    for chunk in [&b"ghij"[..], b"klmn", b"opqr", b"stuv"] {
        log.push_output(Bytes::copy_from_slice(chunk));
    }
    assert!(matches!(tap.try_next(), Some(Event::Gap { missed: 4, .. })));
    // (Without the tap, attaching pushes no markers, which would take room.)
    drop(tap);
    // A viewer is replayed only the newest 8 bytes (the cap), not what is kept for the tap.
    let (_v, start) = viewer(&log, "v", None, false);
    assert_eq!(start.offset, 24);
    // Asked for, the older kept bytes are there.
    let (_w, start) = viewer(&log, "w", Some(20), false);
    assert_eq!((start.offset, start.truncated), (20, false));
}

#[tokio::test]
async fn flow_controlled_viewers_hold_the_reader_and_a_viewer_leaving_mid_read_releases_it() {
    let log = EventLog::with_limits(1 << 20, 0, 0);
    let (mut slow, _) = viewer(&log, "slow", Some(0), true);
    let (fast, _) = viewer(&log, "fast", Some(0), false);
    assert_eq!(log.viewers(), 2);
    log.push_output(Bytes::from(vec![b'x'; 1000]));
    // The slow viewer takes part of it and acknowledges nothing.
    let (offset, data) = output(slow.next(300).await);
    assert_eq!((offset, data.len()), (0, 300));
    slow.delivered(0, 300);
    assert_eq!(log.lag(), 1000);
    assert_eq!(log.ack(slow.id(), 301), Err(AckError::Ahead { sent: 300 }));
    assert_eq!(log.ack(&ViewerId("nobody".into()), 1), Err(AckError::NotAttached));
    assert_eq!(log.ack(fast.id(), 0), Err(AckError::NoFlowControl));
    let stop = CancellationToken::new();
    let waiting = {
        let log = log.clone();
        let stop = stop.clone();
        tokio::spawn(async move { log.wait_for_viewers(100, false, &stop).await })
    };
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    // The fast viewer is not behind on acks, but on sending; it catches up.
    let mut fast = fast;
    fast.delivered(0, 1000);
    // The slow one leaves mid-read: the reader goes on, and it is no longer counted.
    drop(slow);
    assert!(tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap());
    assert_eq!(log.viewers(), 1);
    assert!(!log.is_viewer(&ViewerId("slow".into())));
}

#[tokio::test]
async fn a_replaced_viewer_stops_and_its_drop_leaves_the_new_one() {
    let log = EventLog::with_limits(1024, 0, 0);
    let (mut old, _) = viewer(&log, "a", None, false);
    let (new, _) = viewer(&log, "a", None, false);
    assert!(old.stopped().is_cancelled());
    assert_eq!(old.next(10).await, None);
    drop(old);
    assert!(new.current());
    assert_eq!(log.viewers(), 1);
    assert_eq!(log.detach_viewer(new.id()), Some(false));
    assert!(new.stopped().is_cancelled());
    assert_eq!(log.viewers(), 0);
}

#[tokio::test]
async fn viewers_get_the_exit_after_the_last_byte() {
    let log = EventLog::with_limits(1024, 0, 0);
    let (mut v, _) = viewer(&log, "a", None, false);
    let reader = {
        let log = log.clone();
        tokio::spawn(async move {
            log.push_output(Bytes::from_static(b"bye"));
            log.finish(exit());
        })
    };
    assert_eq!(output(v.next(10).await), (0, b"bye".to_vec()));
    v.delivered(0, 3);
    assert_eq!(v.next(10).await, Some(Delivery::Exit(exit())));
    reader.await.unwrap();
    let mut tap = log.tap(false);
    assert!(matches!(tap.next().await, Some(Event::Output { .. })));
    assert!(matches!(tap.next().await, Some(Event::Exit { .. })));
    assert_eq!(tap.next().await, None);
}

#[test]
fn tiny_entries_count_their_overhead_so_resizes_cannot_grow_the_log_past_its_cap() {
    let log = EventLog::new(64 * 1024);
    log.push_output(Bytes::from_static(b"$ "));
    for i in 0..100_000u32 {
        log.push_resize(80 + (i % 50) as u16, 24);
    }
    let inner = log.lock();
    assert!(inner.entries.len() <= 64 * 1024 / ENTRY_OVERHEAD_BYTES, "{} entries kept", inner.entries.len());
    assert!(inner.bytes <= 64 * 1024);
    // The output that fell off is reported to a late viewer as truncation, not lost silently.
    assert_eq!(inner.start(), inner.end);
}

#[test]
fn with_nobody_attached_the_backlog_held_is_what_the_last_viewer_had_not_processed() {
    let log = EventLog::new(1 << 20);
    let (mut sub, _) = viewer(&log, "a", None, true);
    log.push_output(Bytes::from(vec![7u8; 1000]));
    sub.delivered(0, 1000);
    log.ack(&ViewerId("a".into()), 400).unwrap();
    drop(sub);
    // A tty runs freely with nobody attached; a pipe holds what its reader has not had.
    assert_eq!((log.backlog(false), log.backlog(true)), (0, 600));
    let (_sub, _) = viewer(&log, "b", Some(400), true);
    assert_eq!(log.backlog(true), 600);
}
