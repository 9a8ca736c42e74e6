//! A recording's plain-text transcript: what a person would have seen, line by line, with the time each line
//! was completed.
//!
//! The output is fed to a real terminal emulator (`avt`, asciinema's own), so `\r` overwrites, backspace edits,
//! cursor movement and erasing come out as they looked on the screen. A line is final when it scrolls off the
//! top of the screen, or at the end; its time is that of the last output event that changed its text (for a
//! command line, the echo of its last keystroke). Lines the terminal wrapped are joined again.

use std::collections::VecDeque;

/// Most transcript text kept per recording; later lines are left out (and a last line says so).
pub const MAX_TRANSCRIPT_BYTES: usize = 32 * 1024 * 1024;

/// Most screen rows joined into one line (a program printing without newlines): past it the joined text so far
/// is a line of its own, so one line's memory is bounded.
pub const MAX_WRAPPED_ROWS: usize = 256;

/// One transcript line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// ms from the start of the recording.
    pub time_ms: u64,
    pub text: String,
}

/// Builds a transcript from output and resize events, in order.
pub struct Transcript {
    vt: avt::Vt,
    /// For each screen row: its text and when that text appeared.
    rows: VecDeque<(String, u64)>,
    unwrapper: avt::util::TextUnwrapper,
    /// The latest time among the rows of a wrapped line being joined, and how many rows it has.
    pending: u64,
    pending_rows: usize,
    lines: Vec<Line>,
    bytes: usize,
    truncated: bool,
}

impl std::fmt::Debug for Transcript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcript").field("lines", &self.lines.len()).finish_non_exhaustive()
    }
}

impl Transcript {
    pub fn new(cols: u16, rows: u16) -> Transcript {
        let (cols, rows) = (usize::from(cols.max(1)), usize::from(rows.max(1)));
        Transcript {
            vt: avt::Vt::builder().size(cols, rows).scrollback_limit(0).build(),
            rows: (0..rows).map(|_| (String::new(), 0)).collect(),
            unwrapper: avt::util::TextUnwrapper::new(),
            pending: 0,
            pending_rows: 0,
            lines: Vec::new(),
            bytes: 0,
            truncated: false,
        }
    }

    /// Output `data` at `time_ms`.
    pub fn output(&mut self, time_ms: u64, data: &[u8]) {
        if self.truncated {
            return;
        }
        let text = String::from_utf8_lossy(data);
        let (lines, scrolled) = {
            let changes = self.vt.feed_str(&text);
            let scrolled: Vec<avt::Line> = changes.scrollback.collect();
            (changes.lines, scrolled)
        };
        self.settle(time_ms, lines, scrolled, None);
    }

    /// The terminal was resized at `time_ms`.
    pub fn resize(&mut self, time_ms: u64, cols: u16, rows: u16) {
        let (cols, rows) = (usize::from(cols.max(1)), usize::from(rows.max(1)));
        let (lines, scrolled) = {
            let changes = self.vt.resize(cols, rows);
            let scrolled: Vec<avt::Line> = changes.scrollback.collect();
            (changes.lines, scrolled)
        };
        self.settle(time_ms, lines, scrolled, Some(rows));
    }

    fn settle(&mut self, now: u64, dirty: Vec<usize>, scrolled: Vec<avt::Line>, rows: Option<usize>) {
        for line in &scrolled {
            let (_, at) = self.rows.pop_front().unwrap_or_default();
            self.finish_row(line, at);
            self.rows.push_back((String::new(), now));
        }
        if let Some(rows) = rows {
            self.rows.resize(rows, (String::new(), now));
        }
        if dirty.is_empty() {
            return;
        }
        let view: Vec<&avt::Line> = self.vt.view().collect();
        for i in dirty {
            if let (Some(line), Some(row)) = (view.get(i), self.rows.get_mut(i)) {
                let text = line.text();
                if row.0 != text {
                    *row = (text, now);
                }
            }
        }
    }

    fn finish_row(&mut self, line: &avt::Line, at: u64) {
        self.pending = self.pending.max(at);
        if let Some(text) = self.unwrapper.push(line) {
            let at = std::mem::take(&mut self.pending);
            self.pending_rows = 0;
            self.emit(at, text);
            return;
        }
        self.pending_rows += 1;
        if self.pending_rows >= MAX_WRAPPED_ROWS {
            let joined = std::mem::take(&mut self.unwrapper).flush();
            let at = std::mem::take(&mut self.pending);
            self.pending_rows = 0;
            if let Some(text) = joined {
                self.emit(at, text);
            }
        }
    }

    fn emit(&mut self, time_ms: u64, text: String) {
        if self.truncated {
            return;
        }
        if self.bytes + text.len() > MAX_TRANSCRIPT_BYTES {
            self.truncated = true;
            let note = format!("[transcript truncated after {MAX_TRANSCRIPT_BYTES} bytes]");
            self.lines.push(Line { time_ms, text: note });
            return;
        }
        self.bytes += text.len() + 1;
        self.lines.push(Line { time_ms, text });
    }

    /// The transcript: every line, the screen's last lines included (trailing empty lines left out).
    pub fn finish(mut self) -> Vec<Line> {
        let screen: Vec<avt::Line> = self.vt.view().cloned().collect();
        let times: Vec<u64> = self.rows.iter().map(|r| r.1).collect();
        for (i, line) in screen.iter().enumerate() {
            self.finish_row(line, times.get(i).copied().unwrap_or(0));
        }
        let unwrapper = std::mem::take(&mut self.unwrapper);
        if let Some(rest) = unwrapper.flush() {
            let at = self.pending;
            self.emit(at, rest);
        }
        while self.lines.last().is_some_and(|l| l.text.is_empty()) {
            self.lines.pop();
        }
        self.lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn backspace_edits_and_carriage_returns_come_out_as_seen() {
        let mut t = Transcript::new(40, 5);
        t.output(100, b"$ echo hellp");
        t.output(200, b"\x08 \x08");
        t.output(300, b"o");
        t.output(400, b"\r\nhello\r\n");
        t.output(500, b"progress 10%\rprogress 100%\r\n$ ");
        let lines = t.finish();
        assert_eq!(text(&lines), ["$ echo hello", "hello", "progress 100%", "$"]);
        // The command line was completed by the echo of its last keystroke.
        assert_eq!(lines[0].time_ms, 300);
        assert_eq!(lines[1].time_ms, 400);
    }

    #[test]
    fn scrolled_lines_keep_the_time_they_were_written() {
        let mut t = Transcript::new(20, 3);
        t.output(10, b"one\r\n");
        t.output(20, b"two\r\n");
        t.output(30, b"three\r\n");
        t.output(40, b"four\r\nfive");
        let lines = t.finish();
        assert_eq!(text(&lines), ["one", "two", "three", "four", "five"]);
        let times: Vec<u64> = lines.iter().map(|l| l.time_ms).collect();
        assert_eq!(times, [10, 20, 30, 40, 40]);
    }

    #[test]
    fn output_without_newlines_is_cut_into_bounded_lines() {
        let mut t = Transcript::new(10, 4);
        let row = [b'z'; 10];
        for i in 0..(MAX_WRAPPED_ROWS as u64 * 3) {
            t.output(i, &row);
        }
        let lines = t.finish();
        assert!(lines.len() >= 2, "{}", lines.len());
        assert!(lines.iter().all(|l| l.text.len() <= MAX_WRAPPED_ROWS * 10), "a line grew past the bound");
    }

    #[test]
    fn wrapped_lines_are_joined_and_resizes_are_followed() {
        let mut t = Transcript::new(10, 3);
        t.output(5, b"0123456789abcdef\r\n");
        t.resize(6, 30, 3);
        t.output(7, b"\x1b[31mred\x1b[0m text\r\n");
        let lines = t.finish();
        assert_eq!(text(&lines), ["0123456789abcdef", "red text"]);
    }
}
