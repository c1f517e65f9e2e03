//! The per-session durable mailbox: replay, live delivery and acknowledgement, sans-IO.
//!
//! A device's durable messages live in the mailbox stream (JetStream), in stream order. This
//! module owns what one session does with them: it reads them in order from a cursor (the
//! highest stream sequence this session has seen), hands each to the device, and turns the
//! device's cumulative `ack` into receipts and the removal of exactly those messages from the
//! stream. There is no JetStream consumer per device. Every read ([`Action::Read`], issued by
//! the hub through the bus) returns the device's first message at or after a sequence, and a
//! session asks from one of two places:
//!
//! - **scanning**, from just above its cursor: how a session starts (replay) and how it
//!   recovers after the link to the stream was down. nats-server finds the next message of one
//!   device by walking the stream from the start sequence, so a scan step costs the stream
//!   traffic between the device's messages (docs/benchmarks.md, "Durable delivery");
//! - **fetching**, from the sequence the stream announced (its republish on
//!   `tether.mboxn.<device>` carries the sequence and, as `Nats-Last-Sequence`, the previous
//!   sequence stored on the same subject): the read finds the message where it starts, so it
//!   costs the same whatever else the stream holds.
//!
//! A session fetches only when that cannot skip a message: once it is **in sync** (a scan
//! reached the first announced message, or found nothing more: every message of the device up
//! to the cursor is known, and what the stream stored since is announced) and while each
//! announcement's previous sequence is one the session has passed. Anything else (a chain that
//! points above the cursor, more announcements than the session keeps, a resync) puts it out of
//! sync, and it scans from the cursor again. Replay and live delivery are therefore one ordered
//! read loop: no gap and no reordering between them.
//!
//! Bounds: at most one read in flight per session, at most `window` messages delivered and not
//! yet acknowledged (reading pauses at the window, so a device that never acks costs `window`
//! sequence numbers, not an unbounded queue), and at most [`PENDING_MAX`] announcements kept.
//!
//! The state machine does no I/O: every call appends [`Action`]s for the hub to carry out, so it
//! is unit-tested here with plain vectors.

use std::collections::VecDeque;

/// Most announced sequences a session keeps ahead of its cursor; beyond, it forgets them and
/// scans from the cursor instead (which finds them all).
pub const PENDING_MAX: usize = 256;

/// Limits of one session's mailbox (defaults and reasons in `docs/protocol.md`, section 10).
#[derive(Clone, Debug)]
pub struct MailboxLimits {
    /// Durable messages delivered to a session and not yet acknowledged before reading pauses
    /// (default 64: a round trip's worth of messages at a few thousand per second).
    pub window: usize,
    /// Pause before a failed or lagging read is tried again (default 200 ms).
    pub retry_ms: u64,
    /// Reads in a row that may come back without a message the stream announced before the
    /// mailbox stops waiting for it (default 10: a follower replica's lag, or the message expired
    /// or was acknowledged by another session meanwhile).
    pub lag_retries_max: u32,
}

impl Default for MailboxLimits {
    fn default() -> MailboxLimits {
        MailboxLimits {
            window: 64,
            retry_ms: 200,
            lag_retries_max: 10,
        }
    }
}

/// One stored message, as a read returns it.
pub use crate::bus::StoredMessage as Stored;

/// What the hub must do for the mailbox.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Read the device's first message at or after stream sequence `from`.
    Read {
        /// The first stream sequence the read may return.
        from: u64,
    },
    /// Send this durable message to the device.
    Deliver(Stored),
    /// Publish a receipt for `seq` on `tether.receipt.<device>`.
    Receipt(u64),
    /// Remove these messages of the device (acknowledged) from the stream.
    Remove(Vec<u64>),
}

/// A device `ack` that cannot be honoured.
#[derive(Debug, PartialEq, Eq)]
pub enum AckError {
    /// The device acknowledged a sequence this session never delivered.
    NotDelivered {
        /// The sequence the device acknowledged.
        seq: u64,
        /// The highest it may acknowledge: delivered, or presented as `last_seq`.
        highest_delivered: u64,
    },
}

/// The read a mailbox has in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reading {
    /// From just above the cursor.
    Scan,
    /// From an announced sequence.
    Fetch(u64),
}

/// The mailbox state of one session.
#[derive(Debug)]
pub struct Mailbox {
    limits: MailboxLimits,
    /// Highest stream sequence this session delivered or skipped.
    cursor: u64,
    /// Sequences up to this the device said it processed (`last_seq`): read, not delivered,
    /// acknowledged on its behalf.
    skip_through: u64,
    acked_through: u64,
    unacked: VecDeque<u64>,
    started: bool,
    reading: Option<Reading>,
    /// Every message of the device up to the cursor is known and every later one is announced:
    /// announced messages may be fetched.
    in_sync: bool,
    /// Announced sequences above the cursor with the previous sequence stored on the same
    /// subject, oldest first; at most [`PENDING_MAX`].
    pending: VecDeque<(u64, u64)>,
    /// Highest sequence the stream announced for this device.
    announced: u64,
    retry_at_ms: Option<u64>,
    lag_retries: u32,
}

impl Mailbox {
    /// A mailbox for a new session; `last_seq` is what the device presented as processed.
    pub fn new(limits: MailboxLimits, last_seq: u64) -> Mailbox {
        Mailbox {
            limits,
            cursor: 0,
            skip_through: last_seq,
            acked_through: 0,
            unacked: VecDeque::new(),
            started: false,
            reading: None,
            in_sync: false,
            pending: VecDeque::new(),
            announced: 0,
            retry_at_ms: None,
            lag_retries: 0,
        }
    }

    /// Durable messages delivered and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// The session is routable (`hello` sent): replay everything not acknowledged.
    pub fn start(&mut self, out: &mut Vec<Action>) {
        self.started = true;
        self.maybe_read(0, out);
    }

    /// The stream announced a message for this device at `seq`; `previous` is the sequence the
    /// stream held last on the same subject before it (0: none).
    pub fn announced(&mut self, seq: u64, previous: u64, now_ms: u64, out: &mut Vec<Action>) {
        debug_assert!(
            previous < seq,
            "a subject's previous message comes before it"
        );
        self.announced = self.announced.max(seq);
        if seq <= self.cursor {
            return;
        }
        match self.pending.back() {
            Some(&(last, _)) if seq <= last => {
                // Announcements come in stream order; one that does not is a repeat, or the
                // order this mailbox relies on does not hold: scan from the cursor.
                if !self.pending.iter().any(|&(s, _)| s == seq) {
                    self.in_sync = false;
                }
            }
            _ if self.pending.len() >= PENDING_MAX => {
                self.pending.clear();
                self.in_sync = false;
            }
            _ => self.pending.push_back((seq, previous)),
        }
        self.maybe_read(now_ms, out);
    }

    /// A read came back with the device's first message at or after the sequence asked for, or
    /// with none.
    pub fn read_done(&mut self, message: Option<Stored>, now_ms: u64, out: &mut Vec<Action>) {
        let Some(reading) = self.reading.take() else {
            debug_assert!(false, "a read came back that was not asked for");
            return;
        };
        let had_pending = self.pending.front().map(|&(s, _)| s);
        let got = message.is_some_and(|m| self.take(m, out));
        while self.pending.front().is_some_and(|&(s, _)| s <= self.cursor) {
            self.pending.pop_front();
        }
        if got {
            self.lag_retries = 0;
        }
        match (reading, got) {
            (Reading::Scan, true) => {
                // The scan reached the first announced message: what follows is announced.
                if had_pending.is_some_and(|s| s <= self.cursor) {
                    self.in_sync = true;
                }
            }
            (Reading::Scan, false) => {
                // Nothing more at or after the cursor.
                if self.announced > self.cursor && self.pending.is_empty() {
                    // Announced but not found, and the announcement forgotten: a follower
                    // replica may lag.
                    self.lagging(now_ms);
                } else {
                    self.in_sync = true;
                }
            }
            (Reading::Fetch(_), true) => {}
            (Reading::Fetch(from), false) => {
                if self.lag_retries < self.limits.lag_retries_max {
                    // A follower replica may not have it yet.
                    self.lag_retries += 1;
                    self.retry_at_ms = Some(now_ms + self.limits.retry_ms);
                } else {
                    // Gone meanwhile (expired, or acknowledged through another session), and
                    // nothing of the device after it either.
                    self.lag_retries = 0;
                    self.cursor = self.cursor.max(from);
                    while self.pending.front().is_some_and(|&(s, _)| s <= self.cursor) {
                        self.pending.pop_front();
                    }
                }
            }
        }
        self.maybe_read(now_ms, out);
    }

    /// Takes a message a read returned: delivers it (or, up to the presented `last_seq`,
    /// receipts and removes it). False when the cursor had already passed it.
    fn take(&mut self, msg: Stored, out: &mut Vec<Action>) -> bool {
        if msg.seq <= self.cursor {
            return false;
        }
        self.cursor = msg.seq;
        if msg.seq <= self.skip_through {
            if msg.seq > self.acked_through {
                self.acked_through = msg.seq;
                out.push(Action::Receipt(msg.seq));
                out.push(Action::Remove(vec![msg.seq]));
            }
        } else {
            self.unacked.push_back(msg.seq);
            out.push(Action::Deliver(msg));
        }
        true
    }

    /// A scan found nothing where the stream announced something: wait and scan again, up to
    /// `lag_retries_max` times.
    fn lagging(&mut self, now_ms: u64) {
        if self.lag_retries < self.limits.lag_retries_max {
            self.lag_retries += 1;
            self.retry_at_ms = Some(now_ms + self.limits.retry_ms);
        } else {
            // Gone meanwhile (expired, or acknowledged through another session).
            self.lag_retries = 0;
            self.announced = self.cursor;
            self.in_sync = true;
        }
    }

    /// A read failed (bus down, timeout): try it again after `retry_ms`.
    pub fn read_failed(&mut self, now_ms: u64) {
        self.reading = None;
        self.retry_at_ms = Some(now_ms + self.limits.retry_ms);
    }

    /// The device acknowledged every durable message up to `seq`.
    pub fn ack(&mut self, seq: u64, now_ms: u64, out: &mut Vec<Action>) -> Result<(), AckError> {
        let highest = self.cursor.max(self.skip_through);
        if seq > highest {
            return Err(AckError::NotDelivered {
                seq,
                highest_delivered: highest,
            });
        }
        // What lies above the cursor (up to the presented `last_seq`) is not read yet: the read
        // loop receipts and removes it when it gets there.
        let through = seq.min(self.cursor);
        if through <= self.acked_through {
            return Ok(());
        }
        let mut removed = Vec::new();
        while let Some(&first) = self.unacked.front() {
            if first > through {
                break;
            }
            self.unacked.pop_front();
            out.push(Action::Receipt(first));
            removed.push(first);
        }
        self.acked_through = through;
        if !removed.is_empty() {
            out.push(Action::Remove(removed));
        }
        self.maybe_read(now_ms, out);
        Ok(())
    }

    /// Scan again from the cursor (the link to the stream was down: announcements may be lost).
    pub fn resync(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        self.pending.clear();
        self.in_sync = false;
        self.maybe_read(now_ms, out);
    }

    /// Periodic work: a read that waits for its retry time.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if self.retry_at_ms.is_some() {
            self.maybe_read(now_ms, out);
        }
    }

    fn maybe_read(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if !self.started || self.reading.is_some() {
            return;
        }
        if self.retry_at_ms.is_some_and(|at| now_ms < at) {
            return;
        }
        if self.unacked.len() >= self.limits.window {
            return;
        }
        let reading = if self.in_sync {
            match self.pending.front() {
                None => return,
                // The subject held a message this session has not passed: scan rather than
                // skip it.
                Some(&(_, previous)) if previous > self.cursor => {
                    self.in_sync = false;
                    Reading::Scan
                }
                Some(&(seq, _)) => Reading::Fetch(seq),
            }
        } else {
            Reading::Scan
        };
        self.retry_at_ms = None;
        self.reading = Some(reading);
        out.push(Action::Read {
            from: match reading {
                Reading::Scan => self.cursor + 1,
                Reading::Fetch(seq) => seq,
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(seq: u64) -> Option<Stored> {
        Some(Stored {
            seq,
            payload: Bytes::from(format!("{{\"data\":{seq}}}")),
        })
    }

    fn limits() -> MailboxLimits {
        MailboxLimits {
            window: 3,
            retry_ms: 100,
            lag_retries_max: 2,
        }
    }

    fn delivered(actions: &[Action]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Deliver(m) => Some(m.seq),
                _ => None,
            })
            .collect()
    }

    /// A started mailbox whose replay found nothing: in sync at cursor 0.
    fn in_sync() -> Mailbox {
        let mut m = Mailbox::new(limits(), 0);
        let mut out = Vec::new();
        m.start(&mut out);
        assert_eq!(out, vec![Action::Read { from: 1 }]);
        m.read_done(None, 0, &mut Vec::new());
        m
    }

    #[test]
    fn replay_scans_message_by_message_up_to_the_window_then_waits_for_acks() {
        let mut m = Mailbox::new(limits(), 0);
        let mut out = Vec::new();
        m.start(&mut out);
        assert_eq!(out, vec![Action::Read { from: 1 }]);
        out.clear();
        m.read_done(msg(2), 0, &mut out);
        assert_eq!(
            out,
            vec![Action::Deliver(msg(2).unwrap()), Action::Read { from: 3 }]
        );
        out.clear();
        m.read_done(msg(5), 0, &mut out);
        m.read_done(msg(7), 0, &mut out);
        assert_eq!(delivered(&out), [5, 7]);
        assert!(
            !out.iter().any(|a| matches!(a, Action::Read { from: 8 })),
            "window full: no read"
        );
        out.clear();
        m.ack(5, 0, &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                Action::Receipt(2),
                Action::Receipt(5),
                Action::Remove(vec![2, 5]),
                Action::Read { from: 8 },
            ]
        );
        out.clear();
        m.read_done(None, 0, &mut out);
        assert!(
            out.is_empty(),
            "replayed everything; in sync, nothing announced"
        );
        assert_eq!(m.unacked(), 1);
    }

    #[test]
    fn the_scan_stops_at_the_first_announced_message_and_fetches_from_there() {
        let mut m = Mailbox::new(limits(), 0);
        let mut out = Vec::new();
        m.announced(9, 0, 0, &mut out);
        assert!(out.is_empty(), "nothing is read before hello");
        m.start(&mut out);
        assert_eq!(out, vec![Action::Read { from: 1 }]);
        out.clear();
        // Announced while the scan is out: it waits for the read in flight.
        m.announced(12, 9, 0, &mut out);
        assert!(out.is_empty());
        m.read_done(msg(4), 0, &mut out);
        assert_eq!(
            out.last(),
            Some(&Action::Read { from: 5 }),
            "4 is older: scan on"
        );
        out.clear();
        m.read_done(msg(9), 0, &mut out);
        assert_eq!(
            out,
            vec![Action::Deliver(msg(9).unwrap()), Action::Read { from: 12 }],
            "the scan reached 9: 12 is fetched where it is"
        );
        out.clear();
        // A fetch may return a later message (the announced one was collapsed meanwhile).
        m.read_done(msg(13), 0, &mut out);
        assert_eq!(out, vec![Action::Deliver(msg(13).unwrap())]);
        out.clear();
        // Announcements the cursor already passed are forgotten.
        m.announced(13, 0, 0, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_chain_pointing_above_the_cursor_scans_instead_of_skipping() {
        let mut m = in_sync();
        let mut out = Vec::new();
        m.announced(3, 0, 0, &mut out);
        assert_eq!(out, vec![Action::Read { from: 3 }]);
        m.read_done(msg(3), 0, &mut Vec::new());
        out.clear();
        // 9's subject held 6 before it, and this session never saw 6 (its announcement was
        // lost): fetching 9 would skip 6.
        m.announced(9, 6, 0, &mut out);
        assert_eq!(out, vec![Action::Read { from: 4 }]);
        out.clear();
        m.read_done(msg(6), 0, &mut out);
        assert_eq!(
            out,
            vec![Action::Deliver(msg(6).unwrap()), Action::Read { from: 7 }]
        );
        out.clear();
        m.read_done(msg(9), 0, &mut out);
        assert_eq!(out, vec![Action::Deliver(msg(9).unwrap())], "in sync again");
        m.ack(9, 0, &mut Vec::new()).unwrap();
        out.clear();
        m.announced(10, 9, 0, &mut out);
        assert_eq!(out, vec![Action::Read { from: 10 }]);
    }

    #[test]
    fn a_resync_forgets_announcements_and_scans_to_the_end() {
        let mut m = in_sync();
        let mut out = Vec::new();
        m.announced(5, 0, 0, &mut out);
        assert_eq!(out, vec![Action::Read { from: 5 }]);
        m.read_failed(0);
        out.clear();
        m.resync(0, &mut out);
        assert!(out.is_empty(), "waits for the retry time");
        m.tick(100, &mut out);
        assert_eq!(out, vec![Action::Read { from: 1 }]);
        out.clear();
        m.read_done(msg(5), 100, &mut out);
        assert_eq!(out.last(), Some(&Action::Read { from: 6 }));
        out.clear();
        m.read_done(None, 100, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn too_many_announcements_fall_back_to_a_scan() {
        let mut m = in_sync();
        for s in 1..=3 {
            m.announced(s, s - 1, 0, &mut Vec::new());
            m.read_done(msg(s), 0, &mut Vec::new());
        }
        assert_eq!(m.unacked(), 3);
        let mut out = Vec::new();
        for s in 4..4 + PENDING_MAX as u64 + 1 {
            m.announced(s, s - 1, 0, &mut out);
        }
        assert!(out.is_empty(), "window full");
        m.ack(3, 0, &mut out).unwrap();
        assert_eq!(out.last(), Some(&Action::Read { from: 4 }));
        out.clear();
        // The scan is not in sync until it finds nothing more: the announcements are gone.
        m.read_done(msg(4), 0, &mut out);
        assert_eq!(out.last(), Some(&Action::Read { from: 5 }));
    }

    #[test]
    fn acks_are_cumulative_idempotent_and_bounded_by_what_was_delivered() {
        let mut m = in_sync();
        for s in [3, 4] {
            m.announced(s, 0, 0, &mut Vec::new());
            m.read_done(msg(s), 0, &mut Vec::new());
        }
        let mut out = Vec::new();
        assert_eq!(
            m.ack(5, 0, &mut out),
            Err(AckError::NotDelivered {
                seq: 5,
                highest_delivered: 4
            })
        );
        m.ack(4, 0, &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                Action::Receipt(3),
                Action::Receipt(4),
                Action::Remove(vec![3, 4])
            ]
        );
        out.clear();
        m.ack(3, 0, &mut out).unwrap();
        m.ack(4, 0, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn last_seq_skips_acknowledges_and_receipts_what_the_device_has() {
        let mut m = Mailbox::new(limits(), 6);
        let mut out = Vec::new();
        m.start(&mut out);
        out.clear();
        for s in [2, 6, 8] {
            m.read_done(msg(s), 0, &mut out);
        }
        assert_eq!(
            out,
            vec![
                Action::Receipt(2),
                Action::Remove(vec![2]),
                Action::Read { from: 3 },
                Action::Receipt(6),
                Action::Remove(vec![6]),
                Action::Read { from: 7 },
                Action::Deliver(msg(8).unwrap()),
                Action::Read { from: 9 },
            ]
        );
        out.clear();
        // An ack below the presented seq is already done.
        m.ack(6, 0, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn an_ack_up_to_last_seq_before_the_read_leaves_receipts_and_removal_to_the_read() {
        let mut m = Mailbox::new(limits(), 10);
        let mut out = Vec::new();
        m.start(&mut out);
        out.clear();
        // The device acknowledges what it presented before anything was read: nothing is
        // removed yet, or messages 3 and 7 would go without receipts.
        m.ack(10, 0, &mut out).unwrap();
        assert!(out.is_empty());
        for s in [3, 7, 12] {
            m.read_done(msg(s), 0, &mut out);
        }
        assert_eq!(
            out.iter()
                .filter(|a| !matches!(a, Action::Read { .. }))
                .collect::<Vec<_>>(),
            vec![
                &Action::Receipt(3),
                &Action::Remove(vec![3]),
                &Action::Receipt(7),
                &Action::Remove(vec![7]),
                &Action::Deliver(msg(12).unwrap()),
            ]
        );
        out.clear();
        m.ack(12, 0, &mut out).unwrap();
        assert_eq!(
            out,
            vec![Action::Receipt(12), Action::Remove(vec![12])],
            "the scan from 13 is still out"
        );
    }

    #[test]
    fn failed_and_lagging_scans_retry_after_a_pause_then_give_up_on_the_lag() {
        let mut m = Mailbox::new(limits(), 0);
        let mut out = Vec::new();
        m.start(&mut out);
        out.clear();
        m.read_failed(1_000);
        m.tick(1_050, &mut out);
        assert!(out.is_empty());
        m.tick(1_100, &mut out);
        assert_eq!(out, vec![Action::Read { from: 1 }]);
        out.clear();
        // More announcements than a session keeps: they are forgotten, and the (follower) scan
        // does not have them yet.
        for s in 1..=PENDING_MAX as u64 + 1 {
            m.announced(s + 3, 0, 1_100, &mut out);
        }
        m.read_done(None, 1_100, &mut out);
        assert!(out.is_empty());
        m.tick(1_200, &mut out);
        assert_eq!(out, vec![Action::Read { from: 1 }]);
        out.clear();
        m.read_done(None, 1_200, &mut out);
        m.tick(1_300, &mut out);
        assert_eq!(out, vec![Action::Read { from: 1 }]);
        out.clear();
        // Third empty scan: the messages are gone (expired or acked elsewhere); stop waiting.
        m.read_done(None, 1_300, &mut out);
        m.tick(5_000, &mut out);
        assert!(out.is_empty());
        // A new announcement is fetched.
        m.announced(600, 0, 5_000, &mut out);
        assert_eq!(out, vec![Action::Read { from: 600 }]);
        out.clear();
        m.read_done(msg(600), 5_000, &mut out);
        assert_eq!(delivered(&out), [600]);
    }

    #[test]
    fn a_fetch_that_finds_nothing_retries_for_a_lagging_replica_then_moves_on() {
        let mut m = in_sync();
        let mut out = Vec::new();
        m.announced(5, 0, 1_000, &mut out);
        assert_eq!(out, vec![Action::Read { from: 5 }]);
        out.clear();
        m.read_done(None, 1_000, &mut out);
        assert!(out.is_empty());
        m.tick(1_100, &mut out);
        assert_eq!(out, vec![Action::Read { from: 5 }]);
        out.clear();
        m.read_failed(1_100);
        m.tick(1_200, &mut out);
        assert_eq!(
            out,
            vec![Action::Read { from: 5 }],
            "a failed fetch is tried again"
        );
        out.clear();
        m.read_done(None, 1_200, &mut out);
        m.tick(1_300, &mut out);
        assert_eq!(out, vec![Action::Read { from: 5 }]);
        out.clear();
        m.read_done(None, 1_300, &mut out);
        m.tick(2_000, &mut out);
        assert!(out.is_empty(), "given up: 5 is gone");
        m.announced(8, 5, 2_000, &mut out);
        assert_eq!(
            out,
            vec![Action::Read { from: 8 }],
            "the chain holds: 5 was passed"
        );
    }
}
