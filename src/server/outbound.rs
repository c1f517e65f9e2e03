//! A connection's outbound queue as plain data: encoded data frames, control frames that jump
//! the queue at frame boundaries, and the close frame; no runtime, no socket.
//!
//! The writer asks [`Outbound::next_write`] for the bytes to write next, writes as many as the
//! socket takes, and reports them with [`Outbound::advance`]. Control frames (pong, ping) wait
//! in a lane of their own and are handed out only at a data-frame boundary, so they never wait
//! behind more than the frame being written and never split one. A close may discard the data
//! not yet started ([`Outbound::push_close`]); a frame already partly written is always
//! finished, since the peer would otherwise read the close frame as that frame's payload.
//!
//! The policies on top (the `outbound_bytes_max` bound with its 1008 close, the control-queue
//! bound that drops pongs) are applied by [`super::conn::Conn`]; this file only keeps the bytes
//! and the frame boundaries right. Its invariants are checked after every change in debug
//! builds ([`Outbound::check`]) and by the split-at-every-offset tests below.

use std::collections::VecDeque;

use crate::ws::{
    encode_close, encode_frame, write_frame_header, MessageKind, OpCode, Role, MAX_HEADER_BYTES,
};

/// Bytes of completely written frames at the front of the data lane that trigger compaction.
const COMPACT_BYTES: usize = 64 * 1024;

/// Which lane [`Outbound::next_write`] handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Control frames (pong, ping), written at data-frame boundaries.
    Control,
    /// Data frames and finally the close frame.
    Data,
}

/// A message refused because the queue would exceed its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Unsent data bytes already queued.
    pub queued_bytes: usize,
    /// Bytes of the refused frame (header and payload).
    pub frame_bytes: usize,
}

/// What [`Outbound::push_close`] changed in the data lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseQueued {
    /// Unsent data bytes dropped (frames not yet started).
    pub discarded_bytes: usize,
    /// Bytes of the close frame added.
    pub close_frame_bytes: usize,
}

/// The bytes a server owes its peer, in order, with their frame boundaries.
#[derive(Debug, Default)]
pub struct Outbound {
    /// Encoded data frames (and finally the close frame).
    ///
    /// INVARIANT: `cur_frame_start <= data_pos <= data.len()`.
    data: Vec<u8>,
    /// Bytes of `data` already written.
    data_pos: usize,
    /// End offsets in `data` of the frames not completely written.
    ///
    /// INVARIANT: strictly increasing, each in `data_pos + 1..=data.len()`; empty exactly when
    /// `data_pos == data.len()`, otherwise the last is `data.len()`.
    frame_ends: VecDeque<usize>,
    /// Start of the frame `data_pos` is in; `data_pos == cur_frame_start` at a frame boundary.
    cur_frame_start: usize,
    /// Encoded control frames.
    ///
    /// INVARIANT: `ctl_pos <= ctl.len()`; both are 0 when nothing is pending.
    ctl: Vec<u8>,
    /// Bytes of `ctl` already written.
    ctl_pos: usize,
}

impl Outbound {
    /// Unsent bytes of data frames (and of the close frame once queued).
    pub fn queued_bytes(&self) -> usize {
        self.data.len() - self.data_pos
    }

    /// Unsent bytes of control frames.
    pub fn control_bytes(&self) -> usize {
        self.ctl.len() - self.ctl_pos
    }

    /// Nothing left to write in either lane.
    pub fn is_empty(&self) -> bool {
        self.queued_bytes() == 0 && self.control_bytes() == 0
    }

    /// Queues one unfragmented message. An empty queue always accepts it; a non-empty one
    /// refuses a frame that would bring the unsent bytes past `queued_bytes_max`. Returns the
    /// frame's size in bytes.
    pub fn push_message(
        &mut self,
        kind: MessageKind,
        payload: &[u8],
        queued_bytes_max: usize,
    ) -> Result<usize, Refused> {
        let mut hdr = [0u8; MAX_HEADER_BYTES];
        let opcode = match kind {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        };
        let hlen = write_frame_header(&mut hdr, true, opcode, payload.len() as u64, None);
        let frame_bytes = hlen + payload.len();
        let queued_bytes = self.queued_bytes();
        if queued_bytes > 0 && queued_bytes + frame_bytes > queued_bytes_max {
            return Err(Refused {
                queued_bytes,
                frame_bytes,
            });
        }
        // One allocation for the frame (an empty queue holds no capacity), not a small one for
        // the header grown again for the payload.
        self.data.reserve(frame_bytes);
        self.data.extend_from_slice(&hdr[..hlen]);
        self.data.extend_from_slice(payload);
        self.frame_ends.push_back(self.data.len());
        self.check();
        Ok(frame_bytes)
    }

    /// Queues a control frame (ping or pong) for the next data-frame boundary.
    pub fn push_control(&mut self, opcode: OpCode, payload: &[u8]) {
        debug_assert!(matches!(opcode, OpCode::Ping | OpCode::Pong), "{opcode:?}");
        encode_frame(&mut self.ctl, Role::Server, opcode, true, payload);
        self.check();
    }

    /// Queues our close frame after the data, or, with `discard_queued`, after only the frame
    /// being written (the rest is dropped). `None` sends a close frame without a code.
    pub fn push_close(
        &mut self,
        code: Option<u16>,
        reason: &str,
        discard_queued: bool,
    ) -> CloseQueued {
        let mut discarded_bytes = 0;
        if discard_queued {
            let cut = if self.data_pos == self.cur_frame_start {
                self.data_pos
            } else {
                self.frame_ends.front().copied().unwrap_or(self.data.len())
            };
            discarded_bytes = self.data.len() - cut;
            self.data.truncate(cut);
            self.frame_ends.retain(|&e| e <= cut);
        }
        let before = self.data.len();
        match code {
            Some(code) => encode_close(&mut self.data, Role::Server, code, reason),
            None => encode_frame(&mut self.data, Role::Server, OpCode::Close, true, b""),
        }
        self.frame_ends.push_back(self.data.len());
        self.check();
        CloseQueued {
            discarded_bytes,
            close_frame_bytes: self.data.len() - before,
        }
    }

    /// The bytes to write next: pending control frames when the data lane is at a frame
    /// boundary, otherwise data up to the end of the current frame when control frames wait
    /// (so they go out right after it), or all the data. `None` when everything is written.
    pub fn next_write(&self) -> Option<(Lane, &[u8])> {
        let ctl_pending = self.ctl_pos < self.ctl.len();
        if ctl_pending && self.data_pos == self.cur_frame_start {
            return Some((Lane::Control, &self.ctl[self.ctl_pos..]));
        }
        if self.data_pos == self.data.len() {
            return None;
        }
        let end = if ctl_pending {
            self.frame_ends.front().copied().unwrap_or(self.data.len())
        } else {
            self.data.len()
        };
        Some((Lane::Data, &self.data[self.data_pos..end]))
    }

    /// Records that the first `n` bytes [`Outbound::next_write`] handed out for `lane` are
    /// written. Buffers are freed once empty (an idle connection holds no capacity) and the
    /// data lane is compacted once its completely written frames are at least half of it and
    /// [`COMPACT_BYTES`].
    pub fn advance(&mut self, lane: Lane, n: usize) {
        match lane {
            Lane::Control => {
                assert!(n <= self.control_bytes(), "advance past the control lane");
                self.ctl_pos += n;
                if self.ctl_pos == self.ctl.len() {
                    self.ctl = Vec::new();
                    self.ctl_pos = 0;
                }
            }
            Lane::Data => {
                assert!(n <= self.queued_bytes(), "advance past the data lane");
                self.data_pos += n;
                while let Some(&e) = self.frame_ends.front() {
                    if e > self.data_pos {
                        break;
                    }
                    self.cur_frame_start = e;
                    self.frame_ends.pop_front();
                }
                if self.data_pos == self.data.len() {
                    self.data = Vec::new();
                    self.frame_ends = VecDeque::new();
                    self.data_pos = 0;
                    self.cur_frame_start = 0;
                } else if self.cur_frame_start >= COMPACT_BYTES
                    && self.cur_frame_start * 2 >= self.data.len()
                {
                    // Only whole written frames go: the frame being written keeps its start,
                    // which tells where the next boundary is.
                    let k = self.cur_frame_start;
                    self.data.drain(..k);
                    for e in self.frame_ends.iter_mut() {
                        *e -= k;
                    }
                    self.cur_frame_start = 0;
                    self.data_pos -= k;
                }
            }
        }
        self.check();
    }

    /// Forgets everything unsent (the connection ended); returns the unsent data bytes.
    pub fn clear(&mut self) -> usize {
        let dropped = self.queued_bytes();
        *self = Outbound::default();
        dropped
    }

    /// Checks the invariants written on the fields (debug builds only).
    fn check(&self) {
        debug_assert!(self.cur_frame_start <= self.data_pos);
        debug_assert!(self.data_pos <= self.data.len());
        debug_assert!(self.ctl_pos <= self.ctl.len());
        debug_assert_eq!(self.frame_ends.is_empty(), self.data_pos == self.data.len());
        debug_assert!(self.frame_ends.back().is_none_or(|&e| e == self.data.len()));
        debug_assert!(self.frame_ends.front().is_none_or(|&e| e > self.data_pos));
        debug_assert!(self
            .frame_ends
            .iter()
            .zip(self.frame_ends.iter().skip(1))
            .all(|(a, b)| a < b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{Decoder, DecoderLimits, Event};

    /// A frame as the peer (a client) decodes it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seen {
        Message(MessageKind, Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>),
    }

    /// Decodes everything written, as a client; panics on a malformed stream (a control frame
    /// written inside a data frame corrupts it).
    fn decode(wire: &[u8]) -> Vec<Seen> {
        let mut d = Decoder::new(
            Role::Client,
            DecoderLimits {
                frame_bytes_max: 1 << 20,
                message_bytes_max: 1 << 20,
            },
        );
        let mut buf = wire.to_vec();
        let mut off = 0;
        let mut out = Vec::new();
        while off < buf.len() {
            let (ev, used) = d
                .decode(&mut buf[off..])
                .expect("well-formed stream")
                .expect("complete frames only");
            out.push(match ev.expect("unfragmented") {
                Event::Message { kind, data } => Seen::Message(kind, data.to_vec()),
                Event::Ping(p) => Seen::Ping(p.to_vec()),
                Event::Pong(p) => Seen::Pong(p.to_vec()),
                Event::Close(c) => Seen::Close(c.map(|(code, _)| code)),
            });
            off += used;
        }
        out
    }

    /// Writes everything, taking at most `take(i)` bytes on the i-th write; returns the wire.
    fn drain(q: &mut Outbound, mut take: impl FnMut(usize) -> usize) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut i = 0;
        while let Some((lane, buf)) = q.next_write() {
            let n = take(i).clamp(1, buf.len());
            wire.extend_from_slice(&buf[..n]);
            q.advance(lane, n);
            i += 1;
        }
        assert!(q.is_empty());
        wire
    }

    fn msg(text: &str) -> Seen {
        Seen::Message(MessageKind::Text, text.as_bytes().to_vec())
    }

    /// Where the frames of [`three_messages`] start on the wire (2-byte headers).
    const FRAME_STARTS: [usize; 3] = [0, 2 + 5, 2 + 5 + 2 + 14];

    /// Three messages and the bytes they take on the wire.
    fn three_messages(q: &mut Outbound) -> usize {
        let mut total = 0;
        for t in ["first", "second message", "third"] {
            total += q
                .push_message(MessageKind::Text, t.as_bytes(), usize::MAX)
                .unwrap();
        }
        total
    }

    #[test]
    fn a_pong_queued_after_any_first_write_goes_out_at_the_next_frame_boundary() {
        let mut probe = Outbound::default();
        let total = three_messages(&mut probe);
        for first in 1..total {
            let mut q = Outbound::default();
            three_messages(&mut q);
            let (lane, buf) = q.next_write().unwrap();
            assert_eq!(lane, Lane::Data);
            let mut wire = buf[..first].to_vec();
            q.advance(Lane::Data, first);
            q.push_control(OpCode::Pong, b"p");
            wire.extend(drain(&mut q, |_| usize::MAX));
            // The pong follows the frame the first write started, or at a boundary the frames
            // written completely.
            let at = FRAME_STARTS.iter().filter(|&&s| s < first).count();
            let mut expect = vec![msg("first"), msg("second message"), msg("third")];
            expect.insert(at, Seen::Pong(b"p".to_vec()));
            let seen = decode(&wire);
            assert_eq!(seen, expect, "first write {first} bytes");
        }
    }

    #[test]
    fn every_split_of_the_writes_gives_the_same_frames() {
        let mut probe = Outbound::default();
        let total = three_messages(&mut probe);
        for k in 1..=total {
            let mut q = Outbound::default();
            three_messages(&mut q);
            q.push_control(OpCode::Ping, b"");
            q.push_close(Some(1000), "bye", false);
            // First write k bytes, then one byte at a time.
            let wire = drain(&mut q, |i| if i == 0 { k } else { 1 });
            assert_eq!(
                decode(&wire),
                vec![
                    Seen::Ping(Vec::new()),
                    msg("first"),
                    msg("second message"),
                    msg("third"),
                    Seen::Close(Some(1000)),
                ],
                "first write {k} bytes"
            );
        }
    }

    #[test]
    fn a_discarding_close_finishes_the_frame_being_written_and_drops_the_rest() {
        let mut probe = Outbound::default();
        let total = three_messages(&mut probe);
        for written in 0..total {
            let mut q = Outbound::default();
            three_messages(&mut q);
            let mut wire = Vec::new();
            if written > 0 {
                let (_, buf) = q.next_write().unwrap();
                wire.extend_from_slice(&buf[..written]);
                q.advance(Lane::Data, written);
            }
            let before = q.queued_bytes();
            let queued = q.push_close(Some(1008), "slow consumer", true);
            assert_eq!(
                q.queued_bytes(),
                before - queued.discarded_bytes + queued.close_frame_bytes
            );
            wire.extend(drain(&mut q, |_| usize::MAX));
            let seen = decode(&wire);
            let started = FRAME_STARTS.iter().filter(|&&s| s < written).count();
            let all = [msg("first"), msg("second message"), msg("third")];
            let mut expect = all[..started].to_vec();
            expect.push(Seen::Close(Some(1008)));
            assert_eq!(seen, expect, "written {written} bytes before the close");
        }
    }

    #[test]
    fn an_empty_queue_accepts_one_message_beyond_the_bound_and_a_busy_one_refuses() {
        let mut q = Outbound::default();
        let big = vec![b'x'; 1000];
        let n = q.push_message(MessageKind::Binary, &big, 100).unwrap();
        assert_eq!(n, 1004);
        assert_eq!(
            q.push_message(MessageKind::Binary, b"y", 100),
            Err(Refused {
                queued_bytes: 1004,
                frame_bytes: 3
            })
        );
        assert_eq!(q.queued_bytes(), 1004);
        drain(&mut q, |_| 10);
        assert!(q.push_message(MessageKind::Binary, b"y", 100).is_ok());
    }

    #[test]
    fn a_close_without_code_is_the_empty_close_frame() {
        let mut q = Outbound::default();
        q.push_close(None, "", false);
        assert_eq!(drain(&mut q, |_| usize::MAX), [0x88, 0x00]);
    }

    #[test]
    fn written_bytes_are_freed_and_large_queues_compacted() {
        let mut q = Outbound::default();
        let chunk = vec![0u8; 32 * 1024];
        for _ in 0..4 {
            q.push_message(MessageKind::Binary, &chunk, usize::MAX)
                .unwrap();
        }
        let total = q.queued_bytes();
        let mut written = 0;
        while written < total / 2 + 1 {
            let (lane, buf) = q.next_write().unwrap();
            let n = buf.len().min(1000);
            q.advance(lane, n);
            written += n;
        }
        assert!(
            q.data_pos < COMPACT_BYTES,
            "compacted: data_pos {}",
            q.data_pos
        );
        assert_eq!(q.queued_bytes(), total - written);
        drain(&mut q, |_| usize::MAX);
        assert_eq!(q.data.capacity(), 0);
        assert_eq!(q.clear(), 0);
    }
}
