//! One terminal's recorder: a tap on its event log, written to its `.cast` file as it happens.
//!
//! Events are encoded as they arrive and written by a blocking task in batches, at most [`WRITE_CHUNK`] at a
//! time and at least every [`FLUSH_INTERVAL`]; every write holds whole lines, so the file always ends on a
//! line (a crash loses only what was not yet written). The encoded bytes not yet written are bounded by
//! [`QUEUE_BYTES`]: past it, while the disk is still busy with the previous batch, output is left out and
//! counted, and a `gap N` marker says so when there is room again (the tap itself gets a gap, counted the
//! same way, if it ever falls further behind than the terminal's log keeps).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use app::protocol::Exit;
use tokio::sync::watch;

use super::cast::{self, ByteStream};
use super::{Progress, Recordings};
use crate::session::log::{Event, Tap};

/// Most encoded bytes waiting for the disk per recording; output beyond it is missed (`gap N`).
pub const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// A write starts once this much is waiting (or at the flush interval); what piles up while one is in flight
/// goes in the next.
pub const WRITE_CHUNK: usize = 256 * 1024;
/// Longest time an encoded event waits before it is written (the file lags at most about this, plus the
/// write's own time).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// What the recorder needs.
pub(super) struct Job {
    pub id: String,
    pub tap: Tap,
    pub file: std::fs::File,
    /// Bytes already in the file (the header).
    pub written: u64,
    pub live: watch::Sender<Progress>,
    pub recordings: Arc<Recordings>,
}

/// Who is recording (for the gap audit records).
struct Ctx {
    id: String,
    recordings: Arc<Recordings>,
}

/// How the recorder stopped.
pub(super) enum Outcome {
    /// The terminal ended and everything was written.
    Ended { file: std::fs::File, exit: Option<Exit> },
    /// A write failed (the file was cut back to its last whole line).
    Failed(String),
}

struct State {
    buf: Vec<u8>,
    out: ByteStream,
    input: ByteStream,
    /// Output bytes missed and not yet reported in a marker.
    unreported: u64,
    progress: Progress,
    exit: Option<Exit>,
    ended: bool,
}

impl State {
    fn room(&self) -> bool {
        self.buf.len() < QUEUE_BYTES
    }

    /// Writes the pending gap marker (after what is carried of a split character).
    fn report_gap(&mut self, at: Duration, job: &Ctx) {
        if self.unreported == 0 {
            return;
        }
        self.out.flush(at, "o", &mut self.buf);
        self.input.flush(at, "i", &mut self.buf);
        let missed = std::mem::take(&mut self.unreported);
        cast::write_text_event(at, "m", &format!("gap {missed}"), &mut self.buf);
        self.progress.missed += missed;
        job.recordings.audit_gap(&job.id, missed);
    }

    fn take(&mut self, ev: Event, job: &Ctx) {
        match ev {
            Event::Output { at, data, .. } => {
                if !self.room() {
                    self.unreported += data.len() as u64;
                    return;
                }
                self.report_gap(at, job);
                self.out.write(at, "o", &data, &mut self.buf);
                self.progress.bytes += data.len() as u64;
                self.progress.last_us = at.as_micros() as u64;
            }
            Event::Input { at, data } => {
                if !self.room() {
                    // Counted with the output: `gap N` is every recorded byte missed.
                    self.unreported += data.len() as u64;
                    return;
                }
                self.report_gap(at, job);
                self.input.write(at, "i", &data, &mut self.buf);
            }
            Event::Resize { at, cols, rows } => {
                cast::write_text_event(at, "r", &format!("{cols}x{rows}"), &mut self.buf);
            }
            Event::Marker { at, text } => {
                self.report_gap(at, job);
                cast::write_text_event(at, "m", &text, &mut self.buf);
            }
            Event::Gap { missed, .. } => self.unreported += missed,
            Event::Exit { at, exit } => {
                self.report_gap(at, job);
                self.out.flush(at, "o", &mut self.buf);
                self.input.flush(at, "i", &mut self.buf);
                let code = exit.exit_code.map_or_else(|| "-".to_string(), |c| c.to_string());
                cast::write_text_event(at, "m", &format!("exit {code} {}", exit.reason), &mut self.buf);
                self.progress.last_us = at.as_micros() as u64;
                self.exit = Some(exit);
                self.ended = true;
            }
        }
    }
}

type Writing = tokio::task::JoinHandle<(std::fs::File, Vec<u8>, std::io::Result<()>)>;

/// Records until the terminal ends or a write fails.
pub(super) async fn run(job: Job) -> Outcome {
    let Job { id, mut tap, file, written, live, recordings } = job;
    let ctx = Ctx { id, recordings };
    let mut st = State {
        buf: Vec::with_capacity(WRITE_CHUNK),
        out: ByteStream::default(),
        input: ByteStream::default(),
        unreported: 0,
        progress: Progress { file_len: written, ..Progress::default() },
        exit: None,
        ended: false,
    };
    let mut file = Some(file);
    let mut spare: Vec<u8> = Vec::new();
    let mut writing: Option<Writing> = None;
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due = false;
    loop {
        if writing.is_none() && !st.buf.is_empty() && (due || st.ended || st.buf.len() >= WRITE_CHUNK) {
            let Some(mut f) = file.take() else { return Outcome::Failed("the file could not be reopened".into()) };
            let data = std::mem::replace(&mut st.buf, std::mem::take(&mut spare));
            writing = Some(tokio::task::spawn_blocking(move || {
                let r = f.write_all(&data);
                (f, data, r)
            }));
            due = false;
        }
        if st.ended && writing.is_none() && st.buf.is_empty() {
            break;
        }
        tokio::select! {
            done = async { writing.as_mut().expect("guarded").await }, if writing.is_some() => {
                writing = None;
                match done {
                    Ok((f, mut data, Ok(()))) => {
                        st.progress.file_len += data.len() as u64;
                        live.send_replace(st.progress);
                        data.clear();
                        // A burst grew it; give the memory back.
                        data.shrink_to(WRITE_CHUNK);
                        spare = data;
                        file = Some(f);
                    }
                    Ok((f, _, Err(e))) => {
                        // Keep the file valid: cut it back to its last whole line.
                        let _ = f.set_len(st.progress.file_len);
                        return Outcome::Failed(format!("writing the recording failed: {e}"));
                    }
                    Err(e) => return Outcome::Failed(format!("the recording's writer stopped: {e}")),
                }
            }
            ev = tap.next(), if !st.ended => match ev {
                Some(ev) => st.take(ev, &ctx),
                None => st.ended = true,
            },
            _ = tick.tick() => due = true,
        }
    }
    live.send_replace(st.progress);
    match file {
        Some(file) => Outcome::Ended { file, exit: st.exit },
        None => Outcome::Failed("the file was lost".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn output_past_the_queue_becomes_a_gap_marker_then_recording_goes_on() {
        let base = std::env::temp_dir().join(format!("porthole-recorder-{}", uuid::Uuid::new_v4().simple()));
        let settings = super::super::Settings {
            dir: base.join("files"),
            default_level: app::protocol::RecordLevel::Output,
            max_age: None,
            max_bytes: None,
        };
        let audit = Arc::new(crate::audit::Audit::open("/dev/null").unwrap());
        let recordings = Recordings::open(settings, &base.join("state"), audit).unwrap();
        let ctx = Ctx { id: "t-test".into(), recordings };
        let mut st = State {
            buf: vec![b'x'; QUEUE_BYTES],
            out: ByteStream::default(),
            input: ByteStream::default(),
            unreported: 0,
            progress: Progress::default(),
            exit: None,
            ended: false,
        };
        let out = |at: u64, data: &'static [u8]| Event::Output {
            offset: 0,
            at: Duration::from_millis(at),
            data: Bytes::from_static(data),
        };
        // The disk is behind: both are missed (the second starts a character the first cannot finish).
        st.take(out(1, b"0123456789"), &ctx);
        st.take(out(2, b"ab\xe2"), &ctx);
        st.take(Event::Gap { at: Duration::from_millis(3), missed: 7 }, &ctx);
        assert_eq!(st.buf.len(), QUEUE_BYTES);
        st.buf.clear();
        st.take(out(4, b"\x82\xacok"), &ctx);
        let text = String::from_utf8(st.buf.clone()).unwrap();
        let events: Vec<cast::Event> = text.lines().map(|l| cast::parse_event(l).unwrap()).collect();
        assert_eq!((events[0].code.as_str(), events[0].data.as_slice()), ("m", &b"gap 20"[..]));
        // After the gap the stray continuation bytes are bytes, not a made-up character.
        assert_eq!((events[1].code.as_str(), events[1].data.as_slice()), ("o", &b"\x82\xacok"[..]));
        assert_eq!((st.progress.missed, st.progress.bytes), (20, 4));
        let _ = std::fs::remove_dir_all(base);
    }
}
