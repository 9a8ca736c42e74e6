//! The byte pumps between a terminal's exec stream and the rest: output into the event log ([`read`]), input
//! and resizes from a bounded queue to the tty ([`write`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use app::protocol::{self, ErrorCode, TerminalId};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::Terminal;
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

/// The exec stream's output side.
pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
/// The exec stream's input side.
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;

enum Command {
    Input(Bytes),
    Resize(u16, u16),
}

impl Command {
    fn bytes(&self) -> usize {
        match self {
            Command::Input(b) => b.len(),
            Command::Resize(..) => 0,
        }
    }
}

/// Input and resizes on their way to the tty, bounded by [`COMMAND_QUEUE_EVENTS`] and [`INPUT_QUEUE_BYTES`].
#[derive(Debug)]
pub(super) struct InputQueue {
    tx: mpsc::UnboundedSender<Command>,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    events: AtomicUsize,
    bytes: AtomicUsize,
}

/// The write pump's end of an [`InputQueue`].
pub(super) struct InputReceiver {
    rx: mpsc::UnboundedReceiver<Command>,
    counts: Arc<Counts>,
}

impl InputQueue {
    pub(super) fn new() -> (InputQueue, InputReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        (InputQueue { tx, counts: counts.clone() }, InputReceiver { rx, counts })
    }

    pub(super) fn input(&self, id: &TerminalId, data: Bytes) -> Result<(), ServiceError> {
        if data.len() > protocol::MAX_INPUT_BYTES {
            return Err(ServiceError::invalid(format!(
                "input data is {} bytes; the limit is {} per event",
                data.len(),
                protocol::MAX_INPUT_BYTES
            )));
        }
        if data.is_empty() {
            return Ok(());
        }
        self.queue(id, Command::Input(data))
    }

    pub(super) fn resize(&self, id: &TerminalId, cols: u16, rows: u16) -> Result<(), ServiceError> {
        self.queue(id, Command::Resize(cols, rows))
    }

    fn queue(&self, id: &TerminalId, command: Command) -> Result<(), ServiceError> {
        let bytes = command.bytes();
        let queued = self.counts.bytes.load(Ordering::SeqCst);
        // Only one socket's handler at a time adds to a terminal's queue, synchronously, so the check and the
        // add do not interleave with another add.
        if self.counts.events.load(Ordering::SeqCst) >= COMMAND_QUEUE_EVENTS || queued + bytes > INPUT_QUEUE_BYTES {
            return Err(ServiceError::new(
                ErrorCode::InputOverflow,
                format!(
                    "terminal {id} is not reading its input ({queued} bytes queued, limit {INPUT_QUEUE_BYTES}); input dropped"
                ),
            ));
        }
        self.counts.events.fetch_add(1, Ordering::SeqCst);
        self.counts.bytes.fetch_add(bytes, Ordering::SeqCst);
        self.tx.send(command).map_err(|_| ServiceError::unknown_terminal(id))
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
    let stop = terminal.stop_token().clone();
    // The read buffer grows while reads fill it (a flood) and starts small, so an idle terminal holds
    // [`MIN_READ_BYTES`], not [`READ_CHUNK_BYTES`].
    let mut want = MIN_READ_BYTES;
    let mut buf = BytesMut::with_capacity(want);
    // An attached viewer must never fall off the log: with a small log, pause earlier.
    let cap = log.cap() as u64;
    let high = protocol::FLOW_HIGH_WATERMARK.min(cap / 2);
    let low = protocol::FLOW_LOW_WATERMARK.min(high / 4);
    loop {
        if log.lag() > high && !log.wait_for_viewers(low, &stop).await {
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
        log.push_output(chunk);
    }
}

/// Applies input and resizes in arrival order, publishing each to the log as it reaches the tty. Consecutive
/// inputs are joined into one write.
pub(super) async fn write(
    runtime: Arc<dyn ContainerRuntime>,
    terminal: Arc<Terminal>,
    mut input: Writer,
    mut queue: InputReceiver,
) {
    let stop = terminal.stop_token().clone();
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
            Command::Input(first) => {
                let (mut events, mut batch) = (1, BytesMut::from(&first[..]));
                while batch.len() < INPUT_BATCH_BYTES {
                    match queue.rx.try_recv() {
                        Ok(Command::Input(more)) => {
                            events += 1;
                            batch.extend_from_slice(&more);
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
                    let write = async {
                        input.write_all(&batch).await?;
                        input.flush().await
                    };
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
                        }
                    }
                }
                queue.dequeued(events, batch.len());
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
}
