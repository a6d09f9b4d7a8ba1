//! The event bus: events raised anywhere in the relay, fanned out to every
//! subscribed control connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use baton_proto::v1::{self, event::Kind};
use tokio::sync::broadcast;

/// How many events a subscriber may fall behind before it starts missing
/// them (it is then told how many with a `lagged` event). Bounded so a
/// subscriber that never reads costs a fixed amount of memory.
pub const EVENT_BACKLOG: usize = 4096;

/// Publishes events to all current subscribers. Cheap to share by reference.
#[derive(Debug)]
pub struct EventBus {
    sender: broadcast::Sender<v1::Event>,
    sequence: AtomicU64,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// An event bus with no subscribers.
    pub fn new() -> Self {
        Self {
            sender: broadcast::channel(EVENT_BACKLOG).0,
            sequence: AtomicU64::new(0),
        }
    }

    /// Raises an event; it is numbered and timestamped here. Events raised
    /// while nobody subscribes are dropped.
    pub fn publish(&self, kind: Kind) {
        let event = v1::Event {
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed) + 1,
            unix_time_ms: unix_time_ms(),
            kind: Some(kind),
        };
        // An error only means there are no subscribers right now.
        let _ = self.sender.send(event);
    }

    /// A new subscription, starting with the next event raised.
    pub fn subscribe(&self) -> broadcast::Receiver<v1::Event> {
        self.sender.subscribe()
    }

    /// Subscriptions open now.
    pub fn subscriber_count(&self) -> usize {
        self.sender.receiver_count()
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_time_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The `lagged` event a subscriber gets in place of the events it missed.
pub fn lagged(missed: u64) -> v1::Event {
    v1::Event {
        sequence: 0,
        unix_time_ms: unix_time_ms(),
        kind: Some(Kind::Lagged(v1::Lagged { missed })),
    }
}
