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
}

/// Where writes are queued; cheap to clone.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    writes: mpsc::Sender<Write>,
    counters: Arc<StoreCounters>,
}

impl StoreHandle {
    /// Queues `write` without waiting; a full queue drops it, counts it
    /// and asks for a re-sync.
    pub fn queue(&self, write: Write) {
        if self.writes.try_send(write).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            self.counters.resync.store(true, Ordering::Relaxed);
        }
    }

    /// Nothing is queued (what was is written, or being written).
    pub fn is_idle(&self) -> bool {
        self.writes.capacity() == self.writes.max_capacity()
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
        // The last write of a key wins within a batch: a session changed
        // ten times in a millisecond is written once.
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
        for (i, write) in batch.iter().enumerate() {
            last.insert(write.key(), i);
        }
        let mut pipe = redis::pipe();
        let mut commands = 0u64;
        for (i, write) in batch.iter().enumerate() {
            if last.get(write.key()) != Some(&i) {
                continue;
            }
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
        drop(last);
        counters.batches.fetch_add(1, Ordering::Relaxed);
        match pipe.query_async::<()>(&mut connection).await {
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
