//! The shard mesh: a bounded flume channel into every shard, with a sender from every shard.
//!
//! Each shard gets one [`MeshEndpoint`]: its own receiver and a sender to every shard
//! (including itself). Channels are bounded (`capacity` messages per destination): a sender
//! either waits ([`MeshEndpoint::send_to`]) or gets the message back
//! ([`MeshEndpoint::try_send_to`]) when the destination is behind, so a slow shard cannot make
//! another grow memory without limit. A channel is FIFO per sender: what one shard sends to
//! another arrives in the order it was sent (the embedded bus's barriers rely on it).
//!
//! This is the one way shards talk to each other. A mesh carries one `Send` message type; a
//! service that needs its own kinds of traffic builds its own mesh of its own type with
//! [`Mesh::build`] (as glommio's `Sharded` takes a `MeshBuilder` per use): the node's mesh
//! ([`crate::node::Shard::mesh`]) carries the server's closures, and the embedded bus builds
//! one for its control messages and one for its data (each bounded on its own, so that data
//! cannot crowd out interest changes). A thread outside the node that feeds shards (the NATS
//! bridge) takes senders into a mesh with [`MeshEndpoint::sender`].

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

impl<M> From<flume::TrySendError<M>> for MeshSendError<M> {
    fn from(e: flume::TrySendError<M>) -> MeshSendError<M> {
        match e {
            flume::TrySendError::Full(m) => MeshSendError::Full(m),
            flume::TrySendError::Disconnected(m) => MeshSendError::Stopped(m),
        }
    }
}

/// Builds the endpoints of a mesh.
pub struct Mesh;

impl Mesh {
    /// One endpoint per shard; each destination channel holds `capacity` messages.
    pub fn build<M: Send>(shards: usize, capacity: usize) -> Vec<MeshEndpoint<M>> {
        assert!(shards > 0, "a mesh joins at least one shard");
        // A zero capacity would make flume's channels rendezvous: every try_send would fail.
        assert!(capacity > 0, "a mesh channel holds at least one message");
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
            Some(s) => s.try_send(msg).map_err(MeshSendError::from),
        }
    }

    /// Receives the next message addressed to this shard; `None` once every sender is gone.
    pub async fn recv(&self) -> Option<M> {
        self.receiver.recv_async().await.ok()
    }

    /// This shard's receiving end, for a task that waits for messages without borrowing the
    /// endpoint (e.g. while other code on the shard sends with it).
    pub fn receiver(&self) -> flume::Receiver<M> {
        self.receiver.clone()
    }

    /// Messages waiting for this shard now.
    pub fn queued(&self) -> usize {
        self.receiver.len()
    }

    /// A sender to shard `to`, for a thread outside the node (the NATS bridge feeds each
    /// shard's bus lanes with them).
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
        assert_eq!(eps[2].queued(), 2);
        let got: Vec<u32> = eps[2].receiver().try_iter().collect();
        assert_eq!(got, vec![7, 8]);
        assert_eq!(eps[2].queued(), 0);
    }
}
