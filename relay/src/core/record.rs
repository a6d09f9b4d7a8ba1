//! Copies of what a session forwards, for call recording: taken on the
//! packet path as a packet goes out (rewritten, before any encryption, so
//! an SRTP call is recorded in the clear) and handed to a writer through a
//! bounded queue. A full queue drops the copy and counts it; the media
//! itself is never held up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::{Sender, TrySendError};

use crate::core::ids::{Party, SessionId};

/// Bytes of a packet a copy keeps (a longer one is cut, its length kept).
pub const SNAPLEN: usize = 1500;

/// One forwarded packet, as the receiving party got it.
#[derive(Clone)]
pub struct PacketCopy {
    /// The session.
    pub session: SessionId,
    /// Its stream (m= line of the session's streams).
    pub stream: u16,
    /// The party it went to.
    pub toward: Party,
    /// When it went out.
    pub at: Instant,
    /// Its length on the wire (before encryption).
    pub len: u16,
    /// Its first [`SNAPLEN`] bytes.
    pub data: [u8; SNAPLEN],
}

impl PacketCopy {
    /// The bytes kept.
    pub fn bytes(&self) -> &[u8] {
        &self.data[..usize::from(self.len).min(SNAPLEN)]
    }
}

/// Where a recorded session's copies go.
#[derive(Clone)]
pub struct RecordTap {
    queue: Sender<PacketCopy>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for RecordTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordTap")
    }
}

impl RecordTap {
    /// A tap into `queue`, counting in `dropped` the copies it could not
    /// take.
    pub fn new(queue: Sender<PacketCopy>, dropped: Arc<AtomicU64>) -> Self {
        Self { queue, dropped }
    }

    /// Queues a copy of `bytes` (no allocation: the queue's slots are
    /// there from the start); a full or closed queue counts it dropped.
    pub fn copy(
        &self,
        session: SessionId,
        stream: usize,
        toward: Party,
        at: Instant,
        bytes: &[u8],
    ) {
        let mut copy = PacketCopy {
            session,
            stream: u16::try_from(stream).unwrap_or(u16::MAX),
            toward,
            at,
            len: u16::try_from(bytes.len()).unwrap_or(u16::MAX),
            data: [0; SNAPLEN],
        };
        let kept = bytes.len().min(SNAPLEN);
        copy.data[..kept].copy_from_slice(&bytes[..kept]);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(copy)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_the_copy_never_blocks() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let dropped = Arc::new(AtomicU64::new(0));
        let tap = RecordTap::new(tx, Arc::clone(&dropped));
        let now = Instant::now();
        let long = vec![7u8; SNAPLEN + 100];
        tap.copy(SessionId(1), 0, Party::Remote, now, &long);
        tap.copy(SessionId(1), 0, Party::Remote, now, &[1, 2, 3]);
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        let kept = rx.try_recv().expect("the first copy");
        assert_eq!(
            usize::from(kept.len),
            SNAPLEN + 100,
            "the wire length is kept"
        );
        assert_eq!(kept.bytes().len(), SNAPLEN, "the bytes are cut");
        drop(rx);
        tap.copy(SessionId(1), 0, Party::User, now, &[1]);
        assert_eq!(
            dropped.load(Ordering::Relaxed),
            2,
            "a closed queue counts too"
        );
    }
}
