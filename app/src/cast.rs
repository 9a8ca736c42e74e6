//! Reading asciicast v2 recordings, as the server writes them (see `docs/recording.md`): the header line, event
//! lines, and event data whose bytes that are not UTF-8 are lone surrogate escapes `\\udcXX` (Python's
//! `surrogateescape`). `serde_json` refuses lone surrogates, so [`decode_string`] decodes string literals itself.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The first line of a recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    pub width: u16,
    pub height: u16,
    /// Seconds since the Unix epoch when the terminal started.
    pub timestamp: u64,
    pub command: String,
    pub title: String,
    pub env: Env,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Env {
    #[serde(rename = "TERM")]
    pub term: String,
    #[serde(rename = "SHELL")]
    pub shell: String,
}

/// One event line, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Microseconds from the start.
    pub at_us: u64,
    pub code: String,
    /// The data's bytes (lone surrogate escapes turned back into their bytes).
    pub data: Vec<u8>,
}

/// Reads an event line (`None`: not one; the header, or a torn line).
pub fn parse_event(line: &str) -> Option<Event> {
    let (time, code, data): (f64, String, &RawValue) = serde_json::from_str(line).ok()?;
    if !time.is_finite() || time < 0.0 {
        return None;
    }
    Some(Event { at_us: (time * 1e6).round() as u64, code, data: decode_string(data.get())? })
}

/// Decodes a JSON string literal (with its quotes) to bytes, turning `\udc80`..`\udcff` back into bytes.
pub fn decode_string(raw: &str) -> Option<Vec<u8>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    let b = inner.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |i: usize| -> Option<u32> { u32::from_str_radix(inner.get(i..i + 4)?, 16).ok() };
    while i < b.len() {
        if b[i] != b'\\' {
            let run = b[i..].iter().position(|&c| c == b'\\').unwrap_or(b.len() - i);
            out.extend_from_slice(&b[i..i + run]);
            i += run;
            continue;
        }
        let esc = *b.get(i + 1)?;
        i += 2;
        let simple = match esc {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'b' => Some(0x08),
            b'f' => Some(0x0C),
            b'u' => None,
            _ => return None,
        };
        if let Some(c) = simple {
            out.push(c);
            continue;
        }
        let u = hex(i)?;
        i += 4;
        let ch = match u {
            0xDC80..=0xDCFF => {
                out.push((u - 0xDC00) as u8);
                continue;
            }
            0xD800..=0xDBFF if inner.get(i..i + 2) == Some("\\u") => match hex(i + 2) {
                Some(lo @ 0xDC00..=0xDFFF) => {
                    i += 6;
                    char::from_u32(0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00))
                }
                _ => None,
            },
            _ => char::from_u32(u),
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.unwrap_or('\u{FFFD}').encode_utf8(&mut buf).as_bytes());
    }
    Some(out)
}
