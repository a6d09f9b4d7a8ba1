//! Draining: the relay stops taking new sessions, keeps its live ones, and
//! its daemon exits once they have ended or at a deadline. Started by
//! `baton ctl drain` (the `Drain` command) or by SIGUSR1 with the configured
//! deadline; read per new session and per ng ping, never per packet.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

/// One drain, as its last request set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainPlan {
    /// When the remaining sessions are ended; `None` waits for all of them.
    pub deadline: Option<Instant>,
    /// The same deadline on the wall clock, for replies and events.
    pub deadline_wall: Option<SystemTime>,
    /// ng `ping` is answered with an error while draining.
    pub refuse_ng_ping: bool,
}

impl DrainPlan {
    /// A plan whose deadline is `deadline` from now (`None`: no deadline).
    pub fn new(deadline: Option<Duration>, refuse_ng_ping: bool) -> Self {
        let now = Instant::now();
        Self {
            deadline: deadline.and_then(|d| now.checked_add(d)),
            deadline_wall: deadline.and_then(|d| SystemTime::now().checked_add(d)),
            refuse_ng_ping,
        }
    }

    /// The deadline in milliseconds since the Unix epoch; 0 for none.
    pub fn deadline_unix_ms(&self) -> u64 {
        self.deadline_wall
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The relay's drain state; `None` while in service.
#[derive(Debug)]
pub struct Drain {
    plan: watch::Sender<Option<DrainPlan>>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            plan: watch::Sender::new(None),
        }
    }
}

impl Drain {
    /// The drain under way, if any.
    pub fn plan(&self) -> Option<DrainPlan> {
        *self.plan.borrow()
    }

    /// The relay refuses new sessions.
    pub fn is_draining(&self) -> bool {
        self.plan.borrow().is_some()
    }

    /// Starts a drain, or replaces the one under way; `None` takes the
    /// relay back into service.
    pub fn set(&self, plan: Option<DrainPlan>) {
        self.plan.send_replace(plan);
    }

    /// Follows the drain's changes (the daemon's main loop).
    pub fn watch(&self) -> watch::Receiver<Option<DrainPlan>> {
        self.plan.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_is_seen_by_its_watchers_and_a_cancel_ends_it() {
        let drain = Drain::default();
        let mut watcher = drain.watch();
        assert!(!drain.is_draining());
        drain.set(Some(DrainPlan::new(Some(Duration::from_secs(60)), false)));
        assert!(drain.is_draining());
        assert!(watcher.has_changed().expect("open"));
        let plan = (*watcher.borrow_and_update()).expect("a plan");
        assert!(plan.deadline.is_some());
        assert!(plan.deadline_unix_ms() > 0);
        drain.set(None);
        assert!(!drain.is_draining());
        assert!(watcher.has_changed().expect("open"));
    }

    #[test]
    fn no_deadline_is_zero_on_the_wire() {
        let plan = DrainPlan::new(None, true);
        assert_eq!(plan.deadline, None);
        assert_eq!(plan.deadline_unix_ms(), 0);
        assert!(plan.refuse_ng_ping);
    }
}
