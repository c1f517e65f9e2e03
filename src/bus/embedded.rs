//! The embedded bus: the node's shards route among themselves, no NATS needed.
//!
//! Each shard holds a replica of the node's interest table (exact subject -> interested
//! shards). An interest change is applied locally and sent to every other shard on its bounded
//! control channel; a barrier is acknowledged by every other shard after it applied everything
//! sent before it (channels are FIFO), which is how a new session knows it is routable. A
//! publish looks up the local replica and puts the message on each interested shard's bounded
//! data channel (including its own). Inbox subjects of this node (`tether.inbox.<node>.<shard>.*`)
//! go straight to the named shard.

use super::{Backlog, BusConfig, BusError, BusEvent, BusMessage, BusStats, Ctrl, Link, ShardBus};
use crate::proto::subject;
use ahash::AHashMap;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(crate) struct EmbeddedLink {
    shard: usize,
    node: Arc<str>,
    /// subject -> interested shards (small, unsorted, no duplicates).
    table: AHashMap<String, Vec<u16>>,
    ctrl_tx: Vec<flume::Sender<Ctrl>>,
    data_tx: Vec<flume::Sender<BusMessage>>,
    /// One ordered backlog per destination shard.
    backlog: Vec<Backlog<Ctrl>>,
    /// token -> acknowledgements still expected.
    barriers: AHashMap<u64, usize>,
}

pub(crate) fn build(config: &BusConfig, stats: Arc<BusStats>) -> Vec<ShardBus> {
    let n = config.shards;
    let node: Arc<str> = Arc::from(config.node.as_str());
    let (ctrl_tx, ctrl_rx): (Vec<_>, Vec<_>) =
        (0..n).map(|_| flume::bounded(config.queue_len)).unzip();
    let (data_tx, data_rx): (Vec<_>, Vec<_>) =
        (0..n).map(|_| flume::bounded(config.queue_len)).unzip();
    ctrl_rx
        .into_iter()
        .zip(data_rx)
        .enumerate()
        .map(|(shard, (ctrl_rx, data_rx))| ShardBus {
            shard,
            shards: n,
            node: node.clone(),
            link: Link::Embedded(EmbeddedLink {
                shard,
                node: node.clone(),
                table: AHashMap::new(),
                ctrl_tx: ctrl_tx.clone(),
                data_tx: data_tx.clone(),
                backlog: (0..n).map(|_| Backlog::new()).collect(),
                barriers: AHashMap::new(),
            }),
            ctrl_rx,
            data_rx,
            local: VecDeque::new(),
            stats: stats.clone(),
        })
        .collect()
}

impl EmbeddedLink {
    fn apply(&mut self, subject: &str, shard: usize, add: bool) {
        let shard = shard as u16;
        if add {
            let set = self.table.entry(subject.to_owned()).or_default();
            if !set.contains(&shard) {
                set.push(shard);
            }
        } else if let Some(set) = self.table.get_mut(subject) {
            set.retain(|s| *s != shard);
            if set.is_empty() {
                self.table.remove(subject);
            }
        }
    }

    pub(crate) fn interest(
        &mut self,
        subject: &str,
        add: bool,
        stats: &BusStats,
    ) -> Result<(), BusError> {
        self.apply(subject, self.shard, add);
        for to in 0..self.ctrl_tx.len() {
            if to != self.shard {
                let msg = Ctrl::Interest {
                    subject: subject.to_owned(),
                    shard: self.shard,
                    add,
                };
                self.backlog[to].send(&self.ctrl_tx[to], msg, stats)?;
            }
        }
        Ok(())
    }

    /// Starts a barrier; returns the event at once when there is no other shard.
    pub(crate) fn barrier(&mut self, token: u64, stats: &BusStats) -> Option<BusEvent> {
        let others = self.ctrl_tx.len() - 1;
        if others == 0 {
            return Some(BusEvent::Ready(token));
        }
        for to in 0..self.ctrl_tx.len() {
            if to != self.shard {
                let msg = Ctrl::Barrier {
                    from: self.shard,
                    token,
                };
                if self.backlog[to]
                    .send(&self.ctrl_tx[to], msg, stats)
                    .is_err()
                {
                    return Some(BusEvent::Failed(token));
                }
            }
        }
        self.barriers.insert(token, others);
        None
    }

    pub(crate) fn on_ctrl(&mut self, ctrl: Ctrl, stats: &BusStats) -> Option<BusEvent> {
        match ctrl {
            Ctrl::Interest {
                subject,
                shard,
                add,
            } => {
                self.apply(&subject, shard, add);
                None
            }
            Ctrl::Barrier { from, token } => {
                // An acknowledgement that cannot even be backlogged fails the barrier's session
                // by timeout on the other side; the backlog cap makes that practically unreachable.
                let _ =
                    self.backlog[from].send(&self.ctrl_tx[from], Ctrl::BarrierAck { token }, stats);
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
        }
    }

    /// Routes a message; `Ok(n)`: the number of shards it reached.
    pub(crate) fn publish(&mut self, msg: BusMessage, stats: &BusStats) -> Result<usize, BusError> {
        if let subject::Parsed::Inbox { node, shard, .. } = subject::parse(&msg.subject) {
            if node != &*self.node || shard >= self.data_tx.len() {
                return Ok(0);
            }
            return match self.data_tx[shard].try_send(msg) {
                Ok(()) => Ok(1),
                Err(flume::TrySendError::Disconnected(_)) => Ok(0),
                Err(flume::TrySendError::Full(_)) => {
                    stats.dropped_outbound_total.fetch_add(1, Ordering::Relaxed);
                    Err(BusError::Full)
                }
            };
        }
        let Some(shards) = self.table.get(&msg.subject) else {
            return Ok(0);
        };
        let mut sent = 0usize;
        let mut dropped = 0usize;
        for &to in shards {
            match self.data_tx[to as usize].try_send(msg.clone()) {
                Ok(()) => sent += 1,
                Err(flume::TrySendError::Full(_)) => dropped += 1,
                Err(flume::TrySendError::Disconnected(_)) => {}
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

    pub(crate) fn flush_backlog(&mut self) {
        for (to, backlog) in self.backlog.iter_mut().enumerate() {
            backlog.flush(&self.ctrl_tx[to]);
        }
    }
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
            let queued = buses
                .iter()
                .any(|b| !b.ctrl_rx.is_empty() || !b.data_rx.is_empty() || !b.local.is_empty());
            if !any && !queued {
                return out;
            }
        }
    }

    #[test]
    fn routes_by_interest_across_shards_after_barrier() {
        let (mut buses, _node) = start(&config(3, 16)).unwrap();
        buses[1].subscribe("tether.dev.b").unwrap();
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
        let events = pump(&mut buses);
        let msgs: Vec<_> = events
            .iter()
            .filter_map(|(i, e)| match e {
                BusEvent::Message(m) => Some((*i, m.subject.clone(), m.payload.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            msgs,
            vec![(1, "tether.dev.b".to_string(), Bytes::from_static(b"hi"))]
        );
        // Interest withdrawn: nothing arrives any more.
        buses[1].unsubscribe("tether.dev.b");
        pump(&mut buses);
        buses[0]
            .publish("tether.dev.b", None, Bytes::from_static(b"late"))
            .unwrap();
        assert!(pump(&mut buses).is_empty());
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
        assert!(!l.table.contains_key("s3"));
    }
}
