//! The per-session durable mailbox: replay, live delivery and acknowledgement, sans-IO.
//!
//! A device's durable messages live in the mailbox stream (JetStream), in stream order. This
//! module owns what one session does with them: it reads them in order from a cursor (the
//! highest stream sequence this session has seen), hands each to the device, and turns the
//! device's cumulative `ack` into receipts and a purge of the stream up to that sequence. There
//! is no JetStream consumer per device: a read is a batched direct get from the cursor (issued
//! by the hub through the bus), and a live message is announced by the stream's republish on
//! `tether.mboxn.<device>`, which only makes the mailbox read again from its cursor. Replay and
//! live delivery are therefore the same read loop: no gap and no reordering between them.
//!
//! Bounds: at most one read in flight per session, and at most `window` messages delivered
//! and not yet acknowledged (reading pauses at the window, so a device that never acks costs
//! `window` sequence numbers, not an unbounded queue).
//!
//! The state machine does no I/O: every call appends [`Action`]s for the hub to carry out, so it
//! is unit-tested here with plain vectors.

use std::collections::VecDeque;

/// Limits of one session's mailbox (defaults and reasons in `docs/protocol.md`, section 10).
#[derive(Clone, Debug)]
pub struct MailboxLimits {
    /// Durable messages delivered to a session and not yet acknowledged before reading pauses
    /// (default 64: a round trip's worth of messages at a few thousand per second).
    pub window: usize,
    /// Most messages asked for in one read (default 32; one direct-get batch).
    pub read_batch_max: usize,
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
            read_batch_max: 32,
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
    /// Read at most `max` messages with a stream sequence above `after`.
    Read { after: u64, max: usize },
    /// Send this durable message to the device.
    Deliver(Stored),
    /// Publish a receipt for `seq` on `tether.receipt.<device>`.
    Receipt(u64),
    /// Remove every message of the device up to and including `through` from the stream.
    Purge { through: u64 },
}

/// A device `ack` that cannot be honoured.
#[derive(Debug, PartialEq, Eq)]
pub enum AckError {
    /// The device acknowledged a sequence this session never delivered.
    NotDelivered { seq: u64, highest_delivered: u64 },
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
    reading: bool,
    /// A read is wanted once the current one returns (an announcement came meanwhile, or the
    /// last read stopped at its batch size).
    more: bool,
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
            reading: false,
            more: false,
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
        self.more = true;
        self.maybe_read(0, out);
    }

    /// The stream announced a message for this device at `seq`.
    pub fn announced(&mut self, seq: u64, now_ms: u64, out: &mut Vec<Action>) {
        if seq > self.announced {
            self.announced = seq;
        }
        if seq > self.cursor {
            self.more = true;
            self.maybe_read(now_ms, out);
        }
    }

    /// A read came back: `messages` in stream order; `complete` when nothing else was pending
    /// after them.
    pub fn read_done(
        &mut self,
        messages: Vec<Stored>,
        complete: bool,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        self.reading = false;
        let mut skipped_through = 0;
        let mut got = false;
        for msg in messages {
            if msg.seq <= self.cursor {
                continue;
            }
            got = true;
            self.cursor = msg.seq;
            if msg.seq <= self.skip_through {
                if msg.seq > self.acked_through {
                    out.push(Action::Receipt(msg.seq));
                    skipped_through = msg.seq;
                }
            } else {
                self.unacked.push_back(msg.seq);
                out.push(Action::Deliver(msg));
            }
        }
        if skipped_through > 0 {
            self.acked_through = skipped_through;
            out.push(Action::Purge {
                through: skipped_through,
            });
        }
        if !complete {
            self.more = true;
        } else if self.announced > self.cursor {
            // The stream announced more than this read saw: a follower replica may lag.
            if got {
                self.more = true;
            } else if self.lag_retries < self.limits.lag_retries_max {
                self.lag_retries += 1;
                self.more = true;
                self.retry_at_ms = Some(now_ms + self.limits.retry_ms);
            } else {
                // Gone meanwhile (expired, or acknowledged through another session).
                self.lag_retries = 0;
                self.announced = self.cursor;
            }
        }
        if got {
            self.lag_retries = 0;
        }
        self.maybe_read(now_ms, out);
    }

    /// A read failed (bus down, timeout): try again after `retry_ms`.
    pub fn read_failed(&mut self, now_ms: u64) {
        self.reading = false;
        self.more = true;
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
        // loop receipts and purges it when it gets there. Purging it now would remove messages
        // nobody ever sends a receipt for.
        let through = seq.min(self.cursor);
        if through <= self.acked_through {
            return Ok(());
        }
        while let Some(&first) = self.unacked.front() {
            if first > through {
                break;
            }
            self.unacked.pop_front();
            out.push(Action::Receipt(first));
        }
        self.acked_through = through;
        out.push(Action::Purge { through });
        self.maybe_read(now_ms, out);
        Ok(())
    }

    /// Read again from the cursor (the link to the stream was down: announcements may be lost).
    pub fn resync(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        self.more = true;
        self.maybe_read(now_ms, out);
    }

    /// Periodic work: a read that waits for its retry time.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if self.retry_at_ms.is_some() {
            self.maybe_read(now_ms, out);
        }
    }

    fn maybe_read(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if !self.started || self.reading || !self.more {
            return;
        }
        if let Some(at) = self.retry_at_ms {
            if now_ms < at {
                return;
            }
        }
        let room = self.limits.window.saturating_sub(self.unacked.len());
        if room == 0 {
            return;
        }
        self.retry_at_ms = None;
        self.more = false;
        self.reading = true;
        out.push(Action::Read {
            after: self.cursor,
            max: room.min(self.limits.read_batch_max),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(seq: u64) -> Stored {
        Stored {
            seq,
            payload: Bytes::from(format!("{{\"data\":{seq}}}")),
        }
    }

    fn limits() -> MailboxLimits {
        MailboxLimits {
            window: 4,
            read_batch_max: 3,
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

    #[test]
    fn replays_in_batches_up_to_the_window_then_waits_for_acks() {
        let mut m = Mailbox::new(limits(), 0);
        let mut out = Vec::new();
        m.announced(5, 0, &mut out);
        assert!(out.is_empty(), "nothing is read before hello");
        m.start(&mut out);
        assert_eq!(out, vec![Action::Read { after: 0, max: 3 }]);
        out.clear();
        // A second announcement while reading does not start a second read.
        m.announced(9, 0, &mut out);
        assert!(out.is_empty());
        m.read_done(vec![msg(2), msg(5), msg(7)], false, 0, &mut out);
        assert_eq!(delivered(&out), [2, 5, 7]);
        assert_eq!(out.last(), Some(&Action::Read { after: 7, max: 1 }));
        out.clear();
        m.read_done(vec![msg(9)], false, 0, &mut out);
        assert_eq!(delivered(&out), [9]);
        assert_eq!(out.len(), 1, "window full: no read");
        out.clear();
        m.ack(5, 0, &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                Action::Receipt(2),
                Action::Receipt(5),
                Action::Purge { through: 5 },
                Action::Read { after: 9, max: 2 },
            ]
        );
        out.clear();
        m.read_done(vec![], true, 0, &mut out);
        assert!(out.is_empty());
        assert_eq!(m.unacked(), 2);
    }

    #[test]
    fn acks_are_cumulative_idempotent_and_bounded_by_what_was_delivered() {
        let mut m = Mailbox::new(limits(), 0);
        let mut out = Vec::new();
        m.start(&mut out);
        out.clear();
        m.read_done(vec![msg(3), msg(4)], true, 0, &mut out);
        out.clear();
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
                Action::Purge { through: 4 }
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
        m.read_done(vec![msg(2), msg(6), msg(8)], true, 0, &mut out);
        assert_eq!(
            out,
            vec![
                Action::Receipt(2),
                Action::Receipt(6),
                Action::Deliver(msg(8)),
                Action::Purge { through: 6 },
            ]
        );
        out.clear();
        // An ack below the presented seq is already done.
        m.ack(6, 0, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn an_ack_up_to_last_seq_before_the_read_leaves_receipts_and_purge_to_the_read() {
        let mut m = Mailbox::new(limits(), 10);
        let mut out = Vec::new();
        m.start(&mut out);
        out.clear();
        // The device acknowledges what it presented before anything was read: nothing is
        // purged yet, or messages 3 and 7 would go without receipts.
        m.ack(10, 0, &mut out).unwrap();
        assert!(out.is_empty());
        m.read_done(vec![msg(3), msg(7), msg(12)], true, 0, &mut out);
        assert_eq!(
            out,
            vec![
                Action::Receipt(3),
                Action::Receipt(7),
                Action::Deliver(msg(12)),
                Action::Purge { through: 7 },
            ]
        );
        out.clear();
        m.ack(12, 0, &mut out).unwrap();
        assert_eq!(
            out,
            vec![Action::Receipt(12), Action::Purge { through: 12 }]
        );
    }

    #[test]
    fn failed_and_lagging_reads_retry_after_a_pause_then_give_up_on_the_lag() {
        let mut m = Mailbox::new(limits(), 0);
        let mut out = Vec::new();
        m.start(&mut out);
        out.clear();
        m.read_failed(1_000);
        m.tick(1_050, &mut out);
        assert!(out.is_empty());
        m.tick(1_100, &mut out);
        assert_eq!(out, vec![Action::Read { after: 0, max: 3 }]);
        out.clear();
        // The stream announced 4, the (follower) read does not have it yet.
        m.announced(4, 1_100, &mut out);
        m.read_done(vec![], true, 1_100, &mut out);
        assert!(out.is_empty());
        m.tick(1_200, &mut out);
        assert_eq!(out, vec![Action::Read { after: 0, max: 3 }]);
        out.clear();
        m.read_done(vec![], true, 1_200, &mut out);
        m.tick(1_300, &mut out);
        assert_eq!(out, vec![Action::Read { after: 0, max: 3 }]);
        out.clear();
        // Third empty read: the message is gone (expired or acked elsewhere); stop waiting.
        m.read_done(vec![], true, 1_300, &mut out);
        m.tick(5_000, &mut out);
        assert!(out.is_empty());
        // A new announcement reads again.
        m.announced(6, 5_000, &mut out);
        assert_eq!(out, vec![Action::Read { after: 0, max: 3 }]);
        out.clear();
        m.read_done(vec![msg(6)], true, 5_000, &mut out);
        assert_eq!(delivered(&out), [6]);
    }
}
