//! What the control commands do. The connection layer (`server`) handles
//! framing, authentication and subscriptions; everything else lands here.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use baton_proto::v1::{self, request::Command, response::Result as Reply};

use crate::events::EventBus;
use crate::status::Status;

/// The relay's version, as reported by `ping` and `get_stats`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The state behind the control commands, shared by all connections.
#[derive(Debug)]
pub struct Service {
    started: Instant,
    events: EventBus,
    connections: AtomicU32,
    requests: AtomicU64,
}

impl Default for Service {
    fn default() -> Self {
        Self::new()
    }
}

impl Service {
    /// A service with nothing in it yet.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            events: EventBus::new(),
            connections: AtomicU32::new(0),
            requests: AtomicU64::new(0),
        }
    }

    /// The relay's event bus.
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// Control connections open now.
    pub fn connection_count(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }

    pub(crate) fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn request_answered(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Executes one command. `authenticate` and `subscribe` concern the
    /// connection and never reach this function.
    pub async fn handle(&self, command: Command) -> Result<Reply, Status> {
        match command {
            Command::Ping(_) => Ok(Reply::Ping(v1::PingResponse {
                version: VERSION.to_owned(),
            })),
            Command::GetStats(_) => Ok(Reply::GetStats(self.stats())),
            Command::Authenticate(_) | Command::Subscribe(_) => Err(Status::internal(
                "connection-level command reached the service",
            )),
        }
    }

    fn stats(&self) -> v1::GetStatsResponse {
        v1::GetStatsResponse {
            version: VERSION.to_owned(),
            uptime_seconds: self.started.elapsed().as_secs(),
            control_connections: self.connection_count(),
            control_requests: self.requests.load(Ordering::Relaxed),
            subscribers: u32::try_from(self.events.subscriber_count()).unwrap_or(u32::MAX),
        }
    }
}
