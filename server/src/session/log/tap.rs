//! A tap on a terminal's event log (recorders, transcripts, relays).

use std::sync::Arc;

use tokio::sync::watch;

use super::{Event, EventLog, Kind};

/// A tap: every event in order, a [`Event::Gap`] where it fell behind, the exit last. Never counted, never
/// waited for. Dropping it unsubscribes.
pub struct Tap {
    pub(super) log: Arc<EventLog>,
    /// Its place in the log's table of taps.
    pub(super) id: u64,
    pub(super) input: bool,
    /// Next sequence number.
    pub(super) seq: u64,
    /// Output offset at `seq`.
    pub(super) offset: u64,
    pub(super) done: bool,
    pub(super) changed: watch::Receiver<u64>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("seq", &self.seq).field("offset", &self.offset).finish()
    }
}

impl Tap {
    /// The next event, if one is there now.
    pub fn try_next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let log = self.log.clone();
        let mut inner = log.lock();
        let event = self.advance(&inner);
        inner.taps.insert(self.id, self.seq);
        drop(inner);
        if let Some(Event::Gap { missed, .. }) = &event {
            tracing::warn!(missed, "a tap fell behind the terminal's log; it gets a gap");
        }
        event
    }

    fn advance(&mut self, inner: &super::Inner) -> Option<Event> {
        let first = inner.first_seq();
        if self.seq < first {
            let start = inner.start();
            let missed = start.saturating_sub(self.offset);
            let at = inner.entries.front().map_or(inner.last_at, |e| e.at);
            self.seq = first;
            self.offset = start;
            return Some(Event::Gap { at, missed });
        }
        loop {
            let index = (self.seq - first) as usize;
            let Some(e) = inner.entries.get(index) else { break };
            self.seq += 1;
            self.offset = e.offset + e.output_len();
            match &e.kind {
                Kind::Output(data, _) => return Some(Event::Output { offset: e.offset, at: e.at, data: data.clone() }),
                Kind::Resize(cols, rows) => return Some(Event::Resize { at: e.at, cols: *cols, rows: *rows }),
                Kind::Input(data) if self.input => return Some(Event::Input { at: e.at, data: data.clone() }),
                Kind::Marker(text) => return Some(Event::Marker { at: e.at, text: text.clone() }),
                Kind::Input(_) => {}
            }
        }
        let (at, exit) = inner.exit.clone()?;
        self.done = true;
        Some(Event::Exit { at, exit })
    }

    /// The next event; `None` after the exit.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            self.changed.borrow_and_update();
            if let Some(e) = self.try_next() {
                return Some(e);
            }
            if self.done || self.changed.changed().await.is_err() {
                return None;
            }
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let mut inner = self.log.lock();
        inner.taps.remove(&self.id);
        if self.input {
            inner.input_taps = inner.input_taps.saturating_sub(1);
        }
    }
}
