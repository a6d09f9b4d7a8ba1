//! The session registry: which calls exist, which worker owns each, where
//! their relay ports are; and the commands that create, change, inspect and
//! end them. Packet handling is the workers' business; this module only
//! talks to them through their command queues.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use baton_proto::v1::{self, session_ref::By};
use baton_relay::stream::{Component, LegConfig, LegReport, Side, StreamConfig};
use baton_relay::worker::{Command, LegSetup, PeerUpdate, SessionReport, StreamSetup, WorkerEvent};
use baton_relay::{AllocError, Dataplane, QueueError, SessionId};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::bindings::Bindings;
use crate::events::{EventBus, unix_time_ms};
use crate::status::Status;

mod negotiation;
mod transfer;

use negotiation::{PendingSdp, SdpState};
pub use transfer::parse_replaces;

/// How long a worker may take to answer a command.
const WORKER_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most streams (media lines) in one session.
const MAX_STREAMS: usize = 16;

/// Session settings from the daemon's configuration.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// How long a leg without a signalled peer may learn one.
    pub learning_window: Duration,
    /// Most sessions at once.
    pub max_sessions: usize,
    /// Address to announce for each local media IP (NAT), if different.
    pub advertise: Vec<(IpAddr, IpAddr)>,
    /// A transfer not switched by then is rolled back.
    pub transfer_timeout: Duration,
    /// Open transfers whose new device has neither a signalled address nor
    /// a source IP: its leg then learns whoever sends first, so a sprayer
    /// can take the call. Off by default; for lab set-ups only.
    pub allow_unverified_transfer_source: bool,
    /// Size limits of SDP bodies from requests (native and ng).
    pub sdp_limits: crate::sdp::SdpLimits,
}

#[derive(Debug, Clone)]
struct StreamRecord {
    kind: String,
    /// The remote party's codecs (the stream's numbering).
    codecs: Vec<v1::Codec>,
    /// Per leg (user, remote): the peer multiplexes RTCP on the RTP port.
    rtcp_mux: [bool; 2],
    /// The legs have RTCP sockets, so rtcp-mux can be given up later.
    rtcp_sockets: bool,
    /// Advertised relay addresses, user then remote.
    local: [v1::Endpoint; 2],
    /// Packet time in ms, 0 if not signalled.
    ptime: u32,
    /// Held by each party (user, remote).
    held: [bool; 2],
    /// Rejected (port 0) in the last answer: no media is expected on it.
    rejected: bool,
    /// The current device's payload types against the remote's (device,
    /// remote), when a transfer brought a device that numbers differently;
    /// empty for the same numbering.
    user_payloads: Vec<(u8, u8)>,
}

impl StreamRecord {
    fn is_held(&self) -> bool {
        self.held[0] || self.held[1]
    }
}

/// A session is on hold when every stream that is in use is held.
fn session_held(streams: &[StreamRecord]) -> bool {
    let mut live = streams.iter().filter(|s| !s.rejected).peekable();
    live.peek().is_some() && live.all(StreamRecord::is_held)
}

#[derive(Debug, Clone)]
struct Record {
    id: SessionId,
    call_id: String,
    from_tag: String,
    to_tag: String,
    aor: String,
    gruu: String,
    worker: usize,
    created_unix_ms: u64,
    streams: Vec<StreamRecord>,
    /// An open transfer (not switched yet, or switched by commit and not
    /// yet heard from).
    pending: Option<PendingTransfer>,
    /// Offer/answer state, once a body went through the session.
    sdp: Option<SdpState>,
    /// The SDP answer of the last transfer given an offer, until read.
    transfer_answer: Option<String>,
    /// Which party created the session (sent the first body): the user's
    /// device on calls from the user, the remote party on calls to them.
    /// The dialog's from-tag is that party's.
    offerer: Side,
}

#[derive(Debug, Clone)]
struct PendingTransfer {
    gruu: String,
    /// The new device's relay addresses, per stream.
    local: Vec<v1::Endpoint>,
    /// Switched already (commit mode): the registry shows the new device.
    committed_from: Option<String>,
    /// Per stream: the new device multiplexes RTCP.
    rtcp_mux: Vec<bool>,
    /// Per stream: the new device's payload types against the remote's.
    payloads: Vec<Vec<(u8, u8)>>,
    /// The new device's offer and the answer it got, if given as SDP.
    sdp: Option<PendingSdp>,
}

#[derive(Default)]
struct Registry {
    by_id: HashMap<SessionId, Record>,
    by_call_id: HashMap<String, Vec<SessionId>>,
    /// Sessions per worker, for pinning new ones to the least loaded.
    load: Vec<usize>,
    /// Workers that failed and could not be restarted: no new sessions.
    down: Vec<bool>,
}

impl Registry {
    fn insert(&mut self, record: Record) {
        self.load[record.worker] += 1;
        self.by_call_id
            .entry(record.call_id.clone())
            .or_default()
            .push(record.id);
        self.by_id.insert(record.id, record);
    }

    fn remove(&mut self, id: SessionId) -> Option<Record> {
        let record = self.by_id.remove(&id)?;
        self.load[record.worker] -= 1;
        if let Some(ids) = self.by_call_id.get_mut(&record.call_id) {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                self.by_call_id.remove(&record.call_id);
            }
        }
        Some(record)
    }

    /// Takes out every session pinned to `worker` (which failed).
    fn remove_worker(&mut self, worker: usize) -> Vec<Record> {
        let ids: Vec<SessionId> = self
            .by_id
            .values()
            .filter(|r| r.worker == worker)
            .map(|r| r.id)
            .collect();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Finds a session by id, or by dialog in either direction (requests
    /// from the callee carry the tags swapped).
    fn find(&self, reference: Option<&v1::SessionRef>) -> Result<SessionId, Status> {
        match reference.and_then(|r| r.by.as_ref()) {
            None => Err(Status::invalid_argument(
                "name the session by id or by dialog",
            )),
            Some(By::Id(text)) => {
                let id: SessionId = text.parse().map_err(|_| {
                    Status::invalid_argument(format!("{text:?} is not a session id"))
                })?;
                if self.by_id.contains_key(&id) {
                    Ok(id)
                } else {
                    Err(Status::not_found(format!("no session {text}")))
                }
            }
            Some(By::Dialog(dialog)) => {
                let candidates: Vec<SessionId> = self
                    .by_call_id
                    .get(&dialog.call_id)
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|id| {
                        let r = &self.by_id[id];
                        let forward = r.from_tag == dialog.from_tag
                            && (dialog.to_tag.is_empty() || r.to_tag == dialog.to_tag);
                        let backward = !dialog.to_tag.is_empty()
                            && r.from_tag == dialog.to_tag
                            && r.to_tag == dialog.from_tag;
                        forward || backward
                    })
                    .collect();
                match candidates.as_slice() {
                    [] => Err(Status::not_found(format!(
                        "no session for call-id {:?} from-tag {:?} to-tag {:?}",
                        dialog.call_id, dialog.from_tag, dialog.to_tag
                    ))),
                    [id] => Ok(*id),
                    _ => Err(Status::failed_precondition(format!(
                        "{} sessions match call-id {:?} from-tag {:?}: give the to-tag",
                        candidates.len(),
                        dialog.call_id,
                        dialog.from_tag
                    ))),
                }
            }
        }
    }
}

/// The sessions of the relay and the data plane that carries them.
pub struct Sessions {
    dataplane: Dataplane,
    options: SessionOptions,
    registry: Mutex<Registry>,
    bindings: Mutex<Bindings>,
    created: AtomicU64,
    timed_out: AtomicU64,
    telemetry: crate::metrics::Telemetry,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A leg's parsed peer addresses.
type Peers = (Option<SocketAddr>, Option<SocketAddr>);

impl Sessions {
    /// A registry over a running data plane.
    pub fn new(dataplane: Dataplane, options: SessionOptions) -> Self {
        let registry = Registry {
            load: vec![0; dataplane.worker_count()],
            down: vec![false; dataplane.worker_count()],
            ..Registry::default()
        };
        Self {
            dataplane,
            options,
            registry: Mutex::new(registry),
            bindings: Mutex::new(Bindings::default()),
            created: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            telemetry: crate::metrics::Telemetry::default(),
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The data plane (for shutdown and statistics).
    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    /// `create_session`.
    pub async fn create(
        &self,
        request: v1::CreateSessionRequest,
    ) -> Result<v1::CreateSessionResponse, Status> {
        self.create_checked(request, true).await
    }

    /// `create_session` where the user may be unknown (rtpengine's ng
    /// protocol carries no AOR unless the proxy adds one): an empty `aor`
    /// is taken from a public GRUU in `gruu`, or stays unknown until a
    /// transfer names the user's device.
    pub async fn create_without_user(
        &self,
        mut request: v1::CreateSessionRequest,
    ) -> Result<v1::CreateSessionResponse, Status> {
        if request.aor.is_empty()
            && let Ok(gruu) = crate::bindings::parse_gruu(&request.gruu, false)
            && let crate::sip_uri::Gruu::Public { aor } = crate::sip_uri::classify(&gruu)
        {
            request.aor = aor.to_string();
        }
        self.create_checked(request, false).await
    }

    async fn create_checked(
        &self,
        mut request: v1::CreateSessionRequest,
        user_required: bool,
    ) -> Result<v1::CreateSessionResponse, Status> {
        let offer = if request.sdp.is_empty() {
            None
        } else {
            if !request.streams.is_empty() {
                return Err(Status::invalid_argument("give streams or sdp, not both"));
            }
            let from = party(request.sdp_from, Side::User)?;
            let body = negotiation::parse(&request.sdp, &self.options.sdp_limits, &self.telemetry)?;
            let other_family = v1::AddressFamily::try_from(request.other_family).map_err(|_| {
                Status::invalid_argument(format!("unknown address family {}", request.other_family))
            })?;
            let (streams, layout) = negotiation::streams_from(&body, from, other_family)?;
            request.streams = streams;
            Some((from, body, layout))
        };
        let specs = validate_create(&request, user_required)?;
        let (id, worker) = {
            let mut registry = self.registry();
            if registry.by_id.len() >= self.options.max_sessions {
                return Err(Status::resource_exhausted(format!(
                    "session limit reached ({})",
                    self.options.max_sessions
                )));
            }
            let duplicate = registry
                .by_call_id
                .get(&request.call_id)
                .is_some_and(|ids| {
                    ids.iter().any(|id| {
                        let r = &registry.by_id[id];
                        r.from_tag == request.from_tag && r.to_tag == request.to_tag
                    })
                });
            if duplicate {
                return Err(Status::already_exists(format!(
                    "a session for call-id {:?} from-tag {:?} to-tag {:?} exists",
                    request.call_id, request.from_tag, request.to_tag
                )));
            }
            let Some(worker) = (0..registry.load.len())
                .filter(|&w| !registry.down[w])
                .min_by_key(|&w| registry.load[w])
            else {
                return Err(Status::unavailable("no media worker is running"));
            };
            let mut id = SessionId(rand::random());
            while registry.by_id.contains_key(&id) {
                id = SessionId(rand::random());
            }
            // Registered before the ports are bound, so a concurrent create
            // of the same dialog is refused; removed again on any failure.
            registry.insert(Record {
                id,
                call_id: request.call_id.clone(),
                from_tag: request.from_tag.clone(),
                to_tag: request.to_tag.clone(),
                aor: request.aor.clone(),
                gruu: request.gruu.clone(),
                worker,
                created_unix_ms: unix_time_ms(),
                streams: Vec::new(),
                pending: None,
                sdp: None,
                transfer_answer: None,
                offerer: offer.as_ref().map_or(Side::User, |(from, _, _)| *from),
            });
            (id, worker)
        };
        let started = self
            .start_session(id, worker, &request, specs, offer.is_some())
            .await;
        let started = match (started, offer) {
            (Ok(response), Some((from, body, layout))) => {
                self.answer_created(id, worker, response, from, body, layout)
                    .await
            }
            (other, _) => other,
        };
        match started {
            Ok(response) => {
                self.created.fetch_add(1, Ordering::Relaxed);
                self.telemetry.sessions_created.inc();
                session_span(id, &request.call_id).in_scope(|| {
                    info!(worker, streams = request.streams.len(), aor = %request.aor, gruu = %request.gruu, "session created");
                });
                Ok(response)
            }
            Err(status) => {
                self.registry().remove(id);
                Err(status)
            }
        }
    }

    async fn start_session(
        &self,
        id: SessionId,
        worker: usize,
        request: &v1::CreateSessionRequest,
        specs: Vec<[Peers; 2]>,
        rtcp_sockets: bool,
    ) -> Result<v1::CreateSessionResponse, Status> {
        let config = StreamConfig {
            learning_window: self.options.learning_window,
            relearn: request.nat_relearn,
            asymmetric: request.asymmetric,
        };
        let mut setups = Vec::with_capacity(specs.len());
        let mut records = Vec::with_capacity(specs.len());
        for (spec, peers) in request.streams.iter().zip(specs) {
            let families = [spec.user_family(), spec.remote_family()];
            let mut legs = Vec::with_capacity(2);
            let mut local = [v1::Endpoint::default(), v1::Endpoint::default()];
            for side in [Side::User, Side::Remote] {
                let (peer_rtp, peer_rtcp) = peers[side as usize];
                let ipv6 = match families[side as usize] {
                    v1::AddressFamily::Ipv4 => Some(false),
                    v1::AddressFamily::Ipv6 => Some(true),
                    v1::AddressFamily::Unspecified => peer_rtp.map(|a| a.is_ipv6()),
                };
                // With SDP, the other party may refuse rtcp-mux: keep the
                // RTCP port to fall back to (RFC 5761 §5.1.1).
                let sockets = self.allocate_leg(ipv6, spec.rtcp_mux && !rtcp_sockets)?;
                local[side as usize] = self.endpoint_of(&sockets.rtp, sockets.rtcp.as_ref());
                legs.push(LegSetup {
                    sockets,
                    config: LegConfig {
                        rtcp_mux: spec.rtcp_mux,
                        peer_rtp,
                        peer_rtcp,
                        peer_ip: None,
                    },
                });
            }
            let (Some(remote), Some(user)) = (legs.pop(), legs.pop()) else {
                return Err(Status::internal("leg allocation"));
            };
            setups.push(StreamSetup {
                config,
                clock_rates: clock_rates(&spec.codecs),
                telephone_event: telephone_event(&spec.codecs),
                legs: [user, remote],
            });
            records.push(StreamRecord {
                kind: spec.kind.clone(),
                codecs: spec.codecs.clone(),
                rtcp_mux: [spec.rtcp_mux; 2],
                rtcp_sockets: rtcp_sockets || !spec.rtcp_mux,
                local,
                ptime: spec.ptime_ms,
                held: [false; 2],
                rejected: false,
                user_payloads: Vec::new(),
            });
        }
        let (reply, answer) = oneshot::channel();
        self.send(
            worker,
            Command::Add {
                id,
                streams: setups,
                reply,
            },
        )?;
        match await_worker(answer).await? {
            Ok(()) => {}
            Err(e) => {
                return Err(Status::resource_exhausted(format!(
                    "cannot register sockets: {e}"
                )));
            }
        }
        let response = v1::CreateSessionResponse {
            sdp: String::new(),
            session: id.to_string(),
            streams: records
                .iter()
                .map(|r| v1::StreamAddresses {
                    kind: r.kind.clone(),
                    user: Some(r.local[0].clone()),
                    remote: Some(r.local[1].clone()),
                })
                .collect(),
        };
        if let Some(record) = self.registry().by_id.get_mut(&id) {
            record.streams = records;
        }
        Ok(response)
    }

    /// Binds a leg's sockets; running out of ports is RESOURCE_EXHAUSTED.
    fn allocate_leg(
        &self,
        ipv6: Option<bool>,
        rtcp_mux: bool,
    ) -> Result<baton_relay::ports::LegSockets, Status> {
        self.dataplane
            .allocate(ipv6, rtcp_mux)
            .map_err(|e| match e {
                AllocError::NoMediaIp(_) => Status::failed_precondition(e.to_string()),
                AllocError::Ports(_) => Status::resource_exhausted(e.to_string()),
            })
    }

    fn endpoint_of(
        &self,
        rtp: &std::net::UdpSocket,
        rtcp: Option<&std::net::UdpSocket>,
    ) -> v1::Endpoint {
        let show = |socket: &std::net::UdpSocket| {
            socket
                .local_addr()
                .map(|addr| self.advertised(addr).to_string())
                .unwrap_or_default()
        };
        let rtp_text = show(rtp);
        v1::Endpoint {
            rtcp: rtcp.map_or_else(|| rtp_text.clone(), show),
            rtp: rtp_text,
        }
    }

    fn advertised(&self, local: SocketAddr) -> SocketAddr {
        let ip = self
            .options
            .advertise
            .iter()
            .find(|(bound, _)| *bound == local.ip())
            .map_or(local.ip(), |(_, announced)| *announced);
        SocketAddr::new(ip, local.port())
    }

    fn send(&self, worker: usize, command: Command) -> Result<(), Status> {
        self.dataplane.send(worker, command).map_err(|e| match e {
            QueueError::Full(_) => Status::unavailable(e.to_string()),
            // A failed worker is being replaced: worth a retry.
            QueueError::Stopped(_) => Status::unavailable(e.to_string()),
        })
    }

    /// `update_session`.
    pub async fn update(
        &self,
        request: v1::UpdateSessionRequest,
    ) -> Result<v1::UpdateSessionResponse, Status> {
        if !request.sdp.is_empty() {
            if !request.streams.is_empty() {
                return Err(Status::invalid_argument("give streams or sdp, not both"));
            }
            return self.update_from_sdp(request).await;
        }
        let (id, worker, streams) = {
            let registry = self.registry();
            let id = registry.find(request.session.as_ref())?;
            let record = &registry.by_id[&id];
            (id, record.worker, record.streams.clone())
        };
        let stream_count = streams.len();
        let mut held_streams = streams.clone();
        let mut peers = Vec::new();
        let mut rates = Vec::new();
        for update in &request.streams {
            let index = update.index as usize;
            if index >= stream_count {
                return Err(Status::invalid_argument(format!(
                    "stream {index} does not exist (the session has {stream_count})"
                )));
            }
            for (side, endpoint) in [
                (Side::User, &update.user_peer),
                (Side::Remote, &update.remote_peer),
            ] {
                if let Some(endpoint) = endpoint {
                    let (rtp, rtcp) = parse_endpoint(endpoint, side)?;
                    peers.push(PeerUpdate {
                        stream: index,
                        side,
                        rtp,
                        rtcp,
                        rtcp_mux: None,
                    });
                }
            }
            if !update.codecs.is_empty() {
                validate_codecs(&update.codecs, index)?;
                rates.push((index, clock_rates(&update.codecs)));
            }
            match v1::Hold::try_from(update.hold) {
                Ok(v1::Hold::Unchanged) => {}
                Ok(v1::Hold::Off) => held_streams[index].held = [false; 2],
                Ok(v1::Hold::On) => held_streams[index].held = [true; 2],
                Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "stream {index}: unknown hold value {}",
                        update.hold
                    )));
                }
            }
        }
        let held = session_held(&held_streams);
        let (reply, answer) = oneshot::channel();
        self.send(
            worker,
            Command::Update {
                id,
                peers,
                clock_rates: rates,
                held: Some(held),
                reply,
            },
        )?;
        if !await_worker(answer).await? {
            return Err(Status::not_found(format!("session {id} has ended")));
        }
        {
            let mut registry = self.registry();
            if let Some(record) = registry.by_id.get_mut(&id) {
                if !request.to_tag.is_empty() {
                    record.to_tag.clone_from(&request.to_tag);
                }
                for update in &request.streams {
                    let index = update.index as usize;
                    if let Some(stream) = record.streams.get_mut(index) {
                        if !update.codecs.is_empty() {
                            stream.codecs.clone_from(&update.codecs);
                        }
                        stream.held = held_streams[index].held;
                    }
                }
            }
        }
        Ok(v1::UpdateSessionResponse {
            session: Some(self.get(Some(&by_id(id))).await?),
            sdp: String::new(),
        })
    }

    /// `get_session`.
    pub async fn get(&self, reference: Option<&v1::SessionRef>) -> Result<v1::SessionInfo, Status> {
        let record = {
            let registry = self.registry();
            let id = registry.find(reference)?;
            registry.by_id[&id].clone()
        };
        let (reply, answer) = oneshot::channel();
        self.send(
            record.worker,
            Command::Inspect {
                id: record.id,
                reply,
            },
        )?;
        match await_worker(answer).await? {
            Some(report) => Ok(session_info(&record, Some(&report))),
            None => Err(Status::not_found(format!(
                "session {} has ended",
                record.id
            ))),
        }
    }

    /// `delete_session`: ends the session and returns its final state.
    pub async fn delete(
        &self,
        reference: Option<&v1::SessionRef>,
    ) -> Result<v1::SessionInfo, Status> {
        let record = {
            let mut registry = self.registry();
            let id = registry.find(reference)?;
            registry
                .remove(id)
                .ok_or_else(|| Status::internal("registry"))?
        };
        let (reply, answer) = oneshot::channel();
        self.send(
            record.worker,
            Command::Remove {
                id: record.id,
                reply,
            },
        )?;
        let report = await_worker(answer).await?;
        self.telemetry.session_ended("deleted");
        session_span(record.id, &record.call_id)
            .in_scope(|| info!(reason = "deleted", "session ended"));
        Ok(session_info(&record, report.as_ref()))
    }

    /// `list_sessions`.
    pub fn list(&self) -> v1::ListSessionsResponse {
        let registry = self.registry();
        let mut sessions: Vec<v1::SessionSummary> = registry
            .by_id
            .values()
            .map(|r| v1::SessionSummary {
                session: r.id.to_string(),
                call_id: r.call_id.clone(),
                from_tag: r.from_tag.clone(),
                to_tag: r.to_tag.clone(),
                aor: r.aor.clone(),
                gruu: r.gruu.clone(),
                worker: r.worker as u32,
                created_unix_ms: r.created_unix_ms,
                streams: r.streams.len() as u32,
            })
            .collect();
        sessions.sort_by(|a, b| {
            a.created_unix_ms
                .cmp(&b.created_unix_ms)
                .then(a.session.cmp(&b.session))
        });
        v1::ListSessionsResponse { sessions }
    }

    /// Each live worker's counters.
    pub async fn worker_stats(&self) -> Vec<(usize, baton_relay::worker::WorkerStats)> {
        let mut all = Vec::with_capacity(self.dataplane.worker_count());
        for index in 0..self.dataplane.worker_count() {
            let (reply, answer) = oneshot::channel();
            if self.send(index, Command::Stats { reply }).is_err() {
                continue;
            }
            if let Ok(worker) = await_worker(answer).await {
                all.push((index, worker));
            }
        }
        all
    }

    /// Sessions now.
    pub fn session_count(&self) -> usize {
        self.registry().by_id.len()
    }

    /// The size limits of SDP bodies from requests.
    pub fn sdp_limits(&self) -> &crate::sdp::SdpLimits {
        &self.options.sdp_limits
    }

    /// What is counted as it happens, for `/metrics`.
    pub fn telemetry(&self) -> &crate::metrics::Telemetry {
        &self.telemetry
    }

    /// Fills the session and worker parts of `get_stats`.
    pub async fn fill_stats(&self, stats: &mut v1::GetStatsResponse) {
        stats.sessions = self.registry().by_id.len() as u32;
        stats.sessions_created = self.created.load(Ordering::Relaxed);
        stats.sessions_timed_out = self.timed_out.load(Ordering::Relaxed);
        stats.transfers_started = self.telemetry.transfers_started.get();
        stats.transfers_completed = self.telemetry.transfers_completed.get();
        stats.transfers_failed = ["refused", "cancelled", "timeout"]
            .iter()
            .map(|reason| {
                self.telemetry
                    .transfers_failed
                    .get_or_create(&crate::metrics::ReasonLabels {
                        reason: (*reason).to_owned(),
                    })
                    .get()
            })
            .sum();
        stats.refusals = self.telemetry.refusal_counts().into_iter().collect();
        for (index, worker) in self.worker_stats().await {
            let us = |ns: u64| ns as f64 / 1000.0;
            stats.packets_forwarded += worker.forwarded;
            stats.packets_dropped += worker.dropped;
            for reason in baton_relay::stream::DropReason::ALL {
                let count = worker.drops[reason as usize];
                if count > 0 {
                    *stats.drops.entry(reason.name().to_owned()).or_default() += count;
                }
            }
            stats.workers.push(v1::WorkerStats {
                index: index as u32,
                sessions: worker.sessions as u32,
                packets_forwarded: worker.forwarded,
                packets_dropped: worker.dropped,
                latency_us: Some(v1::Latency {
                    p50: us(worker.latency_ns[0]),
                    p90: us(worker.latency_ns[1]),
                    p99: us(worker.latency_ns[2]),
                    p999: us(worker.latency_ns[3]),
                    max: us(worker.latency_ns[4]),
                }),
                events_lost: worker.events_lost,
            });
        }
        stats.ports = self
            .dataplane
            .port_usage()
            .into_iter()
            .map(|(ip, free, total)| v1::PortUsage {
                ip: ip.to_string(),
                free_pairs: free as u32,
                total_pairs: total as u32,
            })
            .collect();
    }

    /// Turns worker events into registry changes and published events, until
    /// the workers stop.
    pub async fn handle_worker_events(
        &self,
        mut events: mpsc::Receiver<WorkerEvent>,
        bus: &EventBus,
    ) {
        while let Some(event) = events.recv().await {
            match event {
                WorkerEvent::SessionEnded { id, reason, report } => {
                    let Some(record) = self.registry().remove(id) else {
                        continue; // deleted at the same moment
                    };
                    self.timed_out.fetch_add(1, Ordering::Relaxed);
                    self.telemetry.session_ended(reason.name());
                    session_span(id, &record.call_id)
                        .in_scope(|| info!(reason = reason.name(), "session ended"));
                    bus.publish(v1::event::Kind::SessionTimedOut(v1::SessionTimedOut {
                        session: Some(session_info(&record, Some(&report))),
                        reason: reason.name().to_owned(),
                    }));
                }
                WorkerEvent::TransferCompleted { id, gap, report } => {
                    self.transfer_completed(id, gap, &report, bus);
                }
                WorkerEvent::WorkerFailed { worker, reason } => {
                    self.worker_failed(worker, &reason, bus);
                }
                WorkerEvent::TransferTimedOut { id } => {
                    self.transfer_failed(id, "timeout", bus);
                }
                WorkerEvent::SourceLatched {
                    id,
                    stream,
                    latched,
                } => {
                    bus.publish(v1::event::Kind::SourceLatched(v1::SourceLatched {
                        session: id.to_string(),
                        stream: stream as u32,
                        leg: latched.side.name().to_owned(),
                        component: match latched.component {
                            Component::Rtp => "rtp",
                            Component::Rtcp => "rtcp",
                        }
                        .to_owned(),
                        address: latched.addr.to_string(),
                        relearned: latched.relearned,
                    }));
                }
            }
        }
        info!("media workers stopped");
    }
}

impl Sessions {
    /// A worker failed (a bug): its sessions are lost. End them as a
    /// timeout would (an event per session, so the signalling side can hang
    /// up the calls), and start a new worker in its place.
    fn worker_failed(&self, worker: usize, reason: &str, bus: &EventBus) {
        let lost = self.registry().remove_worker(worker);
        error!(
            worker,
            reason,
            sessions_lost = lost.len(),
            "media worker failed; its sessions are lost, the other workers' are not"
        );
        // The new worker first: by the time anyone hears of the lost
        // sessions, new calls can be placed again.
        match self.dataplane.restart_worker(worker) {
            Ok(()) => info!(worker, "media worker restarted"),
            Err(e) => {
                error!(
                    worker,
                    "cannot restart the media worker, new sessions go to the others: {e}"
                );
                if let Some(down) = self.registry().down.get_mut(worker) {
                    *down = true;
                }
            }
        }
        self.telemetry.worker_failures.inc();
        for record in lost {
            self.telemetry.session_ended(WORKER_FAILED);
            session_span(record.id, &record.call_id)
                .in_scope(|| warn!(reason = WORKER_FAILED, "session ended"));
            bus.publish(v1::event::Kind::SessionTimedOut(v1::SessionTimedOut {
                session: Some(session_info(&record, None)),
                reason: WORKER_FAILED.to_owned(),
            }));
        }
    }
}

/// End reason of sessions lost with a failed worker.
const WORKER_FAILED: &str = "worker_failed";

/// What the ng front end reads of a session.
#[derive(Debug, Clone)]
pub struct DialogView {
    /// The relay's id.
    pub id: SessionId,
    /// Call-ID.
    pub call_id: String,
    /// The tag of the side that created the session (the user side).
    pub from_tag: String,
    /// The other side's tag, once known.
    pub to_tag: String,
    /// The user's AOR; empty if unknown.
    pub aor: String,
    /// The user's current device; empty if unknown.
    pub gruu: String,
    /// A transfer is open and not switched yet.
    pub transfer_open: bool,
    /// The party whose tag is `from_tag`.
    pub offerer: Side,
}

impl DialogView {
    /// The party a tag of this dialog belongs to.
    pub fn side_of(&self, tag: &str) -> Side {
        match (tag == self.from_tag, self.offerer) {
            (true, side) => side,
            (false, Side::User) => Side::Remote,
            (false, Side::Remote) => Side::User,
        }
    }
}

impl Sessions {
    /// The session of a dialog (tags in either direction; an empty to-tag
    /// matches any).
    pub fn find_dialog(
        &self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
    ) -> Result<DialogView, Status> {
        let registry = self.registry();
        let id = registry.find(Some(&v1::SessionRef {
            by: Some(By::Dialog(v1::Dialog {
                call_id: call_id.to_owned(),
                from_tag: from_tag.to_owned(),
                to_tag: to_tag.to_owned(),
            })),
        }))?;
        let r = &registry.by_id[&id];
        Ok(DialogView {
            id,
            call_id: r.call_id.clone(),
            from_tag: r.from_tag.clone(),
            to_tag: r.to_tag.clone(),
            aor: r.aor.clone(),
            gruu: r.gruu.clone(),
            transfer_open: r
                .pending
                .as_ref()
                .is_some_and(|p| p.committed_from.is_none()),
            offerer: r.offerer,
        })
    }

    /// Names the user's device (and the user, if unknown) on a session that
    /// did not know it: a call to the user learns which device answered.
    pub fn name_user_device(&self, id: SessionId, aor: &str, gruu: &str) -> Result<(), Status> {
        let gruu_uri = crate::bindings::parse_gruu(gruu, false)?;
        let derived_aor = match crate::sip_uri::classify(&gruu_uri) {
            crate::sip_uri::Gruu::Public { aor } => Some(aor.to_string()),
            crate::sip_uri::Gruu::Temporary | crate::sip_uri::Gruu::NotAGruu => None,
        };
        let mut registry = self.registry();
        let record = registry
            .by_id
            .get_mut(&id)
            .ok_or_else(|| Status::not_found(format!("no session {id}")))?;
        if record.gruu.is_empty() {
            record.gruu = gruu_uri.to_string();
        }
        if record.aor.is_empty() {
            if !aor.is_empty() {
                crate::bindings::parse_aor(aor)?;
                record.aor = aor.to_owned();
            } else if let Some(derived) = derived_aor {
                record.aor = derived;
            }
        }
        Ok(())
    }

    /// The sessions of a call, oldest first, optionally only those one of
    /// whose tags is `tag`.
    pub fn sessions_of_call(&self, call_id: &str, tag: Option<&str>) -> Vec<SessionId> {
        let registry = self.registry();
        let mut ids: Vec<&Record> = registry
            .by_call_id
            .get(call_id)
            .into_iter()
            .flatten()
            .map(|id| &registry.by_id[id])
            .filter(|r| tag.is_none_or(|t| r.from_tag == t || r.to_tag == t))
            .collect();
        ids.sort_by_key(|r| r.created_unix_ms);
        ids.into_iter().map(|r| r.id).collect()
    }

    /// Call-IDs with sessions, oldest first, at most `limit`.
    pub fn call_ids(&self, limit: usize) -> Vec<String> {
        let registry = self.registry();
        let mut calls: Vec<(u64, &String)> = registry
            .by_call_id
            .iter()
            .map(|(call_id, ids)| {
                let oldest = ids
                    .iter()
                    .map(|id| registry.by_id[id].created_unix_ms)
                    .min()
                    .unwrap_or(0);
                (oldest, call_id)
            })
            .collect();
        calls.sort();
        calls
            .into_iter()
            .take(limit)
            .map(|(_, call_id)| call_id.clone())
            .collect()
    }

    /// The last SDP body the relay gave out for `side`.
    pub fn last_sdp_sent(&self, id: SessionId, side: Side) -> Option<String> {
        let registry = self.registry();
        let state = registry.by_id.get(&id)?.sdp.as_ref()?;
        state.sent[side as usize].as_ref().map(|s| s.text.clone())
    }

    /// The SDP answer of the last transfer given an offer, once.
    pub fn take_transfer_answer(&self, id: SessionId) -> Option<String> {
        self.registry()
            .by_id
            .get_mut(&id)
            .and_then(|r| r.transfer_answer.take())
    }
}

/// The span every log line about a session is in: one call's life can be
/// followed by its session id or its Call-ID.
pub(crate) fn session_span(id: SessionId, call_id: &str) -> tracing::Span {
    tracing::info_span!("session", session = %id, call_id = %call_id)
}

/// Which party an SDP body comes from.
fn party(value: i32, default: Side) -> Result<Side, Status> {
    match v1::Party::try_from(value) {
        Ok(v1::Party::Default) => Ok(default),
        Ok(v1::Party::User) => Ok(Side::User),
        Ok(v1::Party::Remote) => Ok(Side::Remote),
        Err(_) => Err(Status::invalid_argument(format!("unknown party {value}"))),
    }
}

/// A reference to a session by its id.
pub(crate) fn by_id(id: SessionId) -> v1::SessionRef {
    v1::SessionRef {
        by: Some(By::Id(id.to_string())),
    }
}

async fn await_worker<T>(answer: oneshot::Receiver<T>) -> Result<T, Status> {
    match tokio::time::timeout(WORKER_REPLY_TIMEOUT, answer).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err(Status::unavailable(
            "media worker failed while handling the request",
        )),
        Err(_) => Err(Status::unavailable("media worker did not answer in time")),
    }
}

/// The payload type of RFC 4733 events among `codecs`, if any.
fn telephone_event(codecs: &[v1::Codec]) -> Option<u8> {
    codecs
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case("telephone-event"))
        .and_then(|c| u8::try_from(c.payload_type).ok())
}

fn clock_rates(codecs: &[v1::Codec]) -> Vec<(u8, u32)> {
    codecs
        .iter()
        .filter_map(|c| Some((u8::try_from(c.payload_type).ok()?, c.clock_rate)))
        .collect()
}

fn validate_codecs(codecs: &[v1::Codec], stream: usize) -> Result<(), Status> {
    if codecs.is_empty() {
        return Err(Status::invalid_argument(format!(
            "stream {stream} has no codec"
        )));
    }
    for codec in codecs {
        if codec.payload_type > 127 {
            return Err(Status::invalid_argument(format!(
                "stream {stream}: payload type {} is not in 0-127",
                codec.payload_type
            )));
        }
        if codec.name.is_empty() || codec.clock_rate == 0 {
            return Err(Status::invalid_argument(format!(
                "stream {stream}: payload type {} needs a name and a clock rate",
                codec.payload_type
            )));
        }
    }
    Ok(())
}

fn parse_addr(text: &str, what: &str) -> Result<Option<SocketAddr>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| Status::invalid_argument(format!("{what} {text:?} is not IP:PORT")))?;
    if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(Status::invalid_argument(format!(
            "{what} {text:?} is not a unicast address with a port"
        )));
    }
    Ok(Some(addr))
}

fn parse_endpoint(endpoint: &v1::Endpoint, side: Side) -> Result<Peers, Status> {
    let rtp = parse_addr(&endpoint.rtp, &format!("{} peer RTP address", side.name()))?;
    let rtcp = parse_addr(
        &endpoint.rtcp,
        &format!("{} peer RTCP address", side.name()),
    )?;
    if rtcp.is_some() && rtp.is_none() {
        return Err(Status::invalid_argument(format!(
            "{} peer has an RTCP address but no RTP address",
            side.name()
        )));
    }
    Ok((rtp, rtcp))
}

fn validate_create(
    request: &v1::CreateSessionRequest,
    user_required: bool,
) -> Result<Vec<[Peers; 2]>, Status> {
    if request.call_id.is_empty() || request.from_tag.is_empty() {
        return Err(Status::invalid_argument(
            "call_id and from_tag are required",
        ));
    }
    for (what, uri) in [("aor", &request.aor), ("gruu", &request.gruu)] {
        if uri.is_empty() && !user_required {
            continue;
        }
        let scheme = uri
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if scheme != "sip" && scheme != "sips" || !uri.contains(':') {
            return Err(Status::invalid_argument(format!(
                "{what} {uri:?} is not a sip: or sips: URI"
            )));
        }
    }
    if request.streams.is_empty() || request.streams.len() > MAX_STREAMS {
        return Err(Status::invalid_argument(format!(
            "a session needs 1 to {MAX_STREAMS} streams, got {}",
            request.streams.len()
        )));
    }
    request
        .streams
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let token_ok = !spec.kind.is_empty()
                && spec
                    .kind
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !token_ok {
                return Err(Status::invalid_argument(format!(
                    "stream {index}: kind {:?} is not an SDP media type",
                    spec.kind
                )));
            }
            validate_codecs(&spec.codecs, index)?;
            let user = match &spec.user_peer {
                Some(e) => parse_endpoint(e, Side::User)?,
                None => (None, None),
            };
            let remote = match &spec.remote_peer {
                Some(e) => parse_endpoint(e, Side::Remote)?,
                None => (None, None),
            };
            Ok([user, remote])
        })
        .collect()
}

fn session_info(record: &Record, report: Option<&SessionReport>) -> v1::SessionInfo {
    v1::SessionInfo {
        session: record.id.to_string(),
        call_id: record.call_id.clone(),
        from_tag: record.from_tag.clone(),
        to_tag: record.to_tag.clone(),
        aor: record.aor.clone(),
        gruu: record.gruu.clone(),
        worker: record.worker as u32,
        created_unix_ms: record.created_unix_ms,
        pending_gruu: record
            .pending
            .as_ref()
            .filter(|p| p.committed_from.is_none())
            .map(|p| p.gruu.clone())
            .unwrap_or_default(),
        on_hold: session_held(&record.streams),
        idle_ms: report.map_or(0, |r| u64::try_from(r.idle.as_millis()).unwrap_or(u64::MAX)),
        streams: record
            .streams
            .iter()
            .enumerate()
            .map(|(index, stream)| {
                let legs = report.and_then(|r| r.streams.get(index));
                let leg = |side: Side| v1::LegInfo {
                    local: Some(stream.local[side as usize].clone()),
                    peer: legs.map(|l| peer_endpoint(&l[side as usize])),
                    peer_source: legs
                        .map_or("unknown", |l| l[side as usize].peer_source.name())
                        .to_owned(),
                    stats: legs.map(|l| leg_stats(&l[side as usize])),
                };
                v1::StreamInfo {
                    kind: stream.kind.clone(),
                    codecs: stream.codecs.clone(),
                    rtcp_mux: stream.rtcp_mux[0] && stream.rtcp_mux[1],
                    ptime_ms: stream.ptime,
                    held: stream.is_held(),
                    user: Some(leg(Side::User)),
                    remote: Some(leg(Side::Remote)),
                }
            })
            .collect(),
    }
}

fn peer_endpoint(report: &LegReport) -> v1::Endpoint {
    let show = |addr: Option<SocketAddr>| addr.map(|a| a.to_string()).unwrap_or_default();
    v1::Endpoint {
        rtp: show(report.peer_rtp),
        rtcp: show(report.peer_rtcp),
    }
}

fn leg_stats(report: &LegReport) -> v1::LegStats {
    let c = &report.counters;
    v1::LegStats {
        rtp_packets_in: c.rtp_in,
        rtcp_packets_in: c.rtcp_in,
        bytes_in: c.bytes_in,
        packets_out: c.packets_out,
        bytes_out: c.bytes_out,
        drops: baton_relay::stream::DropReason::ALL
            .iter()
            .filter(|reason| c.drops[**reason as usize] > 0)
            .map(|reason| (reason.name().to_owned(), c.drops[*reason as usize]))
            .collect(),
        expected: report.expected,
        lost: report.lost,
        jitter_ms: report.jitter_ms,
        last_packet_ms_ago: report
            .last_packet_age
            .map_or(-1, |age| i64::try_from(age.as_millis()).unwrap_or(i64::MAX)),
    }
}
