//! Creating, changing, inspecting and ending sessions; statistics and the
//! registry audit; the dialog lookups of the ng front end.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use baton_proto::v1;
use baton_relay::core::session::{LegUpdate, SessionUpdate};
use baton_relay::core::stream::{DropReason, StreamConfig};
use baton_relay::{DataplaneError, Party, SessionId, StreamIndex, WorkerId};
use tracing::{info, warn};

use super::registry::{Record, RecordState};
use super::{
    Peers, Sessions, clock_rates, parse_endpoint, party, session_info, session_span,
    validate_codecs, validate_create,
};
use crate::events::unix_time_ms;
use crate::sip::crypto::{PartyCrypto, SdesPolicy};
use crate::sip::negotiation::{self, NegotiatedStream, StreamBundle, session_held};
use crate::status::{Status, excerpt};

/// What ending a branch ended.
#[derive(Debug)]
pub enum BranchEnd {
    /// The whole session, with its final statistics.
    Session(Box<v1::SessionInfo>),
    /// That branch only; the session goes on.
    Branch,
}

/// What the ng front end reads of a session.
#[derive(Debug, Clone)]
pub struct DialogView {
    /// The relay's id.
    pub id: SessionId,
    /// Call-ID.
    pub call_id: String,
    /// The tag of the party that created the session.
    pub from_tag: String,
    /// The other party's tag, once known.
    pub to_tag: String,
    /// The user's AOR; empty if unknown.
    pub aor: String,
    /// The user's current device; empty if unknown.
    pub gruu: String,
    /// A transfer is open and not switched yet.
    pub transfer_open: bool,
    /// The party whose tag is `from_tag`.
    pub offerer: Party,
}

impl DialogView {
    /// The party a tag of this dialog belongs to.
    pub fn side_of(&self, tag: &str) -> Party {
        if tag == self.from_tag {
            self.offerer
        } else {
            self.offerer.other()
        }
    }
}

impl Sessions {
    /// `create_session`. The user's AOR and device GRUU may be left
    /// empty: such a session relays media like any other and can be
    /// handed off once a transfer names the user's device (see
    /// [`Sessions::create_without_user`]); given, they must be SIP URIs.
    pub async fn create(
        &self,
        request: v1::CreateSessionRequest,
    ) -> Result<v1::CreateSessionResponse, Status> {
        self.create_without_user(request).await
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
            && let crate::sip::uri::Gruu::Public { aor } = crate::sip::uri::classify(&gruu)
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
        let policy = negotiation::sdes_policy(request.sdes.as_ref())?;
        let other_transport = negotiation::requested_transport(&request.other_transport)?;
        let offer = if request.sdp.is_empty() {
            if other_transport.is_some() || request.sdes.is_some() {
                return Err(Status::invalid_argument(
                    "other_transport and sdes apply to sdp; describe explicit streams' SRTP in user_srtp and remote_srtp",
                ));
            }
            None
        } else {
            if !request.streams.is_empty() {
                return Err(Status::invalid_argument("give streams or sdp, not both"));
            }
            let from = party(request.sdp_from, Party::User)?;
            let body = self.parse_sdp(&request.sdp)?;
            let other_family = v1::AddressFamily::try_from(request.other_family).map_err(|_| {
                Status::invalid_argument(format!("unknown address family {}", request.other_family))
            })?;
            let (streams, layout) =
                negotiation::streams_from_under(&body, from, other_family, &policy)?;
            request.streams = streams;
            Some((from, body, layout))
        };
        let specs = validate_create(&request, user_required, offer.is_some())?;
        request.user_interface = self.interface(&request.user_interface)?;
        request.remote_interface = self.interface(&request.remote_interface)?;
        let crypto = match &offer {
            Some((from, body, layout)) => negotiation::crypto_from(
                body,
                layout,
                *from,
                other_transport,
                &policy,
                negotiation::webrtc_toward(request.webrtc.as_ref())?,
            )?,
            None => request
                .streams
                .iter()
                .enumerate()
                .map(|(i, spec)| {
                    Ok([
                        super::explicit_crypto(
                            spec.user_srtp.as_ref(),
                            &format!("stream {i} user_srtp"),
                        )?,
                        super::explicit_crypto(
                            spec.remote_srtp.as_ref(),
                            &format!("stream {i} remote_srtp"),
                        )?,
                    ])
                })
                .collect::<Result<Vec<_>, Status>>()?,
        };
        // Registered (as being created) and locked before anything is bound:
        // a concurrent create of the same dialog is refused, and any other
        // command on it waits until this one is done.
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let guard = Arc::clone(&lock)
            .try_lock_owned()
            .map_err(|_| Status::internal("a new session's lock is taken"))?;
        let (id, worker) = {
            let mut registry = self.registry();
            if !self.serving() {
                self.telemetry.refused("standby");
                return Err(Status::unavailable(
                    "this relay is a standby: it takes calls over when its active peer is gone, and no new ones before; create the session on the active relay",
                ));
            }
            if self.drain.is_draining() {
                self.telemetry.refused("draining");
                return Err(Status::unavailable(
                    "the relay is draining: it takes no new sessions; create the session on another relay",
                )
                .capacity(crate::status::Capacity::Draining));
            }
            let max_sessions = self.options().max_sessions;
            if registry.by_id.len() >= max_sessions {
                return Err(Status::resource_exhausted(format!(
                    "session limit reached ({max_sessions})"
                ))
                .capacity(crate::status::Capacity::Sessions));
            }
            if registry.has_dialog(&request.call_id, &request.from_tag, &request.to_tag) {
                return Err(Status::already_exists(format!(
                    "a session for call-id {} from-tag {} to-tag {} exists",
                    excerpt(&request.call_id),
                    excerpt(&request.from_tag),
                    excerpt(&request.to_tag)
                )));
            }
            let Some(worker) = registry.least_loaded() else {
                return Err(Status::unavailable("no media worker is running"));
            };
            let mut id = SessionId(rand::random());
            while registry.by_id.contains_key(&id) {
                id = SessionId(rand::random());
            }
            registry.insert(Record {
                id,
                call_id: request.call_id.clone(),
                from_tag: request.from_tag.clone(),
                to_tag: request.to_tag.clone(),
                aor: request.aor.clone(),
                gruu: request.gruu.clone(),
                worker,
                created_unix_ms: unix_time_ms(),
                state: RecordState::Creating,
                lock,
                streams: Vec::new(),
                sdp: None,
                offerer: offer.as_ref().map_or(Party::User, |(from, _, _)| *from),
                open_transfer: None,
                committed_transfer: None,
                handoffs: 0,
                branches: Vec::new(),
                interfaces: [
                    request.user_interface.clone(),
                    request.remote_interface.clone(),
                ],
                controls: Default::default(),
                nat_relearn: request.nat_relearn,
                asymmetric: request.asymmetric,
            });
            (id, worker)
        };
        let started = self
            .start_session(id, worker, &request, specs, offer, (crypto, &policy))
            .await;
        let result = {
            let mut registry = self.registry();
            match started {
                Ok((response, streams, sdp)) => match registry.by_id.get_mut(&id) {
                    Some(record) => {
                        record.streams = streams;
                        record.sdp = sdp;
                        record.state = RecordState::Live;
                        Ok(response)
                    }
                    // Its worker failed meanwhile, and the session went with
                    // it (or reached the worker that replaced it: removed
                    // below).
                    None => Err(Status::unavailable(
                        "the media worker failed while the session was created; retry",
                    )),
                },
                Err(status) => {
                    registry.remove(id);
                    Err(status)
                }
            }
        };
        if result
            .as_ref()
            .is_err_and(|e| e.code == v1::Code::Unavailable)
        {
            // A restarted worker may hold the session the failed one was
            // asked to add: nothing may stay that the registry does not know.
            let _ = self.dataplane.remove_session(worker, id).await;
        }
        if result.is_ok() {
            self.changed(id);
            self.telemetry.sessions_created.inc();
            session_span(id, &request.call_id).in_scope(|| {
                info!(%worker, streams = request.streams.len(), aor = %request.aor, gruu = %request.gruu, "session created");
            });
        }
        drop(guard);
        if result.is_ok() && self.options().record_calls && self.recordings().is_some() {
            // `record-calls`: every call from its start. A file that cannot
            // be written is logged; the call goes on unrecorded.
            if let Err(status) = self
                .record(id, super::media_control::RecordAction::Start)
                .await
            {
                tracing::error!(session = %id, "recording not started: {}", status.message);
            }
        }
        result
    }

    /// Binds the legs, renders the answer for an SDP offer, and hands the
    /// session to its worker. Nothing is left on the worker when it fails.
    async fn start_session(
        &self,
        id: SessionId,
        worker: WorkerId,
        request: &v1::CreateSessionRequest,
        specs: Vec<[Peers; 2]>,
        offer: Option<(Party, crate::sip::sdp::Sdp, negotiation::Layout)>,
        (crypto, policy): (Vec<[PartyCrypto; 2]>, &SdesPolicy),
    ) -> Result<
        (
            v1::CreateSessionResponse,
            Vec<NegotiatedStream>,
            Option<negotiation::SdpState>,
        ),
        Status,
    > {
        let config = StreamConfig {
            learning_window: self.options().learning_window,
            relearn: request.nat_relearn,
            asymmetric: request.asymmetric,
        };
        let rtcp_sockets = offer.is_some();
        let bundles = negotiation::session_bundles(offer.as_ref(), &crypto)?;
        let mut crypto = crypto;
        negotiation::align_bundled_crypto(&mut crypto, &bundles);
        let mut setups = Vec::with_capacity(specs.len());
        let mut streams: Vec<NegotiatedStream> = Vec::with_capacity(specs.len());
        for (index, ((spec, peers), crypto)) in
            request.streams.iter().zip(specs).zip(crypto).enumerate()
        {
            let families = [spec.user_family(), spec.remote_family()];
            let mut sockets = Vec::with_capacity(2);
            let mut local = [v1::Endpoint::default(), v1::Endpoint::default()];
            let mut legs = Vec::with_capacity(2);
            for party in Party::BOTH {
                let (peer_rtp, peer_rtcp) = peers[party.index()];
                let ipv6 = match families[party.index()] {
                    v1::AddressFamily::Ipv4 => Some(false),
                    v1::AddressFamily::Ipv6 => Some(true),
                    v1::AddressFamily::Unspecified => peer_rtp.map(|a| a.is_ipv6()),
                };
                let owner = StreamBundle::owner_of(bundles[index][party.index()].as_ref(), index)
                    .and_then(|primary| streams.get(primary));
                if let Some(owner) = owner {
                    // On an earlier stream's BUNDLE transport: its address,
                    // no socket of its own.
                    local[party.index()] = owner.local[party.index()].clone();
                    sockets.push(None);
                } else {
                    // With SDP, the other party may refuse rtcp-mux: keep
                    // the RTCP port to fall back to (RFC 5761 §5.1.1).
                    let interface = match party {
                        Party::User => &request.user_interface,
                        Party::Remote => &request.remote_interface,
                    };
                    let bound =
                        self.allocate_leg(interface, ipv6, spec.rtcp_mux && !rtcp_sockets)?;
                    local[party.index()] = self.endpoint_of(&bound.rtp, bound.rtcp.as_ref());
                    sockets.push(Some(bound));
                }
                legs.push(super::leg_config(
                    spec.rtcp_mux,
                    (peer_rtp, peer_rtcp),
                    &crypto[party.index()],
                ));
            }
            let (Some(remote_sockets), Some(device_sockets)) = (sockets.pop(), sockets.pop())
            else {
                return Err(Status::internal("leg allocation"));
            };
            setups.push(self.stream_setup(
                config,
                &spec.codecs,
                [legs[0], legs[1]],
                [device_sockets, remote_sockets],
                &bundles[index],
            ));
            streams.push(NegotiatedStream {
                kind: spec.kind.clone(),
                udptl: spec.udptl,
                datagrams: spec.udptl,
                codecs: spec.codecs.clone(),
                rtcp_mux: [spec.rtcp_mux; 2],
                rtcp_sockets: rtcp_sockets || !spec.rtcp_mux,
                local,
                ptime: spec.ptime_ms,
                held: [false; 2],
                rejected: false,
                user_payloads: Vec::new(),
                crypto,
                bundle: bundles[index].clone(),
            });
        }
        let (rendered, sdp) = match offer {
            Some((from, body, layout)) => {
                let (rendered, state) = negotiation::answer_created(
                    &mut streams,
                    from,
                    body,
                    layout,
                    policy,
                    &self.dataplane.dtls_fingerprint(),
                )?;
                (rendered, Some(state))
            }
            None => (String::new(), None),
        };
        self.dataplane.add_session(worker, id, setups).await?;
        let datagrams: Vec<(StreamIndex, bool)> = streams
            .iter()
            .enumerate()
            .filter(|(_, s)| s.udptl)
            .map(|(i, _)| (StreamIndex(i), true))
            .collect();
        // Before the body goes out (so before anyone knows the ports): the
        // T.38 streams carry datagrams, and a held call is held.
        if session_held(&streams) || !datagrams.is_empty() {
            let held = SessionUpdate {
                held: session_held(&streams).then_some(true),
                datagrams,
                ..SessionUpdate::default()
            };
            if let Err(e) = self.dataplane.update_session(worker, id, held).await {
                let _ = self.dataplane.remove_session(worker, id).await;
                return Err(e.into());
            }
        }
        let response = v1::CreateSessionResponse {
            sdp: rendered,
            session: id.to_string(),
            streams: streams
                .iter()
                .map(|s| v1::StreamAddresses {
                    kind: s.kind.clone(),
                    user: Some(s.local[0].clone()),
                    remote: Some(s.local[1].clone()),
                    user_key: super::key_message(s.crypto[0].relay_key),
                    remote_key: super::key_message(s.crypto[1].relay_key),
                })
                .collect(),
        };
        Ok((response, streams, sdp))
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
        crate::status::check_len("to_tag", &request.to_tag, crate::status::MAX_ID_LEN)?;
        let (_guard, record) = self.lock_session(request.session.as_ref()).await?;
        let stream_count = record.streams.len();
        let mut held_streams = record.streams.clone();
        let mut update = SessionUpdate::default();
        for stream in &request.streams {
            let index = stream.index as usize;
            if index >= stream_count {
                return Err(Status::invalid_argument(format!(
                    "stream {index} does not exist (the session has {stream_count})"
                )));
            }
            for (party, endpoint, key) in [
                (Party::User, &stream.user_peer, &stream.user_peer_key),
                (Party::Remote, &stream.remote_peer, &stream.remote_peer_key),
            ] {
                let crypto = match key {
                    Some(key) => {
                        let what = format!("stream {index} {} peer key", party.name());
                        let key = super::srtp_key(key, &what)?;
                        let leg = &mut held_streams[index].crypto[party.index()];
                        if !leg.transport.is_srtp() {
                            return Err(Status::failed_precondition(format!(
                                "{what}: the leg is plain RTP (a key applies to an SRTP leg)"
                            )));
                        }
                        leg.peer_key = Some(key);
                        Some(leg.leg_crypto())
                    }
                    None => None,
                };
                let (rtp, rtcp) = match endpoint {
                    Some(endpoint) => parse_endpoint(endpoint, party)?,
                    None => (None, None),
                };
                if endpoint.is_some() || crypto.is_some() {
                    update.peers.push(LegUpdate {
                        stream: StreamIndex(index),
                        party,
                        rtp,
                        rtcp,
                        rtcp_mux: None,
                        crypto,
                        ice: None,
                        dtls: None,
                        ice_off: false,
                        dtls_off: false,
                    });
                }
            }
            if !stream.codecs.is_empty() {
                validate_codecs(&stream.codecs, index, false)?;
                update
                    .clock_rates
                    .push((StreamIndex(index), clock_rates(&stream.codecs)));
                update
                    .formats
                    .push((StreamIndex(index), self.payload_formats(&stream.codecs)));
            }
            match v1::Hold::try_from(stream.hold) {
                Ok(v1::Hold::Unchanged) => {}
                Ok(v1::Hold::Off) => held_streams[index].held = [false; 2],
                Ok(v1::Hold::On) => held_streams[index].held = [true; 2],
                Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "stream {index}: unknown hold value {}",
                        stream.hold
                    )));
                }
            }
        }
        update.held = Some(session_held(&held_streams));
        self.dataplane
            .update_session(record.worker, record.id, update)
            .await?;
        {
            let mut registry = self.registry();
            if let Some(current) = registry.by_id.get_mut(&record.id) {
                if !request.to_tag.is_empty() {
                    current.to_tag.clone_from(&request.to_tag);
                }
                for stream in &request.streams {
                    let index = stream.index as usize;
                    if let Some(now) = current.streams.get_mut(index) {
                        if !stream.codecs.is_empty() {
                            now.codecs.clone_from(&stream.codecs);
                        }
                        now.held = held_streams[index].held;
                        now.crypto.clone_from(&held_streams[index].crypto);
                    }
                }
            }
        }
        Ok(v1::UpdateSessionResponse {
            session: Some(self.info_unlocked(record.id).await?),
            sdp: String::new(),
        })
    }

    /// `get_session`: waits for a command running on the session, then
    /// reports it.
    pub async fn get(&self, reference: Option<&v1::SessionRef>) -> Result<v1::SessionInfo, Status> {
        let (guard, record) = self.lock_session(reference).await?;
        let _guard = guard.read_only();
        let report = self
            .dataplane
            .inspect_session(record.worker, record.id)
            .await?;
        Ok(session_info(&record, Some(&report)))
    }

    /// The session's state, for a command that holds its lock already.
    pub(super) async fn info_unlocked(&self, id: SessionId) -> Result<v1::SessionInfo, Status> {
        let record = self.record_now(id)?;
        let report = self.dataplane.inspect_session(record.worker, id).await?;
        Ok(session_info(&record, Some(&report)))
    }

    /// `delete_session`: ends the session and returns its final state. The
    /// record goes only once the worker has removed the session (or says it
    /// has none): a worker that is busy or slow leaves the session listed,
    /// and the delete can be retried.
    pub async fn delete(
        &self,
        reference: Option<&v1::SessionRef>,
    ) -> Result<v1::SessionInfo, Status> {
        let (_guard, record) = self.lock_session(reference).await?;
        let report = match self
            .dataplane
            .remove_session(record.worker, record.id)
            .await
        {
            Ok(report) => Some(report),
            // It ended on the worker at the same moment (a timeout): the
            // delete still ends the record, once.
            Err(DataplaneError::NoSession(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(record) = self.registry().remove(record.id) else {
            return Err(Status::not_found(format!(
                "session {} has ended",
                record.id
            )));
        };
        self.session_ended(&record, "deleted", report.as_ref());
        Ok(session_info(&record, report.as_ref()))
    }

    /// Ends the branch `tag` of a forked call (ng `delete` naming a
    /// to-tag), as rtpengine does: a branch the media no longer follows
    /// (another answered after it) goes alone; the one it follows is the
    /// call, which goes whole.
    pub async fn delete_branch(&self, id: SessionId, tag: &str) -> Result<BranchEnd, Status> {
        {
            let mut registry = self.registry();
            let record = registry
                .by_id
                .get_mut(&id)
                .ok_or_else(|| Status::not_found(format!("no session {id}")))?;
            if record.to_tag != tag && record.branches.iter().any(|b| b.to_tag == tag) {
                record.branches.retain(|b| b.to_tag != tag);
                return Ok(BranchEnd::Branch);
            }
        }
        self.delete(Some(&super::by_id(id)))
            .await
            .map(|info| BranchEnd::Session(Box::new(info)))
    }

    /// `list_sessions`: the sessions answered with an id (not those being
    /// created).
    pub fn list(&self) -> v1::ListSessionsResponse {
        let registry = self.registry();
        let mut sessions: Vec<v1::SessionSummary> = registry
            .by_id
            .values()
            .filter(|r| r.state == RecordState::Live)
            .map(|r| v1::SessionSummary {
                session: r.id.to_string(),
                call_id: r.call_id.clone(),
                from_tag: r.from_tag.clone(),
                to_tag: r.to_tag.clone(),
                aor: r.aor.clone(),
                gruu: r.gruu.clone(),
                worker: r.worker.0 as u32,
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
    pub async fn worker_stats(&self) -> Vec<(WorkerId, baton_relay::WorkerStats)> {
        let mut all = Vec::with_capacity(self.dataplane.worker_count());
        for worker in self.dataplane.workers() {
            if let Ok(stats) = self.dataplane.worker_stats(worker).await {
                all.push((worker, stats));
            }
        }
        all
    }

    /// Sessions now.
    pub fn session_count(&self) -> usize {
        self.registry().by_id.len()
    }

    /// Fills the session and worker parts of `get_stats`.
    pub async fn fill_stats(&self, stats: &mut v1::GetStatsResponse) {
        let telemetry = &self.telemetry;
        {
            let registry = self.registry();
            stats.sessions = registry.by_id.len() as u32;
            stats.transfers_pending = registry.open_transfers() as u32;
        }
        stats.sessions_created = telemetry.sessions_created.get();
        stats.sessions_ended = telemetry.sessions_ended_total();
        stats.sessions_timed_out = self.timed_out.load(Ordering::Relaxed);
        stats.transfers_started = telemetry.transfers_started.get();
        stats.transfers_completed = telemetry.transfers_completed.get();
        stats.transfers_failed = telemetry.transfers_failed_total();
        stats.transfers_refused = telemetry.transfers_refused.get();
        stats.refusals = telemetry.refusal_counts().into_iter().collect();
        let workers = self.worker_stats().await;
        stats.kernel = Some(kernel_forwarding(&self.dataplane, &workers));
        stats.user_fast_path = Some(user_fast_path(&self.dataplane, &workers));
        for (worker, w) in workers {
            let us = |ns: u64| ns as f64 / 1000.0;
            stats.packets_forwarded += w.forwarded;
            stats.packets_dropped += w.dropped;
            for reason in DropReason::ALL {
                let count = w.drops[reason as usize];
                if count > 0 {
                    *stats.drops.entry(reason.name().to_owned()).or_default() += count;
                }
            }
            stats.workers.push(v1::WorkerStats {
                index: worker.0 as u32,
                sessions: w.sessions as u32,
                packets_forwarded: w.forwarded,
                packets_dropped: w.dropped,
                latency_us: Some(v1::Latency {
                    p50: us(w.latency_ns[0]),
                    p90: us(w.latency_ns[1]),
                    p99: us(w.latency_ns[2]),
                    p999: us(w.latency_ns[3]),
                    max: us(w.latency_ns[4]),
                }),
                events_lost: w.events_lost,
            });
        }
        stats.ports = self
            .dataplane
            .port_usage()
            .into_iter()
            .map(|(interface, ip, free, total)| v1::PortUsage {
                interface,
                ip: ip.to_string(),
                free_pairs: free as u32,
                total_pairs: total as u32,
            })
            .collect();
    }

    /// `audit`: the registry against what the workers hold.
    pub async fn audit(&self) -> Result<v1::AuditResponse, Status> {
        let mut held = Vec::new();
        for worker in self.dataplane.workers() {
            held.extend(self.dataplane.worker_sessions(worker).await?);
        }
        let known: std::collections::HashSet<SessionId> =
            self.registry().by_id.keys().copied().collect();
        let on_workers: std::collections::HashSet<SessionId> = held.iter().copied().collect();
        let mut registry_only: Vec<String> = known
            .difference(&on_workers)
            .map(ToString::to_string)
            .collect();
        let mut worker_only: Vec<String> = on_workers
            .difference(&known)
            .map(ToString::to_string)
            .collect();
        registry_only.sort();
        worker_only.sort();
        Ok(v1::AuditResponse {
            registry_sessions: known.len() as u32,
            worker_sessions: held.len() as u32,
            registry_only,
            worker_only,
        })
    }

    /// Ends every session (the relay is shutting down, or a drain's
    /// deadline came): each gets its end logged and published with its
    /// final statistics and `reason` (`shutdown`, `drain_deadline`).
    pub async fn end_all(&self, reason: &'static str) {
        let ids: Vec<SessionId> = self.registry().by_id.keys().copied().collect();
        for id in ids {
            let Ok((_guard, record)) = self.lock_id(id).await else {
                continue;
            };
            let report = self
                .dataplane
                .remove_session(record.worker, record.id)
                .await
                .ok();
            if let Some(record) = self.registry().remove(id) {
                self.session_ended(&record, reason, report.as_ref());
            }
        }
    }

    /// Counts a session's end (each record's end is counted once, whoever
    /// removed it), logs and publishes it with its final statistics, and
    /// finishes its transfers: an open one failed, a committed one is
    /// reported completed.
    pub(super) fn session_ended(
        &self,
        record: &Record,
        reason: &str,
        report: Option<&baton_relay::core::session::SessionReport>,
    ) {
        self.telemetry.session_ended(reason);
        self.changed(record.id);
        if let Some(recordings) = self.recordings() {
            // Its worker has let it go: every copy is queued already.
            recordings.finish(record.id, &super::media_control::call_names(record));
        }
        let span = session_span(record.id, &record.call_id);
        let duration_ms = unix_time_ms().saturating_sub(record.created_unix_ms);
        let FinalTotals {
            packets_in,
            packets_out,
            bytes_in,
            bytes_out,
            lost,
            dropped,
            jitter_ms,
        } = FinalTotals::of(report);
        let duration_s = duration_ms as f64 / 1000.0;
        if reason == super::worker_events::WORKER_FAILED {
            // Lost, not ended by signalling or by its media.
            span.in_scope(|| warn!(reason = %reason, duration_s, "session ended"));
        } else {
            span.in_scope(|| {
                info!(
                    reason = %reason,
                    duration_s,
                    packets_in,
                    packets_out,
                    bytes_in,
                    bytes_out,
                    lost,
                    dropped,
                    jitter_ms,
                    handoffs = record.handoffs,
                    "session ended"
                );
            });
        }
        self.events
            .publish(v1::event::Kind::SessionEnded(v1::SessionEnded {
                session: Some(session_info(record, report)),
                reason: reason.to_owned(),
                duration_ms,
            }));
        if let Some(open) = &record.open_transfer {
            self.transfer_failed_record(record, open, "session_ended");
        }
        if let Some(committed) = &record.committed_transfer {
            self.publish_completed(
                record,
                committed.id,
                &committed.gruu,
                &committed.previous_gruu,
                None,
            );
        }
    }

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
            by: Some(v1::session_ref::By::Dialog(v1::Dialog {
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
            transfer_open: r.open_transfer.is_some(),
            offerer: r.offerer,
        })
    }

    /// Names the user's device (and the user, if unknown): a call to the
    /// user learns which device answered, the last to answer before any
    /// handoff.
    pub fn name_user_device(&self, id: SessionId, aor: &str, gruu: &str) -> Result<(), Status> {
        let gruu_uri = crate::bindings::parse_gruu(gruu, false)?;
        let derived_aor = match crate::sip::uri::classify(&gruu_uri) {
            crate::sip::uri::Gruu::Public { aor } => Some(aor.to_string()),
            crate::sip::uri::Gruu::Temporary | crate::sip::uri::Gruu::NotAGruu => None,
        };
        let mut registry = self.registry();
        let record = registry
            .by_id
            .get_mut(&id)
            .ok_or_else(|| Status::not_found(format!("no session {id}")))?;
        // Until a handoff, the device that answered last is the user's: a
        // call forked to the user's devices follows the branch that
        // answered last (one whose 183 came first may not be the one that
        // takes the call).
        let handed_off = record.handoffs > 0
            || record.open_transfer.is_some()
            || record.committed_transfer.is_some();
        if record.gruu.is_empty() || !handed_off {
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
        self.registry().of_call(call_id, tag)
    }

    /// The session whose open transfer's new device has this dialog (ng
    /// `new-call-id`, `new-from-tag`).
    pub fn session_of_transfer_dialog(
        &self,
        call_id: &str,
        from_tag: Option<&str>,
    ) -> Option<SessionId> {
        self.registry().by_transfer_dialog(call_id, from_tag)
    }

    /// The party whose tag `tag` is in session `id`: the creator's from-tag,
    /// or the to-tag of the branch the call follows or of another answered
    /// branch.
    pub fn party_of_tag(&self, id: SessionId, tag: &str) -> Option<Party> {
        let registry = self.registry();
        let record = registry.by_id.get(&id)?;
        if record.from_tag == tag {
            Some(record.offerer)
        } else if record.has_to_tag(tag) {
            Some(record.offerer.other())
        } else {
            None
        }
    }

    /// Call-IDs with sessions, oldest first, at most `limit`.
    pub fn call_ids(&self, limit: usize) -> Vec<String> {
        self.registry().call_ids(limit)
    }

    /// The last SDP body the relay gave out to `party`.
    pub fn last_sdp_sent(&self, id: SessionId, party: Party) -> Option<String> {
        let registry = self.registry();
        let state = registry.by_id.get(&id)?.sdp.as_ref()?;
        state.sent[party.index()].as_ref().map(|s| s.text.clone())
    }
}

/// A session's final figures, summed over its streams and legs.
#[derive(Debug, Default, Clone, Copy)]
struct FinalTotals {
    packets_in: u64,
    packets_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// RTP lost from the parties (RFC 3550 A.3), all legs.
    lost: i64,
    /// Datagrams dropped, every reason.
    dropped: u64,
    /// The largest interarrival jitter of a leg, in milliseconds.
    jitter_ms: f64,
}

impl FinalTotals {
    fn of(report: Option<&baton_relay::core::session::SessionReport>) -> Self {
        let mut totals = Self::default();
        for leg in report.iter().flat_map(|r| r.streams.iter().flatten()) {
            let c = &leg.counters;
            totals.packets_in += c.rtp_in + c.rtcp_in;
            totals.packets_out += c.packets_out;
            totals.bytes_in += c.bytes_in;
            totals.bytes_out += c.bytes_out;
            totals.lost += leg.lost;
            totals.dropped += c.drops.iter().sum::<u64>();
            totals.jitter_ms = totals.jitter_ms.max(leg.jitter_ms);
        }
        totals
    }
}

/// The user-space fast path's figures, summed over the workers.
pub(crate) fn user_fast_path(
    dataplane: &baton_relay::Dataplane,
    workers: &[(baton_relay::WorkerId, baton_relay::WorkerStats)],
) -> v1::UserFastPath {
    v1::UserFastPath {
        on: dataplane.user_fast_path(),
        lanes: workers
            .iter()
            .map(|(_, w)| u32::try_from(w.lanes).unwrap_or(u32::MAX))
            .fold(0, u32::saturating_add),
        packets: workers.iter().map(|(_, w)| w.lane_packets).sum(),
    }
}

/// The kernel fast path's figures: its status, the workers' route counts
/// and the program's own counters.
pub(crate) fn kernel_forwarding(
    dataplane: &baton_relay::Dataplane,
    workers: &[(baton_relay::WorkerId, baton_relay::WorkerStats)],
) -> v1::KernelForwarding {
    let (status, reason, interfaces) = match dataplane.kernel_status() {
        baton_relay::KernelStatus::Off => ("off", String::new(), Vec::new()),
        baton_relay::KernelStatus::On { interfaces } => ("on", String::new(), interfaces.clone()),
        baton_relay::KernelStatus::Unavailable(reason) => {
            ("unavailable", reason.clone(), Vec::new())
        }
    };
    let mut figures = v1::KernelForwarding {
        status: status.to_owned(),
        reason,
        interfaces,
        ..v1::KernelForwarding::default()
    };
    for (_, w) in workers {
        figures.routes += u32::try_from(w.kernel.routes).unwrap_or(u32::MAX);
        figures.routes_installed += w.kernel.installed;
        figures.routes_ended += w.kernel.removed;
        figures.packets += w.kernel.forwarded;
        figures.bytes += w.kernel.bytes;
        figures.errors += w.kernel.errors;
    }
    if let Some(program) = dataplane.kernel_counters() {
        figures.handed_up = [
            ("not_newest", program.not_newest),
            ("no_next_hop", program.no_next_hop),
            ("other", program.other),
        ]
        .into_iter()
        .map(|(reason, count)| (reason.to_owned(), count))
        .collect();
    }
    figures
}
