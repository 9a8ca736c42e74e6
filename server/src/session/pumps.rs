//! The byte pumps between a terminal's exec stream and the rest: output into the event log ([`read`]), input
//! and resizes from a bounded queue to the tty ([`write`]).
//!
//! Small input takes a short cut when nothing is queued before it: the socket's handler writes it to the exec
//! stream itself, without waiting ([`InputQueue::input`]), so a keystroke needs no hand-off to the pump's task
//! (which could run on the runtime's other thread). Only what does not go out at once is queued. Larger input
//! (a pipe's chunks, above [`DIRECT_WRITE_MAX_BYTES`]) always goes through the pump: writing it on the socket's
//! task would stop that task reading the next chunk meanwhile (pipe input fell from 0.88x to 0.70x
//! `docker exec -i`).
//!
//! A pipe terminal (no tty) has Docker's multiplexed stream instead of raw bytes: each frame is an 8-byte
//! header (stream 1 stdout or 2 stderr, three zero bytes, the length as a big-endian u32) and the payload.
//! [`Demux`] splits it as the bytes arrive, without waiting for whole frames.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use app::protocol::{self, ErrorCode, OutputStream, TerminalId};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use super::Terminal;
use super::log::EventLog;
use crate::docker::ContainerRuntime;
use crate::error::ServiceError;

/// Largest read from an exec stream; a flood leaves in chunks up to this size.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Smallest read buffer of an exec stream (an idle terminal's); it doubles while reads fill it.
pub const MIN_READ_BYTES: usize = 4 * 1024;
/// Input/resize events queued per terminal (not yet written to the tty) before `input_overflow` is reported.
pub const COMMAND_QUEUE_EVENTS: usize = 16 * 1024;
/// Input bytes queued per terminal before `input_overflow` is reported (a process that does not read).
pub const INPUT_QUEUE_BYTES: usize = 1024 * 1024;
/// Most queued input bytes joined into one write to the tty.
const INPUT_BATCH_BYTES: usize = 64 * 1024;
/// Largest input the socket's handler writes to the exec stream itself (see the module comment).
pub const DIRECT_WRITE_MAX_BYTES: usize = 4 * 1024;

/// The exec stream's output side.
pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
/// The exec stream's input side.
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// Told once an input's bytes were written to the process (or, dropped, that they never will be).
pub type Written = oneshot::Sender<()>;

enum Command {
    Input(Bytes, Option<Written>),
    /// Close the process's stdin (a pipe terminal's end of input).
    Eof(Option<Written>),
    Resize(u16, u16),
}

impl Command {
    fn bytes(&self) -> usize {
        match self {
            Command::Input(b, _) => b.len(),
            Command::Eof(_) | Command::Resize(..) => 0,
        }
    }
}

/// Input and resizes on their way to the tty, bounded by [`COMMAND_QUEUE_EVENTS`] and [`INPUT_QUEUE_BYTES`].
#[derive(Debug)]
pub(super) struct InputQueue {
    tx: mpsc::UnboundedSender<Command>,
    counts: Arc<Counts>,
    writer: Arc<WriterSlot>,
}

/// The exec stream's input side, shared by the write pump and the handlers' short cut; `None` before the pump
/// starts and once the process's input is closed.
#[derive(Default)]
struct WriterSlot(Mutex<Option<Writer>>);

impl std::fmt::Debug for WriterSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriterSlot")
    }
}

impl WriterSlot {
    /// Polls `op` on the writer (the lock is held only for the poll); a closed input fails.
    fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut (dyn AsyncWrite + Send)>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_mut() {
            Some(w) => op(w.as_mut(), cx),
            None => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }

    async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let n = std::future::poll_fn(|cx| self.poll(cx, |w, cx| w.poll_write(cx, data))).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            data = &data[n..];
        }
        std::future::poll_fn(|cx| self.poll(cx, |w, cx| w.poll_flush(cx))).await
    }

    async fn shutdown(&self) -> std::io::Result<()> {
        std::future::poll_fn(|cx| self.poll(cx, |w, cx| w.poll_shutdown(cx))).await
    }

    fn close(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

#[derive(Debug, Default)]
struct Counts {
    events: AtomicUsize,
    bytes: AtomicUsize,
    /// The end of input was queued: nothing may follow it.
    eof: std::sync::atomic::AtomicBool,
    /// Input bytes ever accepted (the offset of the input's end).
    accepted: std::sync::atomic::AtomicU64,
}

/// The write pump's end of an [`InputQueue`].
pub(super) struct InputReceiver {
    rx: mpsc::UnboundedReceiver<Command>,
    counts: Arc<Counts>,
    writer: Arc<WriterSlot>,
}

impl InputQueue {
    pub(super) fn new() -> (InputQueue, InputReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        let writer = Arc::new(WriterSlot::default());
        (InputQueue { tx, counts: counts.clone(), writer: writer.clone() }, InputReceiver { rx, counts, writer })
    }

    /// Writes `data` to the process now, if nothing is queued or being written before it and the stream takes
    /// it without waiting; returns how many bytes went (the rest must be queued behind them).
    fn write_now(&self, log: &EventLog, id: &TerminalId, data: &Bytes) -> usize {
        let Ok(mut slot) = self.writer.0.try_lock() else { return 0 };
        // The pump counts a command off only after writing it: none counted means none queued or in a write.
        if self.counts.events.load(Ordering::SeqCst) != 0 {
            return 0;
        }
        let Some(w) = slot.as_mut() else { return 0 };
        // A write that would wait registers no one: the pump, told by the queue, polls it again with its own.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let n = match w.as_mut().poll_write(&mut cx, data) {
            Poll::Ready(Ok(n)) => n,
            _ => return 0,
        };
        if n == data.len() && !matches!(w.as_mut().poll_flush(&mut cx), Poll::Ready(Ok(()))) {
            // Taken but not flushed: an empty input behind it makes the pump flush (the queue is empty, so it
            // fits; a closed queue means the terminal is ending anyway).
            drop(slot);
            let _ = self.queue(id, vec![Command::Input(Bytes::new(), None)]);
        }
        log.push_input(&data.slice(..n));
        n
    }

    /// Queues `data`, then (with `eof`) the end of input; `written` is told once all of it reached the process.
    /// With `offset`, the part of `data` already accepted is dropped (see [`protocol::Input::offset`]).
    pub(super) fn input(
        &self,
        log: &EventLog,
        id: &TerminalId,
        mut data: Bytes,
        eof: bool,
        offset: Option<u64>,
        written: Option<Written>,
    ) -> Result<(), ServiceError> {
        if data.len() > protocol::MAX_INPUT_BYTES {
            return Err(ServiceError::invalid(format!(
                "input data is {} bytes; the limit is {} per event",
                data.len(),
                protocol::MAX_INPUT_BYTES
            )));
        }
        if let Some(offset) = offset {
            let accepted = self.accepted();
            if offset > accepted {
                return Err(ServiceError::invalid(format!(
                    "input offset {offset} is past the {accepted} bytes of input terminal {id} has accepted"
                )));
            }
            let known = ((accepted - offset) as usize).min(data.len());
            let _ = data.split_to(known);
            if data.is_empty() && (!eof || self.counts.eof.load(Ordering::SeqCst)) {
                // All of it arrived before (a resend). Its ack still waits until what was queued before it is
                // written: an empty input behind it says when, so a resending writer cannot overfill the queue.
                return match written {
                    Some(w) => self.queue(id, vec![Command::Input(Bytes::new(), Some(w))]),
                    None => Ok(()),
                };
            }
        }
        if self.counts.eof.load(Ordering::SeqCst) {
            return Err(ServiceError::invalid(format!("the input of terminal {id} is closed (eof was sent)")));
        }
        let commands = match (data.is_empty(), eof) {
            (true, false) => {
                if let Some(w) = written {
                    let _ = w.send(());
                }
                return Ok(());
            }
            (false, false) => {
                let sent = if data.len() <= DIRECT_WRITE_MAX_BYTES { self.write_now(log, id, &data) } else { 0 };
                self.counts.accepted.fetch_add(sent as u64, Ordering::SeqCst);
                if sent == data.len() {
                    if let Some(w) = written {
                        let _ = w.send(());
                    }
                    return Ok(());
                }
                vec![Command::Input(data.slice(sent..), written)]
            }
            (true, true) => vec![Command::Eof(written)],
            (false, true) => vec![Command::Input(data, None), Command::Eof(written)],
        };
        let bytes = commands.iter().map(Command::bytes).sum::<usize>() as u64;
        self.queue(id, commands)?;
        self.counts.accepted.fetch_add(bytes, Ordering::SeqCst);
        if eof {
            self.counts.eof.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Input bytes accepted so far.
    pub(super) fn accepted(&self) -> u64 {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    pub(super) fn resize(&self, id: &TerminalId, cols: u16, rows: u16) -> Result<(), ServiceError> {
        self.queue(id, vec![Command::Resize(cols, rows)])
    }

    /// Queues `commands`, all or none.
    fn queue(&self, id: &TerminalId, commands: Vec<Command>) -> Result<(), ServiceError> {
        let bytes: usize = commands.iter().map(Command::bytes).sum();
        let queued = self.counts.bytes.load(Ordering::SeqCst);
        // Only one socket's handler at a time adds to a terminal's queue, synchronously, so the check and the
        // add do not interleave with another add.
        let events = self.counts.events.load(Ordering::SeqCst) + commands.len();
        if events > COMMAND_QUEUE_EVENTS || queued + bytes > INPUT_QUEUE_BYTES {
            return Err(ServiceError::new(
                ErrorCode::InputOverflow,
                format!(
                    "terminal {id} is not reading its input ({queued} bytes queued, limit {INPUT_QUEUE_BYTES}); input dropped"
                ),
            ));
        }
        for command in commands {
            self.counts.events.fetch_add(1, Ordering::SeqCst);
            self.counts.bytes.fetch_add(command.bytes(), Ordering::SeqCst);
            self.tx.send(command).map_err(|_| ServiceError::unknown_terminal(id))?;
        }
        Ok(())
    }
}

impl InputReceiver {
    fn dequeued(&self, events: usize, bytes: usize) {
        self.counts.events.fetch_sub(events, Ordering::SeqCst);
        self.counts.bytes.fetch_sub(bytes, Ordering::SeqCst);
    }
}

/// Moves output from the exec stream into the terminal's log until the stream ends or the terminal stops;
/// returns the stream's error, if it failed. Reading pauses while the slowest attached viewer is more than
/// [`protocol::FLOW_HIGH_WATERMARK`] behind (until it is within [`protocol::FLOW_LOW_WATERMARK`]): the tty
/// then fills and the process blocks. With nobody attached it reads on, and the log keeps the newest bytes.
pub(super) async fn read(terminal: Arc<Terminal>, mut output: Reader) -> Option<String> {
    let log = terminal.log().clone();
    let mut demux = (!terminal.tty()).then(Demux::default);
    let stop = terminal.stop_token().clone();
    // The read buffer grows while reads fill it (a flood) and starts small, so an idle terminal holds
    // [`MIN_READ_BYTES`], not [`READ_CHUNK_BYTES`].
    let mut want = MIN_READ_BYTES;
    let mut buf = BytesMut::with_capacity(want);
    // An attached viewer must never fall off the log: with a small log, pause earlier.
    let cap = log.cap() as u64;
    let high = protocol::FLOW_HIGH_WATERMARK.min(cap / 2);
    let low = protocol::FLOW_LOW_WATERMARK.min(high / 4);
    // A pipe's output is never dropped: while nobody is attached, reading stops once the last viewer to leave
    // is `high` behind, so a resuming reader finds every byte in the log.
    let hold = !terminal.tty();
    loop {
        if log.backlog(hold) > high && !log.wait_for_viewers(low, hold, &stop).await {
            return None;
        }
        buf.reserve(want);
        let n = tokio::select! {
            r = output.read_buf(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => return Some(e.to_string()),
            },
            _ = stop.cancelled() => return None,
        };
        if n == 0 {
            return None;
        }
        let chunk = if n * 2 >= buf.capacity() {
            // Mostly full: hand the allocation over as is, and read more at once next time.
            if n == buf.capacity() {
                want = (want * 2).min(READ_CHUNK_BYTES);
            }
            buf.split().freeze()
        } else {
            // A small read (a keystroke's echo): copy it out, so the log never pins a mostly empty buffer, and
            // keep the buffer for the next read.
            let chunk = Bytes::copy_from_slice(&buf);
            if n * 8 < want {
                want = (want / 2).max(MIN_READ_BYTES);
            }
            if buf.capacity() > 2 * want {
                // The flood is over: give the big buffer back.
                buf = BytesMut::with_capacity(want);
            } else {
                buf.clear();
            }
            chunk
        };
        match demux.as_mut() {
            None => log.push_output(chunk),
            Some(d) => d.feed(chunk, |stream, part| log.push_stream(part, stream)),
        }
    }
}

/// Splits Docker's multiplexed stream of a process without a tty into stdout and stderr, as bytes arrive.
#[derive(Debug, Default)]
pub struct Demux {
    header: [u8; 8],
    /// Header bytes read so far (8: the header is complete and `left` payload bytes follow).
    have: usize,
    left: usize,
    stream: OutputStream,
}

impl Demux {
    /// Hands each payload piece of `data` to `out`, with its stream (stdin frames, which Docker does not send
    /// to an exec's client, count as stdout).
    pub fn feed(&mut self, mut data: Bytes, mut out: impl FnMut(OutputStream, Bytes)) {
        while !data.is_empty() {
            if self.have < 8 {
                let n = (8 - self.have).min(data.len());
                self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                let _ = data.split_to(n);
                if self.have == 8 {
                    self.stream = if self.header[0] == 2 { OutputStream::Stderr } else { OutputStream::Stdout };
                    let len = u32::from_be_bytes([self.header[4], self.header[5], self.header[6], self.header[7]]);
                    self.left = len as usize;
                    if self.left == 0 {
                        self.have = 0;
                    }
                }
                continue;
            }
            let n = self.left.min(data.len());
            out(self.stream, data.split_to(n));
            self.left -= n;
            if self.left == 0 {
                self.have = 0;
            }
        }
    }
}

/// Applies input and resizes in arrival order, publishing each to the log as it reaches the tty. Consecutive
/// inputs are joined into one write.
pub(super) async fn write(
    runtime: Arc<dyn ContainerRuntime>,
    terminal: Arc<Terminal>,
    writer: Writer,
    mut queue: InputReceiver,
) {
    let stop = terminal.stop_token().clone();
    let input = queue.writer.clone();
    *input.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(writer);
    let mut input_open = true;
    let mut held: Option<Command> = None;
    loop {
        let command = match held.take() {
            Some(c) => c,
            None => {
                let next = tokio::select! {
                    c = queue.rx.recv() => c,
                    _ = stop.cancelled() => None,
                };
                let Some(c) = next else { break };
                c
            }
        };
        match command {
            Command::Input(first, done) => {
                let (mut events, mut batch) = (1, BytesMut::from(&first[..]));
                let mut told: Vec<Written> = done.into_iter().collect();
                while batch.len() < INPUT_BATCH_BYTES {
                    match queue.rx.try_recv() {
                        Ok(Command::Input(more, done)) => {
                            events += 1;
                            batch.extend_from_slice(&more);
                            told.extend(done);
                        }
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let batch = batch.freeze();
                if input_open {
                    let write = input.write_all(&batch);
                    let written = tokio::select! {
                        r = write => r,
                        // A daemon that stopped reading must not keep this task (and its connection) alive.
                        _ = stop.cancelled() => break,
                    };
                    match written {
                        Ok(()) => terminal.log().push_input(&batch),
                        Err(e) => {
                            tracing::debug!(error = %e, "tty input closed");
                            input_open = false;
                            input.close();
                        }
                    }
                }
                queue.dequeued(events, batch.len());
                // Input the process closed is gone for good; its senders learn that as much as the others.
                for t in told {
                    let _ = t.send(());
                }
            }
            Command::Eof(done) => {
                if input_open {
                    let closed = tokio::select! {
                        r = input.shutdown() => r,
                        _ = stop.cancelled() => break,
                    };
                    if let Err(e) = closed {
                        tracing::debug!(error = %e, "closing the process's stdin failed");
                    }
                    input_open = false;
                    input.close();
                }
                queue.dequeued(1, 0);
                if let Some(t) = done {
                    let _ = t.send(());
                }
            }
            Command::Resize(cols, rows) => {
                match runtime.resize_exec(terminal.exec_id(), cols, rows).await {
                    Ok(()) => terminal.log().push_resize(cols, rows),
                    Err(e) => tracing::debug!(error = %e, cols, rows, "resize failed"),
                }
                queue.dequeued(1, 0);
            }
        }
    }
    let _ = input.shutdown().await;
    input.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![stream, 0, 0, 0];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Feeds `wire` in pieces of `step` bytes; returns what each stream got.
    fn demux(wire: &[u8], step: usize) -> (Vec<u8>, Vec<u8>, Vec<OutputStream>) {
        let (mut out, mut err, mut order) = (Vec::new(), Vec::new(), Vec::new());
        let mut d = Demux::default();
        for piece in wire.chunks(step) {
            d.feed(Bytes::copy_from_slice(piece), |s, b| {
                if order.last() != Some(&s) {
                    order.push(s);
                }
                match s {
                    OutputStream::Stdout => out.extend_from_slice(&b),
                    OutputStream::Stderr => err.extend_from_slice(&b),
                }
            });
        }
        (out, err, order)
    }

    /// A stream that takes at most `budget` more bytes, then would wait.
    #[derive(Clone, Default)]
    struct Scripted(Arc<Mutex<(usize, Vec<u8>)>>);

    impl Scripted {
        fn allow(&self, budget: usize) {
            self.0.lock().unwrap().0 = budget;
        }
        fn got(&self) -> Vec<u8> {
            self.0.lock().unwrap().1.clone()
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
            let mut s = self.0.lock().unwrap();
            let n = s.0.min(data.len());
            if n == 0 {
                return Poll::Pending;
            }
            s.0 -= n;
            s.1.extend_from_slice(&data[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn queued(rx: &mut InputReceiver) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(c) = rx.rx.try_recv() {
            out.push(match c {
                Command::Input(b, _) => String::from_utf8_lossy(&b).into_owned(),
                Command::Eof(_) => "<eof>".into(),
                Command::Resize(c, r) => format!("<{c}x{r}>"),
            });
        }
        out
    }

    #[test]
    fn input_goes_straight_to_the_stream_only_when_nothing_waits_before_it() {
        let id = TerminalId("t".into());
        let log = EventLog::new(1 << 20);
        let mut tap = log.tap(true);
        let (queue, mut rx) = InputQueue::new();
        let stream = Scripted::default();
        *rx.writer.0.lock().unwrap() = Some(Box::pin(stream.clone()));
        let (tx, mut told) = oneshot::channel();
        stream.allow(usize::MAX);
        queue.input(&log, &id, Bytes::from_static(b"abc"), false, None, Some(tx)).unwrap();
        assert_eq!(stream.got(), b"abc", "written at once");
        assert!(told.try_recv().is_ok(), "and its writer told at once");
        // The stream takes only part: the rest queues, and so does everything after it, even once there is room.
        stream.allow(2);
        queue.input(&log, &id, Bytes::from_static(b"defg"), false, None, None).unwrap();
        stream.allow(usize::MAX);
        queue.input(&log, &id, Bytes::from_static(b"hij"), false, None, None).unwrap();
        queue.resize(&id, 100, 30).unwrap();
        assert_eq!(stream.got(), b"abcde");
        assert_eq!(queued(&mut rx), ["fg", "hij", "<100x30>"]);
        assert_eq!(queue.accepted(), 10, "every byte counts as accepted, however it went");
        // Once the pump has written what waited, input goes straight again; a large one goes to the pump.
        rx.dequeued(3, 5);
        queue.input(&log, &id, Bytes::from_static(b"k"), false, None, None).unwrap();
        assert_eq!(stream.got(), b"abcdek");
        assert!(queued(&mut rx).is_empty());
        let big = Bytes::from(vec![b'z'; DIRECT_WRITE_MAX_BYTES + 1]);
        queue.input(&log, &id, big.clone(), false, None, None).unwrap();
        assert_eq!(stream.got(), b"abcdek");
        assert_eq!(queued(&mut rx), [String::from_utf8_lossy(&big).into_owned()]);
        rx.dequeued(1, big.len());
        // A closed input (the pump took the stream away) queues, for the pump to drop.
        rx.writer.close();
        queue.input(&log, &id, Bytes::from_static(b"l"), false, None, None).unwrap();
        assert_eq!(queued(&mut rx), ["l"]);
        // What a tap saw as typed: what went straight to the stream (queued input is published by the pump).
        let mut typed = Vec::new();
        while let Some(super::super::log::Event::Input { data, .. }) = tap.try_next() {
            typed.extend_from_slice(&data);
        }
        assert_eq!(typed, b"abcdek");
    }

    #[test]
    fn the_multiplexed_stream_splits_whatever_the_read_boundaries() {
        // Payloads that look like headers themselves, an empty frame, and a frame split across reads.
        let mut wire = frame(1, b"\x02\x00\x00\x00\x00\x00\x00\x05hello");
        wire.extend(frame(2, b"oops\n"));
        wire.extend(frame(1, b""));
        wire.extend(frame(1, &[0x1e; 70_000]));
        for step in [1, 3, 7, 8, 9, 4096, wire.len()] {
            let (out, err, order) = demux(&wire, step);
            let mut want = b"\x02\x00\x00\x00\x00\x00\x00\x05hello".to_vec();
            want.extend_from_slice(&[0x1e; 70_000]);
            assert_eq!(out, want, "step {step}");
            assert_eq!(err, b"oops\n", "step {step}");
            assert_eq!(order, [OutputStream::Stdout, OutputStream::Stderr, OutputStream::Stdout], "step {step}");
        }
    }
}
