//! Writes to Redis, off every request's path: a bounded queue that never
//! waits (a full queue drops the write, counts it and asks for a full
//! re-sync), one task that batches what is queued into one pipeline, and a
//! connection that reconnects by itself. Nothing on the media path writes
//! here: workers hand snapshots to the control plane, which queues them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Writes queued at most; more are dropped (and a re-sync follows).
pub const QUEUE: usize = 16_384;
/// Writes in one pipeline at most.
const BATCH: usize = 512;

/// One write.
#[derive(Debug, Clone)]
pub enum Write {
    /// `SET key value PX ttl`.
    Set {
        /// The key.
        key: String,
        /// Its value.
        value: String,
        /// How long it lives.
        ttl: Duration,
    },
    /// `PEXPIRE key ttl` (a live session's keys kept alive).
    Expire {
        /// The key.
        key: String,
        /// How long it lives from now.
        ttl: Duration,
    },
    /// `DEL key`.
    Del {
        /// The key.
        key: String,
    },
}

impl Write {
    fn key(&self) -> &str {
        match self {
            Self::Set { key, .. } | Self::Expire { key, .. } | Self::Del { key } => key,
        }
    }
}

/// What the writer did, for `stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Commands Redis acknowledged.
    pub written: AtomicU64,
    /// Writes dropped: the queue was full, or Redis failed their batch.
    pub dropped: AtomicU64,
    /// Batches Redis failed (or did not answer in time).
    pub errors: AtomicU64,
    /// The last batch went through.
    pub connected: AtomicBool,
    /// Something was lost: everything live must be written again.
    pub resync: AtomicBool,
    /// Pipelines sent.
    pub batches: AtomicU64,
    /// Writes are taken (this relay is the active one, not stopping).
    pub enabled: AtomicBool,
    /// A batch is being written.
    pub in_flight: AtomicBool,
}

/// Where writes are queued; cheap to clone.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    writes: mpsc::Sender<Write>,
    counters: Arc<StoreCounters>,
}

impl StoreHandle {
    /// Queues `write` without waiting (on a request's path); a full queue
    /// drops it, counts it and asks for a re-sync. Nothing is queued while
    /// this relay is not the one writing.
    pub fn queue(&self, write: Write) {
        if !self.counters.enabled.load(Ordering::Relaxed) {
            return;
        }
        if self.writes.try_send(write).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            self.counters.resync.store(true, Ordering::Relaxed);
        }
    }

    /// Queues `write`, waiting for room (the HA tasks' own writes, off
    /// every request's path).
    pub async fn queue_waiting(&self, write: Write) {
        if !self.counters.enabled.load(Ordering::Relaxed) {
            return;
        }
        if self.writes.send(write).await.is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Nothing is queued or being written.
    pub fn is_idle(&self) -> bool {
        self.writes.capacity() == self.writes.max_capacity()
            && !self.counters.in_flight.load(Ordering::Relaxed)
    }

    /// The writer's counters.
    pub fn counters(&self) -> &Arc<StoreCounters> {
        &self.counters
    }
}

/// Starts the writer task on `connection`; returns where to queue.
pub fn start(connection: ConnectionManager) -> StoreHandle {
    let (writes, queue) = mpsc::channel(QUEUE);
    let counters = Arc::new(StoreCounters::default());
    tokio::spawn(run(connection, queue, Arc::clone(&counters)));
    StoreHandle { writes, counters }
}

async fn run(
    mut connection: ConnectionManager,
    mut queue: mpsc::Receiver<Write>,
    counters: Arc<StoreCounters>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut backoff = Duration::from_millis(50);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        counters.in_flight.store(true, Ordering::Relaxed);
        let mut pipe = redis::pipe();
        let mut commands = 0u64;
        for write in coalesced(&batch) {
            commands += 1;
            match write {
                Write::Set { key, value, ttl } => {
                    pipe.cmd("SET")
                        .arg(key)
                        .arg(value)
                        .arg("PX")
                        .arg(millis(*ttl))
                        .ignore();
                }
                Write::Expire { key, ttl } => {
                    pipe.cmd("PEXPIRE").arg(key).arg(millis(*ttl)).ignore();
                }
                Write::Del { key } => {
                    pipe.cmd("DEL").arg(key).ignore();
                }
            }
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        let written = pipe.query_async::<()>(&mut connection).await;
        counters.in_flight.store(false, Ordering::Relaxed);
        match written {
            Ok(()) => {
                counters.written.fetch_add(commands, Ordering::Relaxed);
                if !counters.connected.swap(true, Ordering::Relaxed) {
                    info!("Redis: writing");
                }
                backoff = Duration::from_millis(50);
            }
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                counters.dropped.fetch_add(commands, Ordering::Relaxed);
                // Whatever this batch carried is written again by the
                // re-sync once Redis is back.
                counters.resync.store(true, Ordering::Relaxed);
                if counters.connected.swap(false, Ordering::Relaxed) {
                    warn!("Redis: write failed, state re-sent once it answers: {e}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        batch.clear();
    }
}

/// The writes of `batch` that go out, in order: the last write of each key
/// wins (a session changed ten times in a millisecond is written once) —
/// but a refresh of a key's expiry never stands in for a value or a
/// deletion before it, which set the expiry themselves.
fn coalesced(batch: &[Write]) -> impl Iterator<Item = &Write> {
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
    for (i, write) in batch.iter().enumerate() {
        let refresh = matches!(write, Write::Expire { .. });
        let keeps_earlier = last
            .get(write.key())
            .is_some_and(|&earlier| refresh && !matches!(batch[earlier], Write::Expire { .. }));
        if !keeps_earlier {
            last.insert(write.key(), i);
        }
    }
    batch
        .iter()
        .enumerate()
        .filter(move |(i, write)| last.get(write.key()) == Some(i))
        .map(|(_, write)| write)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> Write {
        Write::Set {
            key: key.into(),
            value: value.into(),
            ttl: Duration::from_secs(60),
        }
    }

    fn expire(key: &str) -> Write {
        Write::Expire {
            key: key.into(),
            ttl: Duration::from_secs(60),
        }
    }

    fn del(key: &str) -> Write {
        Write::Del { key: key.into() }
    }

    fn shown(batch: &[Write]) -> Vec<String> {
        coalesced(batch)
            .map(|w| match w {
                Write::Set { key, value, .. } => format!("SET {key} {value}"),
                Write::Expire { key, .. } => format!("PEXPIRE {key}"),
                Write::Del { key } => format!("DEL {key}"),
            })
            .collect()
    }

    #[test]
    fn the_last_write_of_a_key_wins_but_a_refresh_never_hides_a_value_or_a_deletion() {
        assert_eq!(
            shown(&[set("s:1", "a"), set("s:1", "b"), set("s:2", "x")]),
            ["SET s:1 b", "SET s:2 x"]
        );
        // A re-INVITE, then the media tick's refresh: the new value goes.
        assert_eq!(shown(&[set("s:1", "new"), expire("s:1")]), ["SET s:1 new"]);
        // An ended call, then a refresh: it is deleted.
        assert_eq!(shown(&[del("s:1"), expire("s:1")]), ["DEL s:1"]);
        // A refresh, then a value: the value.
        assert_eq!(shown(&[expire("s:1"), set("s:1", "v")]), ["SET s:1 v"]);
        assert_eq!(shown(&[expire("s:1"), expire("s:1")]), ["PEXPIRE s:1"]);
        assert_eq!(shown(&[set("s:1", "v"), del("s:1")]), ["DEL s:1"]);
    }
}
