//! The event bus: events raised anywhere in the relay, numbered and fanned
//! out to every subscribed control connection in one order.
//!
//! Numbering and sending happen under one lock, so every subscriber sees
//! the events in sequence order ("a jump means missed events" holds). The
//! last [`REPLAY_EVENTS`] are kept, so a subscriber that reconnects can
//! resume after the last sequence number it saw; what it cannot get back
//! is reported as one `lagged` event with the number missed.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use baton_proto::v1::{self, event::Kind};
use tokio::sync::broadcast;

/// How many events a subscriber may fall behind before it starts missing
/// them (it is then told how many with a `lagged` event). Bounded so a
/// subscriber that never reads costs a fixed amount of memory.
pub const EVENT_BACKLOG: usize = 4096;
/// Events kept for subscribers that resume.
pub const REPLAY_EVENTS: usize = 4096;

struct State {
    sequence: u64,
    recent: VecDeque<v1::Event>,
}

/// Publishes events to all current subscribers. Cheap to share by reference.
pub struct EventBus {
    sender: broadcast::Sender<v1::Event>,
    state: Mutex<State>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").finish_non_exhaustive()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

/// A new subscription: events to replay first, then the live receiver.
pub struct Subscription {
    /// Events after the sequence number the subscriber resumes from (with a
    /// `lagged` event first when some are no longer held).
    pub replay: Vec<v1::Event>,
    /// Every event raised from now on.
    pub live: broadcast::Receiver<v1::Event>,
}

impl EventBus {
    /// An event bus with no subscribers.
    pub fn new() -> Self {
        Self {
            sender: broadcast::channel(EVENT_BACKLOG).0,
            state: Mutex::new(State {
                sequence: 0,
                recent: VecDeque::with_capacity(REPLAY_EVENTS),
            }),
        }
    }

    /// Raises an event; it is numbered and timestamped here.
    pub fn publish(&self, kind: Kind) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.sequence += 1;
        let event = v1::Event {
            sequence: state.sequence,
            unix_time_ms: unix_time_ms(),
            kind: Some(kind),
        };
        if state.recent.len() == REPLAY_EVENTS {
            state.recent.pop_front();
        }
        state.recent.push_back(event.clone());
        // Sent under the lock: the next number cannot overtake this one.
        // An error only means there are no subscribers right now.
        let _ = self.sender.send(event);
    }

    /// A new subscription, starting with the next event raised, or after
    /// `resume_after` when given.
    pub fn subscribe(&self, resume_after: Option<u64>) -> Subscription {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let live = self.sender.subscribe();
        let Some(after) = resume_after.filter(|&after| after < state.sequence) else {
            return Subscription {
                replay: Vec::new(),
                live,
            };
        };
        let oldest_held = state
            .recent
            .front()
            .map_or(state.sequence + 1, |e| e.sequence);
        let mut replay = Vec::new();
        if after + 1 < oldest_held {
            replay.push(lagged(oldest_held - after - 1));
        }
        replay.extend(state.recent.iter().filter(|e| e.sequence > after).cloned());
        Subscription { replay, live }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shutting_down() -> Kind {
        Kind::ShuttingDown(v1::ShuttingDown {
            reason: "test".into(),
        })
    }

    /// Issue 22 finding 11: publishers on many threads, one subscriber:
    /// sequence numbers arrive in order.
    #[test]
    fn events_reach_a_subscriber_in_sequence_order() {
        let bus = std::sync::Arc::new(EventBus::new());
        let mut subscription = bus.subscribe(None);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let bus = std::sync::Arc::clone(&bus);
                std::thread::spawn(move || {
                    for _ in 0..400 {
                        bus.publish(shutting_down());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("publisher");
        }
        let mut last = 0;
        while let Ok(event) = subscription.live.try_recv() {
            assert_eq!(event.sequence, last + 1, "out of order");
            last = event.sequence;
        }
        assert_eq!(last, 3200);
    }

    #[test]
    fn a_subscriber_resumes_after_the_last_event_it_saw() {
        let bus = EventBus::new();
        for _ in 0..10 {
            bus.publish(shutting_down());
        }
        let resumed = bus.subscribe(Some(7));
        let replayed: Vec<u64> = resumed.replay.iter().map(|e| e.sequence).collect();
        assert_eq!(replayed, [8, 9, 10]);
        assert!(bus.subscribe(Some(10)).replay.is_empty(), "up to date");
        assert!(bus.subscribe(None).replay.is_empty());
        // A gap the buffer cannot fill is reported as such.
        for _ in 0..REPLAY_EVENTS {
            bus.publish(shutting_down());
        }
        let late = bus.subscribe(Some(3));
        match &late.replay[0].kind {
            Some(Kind::Lagged(lagged)) => assert_eq!(lagged.missed, 7),
            other => panic!("expected lagged, got {other:?}"),
        }
        assert_eq!(late.replay[1].sequence, 11);
        assert_eq!(late.replay.len(), 1 + REPLAY_EVENTS);
    }
}
