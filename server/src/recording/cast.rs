//! The asciicast v2 format: the header line, event lines, and the byte-faithful string encoding.
//!
//! Event data is a JSON string. Output is a byte stream, so the encoder keeps an incomplete UTF-8 sequence at
//! the end of a chunk and finishes it with the next chunk (a character split across reads stays one
//! character). A byte that is not part of valid UTF-8 is written as the lone surrogate escape `\udcXX` (the
//! byte `0xXX` plus U+DC00, the mapping Python calls `surrogateescape`), so `s.encode("utf-8",
//! "surrogateescape")` gives the exact bytes back. `serde_json` cannot write lone surrogates (Rust strings
//! cannot hold them), hence the hand-written escaping here; everything else in the file is `serde_json`'s.

use std::time::Duration;

pub use app::cast::{Env, Event, Header, decode_string, parse_event};

/// Appends the header line (with its newline).
pub fn write_header(h: &Header, out: &mut Vec<u8>) {
    // A struct of strings and numbers: serialising it cannot fail.
    if serde_json::to_writer(&mut *out, h).is_ok() {
        out.push(b'\n');
    }
}

/// `argv` as one command line, shell-quoted where needed.
pub fn command_line(argv: &[String]) -> String {
    shell_words::join(argv)
}

/// Writes `[TIME, "CODE", ` for an event at `at`.
fn open_event(at: Duration, code: &str, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "[{}.{:06}, \"{code}\", ", at.as_secs(), at.subsec_micros());
}

/// Appends an event line whose data is `text` (valid UTF-8: markers, resizes).
pub fn write_text_event(at: Duration, code: &str, text: &str, out: &mut Vec<u8>) {
    open_event(at, code, out);
    out.push(b'"');
    escape_into(text, out);
    out.extend_from_slice(b"\"]\n");
}

/// One direction of a byte stream (output, or input) turned into event lines.
#[derive(Debug, Default)]
pub struct ByteStream {
    /// The start of a UTF-8 sequence that the last chunk ended in the middle of.
    carry: Vec<u8>,
}

impl ByteStream {
    /// Appends an event line with `data` (after the bytes carried from before), keeping an incomplete UTF-8
    /// sequence at its end for the next call. Writes nothing when everything was carried.
    pub fn write(&mut self, at: Duration, code: &str, data: &[u8], out: &mut Vec<u8>) {
        let joined;
        let bytes = if self.carry.is_empty() {
            data
        } else {
            let mut v = std::mem::take(&mut self.carry);
            v.extend_from_slice(data);
            joined = v;
            &joined[..]
        };
        let keep = incomplete_tail(bytes);
        let (now, later) = bytes.split_at(bytes.len() - keep);
        if !now.is_empty() {
            open_event(at, code, out);
            out.push(b'"');
            escape_bytes(now, out);
            out.extend_from_slice(b"\"]\n");
        }
        self.carry = later.to_vec();
    }

    /// Writes what is carried (an incomplete sequence, as escapes): before a gap and at the end.
    pub fn flush(&mut self, at: Duration, code: &str, out: &mut Vec<u8>) {
        if !self.carry.is_empty() {
            let carry = std::mem::take(&mut self.carry);
            open_event(at, code, out);
            out.push(b'"');
            escape_bytes(&carry, out);
            out.extend_from_slice(b"\"]\n");
        }
    }

    /// Bytes carried now.
    pub fn carried(&self) -> usize {
        self.carry.len()
    }
}

/// How many bytes at the end of `b` are the start of a UTF-8 sequence that may still be completed (0 to 3).
fn incomplete_tail(b: &[u8]) -> usize {
    let n = b.len();
    for back in 1..=3.min(n) {
        let byte = b[n - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back
        }
        let need = match byte {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return 0,
        };
        return if need > back && std::str::from_utf8(&b[n - back..]).is_err_and(|e| e.error_len().is_none()) {
            back
        } else {
            0
        };
    }
    0
}

/// JSON-escapes valid UTF-8 into `out` (no quotes).
fn escape_into(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0C => b"\\f",
            0x00..=0x1F => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// JSON-escapes bytes into `out`: valid UTF-8 as is, every other byte as `\udcXX`.
fn escape_bytes(mut b: &[u8], out: &mut Vec<u8>) {
    loop {
        match std::str::from_utf8(b) {
            Ok(s) => return escape_into(s, out),
            Err(e) => {
                let (valid, rest) = b.split_at(e.valid_up_to());
                escape_into(std::str::from_utf8(valid).unwrap_or_default(), out);
                let bad = e.error_len().unwrap_or(rest.len()).max(1).min(rest.len());
                for byte in &rest[..bad] {
                    out.extend_from_slice(format!("\\udc{byte:02x}").as_bytes());
                }
                b = &rest[bad..];
                if b.is_empty() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(out: &[u8]) -> Vec<Event> {
        std::str::from_utf8(out).unwrap().lines().map(|l| parse_event(l).unwrap()).collect()
    }

    #[test]
    fn a_character_split_across_chunks_stays_one_character() {
        let mut s = ByteStream::default();
        let mut out = Vec::new();
        let euro = "€".as_bytes(); // 3 bytes
        s.write(Duration::from_millis(1), "o", &[b'a', euro[0]], &mut out);
        s.write(Duration::from_millis(2), "o", &euro[1..2], &mut out);
        s.write(Duration::from_millis(3), "o", &[euro[2], b'b'], &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(!text.contains('\u{FFFD}') && !text.contains("\\udc"), "{text}");
        let ev = lines(&out);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].data, b"a");
        assert_eq!(ev[1].data, "€b".as_bytes());
        assert_eq!(ev[1].at_us, 3000);
    }

    #[test]
    fn invalid_bytes_round_trip_as_surrogate_escapes() {
        let data: Vec<u8> = (0u8..=255).chain([0xE2, 0x82]).collect();
        let mut s = ByteStream::default();
        let mut out = Vec::new();
        s.write(Duration::ZERO, "o", &data, &mut out);
        assert_eq!(s.carried(), 2);
        s.flush(Duration::ZERO, "o", &mut out);
        let got: Vec<u8> = lines(&out).into_iter().flat_map(|e| e.data).collect();
        assert_eq!(got, data);
        assert!(String::from_utf8(out).unwrap().contains("\\udcff"));
    }

    #[test]
    fn random_chunks_concatenate_to_the_input() {
        let mut seed = 7u64;
        let mut rand = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut data = Vec::new();
        for _ in 0..5000 {
            match rand() % 4 {
                0 => data.extend_from_slice("ü€😀".as_bytes()),
                1 => data.push((rand() % 256) as u8),
                _ => data.extend_from_slice(b"plain \x1b[1m\"q\"\\ "),
            }
        }
        let (mut s, mut out, mut i) = (ByteStream::default(), Vec::new(), 0);
        while i < data.len() {
            let n = ((rand() % 17) as usize + 1).min(data.len() - i);
            s.write(Duration::from_micros(i as u64), "o", &data[i..i + n], &mut out);
            i += n;
        }
        s.flush(Duration::from_secs(1), "o", &mut out);
        let got: Vec<u8> = lines(&out).into_iter().flat_map(|e| e.data).collect();
        assert_eq!(got, data);
    }

    #[test]
    fn text_events_and_header() {
        let mut out = Vec::new();
        let h = Header {
            version: 2,
            width: 80,
            height: 24,
            timestamp: 1,
            command: command_line(&["sh".into(), "-c".into(), "echo 'a b'".into()]),
            title: "alice@web".into(),
            env: Env { term: "xterm-256color".into(), shell: "sh".into() },
        };
        write_header(&h, &mut out);
        write_text_event(Duration::from_micros(1_500_000), "m", "attach \"x\"", &mut out);
        let text = String::from_utf8(out).unwrap();
        let mut it = text.lines();
        let back: Header = serde_json::from_str(it.next().unwrap()).unwrap();
        assert_eq!(back, h);
        assert_eq!(shell_words::split(&back.command).unwrap(), ["sh", "-c", "echo 'a b'"]);
        assert_eq!(command_line(&["/bin/bash".into(), "-l".into()]), "/bin/bash -l");
        let e = parse_event(it.next().unwrap()).unwrap();
        assert_eq!((e.at_us, e.code.as_str(), e.data.as_slice()), (1_500_000, "m", &b"attach \"x\""[..]));
        assert!(parse_event("[1.0, \"o\", \"unterminated").is_none());
    }
}
