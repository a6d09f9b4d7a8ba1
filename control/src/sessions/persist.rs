//! A session as stored for high availability (see [`crate::ha`]), and how
//! a relay goes on with one that another process served: the same id,
//! dialog, ports, keys and negotiated state, its media resumed from the
//! worker snapshot stored beside it.
//!
//! What is not carried over, and why:
//! - a transfer open (not switched) when the process stopped is rolled
//!   back: its new device's legs and answer lived in that process only,
//!   and the proxy's next command for it gets a clear error;
//! - a recording stops with the process that wrote it;
//! - DTLS-SRTP legs come back without their handshake's keys: their peers
//!   must connect again (an ICE restart), the plain and SDES legs of the
//!   call go on as they were.

use std::net::SocketAddr;
use std::time::Duration;

use baton_relay::core::session::SessionUpdate;
use baton_relay::core::snapshot::SessionSnapshot;
use baton_relay::core::stream::{PayloadMap, StreamConfig};
use baton_relay::{Party, Resume, SessionId, StreamIndex, StreamSetup, WorkerId};
use serde::{Deserialize, Serialize};

use super::Sessions;
use super::media_control::Controls;
use super::registry::{Branch, CommittedTransfer, Record, RecordState};
use crate::sip::negotiation::{
    NegotiatedStream, SdpState, StreamBundle, endpoint_of, session_held,
};
use crate::status::Status;

/// The stored form's version: a relay refuses (and logs) what it cannot
/// read rather than guess.
pub(crate) const STORED_VERSION: u32 = 1;

/// A session's signalling state as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredSession {
    pub version: u32,
    pub id: SessionId,
    pub call_id: String,
    pub from_tag: String,
    pub to_tag: String,
    pub aor: String,
    pub gruu: String,
    pub worker: WorkerId,
    pub created_unix_ms: u64,
    pub streams: Vec<NegotiatedStream>,
    pub sdp: Option<SdpState>,
    pub offerer: Party,
    pub committed_transfer: Option<CommittedTransfer>,
    pub handoffs: u32,
    pub branches: Vec<Branch>,
    pub interfaces: [String; 2],
    pub controls: Controls,
    pub nat_relearn: bool,
    pub asymmetric: bool,
    /// A transfer was open (rolled back when the session is resumed).
    pub transfer_open: bool,
}

/// A session's media snapshot as stored, with when it was taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredMedia {
    pub version: u32,
    pub taken_unix_ms: u64,
    pub snapshot: SessionSnapshot,
}

impl StoredSession {
    pub fn of(record: &Record) -> Self {
        Self {
            version: STORED_VERSION,
            id: record.id,
            call_id: record.call_id.clone(),
            from_tag: record.from_tag.clone(),
            to_tag: record.to_tag.clone(),
            aor: record.aor.clone(),
            gruu: record.gruu.clone(),
            worker: record.worker,
            created_unix_ms: record.created_unix_ms,
            streams: record.streams.clone(),
            sdp: record.sdp.clone(),
            offerer: record.offerer,
            committed_transfer: record.committed_transfer.clone(),
            handoffs: record.handoffs,
            branches: record.branches.clone(),
            interfaces: record.interfaces.clone(),
            controls: record.controls,
            nat_relearn: record.nat_relearn,
            asymmetric: record.asymmetric,
            transfer_open: record.open_transfer.is_some(),
        }
    }

    /// What the relay's own commands never produce, refused before any of
    /// it is used: the store is not trusted.
    fn check(&self) -> Result<(), Status> {
        let bad = |what: String| Err(Status::invalid_argument(format!("stored session: {what}")));
        let streams = self.streams.len();
        if streams == 0 || streams > MAX_STORED_STREAMS {
            return bad(format!("{streams} streams"));
        }
        if self.branches.len() > super::registry::MAX_BRANCHES {
            return bad(format!("{} branches", self.branches.len()));
        }
        for (index, stream) in self.streams.iter().enumerate() {
            if stream.user_payloads.len() > 128 || stream.codecs.len() > 128 {
                return bad(format!("stream {index}: too many payload types"));
            }
            for bundle in stream.bundle.iter().flatten() {
                if bundle.primary > index {
                    return bad(format!("stream {index}: BUNDLE owner {}", bundle.primary));
                }
            }
        }
        if let Some(sdp) = &self.sdp {
            for layout in sdp.layout.iter().flatten() {
                let mut seen = vec![false; streams];
                for slot in layout.iter().flatten() {
                    match seen.get_mut(*slot) {
                        Some(taken) if !*taken => *taken = true,
                        Some(_) | None => {
                            return bad(format!("SDP layout names stream {slot} wrongly"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn into_record(self, worker: WorkerId) -> Record {
        Record {
            id: self.id,
            call_id: self.call_id,
            from_tag: self.from_tag,
            to_tag: self.to_tag,
            aor: self.aor,
            gruu: self.gruu,
            worker,
            created_unix_ms: self.created_unix_ms,
            state: RecordState::Live,
            lock: std::sync::Arc::default(),
            streams: self.streams,
            sdp: self.sdp,
            offerer: self.offerer,
            open_transfer: None,
            committed_transfer: self.committed_transfer,
            handoffs: self.handoffs,
            branches: self.branches,
            interfaces: self.interfaces,
            controls: self.controls,
            nat_relearn: self.nat_relearn,
            asymmetric: self.asymmetric,
        }
    }
}

/// Most streams a stored session may have (as many as a created one).
const MAX_STORED_STREAMS: usize = super::MAX_STREAMS;

impl Sessions {
    /// The stored form of session `id` as JSON; `None` once it has ended
    /// (or while it is being created).
    pub(crate) fn stored_session(&self, id: SessionId) -> Option<String> {
        let registry = self.registry();
        let record = registry
            .by_id
            .get(&id)
            .filter(|r| r.state == RecordState::Live)?;
        serde_json::to_string(&StoredSession::of(record)).ok()
    }

    /// The ids of every live session.
    pub(crate) fn live_ids(&self) -> Vec<SessionId> {
        self.registry()
            .by_id
            .values()
            .filter(|r| r.state == RecordState::Live)
            .map(|r| r.id)
            .collect()
    }

    /// Goes on with a session another relay process served: binds its
    /// ports, hands it to a worker that resumes its media from `media`
    /// (taken `since` ago), and lists it. A session this relay has already
    /// is left alone.
    pub(crate) async fn resume_stored(
        &self,
        stored: StoredSession,
        media: Option<(SessionSnapshot, Duration)>,
    ) -> Result<(), Status> {
        if stored.version != STORED_VERSION {
            return Err(Status::failed_precondition(format!(
                "stored session version {} (this relay reads {STORED_VERSION})",
                stored.version
            )));
        }
        stored.check()?;
        let id = stored.id;
        let worker = {
            let registry = self.registry();
            if registry.by_id.len() >= self.options().max_sessions {
                return Err(Status::resource_exhausted(format!(
                    "session limit reached ({})",
                    self.options().max_sessions
                )));
            }
            if registry.by_id.contains_key(&id)
                || registry.has_dialog(&stored.call_id, &stored.from_tag, &stored.to_tag)
            {
                return Ok(());
            }
            let wanted = stored.worker;
            if wanted.0 < self.dataplane.worker_count()
                && !registry.down.get(wanted.0).copied().unwrap_or(true)
            {
                wanted
            } else {
                registry
                    .least_loaded()
                    .ok_or_else(|| Status::unavailable("no media worker is running"))?
            }
        };
        let (mut snapshot, since) = media.unwrap_or_default();
        if stored.transfer_open {
            // The transfer is rolled back, but the dead relay may have
            // switched its media to the new device already: the device
            // leg's peers and source are left to the old device's signalling
            // and its next packet (numbered past anything sent).
            for stream in &mut snapshot.streams {
                stream.device = Default::default();
                stream.continuity.source = None;
            }
        }
        let setups = self.resumed_setups(&stored, &snapshot)?;
        let update = SessionUpdate {
            held: session_held(&stored.streams).then_some(true),
            datagrams: stored
                .streams
                .iter()
                .enumerate()
                .filter(|(_, s)| s.datagrams)
                .map(|(i, _)| (StreamIndex(i), true))
                .collect(),
            controls: (stored.controls != Controls::default()).then(|| stored.controls.effective()),
            ..SessionUpdate::default()
        };
        let device_payloads = stored
            .streams
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.user_payloads.is_empty())
            .map(|(i, s)| {
                let remote_te = super::telephone_event(&s.codecs);
                let device_te = remote_te.and_then(|te| {
                    s.user_payloads
                        .iter()
                        .find(|&&(_, remote)| remote == te)
                        .map(|&(device, _)| device)
                });
                (
                    StreamIndex(i),
                    PayloadMap::from_pairs(&s.user_payloads, device_te),
                )
            })
            .collect();
        let transfer_open = stored.transfer_open;
        let call_id = stored.call_id.clone();
        let resume = Resume {
            snapshot,
            since,
            update,
            device_payloads,
        };
        self.dataplane
            .resume_session(worker, id, setups, resume)
            .await?;
        self.registry().insert(stored.into_record(worker));
        if transfer_open {
            tracing::warn!(session = %id, call_id = %crate::status::excerpt(&call_id), "a transfer open when the previous relay stopped is rolled back");
        }
        tracing::info!(session = %id, %worker, "session resumed from the store");
        Ok(())
    }

    /// The stored session's streams as the data plane takes them, on the
    /// ports its parties know.
    fn resumed_setups(
        &self,
        stored: &StoredSession,
        snapshot: &SessionSnapshot,
    ) -> Result<Vec<StreamSetup>, Status> {
        let config = StreamConfig {
            learning_window: self.options().learning_window,
            relearn: stored.nat_relearn,
            asymmetric: stored.asymmetric,
        };
        let mut setups = Vec::with_capacity(stored.streams.len());
        for (index, stream) in stored.streams.iter().enumerate() {
            let stored_media = snapshot.streams.get(index);
            let mut legs = Vec::with_capacity(2);
            let mut sockets = Vec::with_capacity(2);
            for party in Party::BOTH {
                let crypto = &stream.crypto[party.index()];
                let follower =
                    StreamBundle::owner_of(stream.bundle[party.index()].as_ref(), index).is_some();
                if follower {
                    sockets.push(None);
                } else {
                    let local = &stream.local[party.index()];
                    let rtp: SocketAddr = local.rtp.parse().map_err(|_| {
                        Status::invalid_argument(format!(
                            "stored stream {index}: relay address {:?}",
                            crate::status::excerpt(&local.rtp)
                        ))
                    })?;
                    let mux_only = local.rtcp.is_empty() || local.rtcp == local.rtp;
                    let interface = self.interface(&stored.interfaces[party.index()])?;
                    let bound = self
                        .dataplane
                        .allocate_at(&interface, rtp.is_ipv6(), rtp.port(), mux_only)
                        .map_err(|e| super::alloc_status(&e))?;
                    sockets.push(Some(bound));
                }
                let leg_media = stored_media.map(|m| match party {
                    Party::User => &m.device,
                    Party::Remote => &m.remote,
                });
                let (peer_rtp, peer_rtcp) = match leg_media {
                    Some(m) if m.source == baton_relay::core::stream::PeerSource::Signalled => {
                        (m.rtp, m.rtcp)
                    }
                    _ => self.signalled_peer(stored, index, party),
                };
                legs.push(super::leg_config(
                    stream.rtcp_mux[party.index()],
                    (peer_rtp, peer_rtcp),
                    crypto,
                ));
            }
            let (Some(remote_sockets), Some(device_sockets)) = (sockets.pop(), sockets.pop())
            else {
                return Err(Status::internal("leg allocation"));
            };
            setups.push(self.stream_setup(
                config,
                &stream.codecs,
                [legs[0], legs[1]],
                [device_sockets, remote_sockets],
                &stream.bundle,
            ));
        }
        Ok(setups)
    }

    /// The peer `party`'s last body gave for stream `index`, if any.
    fn signalled_peer(
        &self,
        stored: &StoredSession,
        index: usize,
        party: Party,
    ) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let Some(state) = stored.sdp.as_ref() else {
            return (None, None);
        };
        let (Some(body), Some(layout)) = (
            state.received[party.index()].as_ref(),
            state.layout[party.index()].as_ref(),
        ) else {
            return (None, None);
        };
        layout
            .iter()
            .position(|slot| *slot == Some(index))
            .and_then(|line| body.media(line).ok())
            .and_then(|m| endpoint_of(&m))
            .and_then(|e| super::parse_endpoint(&e, party).ok())
            .unwrap_or((None, None))
    }
}
