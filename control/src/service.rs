//! What the control commands do. The connection layer (`server`) handles
//! framing, authentication and subscriptions; everything else lands here.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use baton_proto::v1::{self, request::Command, response::Result as Reply};

use crate::events::EventBus;
use crate::sessions::Sessions;
use crate::sessions::transfer::TransferContext;
use crate::status::Status;

pub use crate::VERSION;

/// Worker → control events queued before workers hold them back (session
/// ends) or drop them (latching notices, counted).
const WORKER_EVENT_QUEUE: usize = 4096;

/// Starts the data plane and the service over it, and the task that applies
/// the workers' events to the sessions; call from inside a Tokio runtime.
/// The one place the relay is wired together (the daemon and the tests use
/// it alike).
pub fn start(
    dataplane: &baton_relay::DataplaneConfig,
    sessions: crate::sessions::SessionOptions,
) -> std::io::Result<std::sync::Arc<Service>> {
    let (worker_events, queue) = tokio::sync::mpsc::channel(WORKER_EVENT_QUEUE);
    let dataplane = baton_relay::Dataplane::start(dataplane, worker_events)?;
    let service = std::sync::Arc::new(Service::new(Sessions::new(dataplane, sessions)));
    let events_service = std::sync::Arc::clone(&service);
    tokio::spawn(async move {
        events_service.sessions().handle_worker_events(queue).await;
    });
    Ok(service)
}

/// The state behind the control commands, shared by all connections.
#[derive(Debug)]
pub struct Service {
    started: Instant,
    sessions: Sessions,
    exporter: crate::telemetry::Exporter,
    connections: AtomicU32,
    requests: AtomicU64,
    /// One scrape asks the workers at a time: a flood of scrapers waits here
    /// instead of filling the workers' command queues.
    scrape: tokio::sync::Mutex<()>,
    /// High availability, with `redis`.
    ha: std::sync::OnceLock<std::sync::Arc<crate::ha::Ha>>,
}

impl Service {
    /// A service over the relay's sessions.
    pub fn new(sessions: Sessions) -> Self {
        Self {
            started: Instant::now(),
            exporter: crate::telemetry::Exporter::new(sessions.telemetry()),
            sessions,
            connections: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            scrape: tokio::sync::Mutex::new(()),
            ha: std::sync::OnceLock::new(),
        }
    }

    /// Sets the relay's high availability (once, at start).
    pub fn set_ha(&self, ha: std::sync::Arc<crate::ha::Ha>) {
        let _ = self.ha.set(ha);
    }

    /// The relay's high availability, with `redis`.
    pub fn ha(&self) -> Option<&std::sync::Arc<crate::ha::Ha>> {
        self.ha.get()
    }

    /// The relay's event bus.
    pub fn events(&self) -> &EventBus {
        self.sessions.events()
    }

    /// The relay's sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
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

    /// Executes one command and counts it. `authenticate` and `subscribe`
    /// concern the connection and never reach this function.
    pub async fn handle(&self, command: Command) -> Result<Reply, Status> {
        let name = command_name(&command);
        let result = self.execute(command).await;
        let code = match &result {
            Ok(_) => "OK",
            Err(status) => status.code.as_str_name(),
        };
        self.sessions.telemetry().request(name, code);
        result
    }

    /// The metrics as Prometheus text: what was counted, and the workers'
    /// and port pool's numbers now.
    pub async fn metrics_text(&self) -> String {
        let _one_at_a_time = self.scrape.lock().await;
        let workers = self.sessions.worker_stats().await;
        let kernel = crate::sessions::calls::kernel_forwarding(self.sessions.dataplane(), &workers);
        let user_fast_path =
            crate::sessions::calls::user_fast_path(self.sessions.dataplane(), &workers);
        let snapshot = crate::telemetry::Snapshot {
            kernel,
            user_fast_path,
            sessions: self.sessions.session_count() as u64,
            control_connections: u64::from(self.connection_count()),
            subscribers: self.events().subscriber_count() as u64,
            uptime_seconds: self.started.elapsed().as_secs(),
            draining: self.sessions.drain().is_draining(),
            max_sessions: self.sessions.options().max_sessions as u64,
            workers: workers
                .into_iter()
                .map(|(worker, w)| crate::telemetry::WorkerSnapshot {
                    index: worker.0,
                    sessions: w.sessions as u64,
                    packets_to: w.packets_to,
                    bytes_to: w.bytes_to,
                    drops: baton_relay::core::stream::DropReason::ALL
                        .iter()
                        .map(|r| (r.name(), w.drops[*r as usize]))
                        .collect(),
                    latency_buckets: w
                        .latency_buckets
                        .iter()
                        .map(|&(bound, n)| (bound as f64 / 1e9, n))
                        .collect(),
                    latency_count: w.latency_count,
                    latency_sum: w.latency_sum_ns / 1e9,
                    cpu_seconds: w.cpu_seconds,
                    events_lost: w.events_lost,
                })
                .collect(),
            ports: self
                .sessions
                .dataplane()
                .port_usage()
                .into_iter()
                .map(|(interface, ip, free, total)| {
                    (interface, ip.to_string(), free as u64, total as u64)
                })
                .collect(),
            recording: self
                .sessions
                .recordings()
                .map(|r| (r.dropped(), r.errors())),
            ha: self.ha().map(|ha| crate::telemetry::HaSnapshot {
                role: ha.role() as u64,
                figures: ha.stats(),
            }),
        };
        self.exporter.render(snapshot)
    }

    async fn execute(&self, command: Command) -> Result<Reply, Status> {
        match command {
            Command::Ping(_) => Ok(Reply::Ping(v1::PingResponse {
                version: VERSION.to_owned(),
            })),
            Command::GetStats(_) => Ok(Reply::GetStats(self.stats_now().await)),
            Command::CreateSession(request) => self
                .sessions
                .create(request)
                .await
                .map(Reply::CreateSession),
            Command::UpdateSession(request) => self
                .sessions
                .update(request)
                .await
                .map(Reply::UpdateSession),
            Command::DeleteSession(request) => {
                let session = self.sessions.delete(request.session.as_ref()).await?;
                Ok(Reply::DeleteSession(v1::DeleteSessionResponse {
                    session: Some(session),
                }))
            }
            Command::GetSession(request) => {
                let session = self.sessions.get(request.session.as_ref()).await?;
                Ok(Reply::GetSession(v1::GetSessionResponse {
                    session: Some(session),
                }))
            }
            Command::ListSessions(_) => Ok(Reply::ListSessions(self.sessions.list())),
            Command::RegisterDevice(request) => self
                .sessions
                .devices()
                .register_device(&request)
                .map(Reply::RegisterDevice),
            Command::UnregisterDevice(request) => self
                .sessions
                .devices()
                .unregister_device(&request)
                .map(Reply::UnregisterDevice),
            Command::ListBindings(request) => self
                .sessions
                .devices()
                .list_bindings(&request)
                .map(Reply::ListBindings),
            Command::Transfer(request) => self
                .sessions
                .transfer(request, TransferContext::default())
                .await
                .map(Reply::Transfer),
            Command::CommitTransfer(request) => {
                self.sessions
                    .commit_transfer(request.session.as_ref(), request.transfer_id)
                    .await?;
                Ok(Reply::CommitTransfer(v1::CommitTransferResponse {}))
            }
            Command::CancelTransfer(request) => {
                self.sessions
                    .cancel_transfer(request.session.as_ref(), request.transfer_id)
                    .await?;
                Ok(Reply::CancelTransfer(v1::CancelTransferResponse {}))
            }
            Command::Audit(_) => self.sessions.audit().await.map(Reply::Audit),
            Command::Drain(request) => Ok(Reply::Drain(self.drain(&request))),
            Command::Takeover(_) => {
                let ha = self.ha().ok_or_else(|| {
                    Status::failed_precondition(
                        "this relay runs without redis: there is nothing to take over",
                    )
                })?;
                ha.request_takeover().map_err(Status::failed_precondition)?;
                Ok(Reply::Takeover(v1::TakeoverResponse {}))
            }
            Command::Record(request) => {
                use crate::sessions::media_control::RecordAction;
                let action = match v1::RecordAction::try_from(request.action) {
                    Ok(v1::RecordAction::RecordStart) => RecordAction::Start,
                    Ok(v1::RecordAction::RecordPause) => RecordAction::Pause,
                    Ok(v1::RecordAction::RecordStop) => RecordAction::Stop,
                    Err(_) => {
                        return Err(Status::invalid_argument(format!(
                            "unknown record action {}",
                            request.action
                        )));
                    }
                };
                let id = self.sessions.session_id(request.session.as_ref())?;
                let file = self.sessions.record(id, action).await?;
                Ok(Reply::Record(v1::RecordResponse {
                    file: file.map(|f| f.display().to_string()).unwrap_or_default(),
                }))
            }
            Command::Authenticate(_) | Command::Subscribe(_) => Err(Status::internal(
                "connection-level command reached the service",
            )),
        }
    }

    /// Starts, replaces or cancels the drain.
    fn drain(&self, request: &v1::DrainRequest) -> v1::DrainResponse {
        if request.cancel {
            return self.sessions.set_drain(None);
        }
        let deadline = match request.deadline_seconds {
            Some(0) => None,
            Some(seconds) => Some(std::time::Duration::from_secs(u64::from(seconds))),
            None => self.sessions.options().drain_timeout,
        };
        self.sessions.set_drain(Some(crate::drain::DrainPlan::new(
            deadline,
            request.refuse_ng_ping,
        )))
    }

    /// `get_stats`: the relay's figures now, the workers' included.
    pub async fn stats_now(&self) -> v1::GetStatsResponse {
        let mut stats = self.stats();
        self.sessions.fill_stats(&mut stats).await;
        stats
    }

    fn stats(&self) -> v1::GetStatsResponse {
        v1::GetStatsResponse {
            version: VERSION.to_owned(),
            uptime_seconds: self.started.elapsed().as_secs(),
            control_connections: self.connection_count(),
            control_requests: self.requests.load(Ordering::Relaxed),
            subscribers: u32::try_from(self.events().subscriber_count()).unwrap_or(u32::MAX),
            draining: self.sessions.drain().is_draining(),
            ha: self.ha().map(|ha| ha.stats()),
            ..v1::GetStatsResponse::default()
        }
    }
}

/// The snake_case name of a command, as in the schema.
fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Authenticate(_) => "authenticate",
        Command::Ping(_) => "ping",
        Command::GetStats(_) => "get_stats",
        Command::Subscribe(_) => "subscribe",
        Command::Audit(_) => "audit",
        Command::CreateSession(_) => "create_session",
        Command::UpdateSession(_) => "update_session",
        Command::DeleteSession(_) => "delete_session",
        Command::GetSession(_) => "get_session",
        Command::ListSessions(_) => "list_sessions",
        Command::RegisterDevice(_) => "register_device",
        Command::UnregisterDevice(_) => "unregister_device",
        Command::ListBindings(_) => "list_bindings",
        Command::Transfer(_) => "transfer",
        Command::CommitTransfer(_) => "commit_transfer",
        Command::CancelTransfer(_) => "cancel_transfer",
        Command::Drain(_) => "drain",
        Command::Record(_) => "record",
        Command::Takeover(_) => "takeover",
    }
}
