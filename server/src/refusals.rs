//! Refusal accounting: keeps a flood of refused requests from filling the disk with log and audit lines.
//!
//! Every refusal (bad credential, rate limit, unknown terminal, connection cap, ...) passes [`Refusals::admit`]
//! with the address it came from and, for sockets, the socket id. The first few per interval are logged and
//! audited one by one ([`PER_SOCKET`] per socket, [`PER_ADDRESS`] per address); the rest are counted by error
//! code, and [`Refusals::flush`] (run every [`INTERVAL`]) writes one summary log line per abuser and one audit
//! record per abuser and code, with the count. Allowed actions never pass through here: they are audited one by
//! one.
//!
//! The bound this gives, per abuser (address, or socket where no address is known) and minute, is
//! [`LOG_BYTES_PER_MINUTE`] of log and as much of audit: 6 intervals × ([`PER_ADDRESS`] individual lines + the
//! summaries) × at most [`MAX_LINE_BYTES`] each. Messages quoted in those lines are cut to [`MAX_MESSAGE_CHARS`].

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use app::protocol::ErrorCode;

use crate::audit::{Audit, Record};

/// Length of one accounting interval.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Refusals of one socket logged individually per interval.
pub const PER_SOCKET: u32 = 5;
/// Refusals from one address (all its sockets and requests) logged individually per interval.
pub const PER_ADDRESS: u32 = 10;
/// Longest message quoted in a log line or audit record (messages can echo what a client sent).
pub const MAX_MESSAGE_CHARS: usize = 200;
/// A log line or audit record about a refusal is at most this long (its fields are bounded).
pub const MAX_LINE_BYTES: usize = 1024;
/// Most log bytes (and, separately, audit bytes) about refusals per abuser per minute.
pub const LOG_BYTES_PER_MINUTE: usize = 256 * 1024;
/// Most abusers tracked at once; past it, refusals from new ones go to one shared entry.
pub const MAX_TRACKED: usize = 4096;

// The bound above holds: individual lines plus at most one summary line per error code, per interval.
const _: () = assert!(
    (60 / INTERVAL.as_secs() as usize) * (PER_ADDRESS as usize + ERROR_CODES) * MAX_LINE_BYTES <= LOG_BYTES_PER_MINUTE
);
/// Upper bound on the number of distinct error codes (for the bound above).
const ERROR_CODES: usize = 24;

/// Who a refusal is charged to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Abuser {
    Address(IpAddr),
    /// A socket whose address is not known (no peer address: embedded use).
    Socket(String),
    /// Everyone past [`MAX_TRACKED`].
    Others,
}

impl std::fmt::Display for Abuser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Abuser::Address(ip) => write!(f, "{ip}"),
            Abuser::Socket(s) => write!(f, "socket {s}"),
            Abuser::Others => f.write_str("other addresses"),
        }
    }
}

#[derive(Debug)]
struct Entry {
    since: Instant,
    /// Refusals logged individually this interval, in all and per socket.
    logged: u32,
    per_socket: HashMap<String, u32>,
    /// Refusals only counted this interval, by code; the user they were made for, if one.
    counted: BTreeMap<&'static str, u64>,
    user: Option<String>,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry { since: now, logged: 0, per_socket: HashMap::new(), counted: BTreeMap::new(), user: None }
    }
}

/// Where a table's lines go: the log and the audit log are accounted separately, each with its own bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sink {
    #[default]
    Log,
    Audit,
}

/// The accounting table (see the module comment).
#[derive(Debug, Default)]
pub struct Refusals {
    sink: Sink,
    entries: Mutex<HashMap<Abuser, Entry>>,
}

/// `message`, cut to [`MAX_MESSAGE_CHARS`] characters.
pub fn clip(message: &str) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}…", &message[..at]),
        None => message.to_string(),
    }
}

impl Refusals {
    pub fn new(sink: Sink) -> Refusals {
        Refusals { sink, entries: Mutex::default() }
    }

    /// Whether a refusal with `code` from `ip` (on `socket`) should be logged and audited on its own. When not,
    /// it has been counted for the next summary.
    pub fn admit(&self, ip: Option<IpAddr>, socket: Option<&str>, code: ErrorCode, user: Option<&str>) -> bool {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut who = match (ip, socket) {
            (Some(ip), _) => Abuser::Address(ip),
            (None, Some(s)) => Abuser::Socket(s.to_string()),
            (None, None) => Abuser::Others,
        };
        if !entries.contains_key(&who) && entries.len() >= MAX_TRACKED {
            who = Abuser::Others;
        }
        let entry = entries.entry(who).or_insert_with(|| Entry::new(now));
        let socket_ok = socket.is_none_or(|s| entry.per_socket.get(s).copied().unwrap_or(0) < PER_SOCKET);
        if entry.logged < PER_ADDRESS && socket_ok {
            entry.logged += 1;
            if let Some(s) = socket
                && (entry.per_socket.len() < PER_ADDRESS as usize || entry.per_socket.contains_key(s))
            {
                *entry.per_socket.entry(s.to_string()).or_default() += 1;
            }
            return true;
        }
        *entry.counted.entry(code.as_str()).or_default() += 1;
        if entry.user.is_none() {
            entry.user = user.map(clip);
        }
        false
    }

    /// Writes the summaries of intervals that are over and forgets quiet abusers. Called every [`INTERVAL`].
    pub fn flush(&self, audit: &Audit) {
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries.retain(|who, e| {
                if now.duration_since(e.since) < INTERVAL {
                    return true;
                }
                let quiet = e.logged == 0 && e.counted.is_empty();
                if !e.counted.is_empty() {
                    due.push((who.clone(), std::mem::take(&mut e.counted), e.user.take()));
                }
                *e = Entry::new(now);
                !quiet
            });
        }
        for (who, counted, user) in due {
            if self.sink == Sink::Log {
                let total: u64 = counted.values().sum();
                let kinds = counted.iter().map(|(code, n)| format!("{code}×{n}")).collect::<Vec<_>>().join(", ");
                tracing::warn!(from = %who, total, kinds, "refusals in the last {} s, summarised", INTERVAL.as_secs());
                continue;
            }
            for (code, count) in counted {
                audit.record(Record {
                    action: "refusals",
                    outcome: "denied",
                    user: user.clone(),
                    ip: match &who {
                        Abuser::Address(ip) => Some(*ip),
                        _ => None,
                    },
                    code: Some(code.to_string()),
                    count: Some(count),
                    reason: Some(format!(
                        "{count} refusals with this code from {who} in {} s, not recorded one by one",
                        INTERVAL.as_secs()
                    )),
                    ..Record::default()
                });
            }
        }
    }

    /// Runs [`Refusals::flush`] every [`INTERVAL`] until `stop`.
    pub async fn run(state: crate::AppState, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    state.flush_refusals(true);
                    return;
                }
                _ = tick.tick() => state.flush_refusals(false),
            }
        }
    }

    /// Writes every pending summary now (at shutdown).
    pub fn flush_all(&self, audit: &Audit) {
        {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let past = Instant::now().checked_sub(INTERVAL).unwrap_or_else(Instant::now);
            for e in entries.values_mut() {
                e.since = past;
            }
        }
        self.flush(audit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn individual_lines_are_bounded_per_socket_and_address() {
        let r = Refusals::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let code = ErrorCode::RateLimited;
        let first: Vec<bool> = (0..10).map(|_| r.admit(Some(ip), Some("s1"), code, None)).collect();
        assert_eq!(first.iter().filter(|b| **b).count(), PER_SOCKET as usize);
        // Other sockets of the same address share the address's budget.
        let others = (0..100).filter(|i| r.admit(Some(ip), Some(&format!("s{}", i + 2)), code, None)).count();
        assert_eq!(others, (PER_ADDRESS - PER_SOCKET) as usize);
        // Another address is not affected.
        assert!(r.admit(Some([10, 0, 0, 2].into()), Some("x"), code, None));
        let counted: u64 = r.entries.lock().unwrap()[&Abuser::Address(ip)].counted.values().sum();
        assert_eq!(counted, 110 - PER_ADDRESS as u64);
    }

    #[test]
    fn messages_are_clipped() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(1000);
        assert_eq!(clip(&long).chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn tracked_abusers_are_bounded() {
        let r = Refusals::default();
        for i in 0..(MAX_TRACKED as u32 + 50) {
            r.admit(Some(IpAddr::from(i.to_be_bytes())), None, ErrorCode::Unauthenticated, None);
        }
        let entries = r.entries.lock().unwrap();
        assert_eq!(entries.len(), MAX_TRACKED + 1);
        assert!(entries.contains_key(&Abuser::Others));
    }
}
