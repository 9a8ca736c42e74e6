//! The stream wrapper of every connection: header, idle and sign-in deadlines, the pre-sign-in byte budget,
//! the sign-in farewell frame, and the kill switch (see [`super::conn`] for the rules).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use app::protocol::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn::*;

/// Counts a request in flight on a connection; its end starts the idle clock.
pub(super) struct InFlight(Arc<ConnShared>);

impl InFlight {
    pub(super) fn new(c: &Arc<ConnShared>) -> InFlight {
        c.in_flight.fetch_add(1, Ordering::SeqCst);
        c.requests.fetch_add(1, Ordering::SeqCst);
        InFlight(c.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.accepted.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since_ms.store(ms, Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.waker.wake();
    }
}

/// Why the edge closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deadline {
    Header,
    Idle,
    SignIn,
}

/// A connection's socket with the edge's timeouts, byte budget and kill switch (see the module comment).
#[derive(Debug)]
pub struct Tracked<S> {
    inner: S,
    shared: Arc<ConnShared>,
    /// TLS runs on top of this stream: no plain-text farewell can be written into it.
    tls: bool,
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: Option<Instant>,
    last_read: Instant,
    /// When the client started sending bytes of a request while none was in flight, and the request count then.
    partial: Option<(u64, Instant)>,
    preauth_read: usize,
    /// A `connect_error` and a WebSocket close frame being written before the connection is closed.
    farewell: Option<(Vec<u8>, usize)>,
    closed: bool,
}

impl<S> Tracked<S> {
    pub(super) fn new(inner: S, shared: Arc<ConnShared>, tls: bool) -> Tracked<S> {
        let now = Instant::now();
        Tracked {
            inner,
            shared,
            tls,
            sleep: Box::pin(tokio::time::sleep_until(now.into())),
            armed: None,
            last_read: now,
            partial: None,
            preauth_read: 0,
            farewell: None,
            closed: false,
        }
    }

    /// The next deadline that applies, if any.
    pub(super) fn deadline(&self) -> Option<(Instant, Deadline)> {
        let s = &self.shared;
        let limits = &s.conns.limits;
        let sign_in = s.awaiting_sign_in().map(|since| (since + limits.sign_in_timeout, Deadline::SignIn));
        if s.in_flight.load(Ordering::SeqCst) > 0 {
            return sign_in;
        }
        let idle = if s.upgraded.load(Ordering::SeqCst) {
            (self.last_read + limits.idle_timeout.max(WEBSOCKET_MIN_IDLE), Deadline::Idle)
        } else {
            let requests = s.requests.load(Ordering::SeqCst);
            if requests == 0 {
                let timeout = if s.overflow { OVERFLOW_HEADER_TIMEOUT } else { limits.header_timeout };
                (s.accepted + timeout, Deadline::Header)
            } else {
                let idle = (s.idle_since() + limits.idle_timeout, Deadline::Idle);
                match self.partial {
                    Some((n, since)) if n == requests && since + limits.header_timeout < idle.0 => {
                        (since + limits.header_timeout, Deadline::Header)
                    }
                    _ => idle,
                }
            }
        };
        Some(match sign_in {
            Some(s) if s.0 < idle.0 => s,
            _ => idle,
        })
    }

    /// Checks the kill switch and deadlines; `Some(error)` once the connection must end.
    pub(super) fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.shared.waker.register(cx.waker());
        if self.closed || self.shared.killed.load(Ordering::SeqCst) {
            self.closed = true;
            return Some(io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed by the server"));
        }
        let (at, why) = self.deadline()?;
        if Instant::now() < at {
            // The idle deadline moves with every read; moving the timer each time would cost a timer-wheel
            // update per keystroke. A timer armed for an earlier deadline is kept: when it fires, the deadline
            // is looked at again and the timer re-armed for it.
            if self.armed.is_none_or(|armed| armed > at) || self.sleep.is_elapsed() {
                self.sleep.as_mut().reset(at.into());
                self.armed = Some(at);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return None;
            }
            // Fired for an older, earlier deadline: wait for the current one.
            self.sleep.as_mut().reset(at.into());
            self.armed = Some(at);
            if self.sleep.as_mut().poll(cx).is_pending() {
                return None;
            }
        }
        self.armed = None;
        match why {
            Deadline::SignIn if !self.tls && self.farewell.is_none() => {
                let secs = self.shared.conns.limits.sign_in_timeout.as_secs();
                self.start_farewell(&format!("did not sign in within {secs} s"));
                None
            }
            Deadline::SignIn if self.farewell.is_some() => None,
            _ => {
                tracing::debug!(peer = %self.shared.peer, reason = ?why, "closing connection");
                self.closed = true;
                Some(io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))
            }
        }
    }

    /// Queues a Socket.IO `connect_error` text frame and a WebSocket close frame (1008, policy violation).
    pub(super) fn start_farewell(&mut self, why: &str) {
        let text = sign_in_farewell(why);
        let mut frame = vec![0x81u8];
        let len = text.len();
        if len < 126 {
            frame.push(len as u8);
        } else {
            frame.push(126);
            frame.extend_from_slice(&(len.min(u16::MAX as usize) as u16).to_be_bytes());
        }
        frame.extend_from_slice(text.as_bytes());
        frame.extend_from_slice(&[0x88, 0x02, 0x03, 0xF0]);
        self.farewell = Some((frame, 0));
    }
}

impl<S> Drop for Tracked<S> {
    fn drop(&mut self) {
        // The connection is closed: it no longer counts, whoever still holds its parts.
        self.shared.conns.release(&self.shared);
        let slot = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(slot) = slot {
            slot.release();
        }
    }
}

impl<S: AsyncWrite + Unpin> Tracked<S> {
    /// What a write gets instead of writing, once the connection is ending (closed, killed, saying farewell).
    pub(super) fn write_gate(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<usize>>> {
        if self.closed || self.shared.killed.load(Ordering::SeqCst) {
            return Some(Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed"))));
        }
        self.farewell.is_some().then(|| self.poll_farewell(cx).map(Err))
    }

    /// Writes the farewell; `Ready(error)` once it is out (or cannot be), then the connection ends.
    pub(super) fn poll_farewell(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some((bytes, at)) = self.farewell.as_mut() else {
            return Poll::Ready(io::Error::other("no farewell"));
        };
        while *at < bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*at..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => break,
                Poll::Ready(Ok(n)) => *at += n,
                Poll::Pending => return Poll::Pending,
            }
        }
        if Pin::new(&mut self.inner).poll_flush(cx).is_pending() {
            return Poll::Pending;
        }
        self.farewell = None;
        self.closed = true;
        Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "closed: the connection did not sign in"))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + std::os::fd::AsFd> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(e) = this.expired(cx) {
            return Poll::Ready(Err(e));
        }
        if this.farewell.is_some() {
            return this.poll_farewell(cx).map(Err);
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            // Acknowledge what the client sends at once, not after the 40 ms delayed-ACK timer: a client with
            // Nagle's algorithm on (rust_socketio's, for one) holds its next small write (an output-ack, a key)
            // until this ACK, and a server paused for that very ack has no data to carry it sooner. Linux
            // clears the flag as it goes, so it is set again after every read.
            let _ = rustix::net::sockopt::set_tcp_quickack(this.inner.as_fd(), true);
            let now = Instant::now();
            this.last_read = now;
            let s = &this.shared;
            if s.in_flight.load(Ordering::SeqCst) == 0 && !s.upgraded.load(Ordering::SeqCst) {
                let requests = s.requests.load(Ordering::SeqCst);
                if this.partial.is_none_or(|(r, _)| r != requests) {
                    this.partial = Some((requests, now));
                }
            }
            if s.awaiting_sign_in().is_some() {
                this.preauth_read += n;
                if this.preauth_read > PREAUTH_MAX_BYTES {
                    tracing::debug!(peer = %s.peer, "closing a WebSocket that sent too much before signing in");
                    if this.tls {
                        this.closed = true;
                    } else {
                        this.start_farewell(&format!("sent more than {PREAUTH_MAX_BYTES} bytes before signing in"));
                    }
                    // These bytes are dropped: the connection ends with the next poll.
                    buf.set_filled(before);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
        }
        polled
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(ended) = this.write_gate(cx) {
            return ended;
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(ended) = this.write_gate(cx) {
            return ended;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The Engine.IO message carrying the Socket.IO `connect_error` for a connection that did not sign in.
pub fn sign_in_farewell(why: &str) -> String {
    let packet = serde_json::json!({ "message": format!("{}: {why}", ErrorCode::SignInTimeout) });
    format!("44{packet}")
}
