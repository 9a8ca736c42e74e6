//! The local terminal: raw mode (restored on every way out: return, panic, signal), its window size, and the
//! detach key sequence.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::sync::Mutex;

use rustix::termios::{self, OptionalActions, Termios};

/// The settings stdin's tty had before raw mode, while raw mode is on.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Whether stdin and stdout are both terminals (`exec` then defaults to a tty).
pub fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

/// The window size of the terminal on stdout (else stdin), as `(cols, rows)`.
pub fn size() -> Option<(u16, u16)> {
    let ws = termios::tcgetwinsize(std::io::stdout().as_fd())
        .or_else(|_| termios::tcgetwinsize(std::io::stdin().as_fd()))
        .ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Puts stdin's terminal in raw mode: keys (Ctrl-C too) reach the container as bytes, nothing is echoed
/// locally. Undone by [`restore`], which every exit path calls.
pub fn raw_mode() -> std::io::Result<()> {
    let stdin = std::io::stdin();
    let before = termios::tcgetattr(stdin.as_fd())?;
    let mut raw = before.clone();
    raw.make_raw();
    let mut saved = SAVED.lock().unwrap_or_else(|e| e.into_inner());
    if saved.is_none() {
        *saved = Some(before);
    }
    termios::tcsetattr(stdin.as_fd(), OptionalActions::Now, &raw)?;
    Ok(())
}

/// Whether raw mode is on (messages then need `\r\n`).
pub fn is_raw() -> bool {
    SAVED.lock().unwrap_or_else(|e| e.into_inner()).is_some()
}

/// Gives the terminal its settings back, if raw mode was on.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(t) = saved {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), OptionalActions::Now, &t);
    }
}

/// Restores the terminal before a panic message is printed.
pub fn install_restore_hooks() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
}

/// A line for the user on stderr, readable in raw mode too.
pub fn note(text: &str) {
    use std::io::Write;
    let end = if is_raw() { "\r\n" } else { "\n" };
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{}porthole-cli: {text}{end}", if is_raw() { "\r\n" } else { "" });
    let _ = err.flush();
}

/// Docker's detach key syntax: comma-separated keys, each `ctrl-X` (X one of `a-z @ [ \ ] ^ _`) or one
/// character. The sequence's bytes.
pub fn parse_detach_keys(spec: &str) -> Result<Vec<u8>, String> {
    let mut keys = Vec::new();
    for key in spec.split(',') {
        let key = key.trim();
        let byte = if let Some(c) = key.strip_prefix("ctrl-") {
            match c.as_bytes() {
                [b @ b'a'..=b'z'] => b - b'a' + 1,
                [b @ b'A'..=b'Z'] => b - b'A' + 1,
                [b'@'] => 0,
                [b @ (b'[' | b'\\' | b']' | b'^' | b'_')] => b & 0x1f,
                _ => {
                    return Err(format!(
                        "{key:?} is not a key: use ctrl-a..ctrl-z, ctrl-@, ctrl-[, ctrl-\\, ctrl-], ctrl-^ or ctrl-_"
                    ));
                }
            }
        } else {
            match key.as_bytes() {
                [b] if b.is_ascii_graphic() => *b,
                _ => return Err(format!("{key:?} is not a key: one printable character, or ctrl-<key>")),
            }
        };
        keys.push(byte);
    }
    if keys.is_empty() {
        return Err("the detach key sequence is empty".into());
    }
    Ok(keys)
}

/// Watches typed bytes for the detach sequence. Bytes that start the sequence are held back until it is
/// complete (detach) or broken (then sent, as Docker does).
#[derive(Debug, Clone)]
pub struct DetachKeys {
    keys: Vec<u8>,
    matched: usize,
}

impl DetachKeys {
    pub fn new(keys: Vec<u8>) -> DetachKeys {
        DetachKeys { keys, matched: 0 }
    }

    /// What of `typed` to send on; `true` when the sequence completed (nothing after it is sent).
    pub fn feed(&mut self, typed: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(typed.len());
        for &b in typed {
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    return (out, true);
                }
                continue;
            }
            if self.matched > 0 {
                out.extend_from_slice(&self.keys[..self.matched]);
                self.matched = 0;
                if b == self.keys[0] {
                    self.matched = 1;
                    continue;
                }
            }
            out.push(b);
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse_like_dockers() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q"), Ok(vec![16, 17]));
        assert_eq!(parse_detach_keys("ctrl-@,ctrl-[,ctrl-\\,ctrl-_"), Ok(vec![0, 27, 28, 31]));
        assert_eq!(parse_detach_keys("a,ctrl-b"), Ok(vec![b'a', 2]));
        for bad in ["", "ctrl-", "ctrl-1", "ab", "ctrl-pq"] {
            assert!(parse_detach_keys(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_sequence_detaches_and_a_broken_one_is_sent_on() {
        let mut d = DetachKeys::new(vec![16, 17]);
        assert_eq!(d.feed(b"ls\r"), (b"ls\r".to_vec(), false));
        // Ctrl-P alone is held back...
        assert_eq!(d.feed(&[16]), (vec![], false));
        // ...and sent with the key that broke the sequence.
        assert_eq!(d.feed(b"x"), (vec![16, b'x'], false));
        // Ctrl-P Ctrl-P Ctrl-Q: the first is sent, the other two detach.
        assert_eq!(d.feed(&[16, 16, 17, b'z']), (vec![16], true));
        let mut d = DetachKeys::new(vec![16, 17]);
        assert_eq!(d.feed(&[b'a', 16]), (vec![b'a'], false));
        assert_eq!(d.feed(&[17]), (vec![], true));
    }
}
