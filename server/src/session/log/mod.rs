//! A terminal's event log: everything the terminal published, in order, with the time since it started, and
//! the subscribers that follow it.
//!
//! Entries are output chunks (with their absolute byte offset), resizes and, while a subscriber asks for them,
//! input. The log keeps the newest [`EventLog::cap`] bytes of them (the newest entry always stays); a subscriber
//! may start anywhere in what is kept. The exit comes last, once, after every output byte.
//!
//! There are two kinds of subscriber:
//! - **Viewers** ([`ViewerSub`], sockets) follow the output by byte offset. They are counted ([`EventLog::viewers`]),
//!   and the terminal's reading waits for the slowest of them ([`EventLog::lag`]), so a viewer never falls off
//!   the log. Attaching a viewer id again replaces the old subscription.
//! - **Taps** ([`Tap`], recorders, transcripts, relays) follow every event by sequence number. They are never
//!   counted and never slow the terminal. The log keeps the entries a tap has not read yet for up to
//!   [`TAP_SLACK_BYTES`] beyond its capacity; a tap further behind than that gets a [`Event::Gap`] with the
//!   output bytes it missed, and that is logged.
//!
//! Both are guards: dropping one unsubscribes it. The lock inside is the log's own data structure; it is held
//! only to append or copy out, never across an await.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use app::protocol::{Exit, OutputStream};
use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{TerminalSink, ViewerId};

mod tap;
pub use tap::Tap;

/// What each entry costs against the cap beyond its bytes (about what the entry and its allocation take).
pub const ENTRY_OVERHEAD_BYTES: usize = 64;
/// How far beyond its capacity the log keeps entries a tap has not read yet (a recorder's queue: the tap
/// lags by at most this much before it misses output).
pub const TAP_SLACK_BYTES: usize = 8 * 1024 * 1024;

/// One thing a terminal published, as a tap sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Output bytes starting at byte `offset` of the terminal's output.
    Output { offset: u64, at: Duration, data: Bytes },
    /// The tty was resized.
    Resize { at: Duration, cols: u16, rows: u16 },
    /// Bytes written to the tty (only for taps that asked for input).
    Input { at: Duration, data: Bytes },
    /// The tap fell behind the log: `missed` output bytes are lost to it (the next event follows the gap).
    Gap { at: Duration, missed: u64 },
    /// A note for recorders: a viewer attached or left (only kept while a tap follows the log).
    Marker { at: Duration, text: Arc<str> },
    /// The terminal ended; nothing follows.
    Exit { at: Duration, exit: Exit },
}

#[derive(Debug)]
enum Kind {
    /// Output bytes, and which stream they came from (always stdout for a tty).
    Output(Bytes, OutputStream),
    Resize(u16, u16),
    Input(Bytes),
    Marker(Arc<str>),
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    /// Output offset at this entry (its first byte, for output).
    offset: u64,
    at: Duration,
    kind: Kind,
}

impl Entry {
    fn output_len(&self) -> u64 {
        match &self.kind {
            Kind::Output(b, _) => b.len() as u64,
            _ => 0,
        }
    }

    /// What the entry costs against the log's cap: its bytes, plus [`EventLog`]'s per-entry overhead.
    fn size(&self, overhead: usize) -> usize {
        overhead
            + match &self.kind {
                Kind::Output(b, _) | Kind::Input(b) => b.len(),
                Kind::Marker(t) => t.len(),
                Kind::Resize(..) => 0,
            }
    }
}

/// A viewer's place in the log.
struct ViewerState {
    sub: u64,
    /// Next offset to send.
    cursor: u64,
    /// With flow control: how far the client has processed.
    acked: Option<u64>,
    /// Cancelled when the viewer is detached or replaced.
    stop: CancellationToken,
    /// Where its output goes, once started (for viewer-count announcements).
    sink: Option<Arc<dyn TerminalSink>>,
    /// Its leaving ends the terminal at once (a protocol version 1 client).
    ends_on_leave: bool,
    /// The user it belongs to (for the recorders' attach and detach markers).
    user: Arc<str>,
}

impl ViewerState {
    fn floor(&self) -> u64 {
        self.acked.unwrap_or(self.cursor)
    }
}

#[derive(Default)]
struct Inner {
    entries: VecDeque<Entry>,
    next_seq: u64,
    /// Output bytes ever published (the offset of the output's end).
    end: u64,
    /// Bytes held by `entries`.
    bytes: usize,
    last_at: Duration,
    exit: Option<(Duration, Exit)>,
    viewers: HashMap<ViewerId, ViewerState>,
    /// With nobody attached: how far the last viewer to leave had processed (for [`EventLog::backlog`]).
    left_at: Option<u64>,
    /// Taps that asked for input.
    input_taps: usize,
    /// Each tap following the log, and the next sequence number it reads (markers are kept only while there is
    /// one; entries it has not read are kept within [`TAP_SLACK_BYTES`]).
    taps: HashMap<u64, u64>,
    next_tap: u64,
    next_sub: u64,
}

impl Inner {
    /// A viewer left, having processed up to `floor`: with nobody left, remember where it was.
    fn left(&mut self, floor: u64) {
        if self.viewers.is_empty() {
            self.left_at = Some(floor);
        }
    }

    /// Offset of the oldest kept output byte.
    fn start(&self) -> u64 {
        self.entries.front().map_or(self.end, |e| e.offset)
    }

    fn first_seq(&self) -> u64 {
        self.entries.front().map_or(self.next_seq, |e| e.seq)
    }
}

/// Where a viewer starts (see [`EventLog::attach_viewer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewerStart {
    /// The first offset it is sent.
    pub offset: u64,
    /// The end of the output when it attached.
    pub end: u64,
    /// It asked for bytes older than the log keeps.
    pub truncated: bool,
}

/// A terminal's events and subscribers.
pub struct EventLog {
    inner: Mutex<Inner>,
    cap: usize,
    /// Counted per entry on top of its bytes ([`ENTRY_OVERHEAD_BYTES`]), so many tiny entries (resizes, 1-byte
    /// writes) cannot grow the log's memory past its cap.
    overhead: usize,
    /// How far beyond `cap` entries a tap has not read are kept ([`TAP_SLACK_BYTES`]).
    tap_slack: usize,
    started: Instant,
    /// Bumped on every change a subscriber may wait for (an append, the exit).
    changed: watch::Sender<u64>,
    /// Notified when a viewer advances, acknowledges, attaches or leaves (the reader may resume).
    progress: Notify,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog").field("cap", &self.cap).finish_non_exhaustive()
    }
}

impl EventLog {
    /// A log keeping about `cap` bytes (at least the newest entry), each entry counted with
    /// [`ENTRY_OVERHEAD_BYTES`] on top of its bytes.
    pub fn new(cap: usize) -> Arc<EventLog> {
        EventLog::with_limits(cap, ENTRY_OVERHEAD_BYTES, TAP_SLACK_BYTES)
    }

    fn with_limits(cap: usize, overhead: usize, tap_slack: usize) -> Arc<EventLog> {
        Arc::new(EventLog {
            inner: Mutex::new(Inner::default()),
            cap: cap.max(1),
            overhead,
            tap_slack,
            started: Instant::now(),
            changed: watch::channel(0).0,
            progress: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes kept at most.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Offset of the end of the output.
    pub fn end(&self) -> u64 {
        self.lock().end
    }

    /// Whether the exit was published.
    pub fn has_ended(&self) -> bool {
        self.lock().exit.is_some()
    }

    pub fn exit(&self) -> Option<Exit> {
        self.lock().exit.as_ref().map(|(_, e)| e.clone())
    }

    fn push(&self, kind: Kind) {
        let mut inner = self.lock();
        let pushed = self.push_locked(&mut inner, kind);
        drop(inner);
        if pushed {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Appends under the caller's lock (so a change and its marker are one step); false after the exit. The
    /// caller tells the subscribers ([`EventLog::changed`]) once it has let go of the lock.
    fn push_locked(&self, inner: &mut Inner, kind: Kind) -> bool {
        if inner.exit.is_some() {
            return false;
        }
        // Never decreasing, even if the clock were to misbehave.
        let at = self.started.elapsed().max(inner.last_at);
        inner.last_at = at;
        let entry = Entry { seq: inner.next_seq, offset: inner.end, at, kind };
        inner.next_seq += 1;
        inner.end += entry.output_len();
        inner.bytes += entry.size(self.overhead);
        inner.entries.push_back(entry);
        let held = inner.taps.values().min().copied();
        while inner.bytes > self.cap && inner.entries.len() > 1 {
            let unread = held.zip(inner.entries.front()).is_some_and(|(h, e)| e.seq >= h);
            if unread && inner.bytes <= self.cap + self.tap_slack {
                break;
            }
            if let Some(old) = inner.entries.pop_front() {
                inner.bytes -= old.size(self.overhead);
            }
        }
        true
    }

    /// Publishes a marker under the caller's lock if a tap follows the log; whether it did.
    fn marker_locked(&self, inner: &mut Inner, text: String) -> bool {
        !inner.taps.is_empty() && self.push_locked(inner, Kind::Marker(text.into()))
    }

    /// Where a viewer starts by default: the newest [`EventLog::cap`] bytes (entries kept beyond it for a
    /// lagging tap are not replayed to viewers).
    fn viewer_start(&self, inner: &Inner) -> u64 {
        let mut over = inner.bytes.saturating_sub(self.cap);
        for e in &inner.entries {
            if over == 0 {
                return e.offset;
            }
            over = over.saturating_sub(e.size(self.overhead));
        }
        inner.entries.back().map_or(inner.end, |e| e.offset)
    }

    /// Publishes output (after the previous output).
    pub fn push_output(&self, data: Bytes) {
        self.push_stream(data, OutputStream::Stdout);
    }

    /// Publishes output of one of a pipe terminal's streams; offsets count both streams in this order.
    pub fn push_stream(&self, data: Bytes, stream: OutputStream) {
        if !data.is_empty() {
            self.push(Kind::Output(data, stream));
        }
    }

    pub fn push_resize(&self, cols: u16, rows: u16) {
        self.push(Kind::Resize(cols, rows));
    }

    /// Publishes input, if any tap asked for input (otherwise it is not kept).
    pub fn push_input(&self, data: &Bytes) {
        if self.lock().input_taps > 0 && !data.is_empty() {
            self.push(Kind::Input(data.clone()));
        }
    }

    /// Publishes a marker for the taps, if any follows the log (otherwise it is not kept).
    pub fn push_marker(&self, text: String) {
        let mut inner = self.lock();
        let marked = self.marker_locked(&mut inner, text);
        drop(inner);
        if marked {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Publishes the exit; later pushes are ignored.
    pub fn finish(&self, exit: Exit) {
        {
            let mut inner = self.lock();
            if inner.exit.is_some() {
                return;
            }
            let at = self.started.elapsed().max(inner.last_at);
            inner.exit = Some((at, exit));
        }
        self.changed.send_modify(|n| *n += 1);
        self.progress.notify_waiters();
    }

    // --- viewers -----------------------------------------------------------------------------------------------

    /// Registers viewer `id` from offset `since` (absent: the oldest kept byte), replacing an earlier one of the
    /// same id (which stops). Fails when `since` is past the end.
    #[allow(clippy::too_many_arguments)]
    pub fn attach_viewer(
        self: &Arc<Self>,
        id: ViewerId,
        user: &str,
        since: Option<u64>,
        flow_control: bool,
        ends_on_leave: bool,
        parent: &CancellationToken,
    ) -> Result<(ViewerSub, ViewerStart), u64> {
        let mut inner = self.lock();
        let (start, end) = (inner.start(), inner.end);
        let wanted = since.unwrap_or_else(|| self.viewer_start(&inner));
        if wanted > end {
            return Err(end);
        }
        let offset = wanted.max(start);
        let sub = inner.next_sub;
        inner.next_sub += 1;
        // Ends with the socket even if the terminal has gone by then.
        let stop = parent.child_token();
        let state = ViewerState {
            sub,
            cursor: offset,
            acked: flow_control.then_some(offset),
            stop: stop.clone(),
            sink: None,
            ends_on_leave,
            user: user.into(),
        };
        inner.left_at = None;
        let marked = match inner.viewers.insert(id.clone(), state) {
            Some(old) => {
                old.stop.cancel();
                false
            }
            None => self.marker_locked(&mut inner, format!("attach {user}")),
        };
        drop(inner);
        if marked {
            self.changed.send_modify(|n| *n += 1);
        }
        self.progress.notify_waiters();
        let start = ViewerStart { offset, end, truncated: since.is_some_and(|s| s < start) };
        let changed = self.changed.subscribe();
        Ok((ViewerSub { log: self.clone(), id, sub, stop, cursor: offset, armed: true, changed }, start))
    }

    /// Removes viewer `id`; returns, if it was there, whether its leaving ends the terminal at once.
    pub fn detach_viewer(&self, id: &ViewerId) -> Option<bool> {
        let mut inner = self.lock();
        let removed = inner.viewers.remove(id);
        if let Some(v) = &removed {
            inner.left(v.floor());
        }
        let marked = removed.as_ref().is_some_and(|v| self.marker_locked(&mut inner, format!("detach {}", v.user)));
        drop(inner);
        if marked {
            self.changed.send_modify(|n| *n += 1);
        }
        removed.map(|v| {
            v.stop.cancel();
            self.progress.notify_waiters();
            v.ends_on_leave
        })
    }

    pub fn is_viewer(&self, id: &ViewerId) -> bool {
        self.lock().viewers.contains_key(id)
    }

    /// Viewers attached now.
    pub fn viewers(&self) -> usize {
        self.lock().viewers.len()
    }

    /// Sets where viewer `id` (subscription `sub`) sends its output.
    fn set_sink(&self, id: &ViewerId, sub: u64, sink: Arc<dyn TerminalSink>) {
        if let Some(v) = self.lock().viewers.get_mut(id).filter(|v| v.sub == sub) {
            v.sink = Some(sink);
        }
    }

    /// The started viewers' sinks and how many viewers there are.
    pub fn sinks(&self) -> (Vec<Arc<dyn TerminalSink>>, usize) {
        let inner = self.lock();
        (inner.viewers.values().filter_map(|v| v.sink.clone()).collect(), inner.viewers.len())
    }

    /// Records that viewer `id` processed output up to `processed`. Errors: `Err(None)` not attached, `Err(Some
    /// (sent))` no flow control (`sent` = 0) or more than was sent.
    pub fn ack(&self, id: &ViewerId, processed: u64) -> Result<(), AckError> {
        let mut inner = self.lock();
        let v = inner.viewers.get_mut(id).ok_or(AckError::NotAttached)?;
        let Some(acked) = &mut v.acked else { return Err(AckError::NoFlowControl) };
        if processed > v.cursor {
            return Err(AckError::Ahead { sent: v.cursor });
        }
        // Acks may arrive out of order or twice: keep the highest.
        *acked = (*acked).max(processed);
        drop(inner);
        self.progress.notify_waiters();
        Ok(())
    }

    /// How far the slowest viewer is behind the end of the output (0 with nobody attached).
    pub fn lag(&self) -> u64 {
        self.backlog(false)
    }

    /// [`EventLog::lag`]; with `hold` and nobody attached, the output the last viewer to leave had not
    /// processed (a pipe's reader, gone for a moment, must find every byte when it resumes).
    pub fn backlog(&self, hold: bool) -> u64 {
        let inner = self.lock();
        match inner.viewers.values().map(|v| inner.end.saturating_sub(v.floor())).max() {
            Some(lag) => lag,
            None if hold => inner.left_at.map_or(0, |at| inner.end.saturating_sub(at)),
            None => 0,
        }
    }

    /// Waits until the [`EventLog::backlog`] is at most `low`, or `stop` is cancelled (false).
    pub async fn wait_for_viewers(&self, low: u64, hold: bool, stop: &CancellationToken) -> bool {
        loop {
            let progressed = self.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            if self.backlog(hold) <= low {
                return true;
            }
            tokio::select! {
                _ = progressed => {}
                _ = stop.cancelled() => return false,
            }
        }
    }

    /// Up to `max` output bytes of one stream from `from` (moved up to the oldest kept byte), joined, as
    /// `(offset, bytes, stream)`.
    fn read_output(inner: &Inner, from: u64, max: usize) -> Option<(u64, Bytes, OutputStream)> {
        let from = from.max(inner.start());
        if from >= inner.end {
            return None;
        }
        let first = inner.entries.partition_point(|e| e.offset + e.output_len() <= from);
        let mut parts = Vec::new();
        let mut taken = 0usize;
        let mut stream = None;
        for e in inner.entries.iter().skip(first) {
            if taken >= max {
                break;
            }
            let Kind::Output(c, s) = &e.kind else { continue };
            if *stream.get_or_insert(*s) != *s {
                break;
            }
            let skip = from.saturating_sub(e.offset) as usize;
            let part = c.slice(skip.min(c.len())..c.len().min(skip + max - taken));
            taken += part.len();
            parts.push(part);
        }
        let data = if parts.len() == 1 {
            parts.pop().unwrap_or_default()
        } else {
            let mut joined = BytesMut::with_capacity(taken);
            parts.iter().for_each(|p| joined.extend_from_slice(p));
            joined.freeze()
        };
        Some((from, data, stream.unwrap_or_default()))
    }

    // --- taps --------------------------------------------------------------------------------------------------

    /// A tap from the oldest kept event on. With `input`, it also gets [`Event::Input`].
    pub fn tap(self: &Arc<Self>, input: bool) -> Tap {
        let mut inner = self.lock();
        if input {
            inner.input_taps += 1;
        }
        let (seq, offset) = (inner.first_seq(), inner.start());
        let id = inner.next_tap;
        inner.next_tap += 1;
        inner.taps.insert(id, seq);
        drop(inner);
        Tap { log: self.clone(), id, input, seq, offset, done: false, changed: self.changed.subscribe() }
    }
}

/// Why an `output-ack` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckError {
    NotAttached,
    NoFlowControl,
    Ahead { sent: u64 },
}

/// What a viewer gets next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Output { offset: u64, data: Bytes, stream: OutputStream },
    Exit(Exit),
}

/// A viewer's subscription: output from its cursor, then the exit. Dropping it detaches the viewer, unless a
/// newer attach of the same id replaced it.
pub struct ViewerSub {
    log: Arc<EventLog>,
    id: ViewerId,
    sub: u64,
    stop: CancellationToken,
    cursor: u64,
    /// Dropping it unsubscribes (see [`ViewerSub::keep`]).
    armed: bool,
    /// Tells it something was published.
    changed: watch::Receiver<u64>,
}

impl std::fmt::Debug for ViewerSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewerSub").field("id", &self.id).field("cursor", &self.cursor).finish()
    }
}

impl ViewerSub {
    pub fn id(&self) -> &ViewerId {
        &self.id
    }

    /// Cancelled when this subscription is detached or replaced.
    pub fn stopped(&self) -> &CancellationToken {
        &self.stop
    }

    /// Sets where this viewer's output goes (for viewer-count announcements).
    pub fn set_sink(&self, sink: Arc<dyn TerminalSink>) {
        self.log.set_sink(&self.id, self.sub, sink);
    }

    /// Unacknowledged bytes, with flow control (0 without).
    fn unacked(&self) -> u64 {
        let inner = self.log.lock();
        inner.viewers.get(&self.id).filter(|v| v.sub == self.sub).and_then(|v| v.acked).map_or(0, |a| self.cursor - a)
    }

    /// Waits until at most `high` bytes are unacknowledged, or the terminal ended (its process is gone, so
    /// there is nothing to hold back: the rest and the exit go out) (false: stopped).
    pub async fn wait_for_acks(&self, high: u64) -> bool {
        loop {
            let progressed = self.log.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            if self.unacked() <= high || self.log.has_ended() {
                return true;
            }
            tokio::select! {
                _ = progressed => {}
                _ = self.stop.cancelled() => return false,
            }
        }
    }

    /// What is there to send now: up to `max` output bytes from the cursor, else the exit, else nothing yet.
    pub fn peek(&self, max: usize) -> Option<Delivery> {
        let inner = self.log.lock();
        if let Some((offset, data, stream)) = EventLog::read_output(&inner, self.cursor, max) {
            return Some(Delivery::Output { offset, data, stream });
        }
        inner.exit.as_ref().map(|(_, e)| Delivery::Exit(e.clone()))
    }

    /// Output bytes waiting beyond the cursor.
    pub fn waiting(&self) -> u64 {
        self.log.end().saturating_sub(self.cursor)
    }

    /// Waits for the next delivery (None: stopped).
    pub async fn next(&mut self, max: usize) -> Option<Delivery> {
        loop {
            self.changed.borrow_and_update();
            if let Some(d) = self.peek(max) {
                return Some(d);
            }
            tokio::select! {
                r = self.changed.changed() => if r.is_err() { return None },
                _ = self.stop.cancelled() => return None,
            }
        }
    }

    /// Waits until something is published, or `timeout` passes.
    pub async fn more_within(&mut self, timeout: Duration) {
        self.changed.borrow_and_update();
        let _ = tokio::time::timeout(timeout, self.changed.changed()).await;
    }

    /// Records that `len` bytes from `offset` (as [`ViewerSub::peek`] gave them) were handed to the transport.
    pub fn delivered(&mut self, offset: u64, len: u64) {
        if offset > self.cursor {
            tracing::warn!(lost = offset - self.cursor, "viewer fell behind the output log");
        }
        let end = offset + len;
        if end <= self.cursor {
            return;
        }
        self.cursor = end;
        if let Some(v) = self.log.lock().viewers.get_mut(&self.id).filter(|v| v.sub == self.sub) {
            v.cursor = end;
        }
        self.log.progress.notify_waiters();
    }

    /// Ends this subscription's task but leaves the viewer attached (counted, holding the grace period off)
    /// until it is detached.
    pub fn keep(mut self) {
        self.armed = false;
    }

    /// Whether this subscription is still the viewer's current one.
    pub fn current(&self) -> bool {
        self.log.lock().viewers.get(&self.id).is_some_and(|v| v.sub == self.sub)
    }
}

impl Drop for ViewerSub {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut inner = self.log.lock();
        let removed = match inner.viewers.get(&self.id) {
            Some(v) if v.sub == self.sub => inner.viewers.remove(&self.id),
            _ => None,
        };
        if let Some(v) = &removed {
            inner.left(v.floor());
        }
        let marked = removed.is_some_and(|v| self.log.marker_locked(&mut inner, format!("detach {}", v.user)));
        drop(inner);
        if marked {
            self.log.changed.send_modify(|n| *n += 1);
        }
        self.log.progress.notify_waiters();
    }
}

#[cfg(test)]
mod tests;
