//! The control plane's side of calls: the registry of sessions, and the
//! commands that create, change, inspect and end sessions and move them
//! between devices (checked against [`Devices`](crate::devices::Devices)).
//!
//! The control plane keeps the signalling — dialogs, users and devices,
//! what the SDP negotiated, which worker carries a call — and the data
//! plane keeps the media: a call's legs, peers, counters, transfer phase and
//! timeouts live once, in its [`Session`](baton_relay::core::session::Session),
//! and are read from its reports and events. Every command on one session
//! holds the session's lock for its whole run, so commands on a session
//! never interleave (see `registry`).
//!
//! - `calls`: create, update, get, delete, list, statistics, audit.
//! - `offer_answer`: the same with SDP bodies.
//! - [`transfer`]: transfer, commit, cancel.
//! - `worker_events`: what the workers report, applied to the registry.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use baton_proto::v1::{self, session_ref::By};
use baton_relay::core::stream::{DropReason, LegReport};
use baton_relay::{AllocError, Dataplane, Party, SessionId, TransferId};
use tokio::sync::OwnedMutexGuard;

use crate::sip::crypto::{PartyCrypto, Transport};
use crate::sip::negotiation::session_held;
use crate::status::{MAX_ID_LEN, MAX_URI_LEN, Status, check_len, excerpt};
use baton_relay::core::srtp::{MasterKey, Suite};

pub(crate) mod calls;
pub mod media_control;
pub(crate) mod offer_answer;
pub(crate) mod persist;
pub(crate) mod registry;
pub mod transfer;
pub(crate) mod worker_events;

pub use calls::{BranchEnd, DialogView};
use registry::{Record, Registry};
pub use transfer::parse_replaces;

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
    pub sdp_limits: crate::sip::sdp::SdpLimits,
    /// A drain without its own deadline ends the sessions left after this;
    /// `None` waits for every session.
    pub drain_timeout: Option<Duration>,
    /// At a video handoff, the new device's video waits for its first
    /// keyframe (it is asked for one either way).
    pub keyframe_wait: bool,
    /// Record every call from its start (with a recording directory).
    pub record_calls: bool,
}

/// The sessions of the relay and the data plane that carries them.
pub struct Sessions {
    dataplane: Dataplane,
    /// Replaced by a reload (SIGHUP); read per command, never per packet.
    options: std::sync::RwLock<SessionOptions>,
    registry: Mutex<Registry>,
    devices: std::sync::Arc<crate::devices::Devices>,
    /// The next transfer's id.
    next_transfer: AtomicU64,
    /// Sessions ended by a timeout (media, setup, hold).
    timed_out: AtomicU64,
    telemetry: crate::telemetry::Telemetry,
    events: crate::events::EventBus,
    drain: crate::drain::Drain,
    /// Call recording, when a recording directory is configured.
    recordings: std::sync::OnceLock<std::sync::Arc<crate::recording::Recordings>>,
    /// With high availability: where changed sessions are announced.
    persist: std::sync::OnceLock<PersistHook>,
    /// False while the relay is a standby (or taking calls over): it takes
    /// no new sessions.
    serving: std::sync::atomic::AtomicBool,
}

/// Where a session is announced as changed, for the HA writer (which
/// reads it from the registry then). A full announcement queue asks for a
/// re-sync instead: a change is never lost, only merged.
#[derive(Debug, Clone)]
pub struct PersistHook {
    changed: tokio::sync::mpsc::Sender<SessionId>,
    counters: std::sync::Arc<crate::ha::store::StoreCounters>,
}

impl PersistHook {
    /// A hook announcing on `changed`, asking `counters` for a re-sync when
    /// it is full.
    pub fn new(
        changed: tokio::sync::mpsc::Sender<SessionId>,
        counters: std::sync::Arc<crate::ha::store::StoreCounters>,
    ) -> Self {
        Self { changed, counters }
    }

    fn announce(&self, id: SessionId) {
        if self.changed.try_send(id).is_err() {
            self.counters.resync.store(true, Ordering::Relaxed);
        }
    }
}

/// A session's lock, held for a command's whole run; when it is let go the
/// session is announced as changed (with high availability).
pub(crate) struct SessionGuard {
    _lock: OwnedMutexGuard<()>,
    id: SessionId,
    hook: Option<PersistHook>,
}

impl SessionGuard {
    /// The lock of a command that changes nothing (`get`, an audit): the
    /// session is not announced, so nothing is written again.
    pub(crate) fn read_only(mut self) -> Self {
        self.hook = None;
        self
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Some(hook) = &self.hook {
            hook.announce(self.id);
        }
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("options", &self.options())
            .finish_non_exhaustive()
    }
}

/// A leg's parsed peer addresses.
type Peers = (Option<SocketAddr>, Option<SocketAddr>);

impl Sessions {
    /// A registry over a running data plane.
    pub fn new(dataplane: Dataplane, options: SessionOptions) -> Self {
        Self {
            registry: Mutex::new(Registry::new(dataplane.worker_count())),
            dataplane,
            options: std::sync::RwLock::new(options),
            devices: std::sync::Arc::default(),
            next_transfer: AtomicU64::new(1),
            timed_out: AtomicU64::new(0),
            telemetry: crate::telemetry::Telemetry::default(),
            events: crate::events::EventBus::new(),
            drain: crate::drain::Drain::default(),
            recordings: std::sync::OnceLock::new(),
            persist: std::sync::OnceLock::new(),
            serving: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Announces every change of a session to `hook` (high availability;
    /// once, at start).
    pub fn persist_to(&self, hook: PersistHook) {
        let _ = self.persist.set(hook);
    }

    /// Announces that session `id` changed (or ended).
    pub(crate) fn changed(&self, id: SessionId) {
        if let Some(hook) = self.persist.get() {
            hook.announce(id);
        }
    }

    /// No change announced is waiting to be written (high availability).
    pub(crate) fn persist_idle(&self) -> bool {
        self.persist
            .get()
            .is_none_or(|hook| hook.changed.capacity() == hook.changed.max_capacity())
    }

    /// Whether the relay takes new sessions (false on a standby).
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Relaxed);
    }

    /// Whether the relay takes new sessions.
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Media snapshots of sessions whose media moved since their last one
    /// (all of them when `all`), from every worker.
    pub(crate) async fn media_snapshots(
        &self,
        all: bool,
    ) -> Vec<(SessionId, baton_relay::core::snapshot::SessionSnapshot)> {
        let mut out = Vec::new();
        for worker in self.dataplane.workers() {
            match self.dataplane.snapshots(worker, all).await {
                Ok(snapshots) => out.extend(snapshots),
                Err(e) => tracing::debug!(%worker, "no snapshots: {e}"),
            }
        }
        out
    }

    /// Turns call recording on, into `recordings` (once, at start).
    pub fn set_recordings(&self, recordings: std::sync::Arc<crate::recording::Recordings>) {
        let _ = self.recordings.set(recordings);
    }

    /// The relay's recordings, if a recording directory is configured.
    pub fn recordings(&self) -> Option<&std::sync::Arc<crate::recording::Recordings>> {
        self.recordings.get()
    }

    /// The relay's drain: while it is on, new sessions are refused.
    pub fn drain(&self) -> &crate::drain::Drain {
        &self.drain
    }

    /// Starts, replaces or (`None`) cancels the drain, and publishes it.
    pub fn set_drain(&self, plan: Option<crate::drain::DrainPlan>) -> v1::DrainResponse {
        self.drain.set(plan);
        let sessions = u32::try_from(self.session_count()).unwrap_or(u32::MAX);
        let deadline_unix_ms = plan.map_or(0, |p| p.deadline_unix_ms());
        match plan {
            Some(p) => tracing::warn!(
                sessions,
                deadline = %p.deadline.map_or_else(
                    || "none".to_owned(),
                    |d| format!("{}s", d.saturating_duration_since(std::time::Instant::now()).as_secs())
                ),
                refuse_ng_ping = p.refuse_ng_ping,
                "draining: new sessions are refused; the relay exits when the last one ends"
            ),
            None => tracing::warn!(sessions, "drain cancelled: new sessions are accepted again"),
        }
        self.events.publish(v1::event::Kind::Draining(v1::Draining {
            draining: plan.is_some(),
            sessions,
            deadline_unix_ms,
        }));
        v1::DrainResponse {
            draining: plan.is_some(),
            sessions,
            deadline_unix_ms,
        }
    }

    /// The device bindings transfers are checked against.
    pub fn devices(&self) -> &crate::devices::Devices {
        &self.devices
    }

    /// The relay's event bus.
    pub fn events(&self) -> &crate::events::EventBus {
        &self.events
    }

    /// The session settings in force (a reload replaces them).
    pub fn options(&self) -> SessionOptions {
        self.options
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Applies reloaded settings to sessions created from now on (limits,
    /// windows, transfer timeout); `advertise` stays as started, since it
    /// belongs to the media IPs, which only a restart changes.
    pub fn reload_options(&self, mut options: SessionOptions) {
        let mut current = self.options.write().unwrap_or_else(PoisonError::into_inner);
        options.advertise = std::mem::take(&mut current.advertise);
        *current = options;
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The data plane (for shutdown and statistics).
    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    /// The size limits of SDP bodies from requests.
    pub fn sdp_limits(&self) -> crate::sip::sdp::SdpLimits {
        self.options().sdp_limits
    }

    /// What is counted as it happens, for `/metrics`.
    pub fn telemetry(&self) -> &crate::telemetry::Telemetry {
        &self.telemetry
    }

    /// A fresh transfer id.
    fn new_transfer_id(&self) -> TransferId {
        TransferId(self.next_transfer.fetch_add(1, Ordering::Relaxed))
    }

    /// The session `reference` names.
    pub fn session_id(&self, reference: Option<&v1::SessionRef>) -> Result<SessionId, Status> {
        self.registry().find(reference)
    }

    /// Waits for the lock of the session `reference` names and returns the
    /// record as it is once the lock is held (it may have ended meanwhile).
    async fn lock_session(
        &self,
        reference: Option<&v1::SessionRef>,
    ) -> Result<(SessionGuard, Record), Status> {
        let id = self.registry().find(reference)?;
        self.lock_id(id).await
    }

    /// [`Sessions::lock_session`] by id.
    async fn lock_id(&self, id: SessionId) -> Result<(SessionGuard, Record), Status> {
        let lock = self
            .registry()
            .by_id
            .get(&id)
            .map(|r| std::sync::Arc::clone(&r.lock))
            .ok_or_else(|| Status::not_found(format!("no session {id}")))?;
        let guard = SessionGuard {
            _lock: lock.lock_owned().await,
            id,
            hook: self.persist.get().cloned(),
        };
        Ok((guard, self.record_now(id)?))
    }

    /// A copy of the session's record as it is now; `NOT_FOUND` once it
    /// has ended.
    fn record_now(&self, id: SessionId) -> Result<Record, Status> {
        self.registry()
            .by_id
            .get(&id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("session {id} has ended")))
    }

    /// Parses a body from a request within the SDP limits, counting a
    /// body that breaks one.
    fn parse_sdp(&self, text: &str) -> Result<crate::sip::sdp::Sdp, Status> {
        crate::sip::negotiation::parse(text, &self.sdp_limits()).map_err(|(status, limit)| {
            if let Some(limit) = limit {
                self.telemetry.refused(limit.reason());
            }
            status
        })
    }

    /// Binds a leg's sockets. Running out of ports or file descriptors is
    /// RESOURCE_EXHAUSTED; a media IP that is no longer this host's, or a
    /// bind the system forbids, is FAILED_PRECONDITION: the operator must
    /// act, and the relay's log says so.
    fn allocate_leg(
        &self,
        interface: &str,
        ipv6: Option<bool>,
        rtcp_mux: bool,
    ) -> Result<baton_relay::io::ports::LegSockets, Status> {
        self.dataplane
            .allocate(Some(interface), ipv6, rtcp_mux)
            .map_err(|e| alloc_status(&e))
    }

    /// The interface a request names (the default one when empty), or
    /// INVALID_ARGUMENT naming the ones there are.
    pub fn interface(&self, name: &str) -> Result<String, Status> {
        if name.is_empty() {
            return Ok(self.dataplane.default_interface());
        }
        let names = self.dataplane.interface_names();
        if names.iter().any(|n| n == name) {
            Ok(name.to_owned())
        } else {
            Err(Status::invalid_argument(format!(
                "unknown interface {} (this relay has {})",
                excerpt(name),
                names.join(", ")
            )))
        }
    }

    /// The advertised addresses of a leg's sockets.
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
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .advertise
            .iter()
            .find(|(bound, _)| *bound == local.ip())
            .map_or(local.ip(), |(_, announced)| *announced);
        SocketAddr::new(ip, local.port())
    }
}

/// The status for a leg whose sockets could not be had, logged (at most
/// once a second: a broken address fails every call) when the operator
/// must act.
fn alloc_status(error: &AllocError) -> Status {
    use baton_relay::io::ports::PortError;
    use std::io::ErrorKind;
    static LAST_LOGGED: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let log = |message: &str| {
        let mut last = LAST_LOGGED.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            *last = Some(std::time::Instant::now());
            tracing::error!("{message}");
        }
    };
    match error {
        AllocError::NoMediaIp { .. }
        | AllocError::UnknownInterface(_)
        | AllocError::Ports(PortError::Taken { .. }) => {
            Status::failed_precondition(error.to_string())
        }
        AllocError::Ports(PortError::Exhausted { .. }) => {
            log(&error.to_string());
            Status::resource_exhausted(error.to_string()).capacity(crate::status::Capacity::Ports)
        }
        AllocError::Ports(PortError::Bind { ip, source }) => {
            let kind = source.kind();
            if kind == ErrorKind::AddrNotAvailable {
                let message = format!(
                    "media IP {ip} is not an address of this host any more ({source}): \
                     restore it, or restart the relay with the host's addresses"
                );
                log(&message);
                // Marked as capacity too: over ng, the proxy then offers the
                // call to another relay (a floating address that moved to
                // the standby is the usual cause).
                Status::failed_precondition(message).capacity(crate::status::Capacity::Ports)
            } else if kind == ErrorKind::PermissionDenied {
                let message = format!("the system forbids binding media ports on {ip}: {source}");
                log(&message);
                Status::failed_precondition(message)
            } else {
                // Other programs hold the free ports, or the open files
                // limit is reached: capacity, which another relay may have.
                log(&error.to_string());
                Status::resource_exhausted(error.to_string())
                    .capacity(crate::status::Capacity::Ports)
            }
        }
    }
}

/// The span every log line about a session is in: one call's life can be
/// followed by its session id or its Call-ID.
pub(crate) fn session_span(id: SessionId, call_id: &str) -> tracing::Span {
    tracing::info_span!("session", session = %id, call_id = %call_id)
}

/// Which party an SDP body comes from.
fn party(value: i32, default: Party) -> Result<Party, Status> {
    match v1::Party::try_from(value) {
        Ok(v1::Party::Default) => Ok(default),
        Ok(v1::Party::User) => Ok(Party::User),
        Ok(v1::Party::Remote) => Ok(Party::Remote),
        Err(_) => Err(Status::invalid_argument(format!("unknown party {value}"))),
    }
}

/// A reference to a session by its id.
pub(crate) fn by_id(id: SessionId) -> v1::SessionRef {
    v1::SessionRef {
        by: Some(By::Id(id.to_string())),
    }
}

/// The payload type of RFC 4733 events among `codecs`, if any.
fn telephone_event(codecs: &[v1::Codec]) -> Option<u8> {
    codecs
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case("telephone-event"))
        .and_then(|c| u8::try_from(c.payload_type).ok())
}

impl Sessions {
    /// The payload types among `codecs` of formats the data plane treats
    /// specially: RTX (RFC 4588), and the video codecs whose keyframes it
    /// waits for at a handoff (none when `keyframe-wait` is off: the new
    /// device is still asked for a keyframe, and its video passes at once).
    fn payload_formats(
        &self,
        codecs: &[v1::Codec],
    ) -> Vec<(u8, baton_relay::core::keyframe::PayloadFormat)> {
        let wait = self.options().keyframe_wait;
        codecs
            .iter()
            .filter_map(|c| {
                let format = baton_relay::core::keyframe::PayloadFormat::from_name(&c.name)?;
                (wait || !format.is_video()).then_some((u8::try_from(c.payload_type).ok()?, format))
            })
            .collect()
    }
}

impl Sessions {
    /// A stream as the data plane takes it: the rates and formats of its
    /// codecs, its legs (device, remote), their sockets and BUNDLE
    /// transports.
    fn stream_setup(
        &self,
        config: baton_relay::core::stream::StreamConfig,
        codecs: &[v1::Codec],
        legs: [baton_relay::core::stream::LegConfig; 2],
        sockets: [Option<baton_relay::io::ports::LegSockets>; 2],
        bundle: &[Option<crate::sip::negotiation::StreamBundle>; 2],
    ) -> baton_relay::StreamSetup {
        let [device, remote] = legs;
        baton_relay::StreamSetup {
            params: baton_relay::core::session::StreamParams {
                config,
                clock_rates: clock_rates(codecs),
                telephone_event: telephone_event(codecs),
                formats: self.payload_formats(codecs),
                device,
                remote,
            },
            sockets,
            bundle: [
                bundle[0]
                    .as_ref()
                    .and_then(crate::sip::negotiation::StreamBundle::tag),
                bundle[1]
                    .as_ref()
                    .and_then(crate::sip::negotiation::StreamBundle::tag),
            ],
        }
    }
}

/// A leg's settings: its peer and its party's keys, ICE and DTLS. A WebRTC
/// leg always multiplexes RTCP.
fn leg_config(
    rtcp_mux: bool,
    (peer_rtp, peer_rtcp): Peers,
    crypto: &PartyCrypto,
) -> baton_relay::core::stream::LegConfig {
    baton_relay::core::stream::LegConfig {
        rtcp_mux: rtcp_mux || crypto.ice.is_some(),
        peer_rtp,
        peer_rtcp,
        peer_ip: None,
        crypto: crypto.leg_crypto(),
        ice: crypto.ice,
        dtls: crypto.dtls_params(),
    }
}

fn clock_rates(codecs: &[v1::Codec]) -> Vec<(u8, u32)> {
    codecs
        .iter()
        .filter_map(|c| Some((u8::try_from(c.payload_type).ok()?, c.clock_rate)))
        .collect()
}

/// Checks a stream's codecs. Those from an SDP body (`from_sdp`) may be
/// unnamed: a dynamic payload type listed without a=rtpmap, relayed by
/// number; a native list names every codec.
fn validate_codecs(codecs: &[v1::Codec], stream: usize, from_sdp: bool) -> Result<(), Status> {
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
        if from_sdp && crate::sip::sdp::is_unnamed(codec) {
            continue;
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
    let addr: SocketAddr = text.parse().map_err(|_| {
        Status::invalid_argument(format!("{what} {} is not IP:PORT", excerpt(text)))
    })?;
    if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(Status::invalid_argument(format!(
            "{what} {addr} is not a unicast address with a port"
        )));
    }
    Ok(Some(addr))
}

fn parse_endpoint(endpoint: &v1::Endpoint, party: Party) -> Result<Peers, Status> {
    let rtp = parse_addr(&endpoint.rtp, &format!("{} peer RTP address", party.name()))?;
    let rtcp = parse_addr(
        &endpoint.rtcp,
        &format!("{} peer RTCP address", party.name()),
    )?;
    if rtcp.is_some() && rtp.is_none() {
        return Err(Status::invalid_argument(format!(
            "{} peer has an RTCP address but no RTP address",
            party.name()
        )));
    }
    Ok((rtp, rtcp))
}

fn validate_create(
    request: &v1::CreateSessionRequest,
    user_required: bool,
    from_sdp: bool,
) -> Result<Vec<[Peers; 2]>, Status> {
    if request.call_id.is_empty() || request.from_tag.is_empty() {
        return Err(Status::invalid_argument(
            "call_id and from_tag are required",
        ));
    }
    check_len("call_id", &request.call_id, MAX_ID_LEN)?;
    check_len("from_tag", &request.from_tag, MAX_ID_LEN)?;
    check_len("to_tag", &request.to_tag, MAX_ID_LEN)?;
    check_len("aor", &request.aor, MAX_URI_LEN)?;
    check_len("gruu", &request.gruu, MAX_URI_LEN)?;
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
                "{what} {} is not a sip: or sips: URI",
                excerpt(uri)
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
                    "stream {index}: kind {} is not an SDP media type",
                    excerpt(&spec.kind)
                )));
            }
            if !spec.udptl {
                validate_codecs(&spec.codecs, index, from_sdp)?;
            }
            let user = match &spec.user_peer {
                Some(e) => parse_endpoint(e, Party::User)?,
                None => (None, None),
            };
            let remote = match &spec.remote_peer {
                Some(e) => parse_endpoint(e, Party::Remote)?,
                None => (None, None),
            };
            Ok([user, remote])
        })
        .collect()
}

fn control_info(control: baton_relay::core::stream::MediaControl) -> v1::MediaControl {
    v1::MediaControl {
        block_media: control.block_media,
        silence_media: control.silence_media,
        block_dtmf: control.block_dtmf,
    }
}

/// A session as the protocol shows it: the registry's signalling view with
/// the data plane's report (peers, counters, transfer phase) when there is
/// one.
fn session_info(
    record: &Record,
    report: Option<&baton_relay::core::session::SessionReport>,
) -> v1::SessionInfo {
    let open = record.open_transfer.as_ref();
    v1::SessionInfo {
        session: record.id.to_string(),
        call_id: record.call_id.clone(),
        from_tag: record.from_tag.clone(),
        to_tag: record.to_tag.clone(),
        aor: record.aor.clone(),
        gruu: record.gruu.clone(),
        worker: record.worker.0 as u32,
        created_unix_ms: record.created_unix_ms,
        pending_gruu: open.map(|t| t.gruu.clone()).unwrap_or_default(),
        pending_transfer_id: open.map_or(0, |t| t.id.0),
        handoffs: record.handoffs,
        user_control: Some(control_info(
            record.controls.effective()[Party::User.index()],
        )),
        remote_control: Some(control_info(
            record.controls.effective()[Party::Remote.index()],
        )),
        user_interface: record.interfaces[Party::User.index()].clone(),
        remote_interface: record.interfaces[Party::Remote.index()].clone(),
        on_hold: report.map_or_else(|| session_held(&record.streams), |r| r.held),
        idle_ms: report.map_or(0, |r| u64::try_from(r.idle.as_millis()).unwrap_or(u64::MAX)),
        streams: record
            .streams
            .iter()
            .enumerate()
            .map(|(index, stream)| {
                let legs = report.and_then(|r| r.streams.get(index));
                let leg = |party: Party| v1::LegInfo {
                    local: Some(stream.local[party.index()].clone()),
                    peer: legs.map(|l| peer_endpoint(&l[party.index()])),
                    peer_source: legs
                        .map_or("unknown", |l| l[party.index()].peer_source.name())
                        .to_owned(),
                    stats: legs.map(|l| leg_stats(&l[party.index()])),
                    transport: crypto_of(stream, party).transport.name().to_owned(),
                    srtp_suite: crypto_of(stream, party)
                        .relay_key
                        .map(|k| k.suite().name().to_owned())
                        .unwrap_or_default(),
                    peer_srtp_suite: crypto_of(stream, party)
                        .peer_key
                        .map(|k| k.suite().name().to_owned())
                        .unwrap_or_default(),
                };
                v1::StreamInfo {
                    kind: stream.kind.clone(),
                    codecs: stream.codecs.clone(),
                    rtcp_mux: stream.rtcp_mux[0] && stream.rtcp_mux[1],
                    ptime_ms: stream.ptime,
                    held: stream.is_held(),
                    user: Some(leg(Party::User)),
                    remote: Some(leg(Party::Remote)),
                }
            })
            .collect(),
    }
}

fn crypto_of(stream: &crate::sip::negotiation::NegotiatedStream, party: Party) -> &PartyCrypto {
    &stream.crypto[party.index()]
}

/// Reads an SRTP key from a request.
fn srtp_key(key: &v1::SrtpKey, what: &str) -> Result<MasterKey, Status> {
    crate::sip::crypto::key_from_message(key)
        .map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
}

/// The relay's key as the protocol shows it.
fn key_message(key: Option<MasterKey>) -> Option<v1::SrtpKey> {
    key.as_ref().map(crate::sip::crypto::key_to_message)
}

/// A leg of an explicitly described stream: plain without `srtp`; with it,
/// SRTP with a fresh relay key of the asked suite (or the peer key's, or
/// AES_CM_128_HMAC_SHA1_80) and the peer's key if given.
fn explicit_crypto(srtp: Option<&v1::LegSrtp>, what: &str) -> Result<PartyCrypto, Status> {
    let Some(srtp) = srtp else {
        return Ok(PartyCrypto::default());
    };
    let peer_key = srtp
        .peer_key
        .as_ref()
        .map(|k| srtp_key(k, what))
        .transpose()?;
    let suite = if srtp.suite.trim().is_empty() {
        peer_key.map_or(Suite::AesCm128HmacSha1_80, |k| k.suite())
    } else {
        Suite::from_name(srtp.suite.trim()).ok_or_else(|| {
            Status::invalid_argument(format!(
                "{what}: unknown SRTP suite {}",
                crate::status::excerpt(&srtp.suite)
            ))
        })?
    };
    Ok(PartyCrypto {
        transport: Transport::Savp,
        relay_key: Some(MasterKey::random(suite)),
        peer_key,
        ..PartyCrypto::default()
    })
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
        drops: DropReason::ALL
            .iter()
            .filter(|r| c.drops[**r as usize] > 0)
            .map(|r| (r.name().to_owned(), c.drops[*r as usize]))
            .collect(),
        expected: report.expected,
        lost: report.lost,
        jitter_ms: report.jitter_ms,
        last_packet_ms_ago: report
            .last_packet_age
            .map_or(-1, |age| i64::try_from(age.as_millis()).unwrap_or(i64::MAX)),
        keyframe_waits_expired: c.keyframe_waits_expired,
        kernel_rtp_packets_in: c.kernel_rtp_in,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::v1::Code;
    use baton_relay::io::ports::PortError;

    fn bind_error(kind: std::io::Error) -> AllocError {
        AllocError::Ports(PortError::Bind {
            ip: IpAddr::from([192, 0, 2, 7]),
            source: kind,
        })
    }

    /// Issue 24: an address problem is not "resource exhausted": the
    /// operator must act, and the message says on which address.
    #[test]
    fn a_bind_failure_is_coded_by_what_happened() {
        let gone = alloc_status(&bind_error(std::io::ErrorKind::AddrNotAvailable.into()));
        assert_eq!(gone.code, Code::FailedPrecondition);
        assert!(gone.message.contains("192.0.2.7"), "{}", gone.message);
        assert_eq!(gone.capacity, Some(crate::status::Capacity::Ports));
        let forbidden = alloc_status(&bind_error(std::io::ErrorKind::PermissionDenied.into()));
        assert_eq!(forbidden.code, Code::FailedPrecondition);
        // Out of file descriptors (EMFILE) and ports: capacity.
        let files = alloc_status(&bind_error(std::io::Error::from_raw_os_error(24)));
        assert_eq!(files.code, Code::ResourceExhausted);
        assert_eq!(files.capacity, Some(crate::status::Capacity::Ports));
        let exhausted = alloc_status(&AllocError::Ports(PortError::Exhausted {
            ip: IpAddr::from([127, 0, 0, 1]),
            lo: 30000,
            hi: 30003,
        }));
        assert_eq!(exhausted.code, Code::ResourceExhausted);
        assert_eq!(exhausted.capacity, Some(crate::status::Capacity::Ports));
    }
}
