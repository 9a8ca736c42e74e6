//! A socket's reply queue: acks and control events (`exit`, `terminal-viewers`, `request-error`, `hello`) that
//! find socketioxide's send queue full wait here, in order, at most [`MAX_QUEUED_REPLIES`] of them. One task per
//! socket, and only while something waits, moves them on as the client reads. While replies wait, terminal
//! output is held back (its own flow control), so an answer is never stuck behind a flood of output.
//!
//! A client that lets the queue overflow is not reading: it is disconnected with the reason
//! `outbound_overflow` (its terminals stay resumable, as after any disconnect). So is one whose waiting replies
//! make no progress for [`MAX_REPLY_STALL`], however few: a client that reads nothing can also stop the server
//! reading from it (its writes blocked), and then no further request would ever fill the queue. Nothing here retries a single
//! reply on its own timer, so a flood of requests costs at most the queue, not a task per request.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use socketioxide::socket::Socket;
use socketioxide::{SendError, SocketError};

/// Most replies waiting for room in one socket's send queue.
pub const MAX_QUEUED_REPLIES: usize = 256;
/// Longest time replies may wait without one of them getting into the send queue before the client counts as not
/// reading (a client reading even slowly frees a slot within milliseconds).
pub const MAX_REPLY_STALL: Duration = Duration::from_secs(8);
/// How often the draining task tries again while the send queue is full.
const DRAIN_RETRY: Duration = Duration::from_millis(5);

/// A reply, ready to be put into the socket's send queue (it may be tried more than once).
pub type Deliver = Box<dyn Fn(&Arc<Socket>) -> Result<(), SendError> + Send + Sync>;

/// What happened to a reply handed to [`Outbox::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// In socketioxide's send queue.
    Now,
    /// Waiting in the reply queue, behind others.
    Queued,
    /// The socket is closed.
    Closed,
    /// The reply queue is full: the caller must disconnect the socket.
    Overflow,
}

/// See the module comment.
#[derive(Default)]
pub struct Outbox {
    queue: Mutex<VecDeque<Deliver>>,
    /// Replies in `queue` (read without the lock by the output path).
    waiting: AtomicUsize,
    draining: AtomicBool,
    overflowed: AtomicBool,
    /// Called (once) when waiting replies stalled for [`MAX_REPLY_STALL`]: disconnects the socket.
    on_stall: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("waiting", &self.waiting.load(Ordering::SeqCst)).finish()
    }
}

impl Outbox {
    /// What to do when waiting replies stall (set once, by the socket's connection).
    pub fn on_stall(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_stall.set(Box::new(f));
    }

    /// Whether replies are waiting (terminal output holds back while they do).
    pub fn busy(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// Whether the queue overflowed once (the socket is being disconnected).
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::SeqCst)
    }

    /// Sends `reply` now if nothing waits and it fits, else queues it.
    pub fn send(self: &Arc<Self>, socket: &Arc<Socket>, reply: Deliver) -> Sent {
        if self.overflowed() {
            return Sent::Overflow;
        }
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.is_empty() {
            match reply(socket) {
                Ok(()) => return Sent::Now,
                Err(SendError::Socket(SocketError::InternalChannelFull)) => {}
                Err(SendError::Socket(SocketError::Closed)) => return Sent::Closed,
                Err(SendError::Serialize(e)) => {
                    tracing::error!(error = ?e, "could not encode a reply");
                    return Sent::Now;
                }
            }
        }
        if queue.len() >= MAX_QUEUED_REPLIES {
            self.overflowed.store(true, Ordering::SeqCst);
            return Sent::Overflow;
        }
        queue.push_back(reply);
        self.waiting.store(queue.len(), Ordering::SeqCst);
        drop(queue);
        if !self.draining.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.clone().drain(socket.clone()));
        }
        Sent::Queued
    }

    /// Moves waiting replies into the send queue as room appears; ends when none wait or the socket closed.
    async fn drain(self: Arc<Self>, socket: Arc<Socket>) {
        let mut progress = tokio::time::Instant::now();
        loop {
            {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                while let Some(front) = queue.front() {
                    match front(&socket) {
                        Ok(()) | Err(SendError::Serialize(_)) => {
                            queue.pop_front();
                            progress = tokio::time::Instant::now();
                        }
                        Err(SendError::Socket(SocketError::InternalChannelFull)) => break,
                        Err(SendError::Socket(SocketError::Closed)) => queue.clear(),
                    }
                }
                self.waiting.store(queue.len(), Ordering::SeqCst);
                if queue.is_empty() {
                    self.draining.store(false, Ordering::SeqCst);
                    return;
                }
            }
            if !socket.connected() {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                queue.clear();
                self.waiting.store(0, Ordering::SeqCst);
                self.draining.store(false, Ordering::SeqCst);
                return;
            }
            if progress.elapsed() >= MAX_REPLY_STALL && !self.overflowed.swap(true, Ordering::SeqCst) {
                tracing::debug!(waiting = self.waiting.load(Ordering::SeqCst), "replies stalled");
                if let Some(f) = self.on_stall.get() {
                    f();
                }
            }
            tokio::time::sleep(DRAIN_RETRY).await;
        }
    }
}
