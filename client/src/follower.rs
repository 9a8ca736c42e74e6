//! The terminals a client follows, and how far it has each: what makes a resume byte-exact.

use std::collections::HashMap;

use app::protocol::{AttachTerminal, Output, TerminalId};
use bytes::Bytes;

/// What an `output` event means for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// New bytes, from `offset` (already seen bytes cut off).
    New { offset: u64, data: Bytes },
    /// Only bytes the client already had (a replay after a resume).
    Repeat,
    /// Bytes `expected..offset` are lost (the server no longer kept them), then new bytes.
    Gap { expected: u64, offset: u64, data: Bytes },
}

/// Per terminal: the offset after the last byte the client has, and whether it acknowledges output.
#[derive(Debug, Default, Clone)]
pub struct Follower {
    next: HashMap<TerminalId, (u64, bool)>,
}

impl Follower {
    /// Starts following `id` from `offset` (0 for a new terminal; an attach ack's `offset` otherwise).
    pub fn follow(&mut self, id: TerminalId, offset: u64, flow_control: bool) {
        self.next.insert(id, (offset, flow_control));
    }

    pub fn forget(&mut self, id: &TerminalId) {
        self.next.remove(id);
    }

    /// The offset after the last byte held of `id`.
    pub fn offset(&self, id: &TerminalId) -> Option<u64> {
        self.next.get(id).map(|(o, _)| *o)
    }

    /// Takes in one `output` event; `None` for a terminal not followed.
    pub fn receive(&mut self, output: &Output) -> Option<Received> {
        let (next, _) = self.next.get_mut(&output.terminal_id)?;
        let (offset, data) = (output.offset, &output.data.0);
        let end = offset + data.len() as u64;
        if end <= *next {
            return Some(Received::Repeat);
        }
        if offset > *next {
            let expected = *next;
            *next = end;
            return Some(Received::Gap { expected, offset, data: data.clone() });
        }
        let fresh = data.slice((*next - offset) as usize..);
        let from = *next;
        *next = end;
        Some(Received::New { offset: from, data: fresh })
    }

    /// The `attach-terminal` requests that resume every followed terminal exactly where the client is.
    pub fn resume_requests(&self) -> Vec<AttachTerminal> {
        let mut list: Vec<_> = self
            .next
            .iter()
            .map(|(id, (offset, flow))| AttachTerminal {
                terminal_id: id.clone(),
                since: Some(*offset),
                flow_control: *flow,
            })
            .collect();
        list.sort_by(|a, b| a.terminal_id.cmp(&b.terminal_id));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use app::protocol::TerminalBytes;

    fn out(offset: u64, data: &'static [u8]) -> Output {
        Output {
            terminal_id: TerminalId("t".into()),
            offset,
            data: TerminalBytes(Bytes::from_static(data)),
            stream: None,
        }
    }

    #[test]
    fn a_replay_after_resume_adds_no_byte_twice_and_gaps_are_reported() {
        let mut f = Follower::default();
        f.follow(TerminalId("t".into()), 0, true);
        assert_eq!(f.receive(&out(0, b"hello")), Some(Received::New { offset: 0, data: Bytes::from_static(b"hello") }));
        // The transport dropped; the resume asks from 5, but an overlapping replay must not repeat bytes.
        assert_eq!(f.resume_requests()[0].since, Some(5));
        assert_eq!(f.receive(&out(0, b"hello")), Some(Received::Repeat));
        assert_eq!(
            f.receive(&out(3, b"lo world")),
            Some(Received::New { offset: 5, data: Bytes::from_static(b" world") })
        );
        assert_eq!(
            f.receive(&out(20, b"!")),
            Some(Received::Gap { expected: 11, offset: 20, data: Bytes::from_static(b"!") })
        );
        assert_eq!(f.offset(&TerminalId("t".into())), Some(21));
        assert_eq!(f.receive(&Output { terminal_id: TerminalId("other".into()), ..out(0, b"x") }), None);
    }
}
