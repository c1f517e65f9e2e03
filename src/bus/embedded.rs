//! The embedded bus: the node's shards route among themselves, no NATS needed.
//!
//! Each shard holds a replica of the node's interest tables: device id -> interested shards
//! (one entry covers the four subjects addressed to a device, [`subject::device_all`]: the
//! table has one entry per device, not four), and exact subject -> interested shards for
//! everything else (topics). An interest change is applied locally and sent to every other
//! shard on the control mesh; a barrier is acknowledged by every other shard after it applied everything sent before
//! it (a mesh channel is FIFO per sender), which is how a new session knows it is routable. A
//! publish looks up the local replica and sends the message over the data mesh to each
//! interested shard (including its own). Inbox subjects of this node
//! (`tether.inbox.<node>.<shard>.*`) go straight to the named shard. Both meshes are the
//! shard's [`Lanes`], held by its [`ShardBus`] and passed in to every operation.

use super::{
    Backlog, BusConfig, BusError, BusEvent, BusMessage, BusStats, Ctrl, Lanes, Link, ShardBus,
    ToShard,
};
use crate::few::{Few, Removed};
use crate::proto::subject;
use ahash::AHashMap;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tether_shards::MeshSendError;

pub(crate) struct EmbeddedLink {
    shard: usize,
    node: Arc<str>,
    /// exact subject -> interested shards; never a device subject.
    table: Interest,
    /// device id -> shards with a session of it: where the device's subjects
    /// ([`subject::device_all`]) are routed.
    devices: Interest,
    /// One ordered backlog of control messages per destination shard.
    backlog: Vec<Backlog<Ctrl>>,
    /// token -> acknowledgements still expected.
    barriers: AHashMap<u64, usize>,
}

pub(crate) fn build(config: &BusConfig, stats: Arc<BusStats>) -> Vec<ShardBus> {
    let n = config.shards;
    assert!(
        n <= usize::from(u16::MAX) + 1,
        "shard indexes are kept as u16 in the interest table"
    );
    let node: Arc<str> = Arc::from(config.node.as_str());
    Lanes::build(n, config.queue_len)
        .into_iter()
        .enumerate()
        .map(|(shard, lanes)| ShardBus {
            shard,
            shards: n,
            node: node.clone(),
            link: Link::Embedded(EmbeddedLink {
                shard,
                node: node.clone(),
                table: Interest::default(),
                devices: Interest::default(),
                backlog: (0..n).map(|_| Backlog::new()).collect(),
                barriers: AHashMap::new(),
            }),
            lanes,
            local: VecDeque::new(),
            stats: stats.clone(),
        })
        .collect()
}

/// Shards a table's bitmask holds: 0 to 63.
const MASK_SHARDS: usize = 64;

/// One replica table: key -> the shards interested in it. A key's shards below
/// [`MASK_SHARDS`] are a bitmask, the table slot's 8-byte value (one slot per device on every
/// shard: 24 bytes with the shared key, where a list would take 32); only nodes of more shards
/// put the others in a side table. A key is in `low` while it has a shard below
/// [`MASK_SHARDS`] (its mask is never 0), in `high` while it has one above.
#[derive(Default)]
struct Interest {
    low: AHashMap<Arc<str>, u64>,
    /// key -> its shards from [`MASK_SHARDS`] on (unsorted, no duplicates).
    high: AHashMap<Arc<str>, Few<u16>>,
}

impl Interest {
    /// Adds (`add`) or removes `shard` in the set of `key`; an emptied set leaves the table.
    /// The key is shared (`Arc`): one allocation of a device id serves every shard's replica
    /// and the hub's tables.
    fn apply(&mut self, key: &Arc<str>, shard: usize, add: bool) {
        if shard < MASK_SHARDS {
            let bit = 1u64 << shard;
            if add {
                match self.low.get_mut(&**key) {
                    Some(mask) => *mask |= bit,
                    None => {
                        self.low.insert(key.clone(), bit);
                    }
                }
            } else if let Some(mask) = self.low.get_mut(&**key) {
                *mask &= !bit;
                if *mask == 0 {
                    self.low.remove(&**key);
                }
            }
            return;
        }
        let shard = u16::try_from(shard).expect("shard indexes fit u16 (checked by build)");
        if add {
            match self.high.get_mut(&**key) {
                Some(set) if !set.contains(shard) => set.push(shard),
                Some(_) => {}
                None => {
                    self.high.insert(key.clone(), Few::new(shard));
                }
            }
        } else if let Some(set) = self.high.get_mut(&**key) {
            if set.remove(shard) == Removed::Last {
                self.high.remove(&**key);
            }
        }
    }

    /// The shards interested in `key`, ascending below [`MASK_SHARDS`], then the others.
    fn shards(&self, key: &str) -> impl Iterator<Item = usize> + '_ {
        let mut mask = self.low.get(key).copied().unwrap_or(0);
        let low = std::iter::from_fn(move || {
            (mask != 0).then(|| {
                let shard = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                shard
            })
        });
        // Only nodes of more than 64 shards pay this lookup.
        let high = (!self.high.is_empty())
            .then(|| self.high.get(key))
            .flatten();
        low.chain(high.into_iter().flat_map(|set| set.iter().map(usize::from)))
    }

    /// Keys with any interest.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.low.len()
            + self
                .high
                .keys()
                .filter(|k| !self.low.contains_key(*k))
                .count()
    }
}

impl EmbeddedLink {
    pub(crate) fn interest(
        &mut self,
        lanes: &Lanes,
        subject: &str,
        add: bool,
        stats: &BusStats,
    ) -> Result<(), BusError> {
        debug_assert!(
            !is_device_routed(subject),
            "device subjects are declared with device_interest: {subject}"
        );
        self.declare(lanes, &Arc::from(subject), false, add, stats)
    }

    /// Declares (`add`) or withdraws this shard's interest in every subject of `device`.
    pub(crate) fn device_interest(
        &mut self,
        lanes: &Lanes,
        device: &Arc<str>,
        add: bool,
        stats: &BusStats,
    ) -> Result<(), BusError> {
        self.declare(lanes, device, true, add, stats)
    }

    fn declare(
        &mut self,
        lanes: &Lanes,
        key: &Arc<str>,
        device: bool,
        add: bool,
        stats: &BusStats,
    ) -> Result<(), BusError> {
        let table = if device {
            &mut self.devices
        } else {
            &mut self.table
        };
        table.apply(key, self.shard, add);
        for to in 0..lanes.ctrl.shards() {
            if to != self.shard {
                let msg = Ctrl::Interest {
                    key: key.clone(),
                    device,
                    shard: self.shard,
                    add,
                };
                self.backlog[to].send(&ToShard(&lanes.ctrl, to), msg, stats)?;
            }
        }
        Ok(())
    }

    /// Starts a barrier; returns the event at once when there is no other shard.
    pub(crate) fn barrier(
        &mut self,
        lanes: &Lanes,
        token: u64,
        stats: &BusStats,
    ) -> Option<BusEvent> {
        let others = lanes.ctrl.shards() - 1;
        if others == 0 {
            return Some(BusEvent::Ready(token));
        }
        for to in 0..lanes.ctrl.shards() {
            if to != self.shard {
                let msg = Ctrl::Barrier {
                    from: self.shard,
                    token,
                };
                if self.backlog[to]
                    .send(&ToShard(&lanes.ctrl, to), msg, stats)
                    .is_err()
                {
                    return Some(BusEvent::Failed(token));
                }
            }
        }
        self.barriers.insert(token, others);
        None
    }

    pub(crate) fn on_ctrl(
        &mut self,
        lanes: &Lanes,
        ctrl: Ctrl,
        stats: &BusStats,
    ) -> Option<BusEvent> {
        match ctrl {
            Ctrl::Interest {
                key,
                device,
                shard,
                add,
            } => {
                let table = if device {
                    &mut self.devices
                } else {
                    &mut self.table
                };
                table.apply(&key, shard, add);
                None
            }
            Ctrl::Barrier { from, token } => {
                // An acknowledgement that cannot even be backlogged fails the barrier's session
                // by timeout on the other side; the backlog cap makes that practically unreachable.
                let _ = self.backlog[from].send(
                    &ToShard(&lanes.ctrl, from),
                    Ctrl::BarrierAck { token },
                    stats,
                );
                None
            }
            Ctrl::BarrierAck { token } => {
                let left = self.barriers.get_mut(&token)?;
                *left -= 1;
                if *left == 0 {
                    self.barriers.remove(&token);
                    Some(BusEvent::Ready(token))
                } else {
                    None
                }
            }
            Ctrl::Ready(token) => Some(BusEvent::Ready(token)),
            Ctrl::NoResponders(reply) => Some(BusEvent::NoResponders(reply)),
            Ctrl::Durable(ev) => Some(BusEvent::Durable(ev)),
            // Only the NATS link sends it.
            Ctrl::Reconnected => None,
        }
    }

    /// Routes a message; `Ok(n)`: the number of shards it reached.
    pub(crate) fn publish(
        &mut self,
        lanes: &Lanes,
        msg: BusMessage,
        stats: &BusStats,
    ) -> Result<usize, BusError> {
        if let subject::Parsed::Inbox { node, shard, .. } = subject::parse(&msg.subject) {
            if node != &*self.node || shard >= lanes.data.shards() {
                return Ok(0);
            }
            return match lanes.data.try_send_to(shard, msg) {
                Ok(()) => Ok(1),
                Err(MeshSendError::Stopped(_) | MeshSendError::NoSuchShard(_)) => Ok(0),
                Err(MeshSendError::Full(_)) => {
                    stats.dropped_outbound_total.fetch_add(1, Ordering::Relaxed);
                    Err(BusError::Full)
                }
            };
        }
        let shards = match subject::parse(&msg.subject) {
            subject::Parsed::Device(device)
            | subject::Parsed::Request(device)
            | subject::Parsed::Presence(device) => self.devices.shards(device),
            _ => self.table.shards(msg.subject.as_str()),
        };
        let mut sent = 0usize;
        let mut dropped = 0usize;
        for to in shards {
            match lanes.data.try_send_to(to, msg.clone()) {
                Ok(()) => sent += 1,
                Err(MeshSendError::Full(_)) => dropped += 1,
                Err(MeshSendError::Stopped(_) | MeshSendError::NoSuchShard(_)) => {}
            }
        }
        if dropped > 0 {
            stats
                .dropped_outbound_total
                .fetch_add(dropped as u64, Ordering::Relaxed);
            if sent == 0 {
                return Err(BusError::Full);
            }
        }
        Ok(sent)
    }

    /// True while a control message waits for room towards some shard.
    pub(crate) fn has_backlog(&self) -> bool {
        self.backlog.iter().any(|b| !b.is_empty())
    }

    pub(crate) fn flush_backlog(&mut self, lanes: &Lanes) {
        for (to, backlog) in self.backlog.iter_mut().enumerate() {
            backlog.flush(&ToShard(&lanes.ctrl, to));
        }
    }
}

/// True for the subjects routed by the device table: [`subject::device_all`] of some device.
fn is_device_routed(subject: &str) -> bool {
    matches!(
        subject::parse(subject),
        subject::Parsed::Device(_) | subject::Parsed::Request(_) | subject::Parsed::Presence(_)
    )
}

#[cfg(test)]
mod tests {
    use super::super::{start, BusConfig, BusEvent, ShardBus};
    use bytes::Bytes;

    fn config(shards: usize, queue_len: usize) -> BusConfig {
        BusConfig {
            node: "n1".into(),
            shards,
            queue_len,
            nats_urls: vec![],
            durable: None,
        }
    }

    /// Polls `recv` once: the event if one is ready now.
    fn next(bus: &mut ShardBus) -> Option<BusEvent> {
        futures::FutureExt::now_or_never(bus.recv()).flatten()
    }

    /// Drives every shard's control traffic until quiet.
    fn pump(buses: &mut [ShardBus]) -> Vec<(usize, BusEvent)> {
        let mut out = Vec::new();
        loop {
            let mut any = false;
            for (i, bus) in buses.iter_mut().enumerate() {
                if let Some(ev) = next(bus) {
                    out.push((i, ev));
                    any = true;
                }
            }
            let queued = buses.iter().any(|b| {
                b.lanes.ctrl.queued() > 0 || b.lanes.data.queued() > 0 || !b.local.is_empty()
            });
            if !any && !queued {
                return out;
            }
        }
    }

    #[test]
    fn routes_by_interest_across_shards_after_barrier() {
        let (mut buses, _node) = start(&config(3, 16)).unwrap();
        buses[1].subscribe_device("b").unwrap();
        buses[1].barrier(7);
        let events = pump(&mut buses);
        assert!(events
            .iter()
            .any(|(i, e)| *i == 1 && matches!(e, BusEvent::Ready(7))));
        buses[0]
            .publish("tether.dev.b", None, Bytes::from_static(b"hi"))
            .unwrap();
        buses[2]
            .publish("tether.dev.nobody", None, Bytes::from_static(b"x"))
            .unwrap();
        // One device entry routes all four of the device's subjects, and nothing else.
        for other in ["tether.peer.b", "tether.req.b", "tether.presence.b"] {
            buses[2].publish(other, None, Bytes::new()).unwrap();
        }
        for not_routed in ["tether.mboxn.b", "tether.topic.b", "tether.dev.bb"] {
            buses[2].publish(not_routed, None, Bytes::new()).unwrap();
        }
        let events = pump(&mut buses);
        let msgs: Vec<_> = events
            .iter()
            .filter_map(|(i, e)| match e {
                BusEvent::Message(m) => Some((*i, m.subject.clone(), m.payload.clone())),
                _ => None,
            })
            .collect();
        // Sorted: shard 1 drains two senders' lanes (0 and 2) in no fixed order.
        let mut msgs = msgs;
        msgs.sort();
        assert_eq!(
            msgs,
            vec![
                (1, "tether.dev.b".to_string(), Bytes::from_static(b"hi")),
                (1, "tether.peer.b".to_string(), Bytes::new()),
                (1, "tether.presence.b".to_string(), Bytes::new()),
                (1, "tether.req.b".to_string(), Bytes::new()),
            ]
        );
        // Every shard's replica holds one entry for the device, none for its subjects.
        for bus in &buses {
            let super::super::Link::Embedded(l) = &bus.link else {
                panic!()
            };
            assert_eq!(l.devices.len(), 1);
            assert_eq!(l.table.len(), 0);
        }
        // Interest withdrawn: nothing arrives any more.
        buses[1].unsubscribe_device("b");
        pump(&mut buses);
        buses[0]
            .publish("tether.dev.b", None, Bytes::from_static(b"late"))
            .unwrap();
        assert!(pump(&mut buses).is_empty());
    }

    /// Each shard's replica holds one entry per device (its id and the shards holding it as a
    /// bitmask) and one per topic: 24-byte slots, fixed here so they cannot regrow.
    #[test]
    fn interest_table_slots_stay_small() {
        assert_eq!(std::mem::size_of::<(std::sync::Arc<str>, u64)>(), 24);
        let (mut buses, _node) = start(&config(2, 64)).unwrap();
        buses[0].subscribe_device("a").unwrap();
        buses[1].subscribe_device("a").unwrap();
        pump(&mut buses);
        for bus in &buses {
            let super::super::Link::Embedded(l) = &bus.link else {
                panic!()
            };
            assert_eq!(l.devices.shards("a").collect::<Vec<_>>(), vec![0, 1]);
        }
        buses[0].unsubscribe_device("a");
        pump(&mut buses);
        for bus in &buses {
            let super::super::Link::Embedded(l) = &bus.link else {
                panic!()
            };
            assert_eq!(l.devices.shards("a").collect::<Vec<_>>(), vec![1]);
        }
        buses[1].unsubscribe_device("a");
        pump(&mut buses);
        for bus in &buses {
            let super::super::Link::Embedded(l) = &bus.link else {
                panic!()
            };
            assert_eq!(l.devices.len(), 0);
        }
    }

    /// Nodes of more than 64 shards keep the shards from 64 on beside the bitmask.
    #[test]
    fn shards_beyond_the_mask_are_kept_beside_it() {
        use super::Interest;
        use std::sync::Arc;
        let mut t = Interest::default();
        let a: Arc<str> = Arc::from("a");
        for shard in [70, 3, 64, 0, 63, 70] {
            t.apply(&a, shard, true);
        }
        assert_eq!(t.shards("a").collect::<Vec<_>>(), vec![0, 3, 63, 70, 64]);
        assert_eq!(t.len(), 1);
        for shard in [0, 3, 63] {
            t.apply(&a, shard, false);
        }
        assert!(t.low.is_empty(), "an emptied mask leaves the table");
        assert_eq!(t.shards("a").collect::<Vec<_>>(), vec![70, 64]);
        assert_eq!(t.len(), 1);
        t.apply(&a, 70, false);
        t.apply(&a, 64, false);
        assert_eq!(t.len(), 0);
        assert!(t.shards("a").next().is_none());
        assert_eq!(Arc::strong_count(&a), 1, "no key left behind");
    }

    #[test]
    fn single_shard_barrier_and_inbox() {
        let (mut buses, _node) = start(&config(1, 4)).unwrap();
        buses[0].barrier(1);
        assert!(matches!(next(&mut buses[0]), Some(BusEvent::Ready(1))));
        buses[0]
            .publish("tether.inbox.n1.0.5", None, Bytes::from_static(b"{}"))
            .unwrap();
        assert!(
            matches!(next(&mut buses[0]), Some(BusEvent::Message(m)) if m.subject == "tether.inbox.n1.0.5")
        );
    }

    #[test]
    fn full_data_queue_drops_and_counts() {
        let (mut buses, node) = start(&config(2, 2)).unwrap();
        buses[1].subscribe("t").unwrap();
        pump(&mut buses);
        let mut refused = 0;
        for _ in 0..5 {
            if buses[0].publish("t", None, Bytes::new()).is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 3);
        let stats = node.stats();
        assert_eq!(
            stats
                .dropped_outbound_total
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
        let mut text = String::new();
        stats.render_prometheus(&mut text);
        assert!(
            text.contains("tether_bus_dropped_total{bus=\"embedded\",direction=\"outbound\"} 3")
        );
    }

    #[test]
    fn control_backlog_keeps_order_when_channel_full() {
        let (mut buses, _node) = start(&config(2, 2)).unwrap();
        for i in 0..10 {
            buses[0].subscribe(&format!("s{i}")).unwrap();
        }
        buses[0].unsubscribe("s3");
        buses[0].barrier(9);
        // Shard 1 drains; shard 0 retries its backlog whenever it is polled.
        let mut ready = false;
        for _ in 0..50 {
            for (i, ev) in pump(&mut buses) {
                if i == 0 && matches!(ev, BusEvent::Ready(9)) {
                    ready = true;
                }
            }
            buses[0].maintain();
            if ready {
                break;
            }
        }
        assert!(ready);
        let super::super::Link::Embedded(l) = &buses[1].link else {
            panic!()
        };
        assert_eq!(l.table.len(), 9);
        assert!(l.table.shards("s3").next().is_none());
    }

    #[test]
    fn a_full_data_lane_holds_back_no_interest_change_or_barrier() {
        let (mut buses, node) = start(&config(2, 2)).unwrap();
        buses[1].subscribe("t").unwrap();
        pump(&mut buses);
        // Shard 1 reads nothing: its data lane fills, and what does not fit is dropped.
        for _ in 0..3 {
            let _ = buses[0].publish("t", None, Bytes::new());
        }
        assert_eq!(buses[1].lanes.data.queued(), 2);
        let stats = node.stats();
        assert_eq!(
            stats
                .dropped_outbound_total
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // Interest and a barrier still reach shard 1 on its own lane and come back first.
        buses[0].subscribe("u").unwrap();
        buses[0].barrier(4);
        assert_eq!(buses[1].lanes.ctrl.queued(), 2);
        // Control is read before data: the interest change, then the barrier (acknowledged).
        let inbox = buses[1].inbox();
        for _ in 0..2 {
            let raw = inbox.try_next().unwrap();
            assert!(buses[1].accept(raw).is_none(), "internal control, not data");
        }
        assert_eq!(buses[1].lanes.data.queued(), 2);
        assert!(matches!(next(&mut buses[0]), Some(BusEvent::Ready(4))));
        let super::super::Link::Embedded(l) = &buses[1].link else {
            panic!()
        };
        assert!(l.table.shards("u").next().is_some());
        assert_eq!(
            stats
                .control_backlogged_total
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}
