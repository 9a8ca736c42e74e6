//! Failed sign-in attempts per client address: after `max` failures within a window, that address is refused
//! (even with a valid credential) until the window ends. Other addresses are unaffected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked at once; when full, windows that have ended are dropped, then the oldest.
pub const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// Counts failures per address in fixed windows.
#[derive(Debug)]
pub struct FailureLimiter {
    max: u32,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    pub fn new(max: u32, window: Duration) -> FailureLimiter {
        FailureLimiter { max, window, seen: Mutex::new(HashMap::new()) }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (Instant, u32)>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long `ip` stays refused, if it is refused now.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let seen = self.seen();
        let (start, n) = *seen.get(&ip)?;
        let left = (start + self.window).checked_duration_since(now)?;
        (n >= self.max).then_some(left)
    }

    /// Counts one failure of `ip`.
    pub fn record_failure(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut seen = self.seen();
        if seen.len() >= MAX_TRACKED_ADDRESSES && !seen.contains_key(&ip) {
            seen.retain(|_, (start, _)| now.duration_since(*start) < self.window);
            if seen.len() >= MAX_TRACKED_ADDRESSES
                && let Some(oldest) = seen.iter().min_by_key(|(_, (start, _))| *start).map(|(ip, _)| *ip)
            {
                seen.remove(&oldest);
            }
        }
        let entry = seen.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures_per_address_only() {
        let l = FailureLimiter::new(3, Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..2 {
            l.record_failure(a);
        }
        assert!(l.blocked(a).is_none());
        l.record_failure(a);
        assert!(l.blocked(a).is_some());
        assert!(l.blocked(b).is_none());
    }

    #[test]
    fn windows_end() {
        let l = FailureLimiter::new(1, Duration::from_millis(20));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        l.record_failure(a);
        assert!(l.blocked(a).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(l.blocked(a).is_none());
    }

    #[test]
    fn tracking_is_bounded() {
        let l = FailureLimiter::new(5, Duration::from_secs(60));
        for i in 0..(MAX_TRACKED_ADDRESSES as u32 + 10) {
            l.record_failure(IpAddr::from(i.to_be_bytes()));
        }
        assert!(l.seen().len() <= MAX_TRACKED_ADDRESSES);
    }
}
