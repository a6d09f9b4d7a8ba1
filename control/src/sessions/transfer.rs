//! Transfers: verification from the binding table, the new device's legs,
//! commit, cancel, and what the workers report about transfers. Every transfer has an id ([`TransferId`]) from the moment it
//! opens; the worker names it in every report, and only the transfer a
//! report names is ever acted on.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_proto::v1::{self, session_ref::By};
use baton_relay::core::session::{PendingLeg, SessionUpdate, SwitchMode, TransferError};
use baton_relay::core::stream::{LegConfig, PayloadMap};
use baton_relay::{DataplaneError, Party, SessionId, TransferId, TransferLeg, TransferSetup};
use tracing::{debug, info};

use super::registry::{CommittedTransfer, OpenTransfer, Record};
use super::{Sessions, parse_endpoint, session_span, validate_codecs};
use crate::bindings::{parse_aor, parse_gruu};
use crate::sip::negotiation::{
    self, AnswerPlan, NegotiatedStream, PendingSdp, SdpState, StreamBundle,
};
use crate::status::{Status, excerpt};

/// Codecs that carry no media of their own: a device sharing only these
/// with the remote shares no codec.
const AUXILIARY_CODECS: [&str; 3] = ["telephone-event", "cn", "red"];

/// What a transfer request came with besides its `TransferRequest`: the ng
/// front end's dialog of the new device, so a `delete` of it cancels.
#[derive(Debug, Clone, Default)]
pub struct TransferContext {
    /// The new device's Call-ID and From tag (ng `new-call-id`,
    /// `new-from-tag`).
    pub ng_dialog: Option<(String, String)>,
}

impl Sessions {
    /// `transfer`: verifies that the new device belongs to the session's
    /// user, opens its legs on the session's worker and answers with their
    /// addresses and the transfer's id. Nothing changes when it is refused.
    pub async fn transfer(
        &self,
        request: v1::TransferRequest,
        context: TransferContext,
    ) -> Result<v1::TransferResponse, Status> {
        let result = self.open_transfer_legs(request, context).await;
        match &result {
            Ok(_) => self.telemetry.transfers_started.inc(),
            Err(_) => self.telemetry.transfers_refused.inc(),
        };
        result
    }

    /// The session a transfer names: by reference, or by its Replaces value.
    fn transfer_target(&self, request: &v1::TransferRequest) -> Result<SessionId, Status> {
        let registry = self.registry();
        match (&request.session, request.replaces.trim()) {
            (Some(_), replaces) if !replaces.is_empty() => Err(Status::invalid_argument(
                "give the session or a Replaces value, not both",
            )),
            (Some(reference), _) => registry.find(Some(reference)),
            (None, "") => Err(Status::invalid_argument(
                "name the session: by id, dialog or Replaces value",
            )),
            (None, replaces) => {
                let (dialog, early_only) = parse_replaces(replaces)?;
                let id = registry.find(Some(&v1::SessionRef {
                    by: Some(By::Dialog(dialog)),
                }))?;
                // RFC 3891: early-only refuses a confirmed dialog. A session
                // counts as confirmed once its to-tag is known.
                if early_only && !registry.by_id[&id].to_tag.is_empty() {
                    return Err(Status::failed_precondition(
                        "the dialog is confirmed and the Replaces header says early-only",
                    ));
                }
                Ok(id)
            }
        }
    }

    async fn open_transfer_legs(
        &self,
        mut request: v1::TransferRequest,
        context: TransferContext,
    ) -> Result<v1::TransferResponse, Status> {
        if !request.sdp.is_empty() && !request.streams.is_empty() {
            return Err(Status::invalid_argument("give streams or sdp, not both"));
        }
        crate::status::check_len("replaces", &request.replaces, crate::status::MAX_URI_LEN)?;
        let gruu = parse_gruu(&request.gruu, false)?;
        let mode = match v1::SwitchMode::try_from(request.mode) {
            Ok(v1::SwitchMode::FirstPacket) => SwitchMode::FirstPacket,
            Ok(v1::SwitchMode::Commit) => SwitchMode::Commit,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown switch mode {}",
                    request.mode
                )));
            }
        };
        let id = self.transfer_target(&request)?;
        let (_guard, record) = self.lock_id(id).await?;
        let interface = if request.interface.is_empty() {
            record.interfaces[Party::User.index()].clone()
        } else {
            self.interface(&request.interface)?
        };
        let adopted_aor = if record.aor.is_empty() {
            // A session created without its user (over ng, no aor given):
            // the device's own AOR becomes the session's once this transfer
            // opens, so every later one is checked against it. The proxy
            // vouches for this first one; a temporary GRUU still has to be
            // in the binding table.
            Some(
                self.devices
                    .aor_of(Instant::now(), &gruu)
                    .map_err(Status::permission_denied)?,
            )
        } else {
            let aor = parse_aor(&record.aor)
                .map_err(|e| Status::internal(format!("stored AOR: {}", e.message)))?;
            self.devices
                .verify(Instant::now(), &aor, &gruu)
                .map_err(Status::permission_denied)?;
            None
        };
        if record.streams.iter().any(|s| s.udptl && !s.rejected) {
            return Err(Status::failed_precondition(format!(
                "session {} is carrying a T.38 fax: hand it over once the call is back on audio",
                record.id
            )));
        }
        // Who the device is comes first; then whether the session is free.
        if let Some(open) = &record.open_transfer {
            return Err(Status::failed_precondition(format!(
                "transfer {} to {} is already pending on session {}",
                open.id, open.gruu, record.id
            )));
        }
        let policy = negotiation::sdes_policy(request.sdes.as_ref())?;
        let plan = if request.sdp.is_empty() {
            if request.sdes.is_some() {
                return Err(Status::invalid_argument(
                    "sdes applies to sdp; describe explicit streams' SRTP in their srtp field",
                ));
            }
            None
        } else {
            let offer = self.parse_sdp(&request.sdp)?;
            let plan = AnswerPlan::new(
                offer,
                &record.streams,
                &policy,
                self.dataplane.dtls_fingerprint(),
            )?;
            request.streams = plan.transfer_streams(record.streams.len());
            Some(plan)
        };
        if !request.streams.is_empty() && request.streams.len() != record.streams.len() {
            return Err(Status::invalid_argument(format!(
                "the session has {} streams, the transfer describes {}",
                record.streams.len(),
                request.streams.len()
            )));
        }
        let source_ip = match request.source_ip.trim() {
            "" => None,
            text => Some(text.parse::<std::net::IpAddr>().map_err(|_| {
                Status::invalid_argument(format!(
                    "source_ip {} is not an IP address",
                    excerpt(text)
                ))
            })?),
        };

        let transfer = self.new_transfer_id();
        let mut legs = Vec::with_capacity(record.streams.len());
        let mut local = Vec::with_capacity(record.streams.len());
        let mut shared = Vec::with_capacity(record.streams.len());
        let mut muxes = Vec::with_capacity(record.streams.len());
        let mut device_crypto = Vec::with_capacity(record.streams.len());
        let mut bundles = Vec::with_capacity(record.streams.len());
        for (index, stream) in record.streams.iter().enumerate() {
            let spec = request.streams.get(index).cloned().unwrap_or_default();
            let crypto = match &plan {
                Some(plan) => plan.crypto.get(index).cloned().unwrap_or_default(),
                None => {
                    super::explicit_crypto(spec.srtp.as_ref(), &format!("stream {index} srtp"))?
                }
            };
            // Codecs from a body (the new device's SDP, or the stream's own)
            // may be unnamed; an explicit list names every codec.
            let from_sdp = spec.codecs.is_empty() || !request.sdp.is_empty();
            let device_codecs = if spec.codecs.is_empty() {
                stream.codecs.clone()
            } else {
                spec.codecs
            };
            validate_codecs(&device_codecs, index, from_sdp)?;
            let pairs = match_codecs(&stream.codecs, &device_codecs).map_err(|reason| {
                Status::failed_precondition(format!("stream {index} ({}): {reason}", stream.kind))
            })?;
            let (peer_rtp, peer_rtcp) = match &spec.peer {
                Some(endpoint) => parse_endpoint(endpoint, Party::User)?,
                None => (None, None),
            };
            if peer_rtp.is_none()
                && source_ip.is_none()
                && !self.options().allow_unverified_transfer_source
            {
                // Checked before any port is bound, so nothing is left over.
                self.telemetry.refused("transfer_source_unknown");
                return Err(Status::invalid_argument(format!(
                    "stream {index} ({}): the new device's media address is unknown: give its \
                     address (peer or SDP) or source_ip, the IP its request came from \
                     (a transfer that learns from anyone can be taken over by a packet sprayer)",
                    stream.kind
                )));
            }
            let ipv6 = match v1::AddressFamily::try_from(spec.family).unwrap_or_default() {
                v1::AddressFamily::Ipv4 => Some(false),
                v1::AddressFamily::Ipv6 => Some(true),
                v1::AddressFamily::Unspecified => peer_rtp.map(|a| a.is_ipv6()).or_else(|| {
                    stream.local[0]
                        .rtp
                        .parse::<SocketAddr>()
                        .ok()
                        .map(|a| a.is_ipv6())
                }),
            };
            let rtcp_mux = spec
                .rtcp_mux
                .unwrap_or(stream.rtcp_mux[Party::User.index()]);
            let bundle = plan
                .as_ref()
                .and_then(|plan| plan.bundles.get(index).cloned().flatten());
            let owner = StreamBundle::owner_of(bundle.as_ref(), index)
                .and_then(|primary| local.get(primary).cloned());
            let sockets = match owner {
                // On an earlier stream's BUNDLE transport: no socket of
                // its own.
                Some(owner) => {
                    local.push(owner);
                    None
                }
                None => {
                    let sockets = self.allocate_leg(&interface, ipv6, rtcp_mux)?;
                    local.push(self.endpoint_of(&sockets.rtp, sockets.rtcp.as_ref()));
                    Some(sockets)
                }
            };
            let device_te = super::telephone_event(&device_codecs);
            legs.push(TransferLeg {
                leg: PendingLeg {
                    config: LegConfig {
                        rtcp_mux: rtcp_mux || crypto.ice.is_some(),
                        peer_rtp,
                        peer_rtcp,
                        peer_ip: source_ip,
                        crypto: crypto.leg_crypto(),
                        ice: crypto.ice,
                        dtls: crypto.dtls_params(),
                    },
                    payloads: PayloadMap::from_pairs(&pairs, device_te).with_keyframe_by(
                        plan.as_ref()
                            .map_or_else(Default::default, |p| p.keyframe_by(index)),
                    ),
                },
                sockets,
                bundle: bundle.as_ref().and_then(StreamBundle::tag),
            });
            bundles.push(bundle);
            shared.push(pairs);
            muxes.push(rtcp_mux);
            device_crypto.push(crypto);
        }
        self.dataplane
            .begin_transfer(
                record.worker,
                record.id,
                TransferSetup {
                    transfer,
                    legs,
                    mode,
                    timeout: self.options().transfer_timeout,
                },
            )
            .await?;
        let answer = plan.map(|plan| {
            let state = record.sdp.clone().unwrap_or_default();
            let remote = Party::Remote.index();
            let directions: Vec<_> = (0..record.streams.len())
                .map(|s| {
                    negotiation::direction_in(
                        state.received[remote].as_ref(),
                        state.layout[remote].as_ref(),
                        s,
                    )
                })
                .collect();
            let fallback_ip = local
                .iter()
                .find_map(|e| e.rtp.parse::<SocketAddr>().ok())
                .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |a| a.ip());
            let answer = plan.answer(
                state.received[remote].as_ref(),
                &directions,
                &record.streams,
                &local,
                &shared,
                (record.id.0 >> 1, fallback_ip),
            );
            let pending = PendingSdp {
                sent: negotiation::first_sent(&answer),
                offer: plan.offer,
                layout: plan.layout,
            };
            (answer.render(), pending)
        });
        {
            let mut registry = self.registry();
            if let Some(current) = registry.by_id.get_mut(&record.id) {
                current.open_transfer = Some(OpenTransfer {
                    id: transfer,
                    gruu: gruu.to_string(),
                    local: local.clone(),
                    rtcp_mux: muxes,
                    payloads: shared,
                    crypto: device_crypto.clone(),
                    bundles,
                    sdp: answer.as_ref().map(|(_, pending)| pending.clone()),
                    ng_answer: answer.as_ref().map(|(text, _)| text.clone()),
                    ng_dialog: context.ng_dialog,
                    interface: interface.clone(),
                });
                if let Some(aor) = &adopted_aor
                    && current.aor.is_empty()
                {
                    current.aor = aor.to_string();
                }
            }
        }
        if let Some(aor) = adopted_aor {
            session_span(record.id, &record.call_id).in_scope(|| {
                tracing::warn!(%aor, "the session had no AOR; it is now the transfer's device's");
            });
        }
        session_span(record.id, &record.call_id).in_scope(
            || info!(from = %record.gruu, to = %gruu, %transfer, ?mode, "transfer opened"),
        );
        Ok(v1::TransferResponse {
            sdp: answer.map(|(text, _)| text).unwrap_or_default(),
            session: record.id.to_string(),
            transfer_id: transfer.0,
            streams: record
                .streams
                .iter()
                .zip(local)
                .zip(&device_crypto)
                .map(|((stream, user), crypto)| v1::StreamAddresses {
                    kind: stream.kind.clone(),
                    user: Some(user),
                    remote: Some(stream.local[1].clone()),
                    user_key: super::key_message(crypto.relay_key),
                    remote_key: super::key_message(stream.crypto[1].relay_key),
                })
                .collect(),
        })
    }

    /// The open transfer of a session a command names, checked against the
    /// id the command gives (0: any).
    fn named_transfer(record: &Record, asked: u64) -> Result<&OpenTransfer, Status> {
        let open = record.open_transfer.as_ref().ok_or_else(|| {
            Status::failed_precondition(format!("no transfer is pending on session {}", record.id))
        })?;
        if asked != 0 && asked != open.id.0 {
            return Err(Status::failed_precondition(format!(
                "transfer {asked} is not the one pending on session {} ({})",
                record.id, open.id
            )));
        }
        Ok(open)
    }

    /// `commit_transfer`: the switch happens now; the registry shows the new
    /// device from here on.
    pub async fn commit_transfer(
        &self,
        reference: Option<&v1::SessionRef>,
        transfer_id: u64,
    ) -> Result<(), Status> {
        let (_guard, record) = self.lock_session(reference).await?;
        let transfer = Self::named_transfer(&record, transfer_id)?.id;
        self.dataplane
            .commit_transfer(record.worker, record.id, transfer)
            .await?;
        let held = {
            let mut registry = self.registry();
            let Some(current) = registry.by_id.get_mut(&record.id) else {
                return Ok(());
            };
            let Some(mut open) = current.open_transfer.take() else {
                return Ok(());
            };
            let previous = std::mem::replace(&mut current.gruu, open.gruu.clone());
            current.interfaces[Party::User.index()].clone_from(&open.interface);
            let held = adopt(&mut current.streams, &mut current.sdp, &mut open);
            current.committed_transfer = Some(CommittedTransfer {
                id: open.id,
                gruu: open.gruu.clone(),
                previous_gruu: previous,
            });
            self.telemetry.transfers_completed.inc();
            current.handoffs = current.handoffs.saturating_add(1);
            session_span(record.id, &record.call_id)
                .in_scope(|| info!(to = %open.gruu, %transfer, "transfer committed"));
            held
        };
        if let Some(held) = held {
            let update = SessionUpdate {
                held: Some(held),
                ..SessionUpdate::default()
            };
            self.dataplane
                .update_session(record.worker, record.id, update)
                .await?;
        }
        Ok(())
    }

    /// `cancel_transfer`.
    pub async fn cancel_transfer(
        &self,
        reference: Option<&v1::SessionRef>,
        transfer_id: u64,
    ) -> Result<(), Status> {
        let (_guard, record) = self.lock_session(reference).await?;
        let transfer = Self::named_transfer(&record, transfer_id)?.id;
        self.cancel_locked(&record, transfer).await
    }

    /// Rolls back `transfer` on a session whose lock the caller holds.
    async fn cancel_locked(&self, record: &Record, transfer: TransferId) -> Result<(), Status> {
        match self
            .dataplane
            .cancel_transfer(record.worker, record.id, Some(transfer))
            .await
        {
            Ok(_) => {}
            // It timed out on the worker at the same moment: its report is
            // on the way and will find nothing left to do.
            Err(DataplaneError::Transfer(TransferError::NonePending)) => {}
            // Switched already (the new device's first packet came): too
            // late; its completion is on the way and adopts the device.
            Err(e) => return Err(e.into()),
        }
        self.transfer_failed(record.id, transfer, "cancelled");
        Ok(())
    }

    /// Cancels the open transfer of the session whose new device has this
    /// ng dialog (a `delete` of the new device's branch, its INVITE having
    /// failed). The session itself stays.
    pub async fn cancel_transfer_of_dialog(&self, id: SessionId) -> Result<(), Status> {
        let (_guard, record) = self.lock_id(id).await?;
        let transfer = Self::named_transfer(&record, 0)?.id;
        self.cancel_locked(&record, transfer).await
    }

    /// The SDP answer of the session's open transfer, once (the ng front
    /// end replays it to the new device).
    pub fn take_transfer_answer(&self, id: SessionId) -> Option<String> {
        self.registry()
            .by_id
            .get_mut(&id)
            .and_then(|r| r.open_transfer.as_mut())
            .and_then(|t| t.ng_answer.take())
    }

    /// A worker switched a session to its new device and heard from it.
    /// Acts only on the transfer the report names.
    pub(super) async fn transfer_completed(
        &self,
        id: SessionId,
        transfer: TransferId,
        gap: Option<Duration>,
    ) {
        let mut hold_update = None;
        let done = {
            let mut registry = self.registry();
            let Some(record) = registry.by_id.get_mut(&id) else {
                return;
            };
            if record
                .committed_transfer
                .as_ref()
                .is_some_and(|c| c.id == transfer)
            {
                // Committed earlier; now the media gap is known.
                let committed = record.committed_transfer.take();
                committed.map(|c| (record.clone(), c.gruu, c.previous_gruu))
            } else if record
                .open_transfer
                .as_ref()
                .is_some_and(|t| t.id == transfer)
            {
                let Some(mut open) = record.open_transfer.take() else {
                    return;
                };
                let held = adopt(&mut record.streams, &mut record.sdp, &mut open);
                let previous = std::mem::replace(&mut record.gruu, open.gruu.clone());
                record.interfaces[Party::User.index()].clone_from(&open.interface);
                self.telemetry.transfers_completed.inc();
                record.handoffs = record.handoffs.saturating_add(1);
                hold_update = held.map(|held| (record.worker, held));
                Some((record.clone(), open.gruu, previous))
            } else {
                debug!(session = %id, %transfer, "report of a transfer no longer open; ignored");
                None
            }
        };
        if let Some((record, gruu, previous)) = done {
            self.publish_completed(&record, transfer, &gruu, &previous, gap);
        }
        if let Some((worker, held)) = hold_update {
            // The new device's offer may hold or resume the call.
            let update = SessionUpdate {
                held: Some(held),
                ..SessionUpdate::default()
            };
            if let Err(e) = self.dataplane.update_session(worker, id, update).await {
                debug!(session = %id, "hold after the switch not applied: {e}");
            }
        }
    }

    pub(super) fn publish_completed(
        &self,
        record: &Record,
        transfer: TransferId,
        gruu: &str,
        previous: &str,
        gap: Option<Duration>,
    ) {
        let media_gap_ms = gap.map_or(-1.0, |g| g.as_secs_f64() * 1000.0);
        if let Some(recordings) = self.recordings() {
            recordings.note_handoff(record.id, previous, gruu, gap);
        }
        if let Some(gap) = gap {
            self.telemetry.transfer_gap.observe(gap.as_secs_f64());
        }
        session_span(record.id, &record.call_id).in_scope(|| {
            info!(from = %previous, to = %gruu, %transfer, media_gap_ms, "transfer completed");
        });
        self.events
            .publish(v1::event::Kind::TransferCompleted(v1::TransferCompleted {
                session: record.id.to_string(),
                gruu: gruu.to_owned(),
                previous_gruu: previous.to_owned(),
                media_gap_ms,
                transfer_id: transfer.0,
            }));
    }

    /// A transfer was rolled back (cancel, timeout): acts only if it is the
    /// one open.
    pub(super) fn transfer_failed(&self, id: SessionId, transfer: TransferId, reason: &str) {
        let failed = {
            let mut registry = self.registry();
            let Some(record) = registry.by_id.get_mut(&id) else {
                return;
            };
            if record
                .open_transfer
                .as_ref()
                .is_none_or(|t| t.id != transfer)
            {
                return;
            }
            record
                .open_transfer
                .take()
                .map(|open| (record.clone(), open))
        };
        if let Some((record, open)) = failed {
            self.transfer_failed_record(&record, &open, reason);
        }
    }

    /// Counts and publishes the failure of `open`.
    pub(super) fn transfer_failed_record(
        &self,
        record: &Record,
        open: &OpenTransfer,
        reason: &str,
    ) {
        self.telemetry.transfer_failed(reason);
        session_span(record.id, &record.call_id).in_scope(
            || info!(to = %open.gruu, transfer = %open.id, reason, "transfer rolled back"),
        );
        self.events
            .publish(v1::event::Kind::TransferFailed(v1::TransferFailed {
                session: record.id.to_string(),
                gruu: open.gruu.clone(),
                reason: reason.to_owned(),
                transfer_id: open.id.0,
            }));
    }
}

/// The new device becomes the user side: its relay legs, rtcp-mux, and the
/// offer/answer it went through. Returns the session's hold state if that
/// changed (the new device's offer may hold or resume).
fn adopt(
    streams: &mut [NegotiatedStream],
    sdp: &mut Option<SdpState>,
    open: &mut OpenTransfer,
) -> Option<bool> {
    let held_before = negotiation::session_held(streams);
    let user = Party::User.index();
    for (index, stream) in streams.iter_mut().enumerate() {
        if let Some(local) = open.local.get(index) {
            stream.local[user] = local.clone();
        }
        if let Some(&mux) = open.rtcp_mux.get(index) {
            stream.rtcp_mux[user] = mux;
        }
        if let Some(pairs) = open.payloads.get(index) {
            stream.user_payloads = pairs.iter().copied().filter(|(d, r)| d != r).collect();
        }
        if let Some(crypto) = open.crypto.get(index) {
            stream.crypto[user] = crypto.clone();
        }
        stream.bundle[user] = open.bundles.get(index).cloned().flatten();
        stream.held[user] = false;
    }
    if let Some(pending_sdp) = open.sdp.take() {
        if let Ok(media) = negotiation::media_of(&pending_sdp.offer) {
            for (m, slot) in media.iter().zip(&pending_sdp.layout) {
                if let Some(stream) = slot.and_then(|s| streams.get_mut(s)) {
                    stream.held[user] = negotiation::holds(m);
                }
            }
        }
        let state = sdp.get_or_insert_with(Default::default);
        state.layout[user] = Some(pending_sdp.layout);
        state.received[user] = Some(pending_sdp.offer);
        state.sent[user] = Some(pending_sdp.sent);
    }
    let held = negotiation::session_held(streams);
    (held != held_before).then_some(held)
}

/// Parses a Replaces header value (RFC 3891): `call-id;to-tag=…;from-tag=…`
/// with an optional `early-only`. Returns the dialog and whether early-only
/// was given.
pub fn parse_replaces(text: &str) -> Result<(v1::Dialog, bool), Status> {
    let mut parts = text.split(';');
    let call_id = parts.next().unwrap_or_default().trim();
    if call_id.is_empty() {
        return Err(Status::invalid_argument(format!(
            "Replaces {} has no call-id",
            excerpt(text)
        )));
    }
    let (mut to_tag, mut from_tag, mut early_only) = (None, None, false);
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (param.trim(), None),
        };
        match (name.to_ascii_lowercase().as_str(), value) {
            ("to-tag", Some(v)) => to_tag = Some(v.to_owned()),
            ("from-tag", Some(v)) => from_tag = Some(v.to_owned()),
            ("early-only", None) => early_only = true,
            // Extension parameters are allowed and ignored (RFC 3891 §6.1).
            _ => {}
        }
    }
    match (to_tag, from_tag) {
        (Some(to_tag), Some(from_tag)) if !to_tag.is_empty() && !from_tag.is_empty() => Ok((
            v1::Dialog {
                call_id: call_id.to_owned(),
                from_tag,
                to_tag,
            },
            early_only,
        )),
        _ => Err(Status::invalid_argument(format!(
            "Replaces {} needs both a to-tag and a from-tag",
            excerpt(text)
        ))),
    }
}

/// Pairs the device's payload types with the remote's for the codecs both
/// have (same name, clock rate and channels). Fails when they share no codec
/// that carries media.
pub fn match_codecs(remote: &[v1::Codec], device: &[v1::Codec]) -> Result<Vec<(u8, u8)>, String> {
    let channels = |c: &v1::Codec| c.channels.max(1);
    let mut pairs = Vec::new();
    let mut media = false;
    for d in device {
        // Named codecs match by name, rate and channels; an unnamed one
        // (no a=rtpmap) only the same number on the other side.
        let Some(r) = remote.iter().find(|r| {
            if crate::sip::sdp::is_unnamed(d) || crate::sip::sdp::is_unnamed(r) {
                return r.payload_type == d.payload_type
                    && crate::sip::sdp::is_unnamed(d)
                    && crate::sip::sdp::is_unnamed(r);
            }
            r.name.eq_ignore_ascii_case(&d.name)
                && r.clock_rate == d.clock_rate
                && channels(r) == channels(d)
        }) else {
            continue;
        };
        let (Ok(dp), Ok(rp)) = (u8::try_from(d.payload_type), u8::try_from(r.payload_type)) else {
            continue;
        };
        if pairs.iter().any(|&(p, _)| p == dp) {
            continue;
        }
        pairs.push((dp, rp));
        media |= !AUXILIARY_CODECS
            .iter()
            .any(|aux| d.name.eq_ignore_ascii_case(aux));
    }
    if !media {
        let list = |codecs: &[v1::Codec]| {
            codecs
                .iter()
                .map(|c| format!("{}/{}", c.name, c.clock_rate))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(format!(
            "no codec in common with the remote (remote: {}; device: {})",
            list(remote),
            list(device)
        ));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(pt: u32, name: &str, rate: u32) -> v1::Codec {
        v1::Codec {
            payload_type: pt,
            name: name.into(),
            clock_rate: rate,
            channels: 0,
            fmtp: String::new(),
        }
    }

    /// A payload type without a=rtpmap matches only the same number
    /// without a=rtpmap on the other side, never a named codec.
    #[test]
    fn unnamed_payload_types_match_by_number_only() {
        let unnamed = |pt| codec(pt, "", 0);
        assert_eq!(
            match_codecs(&[unnamed(97)], &[unnamed(97)]),
            Ok(vec![(97, 97)])
        );
        assert!(match_codecs(&[unnamed(97)], &[unnamed(98)]).is_err());
        assert!(match_codecs(&[codec(97, "opus", 48_000)], &[unnamed(97)]).is_err());
        assert_eq!(
            match_codecs(
                &[unnamed(97), codec(8, "PCMA", 8000)],
                &[codec(8, "PCMA", 8000)]
            ),
            Ok(vec![(8, 8)])
        );
    }

    #[test]
    fn replaces_values() {
        let (dialog, early) =
            parse_replaces("425928@bobster.example.org;to-tag=7743;from-tag=6472").expect("valid");
        assert_eq!(
            (
                dialog.call_id.as_str(),
                dialog.to_tag.as_str(),
                dialog.from_tag.as_str(),
                early
            ),
            ("425928@bobster.example.org", "7743", "6472", false)
        );
        let (_, early) = parse_replaces("a@b; From-Tag=1 ;to-tag=2;early-only;x=y").expect("valid");
        assert!(early);
        for bad in [
            "",
            ";to-tag=1;from-tag=2",
            "a@b;to-tag=1",
            "a@b;from-tag=2;to-tag=",
        ] {
            assert!(parse_replaces(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn codecs_pair_by_name_rate_and_channels() {
        let remote = [
            codec(0, "PCMU", 8000),
            codec(8, "PCMA", 8000),
            codec(101, "telephone-event", 8000),
        ];
        let device = [
            codec(8, "pcma", 8000),
            codec(96, "telephone-event", 8000),
            codec(9, "G722", 8000),
        ];
        assert_eq!(
            match_codecs(&remote, &device).expect("shared"),
            vec![(8, 8), (96, 101)]
        );
        let only_dtmf = [
            codec(96, "telephone-event", 8000),
            codec(111, "opus", 48000),
        ];
        let error = match_codecs(&remote, &only_dtmf).expect_err("no media codec");
        assert!(error.contains("no codec in common"), "{error}");
        let stereo = [v1::Codec {
            channels: 2,
            ..codec(0, "PCMU", 8000)
        }];
        assert!(match_codecs(&remote, &stereo).is_err());
    }
}
