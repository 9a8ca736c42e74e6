//! A live terminal in the local one: `exec`, `attach` and `sandbox new`.
//!
//! - **tty**: raw mode, the window size at start and on `SIGWINCH`, keys (Ctrl-C too) sent as typed, the
//!   detach sequence watched for; output written as it comes.
//! - **pipe** (no tty): stdin is sent in chunks of at most the input limit, at most [`PIPE_WINDOW`] of them
//!   waiting for the server's ack (which comes once the bytes reached the process, so the terminal's input
//!   queue never overflows); stdin's end closes the process's stdin; stdout and stderr stay apart.
//!
//! The socket is `porthole-client`'s own transport (`Transport::Native`): bytes travel as binary attachments
//! both ways, with `TCP_NODELAY`. When the connection drops, the client reconnects with backoff and re-attaches from
//! the last byte it has: nothing is repeated or lost. A pipe's unacknowledged input is sent again with its
//! `offset`, and the server drops what it already had.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use app::protocol::{
    AttachTerminal, CreateSandbox, ErrorBody, Exit, ExitReason, Hello, Output, OutputStream, StartTerminal, TerminalId,
    event,
};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use porthole_client::{Connection, Follower, Incoming, Options, Received};
use std::io::Write as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::Server;
use crate::term::{self, DetachKeys, note};
use crate::{DetachArgs, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, ExecArgs, Failure};

/// Pipe input chunks sent but not yet acknowledged (each at most the input limit, 64 KiB): 512 KiB, half the
/// server's per-terminal input queue.
pub const PIPE_WINDOW: usize = 8;
/// Largest read from a tty's stdin at once.
const TTY_READ_BYTES: usize = 4096;
/// In a pipe, a read of less than [`app::protocol::BULK_INPUT_BYTES`] waits this long for more to join it, so
/// a writer of many small pieces sends at most one event per pause (the server's event rate, 1000 per second
/// by default, counts events that small) instead of being refused `rate_limited`.
const PIPE_COALESCE: Duration = Duration::from_millis(2);
/// Output consumed between acknowledgements (flow control): a quarter of the server's 512 KiB window, and
/// never after each small output, so acks cost little (a socket with Nagle's algorithm on, as `rust_socketio`'s,
/// stalled 40 ms on acks sent close together: the server now acks at once, see `http/tracked.rs`).
const ACK_EVERY_BYTES: u64 = 128 * 1024;
/// Keystrokes typed while reconnecting, kept to send once resumed; beyond it they are dropped (and said so).
const HELD_INPUT_BYTES: usize = 64 * 1024;
/// First and longest pause between reconnection attempts.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// How long the client keeps trying to reconnect, at most (less when the server's grace period is shorter,
/// but never less than [`MIN_RECONNECT_FOR`]).
const MAX_RECONNECT_FOR: Duration = Duration::from_secs(600);
const MIN_RECONNECT_FOR: Duration = Duration::from_secs(30);

/// One connection and what it delivers.
struct Link {
    conn: Arc<Connection>,
    rx: mpsc::UnboundedReceiver<Incoming>,
}

impl Link {
    async fn connect(server: &Server, client_id: &str) -> Result<Link, Failure> {
        let mut options = Options::new(server.url.clone(), server.token.clone());
        options.client_id = Some(client_id.to_string());
        // Porthole's own Socket.IO client: binary attachments both ways, TCP_NODELAY (see porthole-client).
        options.transport = porthole_client::Transport::Native;
        options.tls = server.tls.clone();
        match Connection::connect(&options).await {
            Ok((conn, rx)) => Ok(Link { conn: Arc::new(conn), rx }),
            Err(porthole_client::Error::Refused(m)) => {
                let (code, message) = m.split_once(':').unwrap_or(("refused", m.as_str()));
                Err(Failure::refused(code.trim(), message.trim()))
            }
            Err(porthole_client::Error::Transport(e)) => Err(server.diagnose(&e).await),
            Err(e) => Err(Failure::refused("unreachable", format!("{}: {e}", server.url))),
        }
    }

    fn hello(&self) -> &Hello {
        self.conn.hello()
    }
}

/// A transport failure in the middle of a request.
fn transport(e: porthole_client::Error) -> Failure {
    Failure::refused("unreachable", e)
}

/// A refused `start-terminal` or `create-sandbox`: as `docker exec`, 127 and 126 for a command that is not
/// there or cannot run, else 125.
fn start_refusal(e: ErrorBody) -> Failure {
    let code = match e.code {
        app::protocol::ErrorCode::CommandNotFound => EXIT_NOT_FOUND,
        app::protocol::ErrorCode::CommandNotExecutable => EXIT_NOT_EXECUTABLE,
        _ => crate::EXIT_REFUSED,
    };
    Failure { code, message: format!("{}: {}", e.code, e.message) }
}

fn detach_keys(args: &DetachArgs) -> Result<DetachKeys, Failure> {
    term::parse_detach_keys(&args.detach_keys)
        .map(DetachKeys::new)
        .map_err(|e| Failure::refused("invalid_argument", format!("--detach-keys: {e}")))
}

fn new_client_id() -> String {
    format!("cli-{}", uuid::Uuid::new_v4().simple())
}

/// What the local side does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A tty; `stdin`: keys are sent (else only the detach sequence is watched).
    Tty { stdin: bool },
    /// No tty; `stdin`: stdin is streamed and its end closes the process's.
    Pipe { stdin: bool },
}

pub async fn exec(server: Server, args: ExecArgs) -> Result<u8, Failure> {
    let (tty, stdin) = match (args.tty, args.interactive) {
        (false, false) => (term::interactive(), true),
        given => given,
    };
    let keys = detach_keys(&args.keys)?;
    let client_id = new_client_id();
    let link = Link::connect(&server, &client_id).await?;
    let (cols, rows) = term::size().unwrap_or((app::protocol::DEFAULT_COLS, app::protocol::DEFAULT_ROWS));
    let req = StartTerminal {
        container_id: args.container,
        cols: tty.then_some(cols),
        rows: tty.then_some(rows),
        command: (!args.command.is_empty()).then_some(args.command),
        flow_control: true,
        tty,
    };
    let started = link.conn.request::<event::StartTerminal>(&req).await.map_err(transport)?.map_err(start_refusal)?;
    let mode = if tty { Mode::Tty { stdin } } else { Mode::Pipe { stdin } };
    let mut live = Live::new(server, client_id, link, started.terminal_id, 0, mode, keys);
    // `-t` without `-i`: as `docker exec -t`, keys are not sent (only the detach sequence is watched for).
    live.typing = !tty || stdin;
    live.run().await
}

pub async fn attach(server: Server, terminal: String, read_only: bool, keys: &DetachArgs) -> Result<u8, Failure> {
    let keys = detach_keys(keys)?;
    let client_id = new_client_id();
    let link = Link::connect(&server, &client_id).await?;
    let req = AttachTerminal { terminal_id: TerminalId(terminal), since: None, flow_control: true };
    let ack = link
        .conn
        .request::<event::AttachTerminal>(&req)
        .await
        .map_err(transport)?
        .map_err(|e| Failure::refused(e.code.as_str(), e.message))?;
    if ack.read_only && !read_only {
        note(&format!("terminal {} is shared with you read-only: watching", ack.terminal_id));
    }
    let typing = !(read_only || ack.read_only);
    let mode = if ack.tty { Mode::Tty { stdin: typing } } else { Mode::Pipe { stdin: false } };
    let mut live = Live::new(server, client_id, link, ack.terminal_id, ack.offset, mode, keys);
    live.watch_only = !typing;
    if ack.tty && typing {
        // Take the terminal to this window's size, as a new `docker exec` would.
        if let Some((cols, rows)) = term::size() {
            let _ = live.link.conn.emit::<event::Resize>(&resize(&live.id, cols, rows)).await;
        }
    }
    live.run().await
}

pub async fn sandbox(server: Server, profile: String, keys: &DetachArgs) -> Result<u8, Failure> {
    let keys = detach_keys(keys)?;
    let client_id = new_client_id();
    let link = Link::connect(&server, &client_id).await?;
    let (cols, rows) = term::size().unwrap_or((app::protocol::DEFAULT_COLS, app::protocol::DEFAULT_ROWS));
    let req = CreateSandbox { profile, cols: Some(cols), rows: Some(rows), flow_control: true };
    let made = link.conn.request::<event::CreateSandbox>(&req).await.map_err(transport)?.map_err(start_refusal)?;
    note(&format!(
        "sandbox {} (profile {}) is ready; remove it with: porthole-cli sandbox rm {}",
        made.sandbox.name, made.sandbox.profile, made.sandbox.name
    ));
    let mode = Mode::Tty { stdin: true };
    Live::new(server, client_id, link, made.terminal.terminal_id, 0, mode, keys).run().await
}

fn resize(id: &TerminalId, cols: u16, rows: u16) -> app::protocol::Resize {
    app::protocol::Resize { terminal_id: id.clone(), cols, rows }
}

/// A pipe's input on its way: chunks sent and not yet confirmed, in order, by their input offset.
///
/// Every chunk asks for an ack (the native transport keeps acks apart by id), which comes once its bytes
/// reached the process; an ack confirms its chunk and every chunk before it (the server writes in order), so
/// the window refills as fast as the process reads. (One ack in flight per window held a fast reader to one
/// chunk per round trip: 0.63x `docker exec -i`.)
#[derive(Default)]
struct PipeInput {
    unacked: VecDeque<(u64, Bytes)>,
    /// Offset after the last byte read from stdin.
    next: u64,
    /// stdin ended (and its end was sent).
    eof_read: bool,
    /// The acks in flight.
    acks: FuturesUnordered<BoxFuture<'static, Sent>>,
}

/// An acked input's outcome: the offset its bytes end at, and the server's answer.
struct Sent {
    end: u64,
    answer: Result<Result<app::protocol::TerminalAck, ErrorBody>, porthole_client::Error>,
}

impl PipeInput {
    /// Sends a chunk asking for its ack (the end of input, without). A send that fails is sent again after the
    /// resume.
    async fn send(&mut self, conn: &Arc<Connection>, id: &TerminalId, offset: u64, data: Bytes, eof: bool) {
        if eof {
            let _ = conn.send_input(id, &data, eof, Some(offset), false).await;
            return;
        }
        // Sent now, so that what is sent after it arrives after it; only the wait for the ack is kept.
        let end = offset + data.len() as u64;
        self.acks.push(match conn.send_input_acked(id, &data, Some(offset)).await {
            Ok(wait) => Box::pin(async move { Sent { end, answer: wait.await } }),
            Err(e) => Box::pin(async move { Sent { end, answer: Err(e) } }),
        });
    }

    /// Sends everything not confirmed again (on a new connection); the server drops what it had.
    async fn resend(&mut self, conn: &Arc<Connection>, id: &TerminalId) {
        self.acks = FuturesUnordered::new();
        let chunks: Vec<_> = self.unacked.iter().cloned().collect();
        for (offset, data) in chunks {
            self.send(conn, id, offset, data, false).await;
        }
        if self.eof_read {
            self.send(conn, id, self.next, Bytes::new(), true).await;
        }
    }

    fn has_room(&self) -> bool {
        !self.eof_read && self.unacked.len() < PIPE_WINDOW
    }

    /// Waits for the next ack (never, when none is in flight).
    async fn answered(&mut self) -> Sent {
        match self.acks.next().await {
            Some(sent) => sent,
            None => std::future::pending().await,
        }
    }
}

/// A terminal being shown here.
struct Live {
    server: Server,
    client_id: String,
    link: Link,
    id: TerminalId,
    follower: Follower,
    mode: Mode,
    keys: DetachKeys,
    /// Only the detach keys are read (attach read-only): no keys, no resizes.
    watch_only: bool,
    /// Keys are sent (false for `-t` without `-i`).
    typing: bool,
    acked: u64,
    /// Written directly (a blocking write): tokio's stdout hands every write to its blocking pool, a thread
    /// hop that added a tenth of a millisecond to every keystroke's echo. A slow reader then holds one of the
    /// runtime's two workers, which flow control already expects.
    stdout: std::io::Stdout,
    stderr: std::io::Stderr,
    pipe: PipeInput,
    /// Keys typed while reconnecting.
    held: Vec<u8>,
}

impl Live {
    fn new(
        server: Server,
        client_id: String,
        link: Link,
        id: TerminalId,
        offset: u64,
        mode: Mode,
        keys: DetachKeys,
    ) -> Live {
        let mut follower = Follower::default();
        follower.follow(id.clone(), offset, true);
        Live {
            server,
            client_id,
            link,
            id,
            follower,
            mode,
            keys,
            watch_only: false,
            typing: true,
            acked: offset,
            stdout: std::io::stdout(),
            stderr: std::io::stderr(),
            pipe: PipeInput::default(),
            held: Vec::new(),
        }
    }

    async fn run(mut self) -> Result<u8, Failure> {
        let tty = matches!(self.mode, Mode::Tty { .. });
        let reads_stdin = match self.mode {
            Mode::Tty { stdin } => stdin || term::stdin_is_tty(),
            Mode::Pipe { stdin } => stdin,
        };
        if tty && term::stdin_is_tty() && reads_stdin {
            term::raw_mode()
                .map_err(|e| Failure::refused("tty", format!("cannot set the terminal to raw mode: {e}")))?;
        }
        let mut stdin = if reads_stdin { Some(Stdin::open(tty)) } else { None };
        let sig = |k: SignalKind| signal(k).map_err(|e| Failure::refused("signal", e));
        let (mut winch, mut hup, mut int, mut quit) = (
            sig(SignalKind::window_change())?,
            sig(SignalKind::hangup())?,
            sig(SignalKind::interrupt())?,
            sig(SignalKind::terminate())?,
        );
        loop {
            let room = match self.mode {
                Mode::Pipe { .. } => self.pipe.has_room(),
                Mode::Tty { .. } => true,
            };
            tokio::select! {
                biased;
                incoming = self.link.rx.recv() => match incoming {
                    Some(Incoming::Output(o)) if o.terminal_id == self.id => self.output(o).await?,
                    Some(Incoming::Exit(e)) if e.terminal_id == self.id => return self.exited(e).await,
                    Some(Incoming::AuthError(e)) => return Err(Failure::refused(e.code.as_str(), e.message)),
                    Some(Incoming::RequestError(e)) => {
                        let what = format!("{} refused: {}", e.event, e.error.message);
                        // Input that reached a terminal after its process ended is no loss: its exit follows.
                        let ended = e.error.code == app::protocol::ErrorCode::UnknownTerminal;
                        if matches!(self.mode, Mode::Pipe { .. }) && e.event == event::INPUT {
                            // A pipe's bytes are data: one refused is a hole in the copy.
                            if !ended {
                                return Err(Failure::refused(e.error.code.as_str(), what));
                            }
                        } else {
                            note(&format!("{}: {what}", e.error.code));
                        }
                    }
                    Some(Incoming::Closed) | None => self.resume().await?,
                    Some(_) => {}
                },
                sent = self.pipe.answered(), if !self.pipe.acks.is_empty() => self.input_answered(sent)?,
                chunk = async { stdin.as_mut().expect("guarded").next().await }, if stdin.is_some() && room => match chunk {
                    Some(data) => if self.typed(data).await? { return Ok(self.detached()) },
                    None => {
                        stdin = None;
                        self.stdin_ended().await;
                    }
                },
                _ = winch.recv(), if tty => {
                    if let Some((cols, rows)) = term::size() && !self.watch_only {
                        let _ = self.link.conn.emit::<event::Resize>(&resize(&self.id, cols, rows)).await;
                    }
                },
                _ = int.recv() => return self.interrupted(130).await,
                _ = hup.recv() => return Ok(self.left(129)),
                _ = quit.recv() => return Ok(self.left(143)),
            }
        }
    }

    async fn output(&mut self, o: Output) -> Result<(), Failure> {
        let stderr = o.stream == Some(OutputStream::Stderr);
        let data = match self.follower.receive(&o) {
            Some(Received::New { data, .. }) => data,
            Some(Received::Gap { expected, offset, data }) => {
                note(&format!("{} bytes of output were lost: the server no longer kept them", offset - expected));
                data
            }
            Some(Received::Repeat) | None => return Ok(()),
        };
        let written =
            if stderr { write_out(&mut self.stderr.lock(), &data) } else { write_out(&mut self.stdout.lock(), &data) };
        if let Err(e) = written {
            // The reader went away (`| head`): end the terminal as a pipe writer would be ended.
            let _ = self
                .link
                .conn
                .request::<event::CloseTerminal>(&app::protocol::CloseTerminal { terminal_id: self.id.clone() })
                .await;
            return Err(Failure { code: 141, message: format!("cannot write the output: {e}") });
        }
        let consumed = self.follower.offset(&self.id).unwrap_or(0);
        if consumed - self.acked >= ACK_EVERY_BYTES {
            self.acked = consumed;
            let _ = self.link.conn.ack_output(&self.id, consumed).await;
        }
        Ok(())
    }

    /// Bytes read from stdin; true when they completed the detach sequence.
    async fn typed(&mut self, data: Vec<u8>) -> Result<bool, Failure> {
        match self.mode {
            Mode::Tty { .. } => {
                let (send, detach) = self.keys.feed(&data);
                if !send.is_empty()
                    && !self.watch_only
                    && self.typing
                    && self.link.conn.send_input(&self.id, &send, false, None, false).await.is_err()
                {
                    {
                        // The connection is going; keep the keys for the resumed one.
                        let room = HELD_INPUT_BYTES.saturating_sub(self.held.len());
                        self.held.extend_from_slice(&send[..send.len().min(room)]);
                    }
                }
                Ok(detach)
            }
            Mode::Pipe { .. } => {
                let data = Bytes::from(data);
                let offset = self.pipe.next;
                self.pipe.next += data.len() as u64;
                self.pipe.unacked.push_back((offset, data.clone()));
                self.pipe.send(&self.link.conn, &self.id, offset, data, false).await;
                Ok(false)
            }
        }
    }

    async fn stdin_ended(&mut self) {
        if let Mode::Pipe { .. } = self.mode {
            self.pipe.eof_read = true;
            let offset = self.pipe.next;
            self.pipe.send(&self.link.conn, &self.id, offset, Bytes::new(), true).await;
        }
    }

    fn input_answered(&mut self, sent: Sent) -> Result<(), Failure> {
        match sent.answer {
            Ok(Ok(_)) => {
                while self.pipe.unacked.front().is_some_and(|(o, d)| o + d.len() as u64 <= sent.end) {
                    self.pipe.unacked.pop_front();
                }
                Ok(())
            }
            // The terminal ended (its exit follows) or the process closed its stdin: nothing more to send.
            Ok(Err(e)) if e.code == app::protocol::ErrorCode::UnknownTerminal => {
                self.pipe.unacked.clear();
                self.pipe.eof_read = true;
                Ok(())
            }
            Ok(Err(e)) => Err(Failure::refused(e.code.as_str(), format!("input refused: {}", e.message))),
            // The connection dropped: the resume sends it again.
            Err(_) => Ok(()),
        }
    }

    async fn exited(mut self, e: Exit) -> Result<u8, Failure> {
        let _ = self.stdout.flush();
        let _ = self.stderr.flush();
        term::restore();
        match (e.reason, e.exit_code) {
            (ExitReason::Exited, Some(code)) => Ok(code.clamp(0, 255) as u8),
            (reason, code) => Err(Failure::refused(
                reason.as_str(),
                format!(
                    "terminal {} ended without an exit code of its own: {}{}",
                    self.id,
                    describe(reason),
                    code.map(|c| format!(" (status {c})")).unwrap_or_default()
                ),
            )),
        }
    }

    /// The detach keys: the terminal keeps running.
    fn detached(&self) -> u8 {
        term::restore();
        let grace = self.link.hello().grace_period_secs;
        let keeps = if grace == 0 {
            "the server ends it now that nobody is attached".to_string()
        } else {
            format!("the server keeps it running for {} while nobody is attached", human(grace))
        };
        note(&format!(
            "detached from terminal {}; {keeps}. Attach again with: porthole-cli attach {}",
            self.id, self.id
        ));
        0
    }

    /// Hung up or terminated: leave the terminal running, as a detach.
    fn left(&self, code: u8) -> u8 {
        term::restore();
        note(&format!("signal received; terminal {} keeps running: porthole-cli attach {}", self.id, self.id));
        code
    }

    /// Ctrl-C outside raw mode (a pipe): end the remote process too, as its local counterpart would end.
    async fn interrupted(&self, code: u8) -> Result<u8, Failure> {
        term::restore();
        let close = app::protocol::CloseTerminal { terminal_id: self.id.clone() };
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.link.conn.request::<event::CloseTerminal>(&close)).await;
        Ok(code)
    }

    /// Reconnects with backoff and re-attaches from the last byte held.
    async fn resume(&mut self) -> Result<(), Failure> {
        let since = self.follower.offset(&self.id).unwrap_or(0);
        note(&format!("connection to {} lost at byte {since} of terminal {}; reconnecting", self.server.url, self.id));
        let grace = Duration::from_secs(self.link.hello().grace_period_secs);
        let give_up = Instant::now() + grace.clamp(MIN_RECONNECT_FOR, MAX_RECONNECT_FOR);
        let mut pause = FIRST_RETRY;
        loop {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY);
            let last_error;
            match Link::connect(&self.server, &self.client_id).await {
                Ok(link) => {
                    let req = AttachTerminal { terminal_id: self.id.clone(), since: Some(since), flow_control: true };
                    match link.conn.request::<event::AttachTerminal>(&req).await {
                        Ok(Ok(ack)) => {
                            self.link = link;
                            self.acked = ack.offset.max(since);
                            if ack.truncated {
                                let lost =
                                    format!("{} bytes of output were lost while disconnected", ack.offset - since);
                                if let Mode::Pipe { .. } = self.mode {
                                    // A pipe's bytes are data: a hole in them must not pass for a copy.
                                    return Err(Failure::refused("output_lost", lost));
                                }
                                note(&lost);
                            }
                            note(&format!("reconnected; terminal {} resumed at byte {since}", self.id));
                            self.after_resume().await;
                            return Ok(());
                        }
                        Ok(Err(e)) => {
                            return Err(Failure::refused(
                                e.code.as_str(),
                                format!("cannot resume terminal {}: {}", self.id, e.message),
                            ));
                        }
                        Err(e) => last_error = e.to_string(),
                    }
                }
                Err(f) if f.message.starts_with("unauthenticated") || f.message.starts_with("token_") => return Err(f),
                Err(f) => last_error = f.message,
            }
            if Instant::now() >= give_up {
                return Err(Failure::refused(
                    "unreachable",
                    format!(
                        "could not reconnect ({last_error}); terminal {} may still run: porthole-cli attach {}",
                        self.id, self.id
                    ),
                ));
            }
        }
    }

    async fn after_resume(&mut self) {
        match self.mode {
            Mode::Pipe { .. } => self.pipe.resend(&self.link.conn, &self.id).await,
            Mode::Tty { .. } => {
                if !self.watch_only
                    && let Some((cols, rows)) = term::size()
                {
                    let _ = self.link.conn.emit::<event::Resize>(&resize(&self.id, cols, rows)).await;
                }
                if !self.held.is_empty() {
                    let held = std::mem::take(&mut self.held);
                    let _ = self.link.conn.send_input(&self.id, &held, false, None, false).await;
                }
            }
        }
    }
}

fn write_out(w: &mut impl std::io::Write, data: &[u8]) -> std::io::Result<()> {
    w.write_all(data)?;
    w.flush()
}

/// Where the keys or the pipe's bytes come from.
enum Stdin {
    /// A tty, reopened non-blocking (its own open file, so the shell's stays as it was) and read on the
    /// runtime's thread: a key goes out with no hand-off between threads (a reading thread and its wake-up
    /// cost tens of microseconds per keystroke).
    Tty(tokio::net::unix::pipe::Receiver, Box<[u8]>),
    /// Read on a thread of its own (a blocking read must not hold the runtime).
    Thread(mpsc::Receiver<Vec<u8>>),
}

impl Stdin {
    fn open(tty: bool) -> Stdin {
        if tty
            && term::stdin_is_tty()
            && let Some(fd) = reopen_tty()
        {
            return Stdin::Tty(fd, vec![0u8; TTY_READ_BYTES].into_boxed_slice());
        }
        if tty {
            Stdin::Thread(read_stdin(TTY_READ_BYTES, false))
        } else {
            Stdin::Thread(read_stdin(app::protocol::MAX_INPUT_BYTES, true))
        }
    }

    /// The next bytes read; `None` at the end (or a read error). Cancel-safe: bytes read are returned at once.
    async fn next(&mut self) -> Option<Vec<u8>> {
        match self {
            Stdin::Thread(rx) => rx.recv().await,
            Stdin::Tty(tty, buf) => {
                use tokio::io::AsyncReadExt;
                // A hung-up tty reads 0 or fails (EIO): its end.
                match tty.read(buf).await {
                    Ok(0) | Err(_) => None,
                    Ok(n) => Some(buf[..n].to_vec()),
                }
            }
        }
    }
}

/// The tty on stdin opened again, non-blocking, and registered with the runtime (tokio's pipe reader takes any
/// pollable descriptor); `None` where that fails (the caller then reads on a thread).
fn reopen_tty() -> Option<tokio::net::unix::pipe::Receiver> {
    use rustix::fs::{Mode, OFlags, open};
    let fd =
        open("/proc/self/fd/0", OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC, Mode::empty())
            .ok()?;
    tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(fd).ok()
}

/// Reads stdin on a thread of its own, in chunks of at most `chunk` bytes; the channel closes at its end. With
/// `coalesce`, a small read waits up to [`PIPE_COALESCE`] at a time for more (see there).
fn read_stdin(chunk: usize, coalesce: bool) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(1);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; chunk];
        let read = |stdin: &mut std::io::StdinLock<'_>, buf: &mut [u8]| loop {
            match stdin.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // An error ends the input as its end would.
                other => return other.unwrap_or(0),
            }
        };
        loop {
            let mut have = read(&mut stdin, &mut buf);
            if have == 0 {
                return;
            }
            let mut ended = false;
            while coalesce && have < app::protocol::BULK_INPUT_BYTES && readable_within(PIPE_COALESCE) {
                match read(&mut stdin, &mut buf[have..]) {
                    0 => {
                        ended = true;
                        break;
                    }
                    n => have += n,
                }
            }
            if tx.blocking_send(buf[..have].to_vec()).is_err() || ended {
                return;
            }
        }
    });
    rx
}

/// Whether stdin has something to read (or its end) within `wait`.
fn readable_within(wait: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let stdin = std::io::stdin();
    let mut fds = [PollFd::new(&stdin, PollFlags::IN)];
    let timeout = Timespec { tv_sec: 0, tv_nsec: wait.as_nanos() as _ };
    poll(&mut fds, Some(&timeout)).is_ok_and(|n| n > 0)
}

fn describe(reason: ExitReason) -> &'static str {
    match reason {
        ExitReason::Exited => "the process ended",
        ExitReason::ContainerStopped => "its container stopped",
        ExitReason::Closed => "it was closed by a client",
        ExitReason::DockerUnavailable => "the server lost the Docker daemon",
        ExitReason::ServerShutdown => "the server shut down",
        ExitReason::Disconnected => "its client disconnected",
        ExitReason::Abandoned => "nobody attached within the grace period",
        ExitReason::SandboxRemoved => "its sandbox was removed",
        ExitReason::SandboxExpired => "its sandbox expired",
        ExitReason::Oom => "its container ran out of memory",
        ExitReason::NodeLost => "the cluster node that held it is gone",
    }
}

/// `600` -> `10 min`, `90` -> `90 s`.
fn human(secs: u64) -> String {
    if secs >= 120 && secs.is_multiple_of(60) { format!("{} min", secs / 60) } else { format!("{secs} s") }
}
