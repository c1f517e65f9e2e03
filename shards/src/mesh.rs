//! The shard mesh: a bounded flume channel into every shard, with a sender from every shard.
//!
//! Each shard gets one [`MeshEndpoint`]: its own receiver and a sender to every shard
//! (including itself). Channels are bounded (`capacity` messages per destination): a sender
//! either waits ([`MeshEndpoint::send_to`]) or gets the message back
//! ([`MeshEndpoint::try_send_to`]) when the destination is behind, so a slow shard cannot make
//! another grow memory without limit.

/// Why a mesh message was not delivered; the message comes back.
#[derive(Debug)]
pub enum MeshSendError<M> {
    /// The destination's channel is full (only from `try_send_to`).
    Full(M),
    /// The destination shard has stopped.
    Stopped(M),
    /// No shard with that index.
    NoSuchShard(M),
}

/// Builds the endpoints of a mesh.
pub struct Mesh;

impl Mesh {
    /// One endpoint per shard; each destination channel holds `capacity` messages.
    pub fn build<M: Send>(shards: usize, capacity: usize) -> Vec<MeshEndpoint<M>> {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..shards).map(|_| flume::bounded(capacity)).unzip();
        receivers
            .into_iter()
            .enumerate()
            .map(|(index, receiver)| MeshEndpoint {
                index,
                senders: senders.clone(),
                receiver,
            })
            .collect()
    }
}

/// One shard's view of the mesh. `Send`, so it can be moved to its shard's thread.
pub struct MeshEndpoint<M> {
    index: usize,
    senders: Vec<flume::Sender<M>>,
    receiver: flume::Receiver<M>,
}

impl<M> MeshEndpoint<M> {
    /// This shard's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Number of shards in the mesh.
    pub fn shards(&self) -> usize {
        self.senders.len()
    }

    /// Sends to shard `to`, waiting while its channel is full.
    pub async fn send_to(&self, to: usize, msg: M) -> Result<(), MeshSendError<M>> {
        match self.senders.get(to) {
            None => Err(MeshSendError::NoSuchShard(msg)),
            Some(s) => s
                .send_async(msg)
                .await
                .map_err(|e| MeshSendError::Stopped(e.into_inner())),
        }
    }

    /// Sends to shard `to` without waiting.
    pub fn try_send_to(&self, to: usize, msg: M) -> Result<(), MeshSendError<M>> {
        match self.senders.get(to) {
            None => Err(MeshSendError::NoSuchShard(msg)),
            Some(s) => s.try_send(msg).map_err(|e| match e {
                flume::TrySendError::Full(m) => MeshSendError::Full(m),
                flume::TrySendError::Disconnected(m) => MeshSendError::Stopped(m),
            }),
        }
    }

    /// Receives the next message addressed to this shard; `None` once every sender is gone.
    pub async fn recv(&self) -> Option<M> {
        self.receiver.recv_async().await.ok()
    }

    /// A sender to shard `to`, e.g. for a thread outside the node (a bus bridge).
    pub fn sender(&self, to: usize) -> Option<flume::Sender<M>> {
        self.senders.get(to).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_addressed() {
        let eps = Mesh::build::<u32>(3, 2);
        assert_eq!(eps[1].index(), 1);
        assert_eq!(eps[0].shards(), 3);
        eps[0].try_send_to(2, 7).unwrap();
        eps[1].try_send_to(2, 8).unwrap();
        assert!(matches!(
            eps[0].try_send_to(2, 9),
            Err(MeshSendError::Full(9))
        ));
        assert!(matches!(
            eps[0].try_send_to(5, 1),
            Err(MeshSendError::NoSuchShard(1))
        ));
        let got: Vec<u32> = eps[2].receiver.try_iter().collect();
        assert_eq!(got, vec![7, 8]);
    }
}
