//! Delivery of a terminal's output to one attached viewer (a socket): from its cursor on, then the exit.
//!
//! Output leaves in messages of up to [`MAX_MESSAGE_BYTES`]. While output streams (the last message was at
//! least [`BULK_HINT_BYTES`] and left less than [`COALESCE_WAIT`] ago), a message with less than
//! [`BULK_MESSAGE_BYTES`] waiting is held up to [`COALESCE_WAIT`] for more, so a flood leaves in large
//! messages; a lone echo after a pause goes at once. A flow-controlled viewer holds back while more than
//! [`protocol::FLOW_HIGH_WATERMARK`] is unacknowledged; a congested sink is retried with a growing pause.

use std::sync::Arc;
use std::time::Duration;

use app::protocol;
use tokio::time::Instant;
use tracing::Instrument;

use super::log::{Delivery, ViewerSub};
use super::{Offer, Terminal, TerminalSink};

/// Largest output message: one full read.
pub const MAX_MESSAGE_BYTES: usize = super::pumps::READ_CHUNK_BYTES;
/// While output streams, a message waits for at least this much (or [`COALESCE_WAIT`]).
pub const BULK_MESSAGE_BYTES: u64 = 32 * 1024;
/// A message at least this large means output is streaming.
const BULK_HINT_BYTES: usize = 4 * 1024;
/// Longest wait for more output while streaming.
pub const COALESCE_WAIT: Duration = Duration::from_millis(2);
/// Longest pause between retries when the sink is full (backpressure).
const MAX_SINK_BACKOFF: Duration = Duration::from_millis(20);

/// A viewer registered on a terminal, whose output starts flowing once [`Attachment::start`] is called (after
/// the transport has acknowledged the attach). Dropping it unstarted detaches the viewer.
pub struct Attachment {
    pub(super) terminal: Arc<Terminal>,
    pub(super) sub: ViewerSub,
    pub(super) flow_control: bool,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment").field("terminal", self.terminal.id()).field("viewer", self.sub.id()).finish()
    }
}

impl Attachment {
    pub fn terminal(&self) -> &Arc<Terminal> {
        &self.terminal
    }

    /// Starts sending to `sink`.
    pub fn start(self, sink: Arc<dyn TerminalSink>) {
        self.sub.set_sink(sink.clone());
        self.terminal.announce_viewers();
        let span = tracing::info_span!("viewer", terminal = %self.terminal.id(), viewer = %self.sub.id().0);
        tokio::spawn(pump(self, sink).instrument(span));
    }
}

async fn pump(attachment: Attachment, sink: Arc<dyn TerminalSink>) {
    let Attachment { terminal, mut sub, flow_control } = attachment;
    let mut streaming_until: Option<Instant> = None;
    let mut delivered_exit = false;
    'sending: loop {
        if flow_control && !sub.wait_for_acks(protocol::FLOW_HIGH_WATERMARK).await {
            break;
        }
        if streaming_until.is_some_and(|t| Instant::now() < t) && sub.waiting() < BULK_MESSAGE_BYTES {
            let deadline = Instant::now() + COALESCE_WAIT;
            while sub.waiting() < BULK_MESSAGE_BYTES && !terminal.log().has_ended() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                sub.more_within(left).await;
            }
        }
        let Some(next) = sub.next(MAX_MESSAGE_BYTES).await else { break };
        match next {
            Delivery::Output { offset, data, stream } => {
                // The cursor moves first, so a fast client's ack of these bytes is never ahead of it.
                sub.delivered(offset, data.len() as u64);
                let mut pause = Duration::from_millis(1);
                loop {
                    // A replaced or detached viewer must not send another byte.
                    if sub.stopped().is_cancelled() {
                        break 'sending;
                    }
                    match sink.output(terminal.id(), offset, &data, stream) {
                        Offer::Delivered => break,
                        Offer::Gone => break 'sending,
                        Offer::Full => {
                            tokio::select! {
                                _ = tokio::time::sleep(pause) => {}
                                _ = sub.stopped().cancelled() => break 'sending,
                            }
                            pause = (pause * 2).min(MAX_SINK_BACKOFF);
                        }
                    }
                }
                streaming_until = (data.len() >= BULK_HINT_BYTES).then(|| Instant::now() + COALESCE_WAIT);
            }
            Delivery::Exit(exit) => {
                sink.exit(&exit);
                delivered_exit = true;
                break;
            }
        }
    }
    // After the exit the viewer leaves the terminal (dropping `sub` unsubscribes it, unless a newer attach
    // replaced it). Otherwise it stays until its socket's disconnect handler detaches it, which also decides
    // about the grace period.
    if !delivered_exit {
        sub.keep();
    }
}
