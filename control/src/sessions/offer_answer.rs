//! `update_session` with an SDP body: peers, codecs, rtcp-mux and hold read
//! from it, the session updated, and the body rewritten for the other party.

use baton_proto::v1;
use baton_relay::core::session::{LegUpdate, SessionUpdate};
use baton_relay::{Party, StreamIndex};

use super::Sessions;
use crate::sip::crypto::PartyCrypto;
use crate::sip::negotiation::{
    SdpState, StreamBundle, endpoint_of, extend_layout, holds, match_by_kind, media_of,
    relay_toward, relocate, render, requested_transport, sdes_policy, security_toward,
    session_held, stamp, t38_relocations, transport_of, webrtc_toward,
};
use crate::status::Status;

impl Sessions {
    /// `update_session` with a body.
    pub(super) async fn update_from_sdp(
        &self,
        request: v1::UpdateSessionRequest,
    ) -> Result<v1::UpdateSessionResponse, Status> {
        crate::status::check_len("to_tag", &request.to_tag, crate::status::MAX_ID_LEN)?;
        let from = super::party(request.sdp_from, Party::Remote)?;
        let other = from.other();
        let body = self.parse_sdp(&request.sdp)?;
        let media = media_of(&body)?;
        let policy = sdes_policy(request.sdes.as_ref())?;
        let other_transport = requested_transport(&request.other_transport)?;
        let webrtc = webrtc_toward(request.webrtc.as_ref())?;
        let (_guard, record) = self.lock_session(request.session.as_ref()).await?;
        let names_branch = !request.to_tag.is_empty() && from != record.offerer;
        if names_branch
            && !record.has_to_tag(&request.to_tag)
            && record.branches.len() >= super::registry::MAX_BRANCHES
        {
            return Err(Status::resource_exhausted(format!(
                "session {} has {} answered branches already; delete one first",
                record.id,
                record.branches.len()
            )));
        }
        if from == Party::User
            && let Some(open) = &record.open_transfer
        {
            // Which device sent it? The old one is still live and the new
            // one not yet: wait for the switch (or a cancel).
            return Err(Status::failed_precondition(format!(
                "a transfer to {} is open on session {}: update the user side after it completes or is cancelled",
                open.gruu, record.id
            )));
        }
        let state = record.sdp.clone().unwrap_or_default();
        let mut relocations = Vec::new();
        let layout = match (&state.layout[from.index()], &state.layout[other.index()]) {
            (Some(known), _) => {
                relocations = t38_relocations(known, &media, &record.streams);
                extend_layout(&relocate(known, &relocations), &media)?
            }
            // An answer has the offer's m= lines (RFC 3264 §6).
            (None, Some(offered)) => extend_layout(offered, &media)?,
            (None, None) => match_by_kind(&media, &record.streams),
        };
        let other_media = |stream: usize| {
            let body = state.received[other.index()].as_ref()?;
            let layout = state.layout[other.index()].as_ref()?;
            let index = layout.iter().position(|s| *s == Some(stream))?;
            body.media(index).ok()
        };
        let mut streams = record.streams.clone();
        let mut update = SessionUpdate::default();
        // SRTP lines none of whose keys the relay can honour: rejected by
        // RFC 4568 (port 0 toward the other party, so its answer rejects
        // them too), the rest of the body applied.
        let mut declined = Vec::new();
        // In stream order: a BUNDLE transport's owner (its lowest stream)
        // before its followers, however the body orders its lines.
        let mut lines: Vec<(&crate::sip::sdp::Media, usize)> = media
            .iter()
            .zip(&layout)
            .filter_map(|(m, slot)| slot.map(|s| (m, s)))
            .collect();
        lines.sort_by_key(|&(_, s)| s);
        let groups = body.bundle_groups();
        // Streams whose keys and credentials this body gave, and owners
        // that take theirs from a follower's line (their own rejected).
        let mut received = vec![false; streams.len()];
        let mut owners_from_followers = Vec::new();
        for (m, s) in lines {
            let (earlier, rest) = streams.split_at_mut(s);
            let stream = &mut rest[0];
            // A T.38 re-INVITE turns an audio line into `m=image … udptl
            // t38` in place (and a later one turns it back): the stream
            // keeps its relay ports and carries datagrams, or RTP again.
            let switching = m.is_udptl() != stream.udptl && !m.is_disabled();
            if m.kind != stream.kind && !switching {
                return Err(Status::invalid_argument(format!(
                    "SDP line {}: m={} where the session's stream {s} is {}",
                    m.line, m.kind, stream.kind
                )));
            }
            if switching {
                let plain = stream
                    .crypto
                    .iter()
                    .all(|c| !c.transport.is_srtp() && !c.transport.is_dtls() && c.ice.is_none());
                if !plain || stream.bundle.iter().any(Option::is_some) {
                    return Err(Status::unimplemented(format!(
                        "SDP line {}: switching stream {s} between RTP and T.38 (UDPTL) is supported on plain RTP legs only, not on SRTP, DTLS or bundled ones",
                        m.line
                    )));
                }
                if record.open_transfer.is_some() {
                    return Err(Status::failed_precondition(format!(
                        "SDP line {}: a handoff is open on session {}: switch to or from T.38 once it completes or is cancelled",
                        m.line, record.id
                    )));
                }
                stream.kind.clone_from(&m.kind);
                stream.udptl = m.is_udptl();
                if !stream.udptl && stream.datagrams {
                    // Back to audio: RTP again at once (the T.38 packets
                    // still coming are malformed RTP, dropped and counted).
                    stream.datagrams = false;
                    update.datagrams.push((StreamIndex(s), false));
                }
            }
            if m.is_disabled() {
                // Rejected (or disabled): port 0 toward the other party
                // too, never a live relay port for a line no one uses.
                stream.rejected = true;
                declined.push(s);
                continue;
            }
            let bundle = stream.bundle[from.index()].clone();
            if let Some(bundle) = bundle.as_ref().filter(|b| b.follows(s)) {
                // A line the relay bundled that this body does not bundle
                // (an answerer declining the relay's BUNDLE offer, RFC
                // 8843 §7.3.3) would need a transport the relay did not
                // open for it: it is declined, toward the other party too.
                // Its group must hold the owner's line too, unless this
                // body rejected that line (the transport lives on).
                let owner = earlier
                    .get(bundle.primary)
                    .and_then(|o| o.bundle[from.index()].as_ref());
                let owner_line_kept = layout
                    .iter()
                    .position(|slot| *slot == Some(bundle.primary))
                    .and_then(|j| media.get(j))
                    .is_some_and(|o| !o.is_disabled());
                let grouped = groups.iter().any(|g| {
                    g.contains(&bundle.mid)
                        && (!owner_line_kept || owner.is_some_and(|o| g.contains(&o.mid)))
                });
                if !grouped || m.webrtc.mid.as_deref() != Some(bundle.mid.as_str()) {
                    stream.rejected = true;
                    declined.push(s);
                    continue;
                }
            }
            let transport = transport_of(m)?;
            if !m.is_udptl() {
                super::validate_codecs(&m.codecs, s, true)?;
            }
            let crypto_before = stream.crypto.clone();
            if let Err(reason) = stream.crypto[from.index()].receive(transport, m, &policy) {
                // A plain answer to the relay's SRTP offer stays an error
                // (the answerer must say OSRTP=accept); an SRTP line without
                // a usable key is declined.
                if !transport.is_srtp() {
                    return Err(if transport.is_dtls() {
                        Status::invalid_argument(reason)
                    } else {
                        Status::unimplemented(reason)
                    });
                }
                stream.rejected = true;
                declined.push(s);
                continue;
            }
            if let Some(wanted) = other_transport.filter(|_| !m.is_udptl()) {
                let toward = &mut stream.crypto[other.index()];
                if toward.transport.is_srtp() == wanted.is_srtp()
                    && toward.transport.is_dtls() == wanted.is_dtls()
                {
                    toward.transport = wanted;
                    if webrtc.force_ice && toward.ice.is_none() {
                        toward.ice = Some(crate::sip::crypto::fresh_ice(None));
                    }
                } else {
                    // SRTP switched on or off (or to DTLS) toward the other
                    // party: its keys are offered afresh (or dropped).
                    *toward = PartyCrypto::default();
                    toward.offer_toward(wanted, webrtc);
                }
            }
            received[s] = true;
            // A BUNDLE follower shares its transport owner's ICE and DTLS
            // (an ICE restart renews them once, for the transport) — or,
            // when this body rejected the owner's line, gives them to the
            // owner, whose socket carries the transport.
            for party in [from, other] {
                let Some(primary) =
                    StreamBundle::owner_of(stream.bundle[party.index()].as_ref(), s)
                else {
                    continue;
                };
                let Some(owner) = earlier.get_mut(primary) else {
                    continue;
                };
                let (owner, follower) = (
                    &mut owner.crypto[party.index()],
                    &mut stream.crypto[party.index()],
                );
                if party == from && !received[primary] {
                    owner.share_transport_of(follower);
                    received[primary] = true;
                    owners_from_followers.push(primary);
                } else {
                    follower.share_transport_of(owner);
                }
            }
            stream.rejected = false;
            // Datagrams once both sides' bodies carry T.38 (the answer
            // accepted it): until then, and if the answer rejects it, the
            // stream stays RTP, its checks and controls in force.
            if stream.udptl
                && !stream.datagrams
                && other_media(s).is_some_and(|o| o.is_udptl() && !o.is_disabled())
            {
                stream.datagrams = true;
                update.datagrams.push((StreamIndex(s), true));
            }
            // A T.38 line has no codecs: the audio ones stay until a body
            // brings audio again (the stream relays RTP until the answer).
            if !m.is_udptl()
                && (from == Party::Remote
                    || state.received[Party::Remote.index()].is_none()
                    || switching)
            {
                stream.codecs.clone_from(&m.codecs);
                update
                    .clock_rates
                    .push((StreamIndex(s), super::clock_rates(&m.codecs)));
                update
                    .formats
                    .push((StreamIndex(s), self.payload_formats(&m.codecs)));
            }
            stream.held[from.index()] = holds(m);
            if let Some(ptime) = m.ptime {
                stream.ptime = ptime;
            }
            // rtcp-mux holds once both parties' latest bodies carry it.
            let mux = m.rtcp_mux && other_media(s).is_none_or(|o| o.rtcp_mux);
            let webrtc_legs = stream.crypto.iter().filter(|c| c.ice.is_some()).count();
            if !mux
                && webrtc_legs < 2
                && stream
                    .rtcp_mux
                    .iter()
                    .zip(&stream.crypto)
                    .any(|(&on, c)| on && c.ice.is_none())
                && !stream.rtcp_sockets
            {
                return Err(Status::failed_precondition(format!(
                    "SDP line {}: stream {s} was created with rtcp-mux and has no RTCP port to fall back to",
                    m.line
                )));
            }
            let (rtp, rtcp) = match endpoint_of(m) {
                Some(endpoint) => super::parse_endpoint(&endpoint, from)?,
                None => (None, None),
            };
            for party in [from, other] {
                // A WebRTC leg multiplexes whatever the other side does.
                let mux = mux || stream.crypto[party.index()].ice.is_some();
                let changed = stream.rtcp_mux[party.index()] != mux;
                let (rtp, rtcp) = if party == from {
                    (rtp, rtcp)
                } else {
                    (None, None)
                };
                let crypto = &stream.crypto[party.index()];
                let crypto_changed = !crypto.same_leg_as(&crypto_before[party.index()]);
                let dtls_both =
                    crypto.transport.is_dtls() && crypto_before[party.index()].transport.is_dtls();
                if changed || rtp.is_some() || crypto_changed {
                    update.peers.push(LegUpdate {
                        stream: StreamIndex(s),
                        party,
                        rtp,
                        rtcp,
                        rtcp_mux: changed.then_some(mux),
                        // A WebRTC leg's keys are its handshake's: an ICE
                        // restart or a re-offer keeps the association
                        // (RFC 8842), and a new fingerprint starts a new
                        // handshake whose keys replace these when it ends.
                        crypto: (crypto_changed && !dtls_both).then(|| crypto.leg_crypto()),
                        ice: crypto_changed.then_some(crypto.ice).flatten(),
                        dtls: crypto_changed.then(|| crypto.dtls_params()).flatten(),
                        ice_off: crypto.ice.is_none() && crypto_before[party.index()].ice.is_some(),
                        dtls_off: !crypto.transport.is_dtls()
                            && crypto_before[party.index()].transport.is_dtls(),
                    });
                }
                stream.rtcp_mux[party.index()] = mux;
            }
        }
        for owner in owners_from_followers {
            let before = &record.streams[owner].crypto[from.index()];
            let crypto = &streams[owner].crypto[from.index()];
            if crypto.ice != before.ice || crypto.dtls != before.dtls {
                update.peers.push(LegUpdate {
                    stream: StreamIndex(owner),
                    party: from,
                    rtp: None,
                    rtcp: None,
                    rtcp_mux: None,
                    crypto: None,
                    ice: crypto.ice,
                    dtls: crypto.dtls_params(),
                    ice_off: false,
                    dtls_off: false,
                });
            }
        }
        update.held = Some(session_held(&streams));
        self.dataplane
            .update_session(record.worker, record.id, update)
            .await?;
        let rendered = {
            let mut registry = self.registry();
            let Some(current) = registry.by_id.get_mut(&record.id) else {
                return Err(Status::not_found(format!(
                    "session {} has ended",
                    record.id
                )));
            };
            if !request.to_tag.is_empty() {
                current.to_tag.clone_from(&request.to_tag);
            }
            if names_branch {
                // A forked call keeps each answered branch (as rtpengine
                // does); the media follows the one that answered last.
                if !current.branches.iter().any(|b| b.to_tag == request.to_tag) {
                    current.branches.push(super::registry::Branch {
                        to_tag: request.to_tag.clone(),
                    });
                }
            }
            for (now, updated) in current.streams.iter_mut().zip(&streams) {
                // A T.38 re-INVITE may have turned the stream to UDPTL (or
                // back).
                now.kind.clone_from(&updated.kind);
                now.udptl = updated.udptl;
                now.datagrams = updated.datagrams;
                now.codecs.clone_from(&updated.codecs);
                now.held = updated.held;
                now.ptime = updated.ptime;
                now.rejected = updated.rejected;
                now.rtcp_mux = updated.rtcp_mux;
                now.crypto.clone_from(&updated.crypto);
            }
            let security = security_toward(
                &mut current.streams,
                other,
                &policy,
                &self.dataplane.dtls_fingerprint(),
            );
            let relay = relay_toward(&current.streams, other);
            let state = current.sdp.get_or_insert_with(SdpState::default);
            // A stream moved to another line moves in the other party's
            // view too: it sees the same lines, and its answer has them.
            if let Some(known) = state.layout[other.index()].as_mut() {
                *known = relocate(known, &relocations);
            }
            let receiver = match (
                state.received[other.index()].as_ref(),
                state.layout[other.index()].as_ref(),
            ) {
                (Some(body), Some(layout)) => Some((body, layout)),
                _ => None,
            };
            // The relay renumbers a transferred device's payload types in
            // its media; bodies crossing it are renumbered the same way, so
            // each party keeps the numbers it negotiated.
            let payloads: Vec<Vec<(u8, u8)>> = current
                .streams
                .iter()
                .map(|s| match from {
                    Party::User => s.user_payloads.clone(),
                    Party::Remote => s.user_payloads.iter().map(|&(d, r)| (r, d)).collect(),
                })
                .collect();
            let mut out = render(
                &body, &layout, receiver, &relay, &payloads, &security, &declined,
            );
            stamp(&mut out, &mut state.sent[other.index()]);
            state.layout[from.index()] = Some(layout);
            state.received[from.index()] = Some(body);
            out.render()
        };
        Ok(v1::UpdateSessionResponse {
            session: Some(self.info_unlocked(record.id).await?),
            sdp: rendered,
        })
    }
}
