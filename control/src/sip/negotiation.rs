//! SDP offer/answer on sessions: streams from a body, bodies rewritten for
//! the other party, and the answer to a new device on a transfer.
//!
//! Each party has its own view of the m= lines (a `layout`: m= line →
//! stream index). They are the same until a transfer: the new device's
//! offer may list its media differently from the device it replaces, and
//! the remote party must keep seeing the m= lines and the origin it knows.

use std::net::SocketAddr;

use baton_proto::v1;
use baton_relay::core::bundle::{BundleTag, Mid};
use baton_relay::core::dtls::Fingerprint;
use baton_relay::{Party, StreamIndex};

use crate::sip::crypto::{self, PartyCrypto, SdesPolicy, Transport, WebRtcToward};
use crate::sip::sdp::{
    AnswerMedia, Direction, Media, Pick, RelayEndpoint, Sdp, SdpError, SdpLimits, host_candidate,
};
use crate::status::Status;

/// What the signalling negotiated for one stream: its media type and codecs
/// (the remote's numbering), the relay addresses each party was given, the
/// parties' rtcp-mux and hold as their bodies say, and how the current
/// device numbers payload types. The relay's media state (peers, counters,
/// the transfer in progress) is not here: it lives in the data plane's
/// session and is read from its reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct NegotiatedStream {
    pub kind: String,
    /// UDPTL (T.38 fax): plain datagrams, no codecs.
    pub udptl: bool,
    /// Its worker relays datagrams (both sides' bodies carry T.38).
    pub datagrams: bool,
    /// The remote party's codecs (the stream's numbering).
    pub codecs: Vec<v1::Codec>,
    /// Per party (user, remote): the peer multiplexes RTCP on the RTP port.
    pub rtcp_mux: [bool; 2],
    /// The legs have RTCP sockets, so rtcp-mux can be given up later.
    pub rtcp_sockets: bool,
    /// Advertised relay addresses, toward the user then the remote.
    pub local: [v1::Endpoint; 2],
    /// Packet time in ms, 0 if not signalled.
    pub ptime: u32,
    /// Held by each party's last body (user, remote).
    pub held: [bool; 2],
    /// Rejected (port 0) in the last answer: no media is expected on it.
    pub rejected: bool,
    /// The current device's payload types against the remote's (device,
    /// remote), when a transfer brought a device that numbers differently;
    /// empty for the same numbering.
    pub user_payloads: Vec<(u8, u8)>,
    /// Per party (user, remote): plain RTP or SRTP, and the keys.
    pub crypto: [PartyCrypto; 2],
    /// Per party (user, remote): the BUNDLE transport the stream is on.
    pub bundle: [Option<StreamBundle>; 2],
}

/// A stream's place on one party's BUNDLE transport (RFC 8843): the relay
/// receives every stream of the group on the first one's socket, with its
/// ICE and DTLS.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct StreamBundle {
    /// The stream owning the transport (the group's lowest index).
    pub primary: usize,
    /// This stream's MID toward the party.
    pub mid: String,
    /// The MID header extension's id the party uses, if negotiated.
    pub mid_extension: Option<u8>,
}

impl StreamBundle {
    /// The data plane's form.
    pub fn tag(&self) -> Option<BundleTag> {
        Some(BundleTag {
            primary: StreamIndex(self.primary),
            mid: Mid::new(&self.mid)?,
            mid_extension: self.mid_extension,
        })
    }

    /// Whether the stream rides another stream's transport.
    pub fn follows(&self, stream: usize) -> bool {
        self.primary != stream
    }

    /// The stream whose transport `stream` rides, if `bundle` (its place)
    /// makes it a follower.
    pub fn owner_of(bundle: Option<&Self>, stream: usize) -> Option<usize> {
        bundle.filter(|b| b.follows(stream)).map(|b| b.primary)
    }
}

/// Per stream, the BUNDLE transport an offer's sender put it on: the
/// carried DTLS-SRTP streams (`webrtc(stream)`) of each `a=group:BUNDLE`,
/// under the group's lowest stream. Streams outside a group, in a second
/// group, whose MID another member has already, or whose payload types
/// overlap an earlier member's get `None` (a transport of their own): a
/// malformed group costs the sender its bundling, never the call.
pub(crate) fn bundles_in_offer(
    sdp: &Sdp,
    media: &[Media],
    layout: &Layout,
    stream_count: usize,
    webrtc: impl Fn(usize) -> bool,
) -> Vec<Option<StreamBundle>> {
    let mut bundles: Vec<Option<StreamBundle>> = vec![None; stream_count];
    for group in sdp.bundle_groups() {
        let mut members: Vec<(usize, String)> = Vec::new();
        // Payload types must tell the members apart: the relay's answer
        // routes by them (see below).
        let mut payload_types: Vec<u32> = Vec::new();
        for (m, slot) in media.iter().zip(layout) {
            let (Some(s), Some(mid)) = (*slot, m.webrtc.mid.as_deref()) else {
                continue;
            };
            let fits = s < stream_count
                && webrtc(s)
                && bundles[s].is_none()
                && group.iter().any(|g| g == mid)
                && Mid::new(mid).is_some()
                && !members
                    .iter()
                    .any(|(other, known)| *other == s || known == mid)
                && !m
                    .codecs
                    .iter()
                    .any(|c| payload_types.contains(&c.payload_type));
            if fits {
                payload_types.extend(m.codecs.iter().map(|c| c.payload_type));
                members.push((s, mid.to_owned()));
            }
        }
        let Some(primary) = members.iter().map(|(s, _)| *s).min() else {
            continue;
        };
        for (s, mid) in members {
            bundles[s] = Some(StreamBundle {
                primary,
                mid,
                // The relay's answer does not take up the MID header
                // extension: it does not write MIDs into what it sends,
                // and a browser that negotiated them drops packets of
                // unsignalled SSRCs without one. The offerer's streams
                // are told apart by SSRC and payload type (RFC 8843
                // §9.2).
                mid_extension: None,
            });
        }
    }
    bundles
}

/// Per stream, the BUNDLE transport of a body the relay offers to a
/// WebRTC party: every stream it reaches with DTLS-SRTP (`webrtc(stream)`)
/// on one transport (a max-bundle browser takes nothing else), MIDs as
/// [`render`] writes them (the sender's, else the m= line's index), the
/// sender's MID extension. A stream whose payload types overlap those of
/// a stream already bundled, or whose MID repeats one, keeps a transport
/// of its own: one transport cannot tell such streams apart (RFC 8843
/// §9.1).
pub(crate) fn bundles_toward(
    sender: &[Media],
    layout: &Layout,
    stream_count: usize,
    webrtc: impl Fn(usize) -> bool,
) -> Vec<Option<StreamBundle>> {
    let mut bundles = vec![None; stream_count];
    let mut primary = None;
    let mut payload_types: Vec<u32> = Vec::new();
    let mut mids: Vec<String> = Vec::new();
    for (index, (m, slot)) in sender.iter().zip(layout).enumerate() {
        let Some(s) = *slot else { continue };
        if s >= stream_count || !webrtc(s) {
            continue;
        }
        let mid = crate::sip::sdp::mid_or_index(m.webrtc.mid.clone(), index);
        let overlaps = m
            .codecs
            .iter()
            .any(|c| payload_types.contains(&c.payload_type));
        if Mid::new(&mid).is_none() || mids.contains(&mid) || overlaps {
            continue;
        }
        payload_types.extend(m.codecs.iter().map(|c| c.payload_type));
        mids.push(mid.clone());
        let primary = *primary.get_or_insert(s);
        bundles[s] = Some(StreamBundle {
            primary,
            mid,
            mid_extension: m.webrtc.mid_extension,
        });
    }
    bundles
}

/// Per stream and party (user, remote), the BUNDLE transports of a new
/// session: the offerer's groups as its body has them, and toward the
/// other party, if the relay reaches it with ICE, one transport.
pub(crate) fn session_bundles(
    offer: Option<&(Party, Sdp, Layout)>,
    crypto: &[[PartyCrypto; 2]],
) -> Result<Vec<[Option<StreamBundle>; 2]>, Status> {
    let mut bundles = vec![[None, None]; crypto.len()];
    let Some((from, body, layout)) = offer else {
        return Ok(bundles);
    };
    let media = media_of(body)?;
    let webrtc = |party: Party| move |s: usize| crypto[s][party.index()].is_webrtc();
    let offered = bundles_in_offer(body, &media, layout, crypto.len(), webrtc(*from));
    let toward = bundles_toward(&media, layout, crypto.len(), webrtc(from.other()));
    for (s, (offered, toward)) in offered.into_iter().zip(toward).enumerate() {
        bundles[s][from.index()] = offered;
        bundles[s][from.other().index()] = toward;
    }
    Ok(bundles)
}

/// [`align_bundled`] on a new session's crypto, before its streams exist.
pub(crate) fn align_bundled_crypto(
    crypto: &mut [[PartyCrypto; 2]],
    bundles: &[[Option<StreamBundle>; 2]],
) {
    for s in 0..crypto.len() {
        for party in Party::BOTH {
            let Some(primary) = StreamBundle::owner_of(bundles[s][party.index()].as_ref(), s)
            else {
                continue;
            };
            let Some(owner) = crypto.get(primary).map(|c| c[party.index()].clone()) else {
                continue;
            };
            crypto[s][party.index()].share_transport_of(&owner);
        }
    }
}

impl NegotiatedStream {
    /// Held by either party.
    pub fn is_held(&self) -> bool {
        self.held[0] || self.held[1]
    }
}

/// A session is on hold when every stream that is in use is held.
pub(crate) fn session_held(streams: &[NegotiatedStream]) -> bool {
    let mut live = streams.iter().filter(|s| !s.rejected).peekable();
    live.peek().is_some() && live.all(NegotiatedStream::is_held)
}

/// A party's m= lines: for each, the stream it carries (`None`: not
/// relayed, sent on with port 0).
pub(crate) type Layout = Vec<Option<usize>>;

/// What was last sent to a party, so the next body keeps its origin and
/// gets the right version (RFC 3264 §8).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Sent {
    identity: [String; 5],
    /// The s= line the receiver first saw (kept, like the origin).
    session_name: Option<String>,
    key: String,
    version: u64,
    /// The body as sent.
    pub text: String,
}

/// The SDP side of a session created or updated with bodies.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct SdpState {
    /// Per party (user, remote).
    pub layout: [Option<Layout>; 2],
    /// The last body from each party (stored as its text).
    #[serde(with = "crate::sip::sdp::as_text")]
    pub received: [Option<Sdp>; 2],
    /// The last body sent to each party.
    pub sent: [Option<Sent>; 2],
}

/// A transfer's SDP, adopted as the user side's when the switch happens.
#[derive(Debug, Clone)]
pub(crate) struct PendingSdp {
    pub offer: Sdp,
    pub layout: Layout,
    pub sent: Sent,
}

/// An SDP error as the client sees it.
pub(crate) fn sdp_status(error: &SdpError) -> Status {
    if error.limit.is_some() {
        Status::invalid_argument(error.to_string())
    } else if error.unsupported {
        Status::unimplemented(error.to_string())
    } else {
        Status::invalid_argument(error.to_string())
    }
}

/// Parses a body from a request, within the configured limits; a broken
/// limit comes back with the error, for the caller to count.
pub(crate) fn parse(
    text: &str,
    limits: &SdpLimits,
) -> Result<Sdp, (Status, Option<crate::sip::sdp::SdpLimit>)> {
    Sdp::parse_limited(text, limits).map_err(|e| (sdp_status(&e), e.limit))
}

/// Whether the relay carries an m= line: plain RTP, or SRTP with at least
/// one usable `a=crypto` line, with a port. Other transports (DTLS-SRTP,
/// T.38, BFCP, MSRP) are sent on disabled.
fn carried(media: &Media) -> bool {
    carried_under(media, &SdesPolicy::default())
}

/// [`carried`] under a request's SDES options: an SRTP line none of whose
/// keys they allow is not carried (RFC 4568: such a line is rejected).
fn carried_under(media: &Media, policy: &SdesPolicy) -> bool {
    !media.is_disabled()
        && (media.is_rtp()
            || media.is_udptl()
            || media.is_dtls()
            || (media.is_srtp() && has_usable_crypto_under(media, policy)))
}

fn has_usable_crypto_under(media: &Media, policy: &SdesPolicy) -> bool {
    media
        .crypto
        .iter()
        .any(|(value, _)| crypto::parse(value, policy).is_ok_and(|l| l.key.is_ok()))
}

/// Why an m= line the relay leaves out is left out, for errors.
pub(crate) fn left_out_reason(media: &Media) -> String {
    if media.is_srtp() {
        let policy = SdesPolicy::default();
        let lines: Vec<crypto::CryptoLine> = media
            .crypto
            .iter()
            .filter_map(|(value, _)| crypto::parse(value, &policy).ok())
            .collect();
        format!(
            "line {}: {} with {}",
            media.line,
            media.proto,
            crypto::why_none(&lines)
        )
    } else {
        format!(
            "line {}: transport {} is not RTP; baton relays RTP (RTP/AVP(F), RTP/SAVP(F), UDP/TLS/RTP/SAVP(F))",
            media.line, media.proto
        )
    }
}

/// Every m= line of a body, read.
pub(crate) fn media_of(sdp: &Sdp) -> Result<Vec<Media>, Status> {
    let mut media: Vec<Media> = (0..sdp.media_count())
        .map(|index| sdp.media(index).map_err(|e| sdp_status(&e)))
        .collect::<Result<_, _>>()?;
    // A bundle-only line is carried only on a BUNDLE group's transport
    // that some line of the group opens with a port; otherwise it is what
    // its port says, disabled (RFC 8843 §6).
    let groups = sdp.bundle_groups();
    let opened: Vec<bool> = groups
        .iter()
        .map(|group| {
            media.iter().any(|m| {
                !m.webrtc.bundle_only
                    && !m.is_disabled()
                    && m.is_dtls()
                    && m.webrtc.mid.as_ref().is_some_and(|mid| group.contains(mid))
            })
        })
        .collect();
    for m in &mut media {
        let in_opened_group = m.webrtc.mid.as_ref().is_some_and(|mid| {
            groups
                .iter()
                .zip(&opened)
                .any(|(group, &open)| open && group.contains(mid))
        });
        if m.webrtc.bundle_only && !in_opened_group {
            m.webrtc.bundle_only = false;
        }
    }
    Ok(media)
}

/// The sender's addresses for one stream, as an `Endpoint`.
pub(crate) fn endpoint_of(media: &Media) -> Option<v1::Endpoint> {
    let rtp = media.rtp?;
    Some(v1::Endpoint {
        rtp: rtp.to_string(),
        rtcp: media.rtcp.map(|a| a.to_string()).unwrap_or_default(),
    })
}

fn family_of(addr: Option<SocketAddr>) -> v1::AddressFamily {
    match addr {
        Some(a) if a.is_ipv6() => v1::AddressFamily::Ipv6,
        Some(_) => v1::AddressFamily::Ipv4,
        None => v1::AddressFamily::Unspecified,
    }
}

/// Streams for a new session from the first body: one per carried m= line.
#[cfg(test)]
pub(crate) fn streams_from(
    sdp: &Sdp,
    from: Party,
    other_family: v1::AddressFamily,
) -> Result<(Vec<v1::StreamSpec>, Layout), Status> {
    streams_from_under(sdp, from, other_family, &SdesPolicy::default())
}

/// [`streams_from`] under a request's SDES options.
pub(crate) fn streams_from_under(
    sdp: &Sdp,
    from: Party,
    other_family: v1::AddressFamily,
    policy: &SdesPolicy,
) -> Result<(Vec<v1::StreamSpec>, Layout), Status> {
    let media = media_of(sdp)?;
    let mut layout = Vec::with_capacity(media.len());
    let mut streams = Vec::new();
    for m in &media {
        if !carried_under(m, policy) {
            layout.push(None);
            continue;
        }
        layout.push(Some(streams.len()));
        let peer = endpoint_of(m);
        let family = family_of(m.rtp);
        let (user_peer, remote_peer, user_family, remote_family) = match from {
            Party::User => (peer, None, family, other_family),
            Party::Remote => (None, peer, other_family, family),
        };
        streams.push(v1::StreamSpec {
            kind: m.kind.clone(),
            codecs: m.codecs.clone(),
            rtcp_mux: m.rtcp_mux,
            user_peer,
            remote_peer,
            user_family: user_family as i32,
            remote_family: remote_family as i32,
            ptime_ms: m.ptime.unwrap_or(0),
            // From SDP, the keys are negotiated from the body (see
            // `crypto_from`), not described.
            user_srtp: None,
            remote_srtp: None,
            udptl: m.is_udptl(),
        });
    }
    if streams.is_empty() {
        let reason = if media.is_empty() {
            "the body has no m= line".to_owned()
        } else {
            media
                .iter()
                .find(|m| !m.is_disabled())
                .map_or_else(|| "every m= line has port 0".to_owned(), left_out_reason)
        };
        return Err(Status::unimplemented(format!(
            "SDP: no stream baton can relay ({reason})"
        )));
    }
    Ok((streams, layout))
}

/// Each carried stream's crypto for a session's first body from `from`:
/// the sender's keys read from the body (the relay's answer chosen), and
/// toward the other party the requested transport, or the body's.
pub(crate) fn crypto_from(
    sdp: &Sdp,
    layout: &Layout,
    from: Party,
    other_transport: Option<Transport>,
    policy: &SdesPolicy,
    webrtc: WebRtcToward,
) -> Result<Vec<[PartyCrypto; 2]>, Status> {
    let media = media_of(sdp)?;
    let mut out = Vec::new();
    for (m, slot) in media.iter().zip(layout) {
        if slot.is_none() {
            continue;
        }
        let transport = transport_of(m)?;
        let mut parties: [PartyCrypto; 2] = Default::default();
        if m.is_udptl() {
            // T.38 goes plain both ways, whatever the other streams use.
            out.push(parties);
            continue;
        }
        parties[from.index()]
            .receive(transport, m, policy)
            .map_err(Status::unimplemented)?;
        parties[from.other().index()].offer_toward(other_transport.unwrap_or(transport), webrtc);
        out.push(parties);
    }
    Ok(out)
}

/// The transport of a carried m= line.
pub(crate) fn transport_of(media: &Media) -> Result<Transport, Status> {
    if media.is_udptl() {
        // Plain datagrams: no keys either way.
        return Ok(Transport::Avp);
    }
    Transport::parse(&media.proto)
        .ok_or_else(|| Status::unimplemented(format!("SDP {}", left_out_reason(media))))
}

/// Reads a request's transport toward the other party ("" for none).
pub(crate) fn requested_transport(text: &str) -> Result<Option<Transport>, Status> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    Transport::parse(text.trim()).map(Some).ok_or_else(|| {
        Status::invalid_argument(format!(
            "transport {} is not RTP/AVP, RTP/AVPF, RTP/SAVP, RTP/SAVPF, UDP/TLS/RTP/SAVP or UDP/TLS/RTP/SAVPF",
            crate::status::excerpt(text)
        ))
    })
}

/// Reads a request's WebRTC options.
pub(crate) fn webrtc_toward(options: Option<&v1::WebRtcOptions>) -> Result<WebRtcToward, Status> {
    use baton_relay::core::dtls::DtlsRole;
    let Some(options) = options else {
        return Ok(WebRtcToward::default());
    };
    let role = match options.dtls_setup.trim().to_ascii_lowercase().as_str() {
        "" | "actpass" => None,
        "active" => Some(DtlsRole::Client),
        "passive" => Some(DtlsRole::Server),
        other => {
            return Err(Status::invalid_argument(format!(
                "dtls_setup {} is not actpass, active or passive",
                crate::status::excerpt(other)
            )));
        }
    };
    Ok(WebRtcToward {
        force_ice: options.force_ice,
        role,
    })
}

/// Reads a request's SDES options.
pub(crate) fn sdes_policy(options: Option<&v1::SdesOptions>) -> Result<SdesPolicy, Status> {
    use baton_relay::core::srtp::Suite;
    let Some(options) = options else {
        return Ok(SdesPolicy::default());
    };
    let suites = |names: &[String]| -> Result<Vec<Suite>, Status> {
        if names.len() > Suite::ALL.len() * 2 {
            return Err(Status::invalid_argument("too many SDES suites"));
        }
        names
            .iter()
            .map(|name| {
                Suite::from_name(name.trim()).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "unknown SRTP suite {}",
                        crate::status::excerpt(name)
                    ))
                })
            })
            .collect()
    };
    let policy = SdesPolicy {
        only: suites(&options.only)?,
        excluded: suites(&options.exclude)?,
        pad: options.pad,
        lifetime: options.lifetime,
        accept_plain: options.accept_plain,
    };
    if policy.default_offer().is_empty() {
        return Err(Status::invalid_argument(
            "the SDES options leave no suite to use",
        ));
    }
    Ok(policy)
}

/// How one stream is secured toward the receiver of a body.
#[derive(Debug, Clone)]
pub(crate) struct StreamSecurity {
    /// The receiver's transport.
    pub transport: Transport,
    /// Its attribute lines (without `a=`): `a=crypto`, or the ICE
    /// credentials and DTLS fingerprint and setup.
    pub lines: Vec<String>,
    /// The relay is an ICE-lite agent toward the receiver on this stream:
    /// the body gets `a=ice-lite`, a host candidate and `a=rtcp-mux`.
    pub ice: bool,
}

/// The transport and security lines of every stream in a body the relay
/// sends to `receiver` (an offer of fresh keys to a party that has none).
pub(crate) fn security_toward(
    streams: &mut [NegotiatedStream],
    receiver: Party,
    policy: &SdesPolicy,
    relay: &Fingerprint,
) -> Vec<StreamSecurity> {
    streams
        .iter_mut()
        .map(|s| {
            let party = &mut s.crypto[receiver.index()];
            StreamSecurity {
                transport: party.transport,
                ice: party.ice.is_some(),
                lines: party.lines_toward(policy, relay),
            }
        })
        .collect()
}

/// Matches a body's m= lines to existing streams by media type, in order
/// (for a party whose first body this is, on a session it did not start).
pub(crate) fn match_by_kind(media: &[Media], streams: &[NegotiatedStream]) -> Layout {
    let mut taken = vec![false; streams.len()];
    media
        .iter()
        .map(|m| {
            if !carried(m) {
                return None;
            }
            let index = (0..streams.len()).find(|&s| !taken[s] && streams[s].kind == m.kind)?;
            taken[index] = true;
            Some(index)
        })
        .collect()
}

/// A T.38 switch that moves a stream to another m= line: the line it was
/// on, the line it moves to, and the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Relocation {
    pub from_line: usize,
    pub to_line: usize,
    pub stream: usize,
}

/// T.38 re-INVITEs that move a stream instead of changing its line in
/// place: some gateways disable the audio line (port 0) and add `m=image`
/// (RFC 3264 §8.2 and §8.4 allow both), and switch back by re-enabling an
/// audio line and disabling the image one. Each disabled line the relay
/// carried is paired, in order, with an enabled line it does not carry
/// whose transport switches between RTP and UDPTL; the stream keeps its
/// relay ports and moves there.
pub(crate) fn t38_relocations(
    known: &Layout,
    media: &[Media],
    streams: &[NegotiatedStream],
) -> Vec<Relocation> {
    let mut taken = vec![false; media.len()];
    let mut moves = Vec::new();
    for (from_line, slot) in known.iter().enumerate() {
        let Some(stream) = *slot else { continue };
        let (Some(line), Some(current)) = (media.get(from_line), streams.get(stream)) else {
            continue;
        };
        if !line.is_disabled() {
            continue;
        }
        let target = (0..media.len()).find(|&j| {
            !taken[j]
                && known.get(j).copied().flatten().is_none()
                && carried(&media[j])
                && (media[j].is_udptl() || media[j].is_rtp())
                && media[j].is_udptl() != current.udptl
        });
        if let Some(to_line) = target {
            taken[to_line] = true;
            moves.push(Relocation {
                from_line,
                to_line,
                stream,
            });
        }
    }
    moves
}

/// `layout` with `moves` applied: each stream taken off its old line and
/// put on its new one (the layout grown as needed).
pub(crate) fn relocate(layout: &Layout, moves: &[Relocation]) -> Layout {
    let mut layout = layout.clone();
    for m in moves {
        if layout.get(m.to_line).copied().flatten().is_some() {
            // That line carries another stream in this view: left as is.
            continue;
        }
        if let Some(slot) = layout.iter_mut().find(|s| **s == Some(m.stream)) {
            *slot = None;
        }
        if layout.len() <= m.to_line {
            layout.resize(m.to_line + 1, None);
        }
        layout[m.to_line] = Some(m.stream);
    }
    layout
}

/// The layout of a further body from a party: its known layout, extended
/// by m= lines added at the end (allowed only if not relayed: the relay
/// cannot add a stream to a live session).
pub(crate) fn extend_layout(known: &Layout, media: &[Media]) -> Result<Layout, Status> {
    if media.len() < known.len() {
        return Err(Status::invalid_argument(format!(
            "SDP: {} m= lines, but this party's earlier body had {} (RFC 3264 §8: m= lines are never removed)",
            media.len(),
            known.len()
        )));
    }
    let mut layout = known.clone();
    for m in &media[known.len()..] {
        if carried(m) {
            return Err(Status::unimplemented(format!(
                "SDP line {}: adding a stream to a live session is not supported",
                m.line
            )));
        }
        layout.push(None);
    }
    for (m, slot) in media.iter().zip(&layout) {
        if slot.is_none() && carried(m) {
            return Err(Status::unimplemented(format!(
                "SDP line {}: enabling a stream the relay did not carry is not supported",
                m.line
            )));
        }
    }
    Ok(layout)
}

/// The relay's addresses toward `side`, per stream.
pub(crate) fn relay_toward(
    streams: &[NegotiatedStream],
    side: Party,
) -> Vec<Option<RelayEndpoint>> {
    streams
        .iter()
        .map(|s| {
            let local = &s.local[side.index()];
            let rtp: SocketAddr = local.rtp.parse().ok()?;
            let rtcp = local.rtcp.parse().unwrap_or(rtp);
            Some(RelayEndpoint { rtp, rtcp })
        })
        .collect()
}

/// `sender`'s body rewritten for the other party: in the receiver's m= line
/// layout, each carried stream pointing at the relay's legs toward the
/// receiver, everything else as the sender wrote it.
pub(crate) fn render(
    sender: &Sdp,
    sender_layout: &Layout,
    receiver: Option<(&Sdp, &Layout)>,
    relay: &[Option<RelayEndpoint>],
    payloads: &[Vec<(u8, u8)>],
    security: &[StreamSecurity],
    declined: &[usize],
) -> Sdp {
    // (pick, stream carried there)
    let mut picks: Vec<(Pick<'_>, Option<usize>)> = Vec::new();
    match receiver {
        None => {
            for (j, slot) in sender_layout.iter().enumerate() {
                picks.push((Ok(j), *slot));
            }
        }
        Some((receiver_body, receiver_layout)) => {
            for (k, slot) in receiver_layout.iter().enumerate() {
                let own = match slot {
                    Some(s) => sender_layout.iter().position(|t| *t == Some(*s)),
                    None => (sender_layout.get(k) == Some(&None)).then_some(k),
                };
                match own {
                    Some(j) => picks.push((Ok(j), *slot)),
                    None => picks.push((Err((receiver_body, k)), None)),
                }
            }
            // m= lines the sender added beyond the receiver's view.
            for j in receiver_layout.len()..sender_layout.len() {
                picks.push((Ok(j), None));
            }
        }
    }
    let sections: Vec<Pick<'_>> = picks.iter().map(|(p, _)| *p).collect();
    let mut body = sender.with_sections(&sections);
    // m= lines (of the body) on which the relay is an ICE-lite agent.
    let mut ice_streams: Vec<(usize, SocketAddr)> = Vec::new();
    // The session-level c= names the first carried stream's relay address.
    let first_ip = picks
        .iter()
        .find_map(|(pick, stream)| match (pick, stream) {
            (Ok(_), Some(s)) => relay.get(*s).copied().flatten().map(|e| e.rtp.ip()),
            (Ok(_) | Err(_), Some(_) | None) => None,
        });
    for (index, (pick, stream)) in picks.iter().enumerate() {
        match (stream, pick) {
            (Some(s), Ok(_)) if declined.contains(s) => body.disable(index),
            (Some(s), Ok(_)) => match relay.get(*s).copied().flatten() {
                Some(endpoint) => {
                    body.point_at(index, endpoint, first_ip);
                    if let Some(map) = payloads.get(*s) {
                        body.renumber(index, map);
                    }
                    // T.38 keeps its own transport, plain. Otherwise the
                    // receiver's own transport and the relay's keys for
                    // it: the sender's keys never cross the relay.
                    let udptl = body.media(index).is_ok_and(|m| m.is_udptl());
                    match security.get(*s).filter(|_| !udptl) {
                        Some(secured) => {
                            body.set_transport(
                                index,
                                Some(secured.transport.name()),
                                &secured.lines,
                            );
                            if secured.ice {
                                body.add_media_attribute(index, &host_candidate(&endpoint));
                                body.add_media_attribute(index, "end-of-candidates");
                                body.require_rtcp_mux(index);
                                ice_streams.push((index, endpoint.rtp));
                            }
                        }
                        None => body.set_transport(index, None, &[]),
                    }
                }
                None => body.disable(index),
            },
            (Some(_) | None, Ok(_) | Err(_)) => body.disable(index),
        }
    }
    body.finish_session(first_ip);
    body.remove_groups();
    // MIDs (RFC 8843): the receiver's own where its body named them, else
    // the sender's, else the m= line's index.
    let receiver_mid = |index: usize| {
        let (receiver_body, _) = receiver?;
        receiver_body.media(index).ok()?.webrtc.mid
    };
    let mut mids = Vec::with_capacity(ice_streams.len());
    for &(index, transport) in &ice_streams {
        let mid = receiver_mid(index).or_else(|| body.media(index).ok().and_then(|m| m.webrtc.mid));
        let mid = crate::sip::sdp::mid_or_index(mid, index);
        body.set_mid(index, &mid);
        mids.push((mid, transport));
    }
    body.set_ice_lite_transports(&mids);
    body.drop_dangling_groups();
    body
}

/// Gives `body` the origin and version the receiver expects after `sent`,
/// and remembers it.
pub(crate) fn stamp(body: &mut Sdp, sent: &mut Option<Sent>) {
    match sent {
        None => *sent = Some(first_sent(body)),
        Some(previous) => {
            body.set_origin_identity(&previous.identity);
            if let Some(name) = &previous.session_name {
                body.set_session_name(name);
            }
            let key = body.identity_key();
            if key != previous.key {
                previous.version = previous.version.wrapping_add(1);
                previous.key = key;
            }
            body.set_version(previous.version);
            previous.text = body.render();
        }
    }
}

/// A fresh record of what was sent, for a body that starts a dialog.
pub(crate) fn first_sent(body: &Sdp) -> Sent {
    Sent {
        identity: body.origin_identity(),
        session_name: body.session_name(),
        key: body.identity_key(),
        version: body.version(),
        text: body.render(),
    }
}

/// The direction of stream `stream` in a party's last body.
pub(crate) fn direction_in(
    body: Option<&Sdp>,
    layout: Option<&Layout>,
    stream: usize,
) -> Option<(Direction, Option<u32>)> {
    let (body, layout) = (body?, layout?);
    let index = layout.iter().position(|s| *s == Some(stream))?;
    let media = body.media(index).ok()?;
    Some((media.direction, media.ptime))
}

/// The answer to a new device's offer, per m= line of the offer.
pub(crate) struct AnswerPlan {
    pub offer: Sdp,
    pub media: Vec<Media>,
    pub layout: Layout,
    /// Per stream of the session: the new device's transport and keys (the
    /// relay's answer chosen from its offer).
    pub crypto: Vec<PartyCrypto>,
    /// How the relay writes its keys.
    pub policy: SdesPolicy,
    /// The relay's DTLS certificate, for a WebRTC device's answer.
    pub fingerprint: Fingerprint,
    /// Per stream of the session: the BUNDLE transport the new device
    /// offered it on.
    pub bundles: Vec<Option<StreamBundle>>,
}

impl AnswerPlan {
    /// Reads a new device's offer, matches its m= lines to the streams and
    /// chooses the keys of its SRTP lines.
    pub fn new(
        offer: Sdp,
        streams: &[NegotiatedStream],
        policy: &SdesPolicy,
        fingerprint: Fingerprint,
    ) -> Result<Self, Status> {
        let media = media_of(&offer)?;
        // SRTP lines with no key usable under this request's options take
        // no stream: a plain line of the same kind (a best-effort SRTP
        // offer) gets it instead.
        let usable: Vec<Media> = media
            .iter()
            .cloned()
            .map(|mut m| {
                if m.is_srtp() && !has_usable_crypto_under(&m, policy) {
                    m.port = 0;
                }
                m
            })
            .collect();
        let layout = match_by_kind(&usable, streams);
        if layout.iter().all(Option::is_none) {
            let reason = media
                .iter()
                .find(|m| !carried(m))
                .map_or_else(String::new, |m| format!(" ({})", left_out_reason(m)));
            return Err(Status::failed_precondition(format!(
                "SDP: no m= line of the offer matches a stream of the session{reason}"
            )));
        }
        // RFC 4568 §7.1.2: an SRTP m= line none of whose a=crypto lines the
        // relay can honour (under this request's SDES options) is rejected
        // in the answer (port 0); the offer fails only if nothing is left.
        let mut layout = layout;
        let mut crypto = vec![PartyCrypto::default(); streams.len()];
        let mut declined = None;
        for (m, slot) in media.iter().zip(layout.iter_mut()) {
            if let Some(party) = slot.and_then(|s| crypto.get_mut(s)) {
                let read = party.receive(transport_of(m)?, m, policy);
                if let Err(reason) = read {
                    *slot = None;
                    declined.get_or_insert(reason);
                }
            }
        }
        if let (true, Some(reason)) = (layout.iter().all(Option::is_none), declined) {
            return Err(Status::unimplemented(reason));
        }
        let bundles = bundles_in_offer(&offer, &media, &layout, streams.len(), |s| {
            crypto[s].is_webrtc()
        });
        // Bundled streams share one transport: its owner's credentials.
        for s in 0..crypto.len() {
            if let Some(primary) = StreamBundle::owner_of(bundles[s].as_ref(), s) {
                let owner = crypto[primary].clone();
                crypto[s].share_transport_of(&owner);
            }
        }
        Ok(Self {
            offer,
            media,
            layout,
            crypto,
            policy: policy.clone(),
            fingerprint,
            bundles,
        })
    }

    /// The transfer's per-stream description of the new device.
    /// The keyframe request the new device offered for stream `stream`
    /// (both, when its line offers neither or there is none).
    pub fn keyframe_by(&self, stream: usize) -> baton_relay::core::keyframe::KeyframeBy {
        let (pli, fir) = self
            .layout
            .iter()
            .position(|t| *t == Some(stream))
            .and_then(|j| self.media.get(j))
            .map_or((false, false), |m| m.keyframe_feedback);
        baton_relay::core::keyframe::KeyframeBy::negotiated(pli, fir)
    }

    pub fn transfer_streams(&self, stream_count: usize) -> Vec<v1::TransferStream> {
        (0..stream_count)
            .map(|s| {
                let Some(j) = self.layout.iter().position(|t| *t == Some(s)) else {
                    return v1::TransferStream::default();
                };
                let m = &self.media[j];
                v1::TransferStream {
                    codecs: m.codecs.clone(),
                    peer: endpoint_of(m),
                    family: family_of(m.rtp) as i32,
                    rtcp_mux: Some(m.rtcp_mux),
                    // The keys are in `crypto`.
                    srtp: None,
                }
            })
            .collect()
    }

    /// The answer: per offered m= line, the relay's new leg and the codecs
    /// shared with the remote (in the offer's numbering, with the remote's
    /// format parameters), direction from both parties'.
    pub fn answer(
        &self,
        template: Option<&Sdp>,
        remote_directions: &[Option<(Direction, Option<u32>)>],
        streams: &[NegotiatedStream],
        new_legs: &[v1::Endpoint],
        shared: &[Vec<(u8, u8)>],
        fallback_origin: (u64, std::net::IpAddr),
    ) -> Sdp {
        let fingerprint = &self.fingerprint;
        let media: Vec<AnswerMedia> = self
            .media
            .iter()
            .zip(&self.layout)
            .map(|(m, slot)| {
                let rejected = AnswerMedia {
                    relay: None,
                    codecs: Vec::new(),
                    direction: Direction::Inactive,
                    ptime: None,
                    rtcp_mux: false,
                    security: Vec::new(),
                    ice: false,
                };
                let Some(s) = *slot else {
                    return rejected;
                };
                let Some(local) = new_legs.get(s) else {
                    return rejected;
                };
                let Ok(rtp) = local.rtp.parse::<SocketAddr>() else {
                    return rejected;
                };
                let rtcp = local.rtcp.parse().unwrap_or(rtp);
                let codecs = shared
                    .get(s)
                    .map(|pairs| {
                        pairs
                            .iter()
                            .filter_map(|&(device_pt, remote_pt)| {
                                let mut codec = m
                                    .codecs
                                    .iter()
                                    .find(|c| c.payload_type == u32::from(device_pt))?
                                    .clone();
                                let remote = streams[s]
                                    .codecs
                                    .iter()
                                    .find(|c| c.payload_type == u32::from(remote_pt));
                                if let Some(remote) = remote.filter(|r| !r.fmtp.is_empty()) {
                                    codec.fmtp.clone_from(&remote.fmtp);
                                }
                                Some(codec)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let (remote_direction, remote_ptime) = remote_directions
                    .get(s)
                    .copied()
                    .flatten()
                    .unwrap_or((Direction::SendRecv, None));
                let ptime = remote_ptime.or(Some(streams[s].ptime).filter(|p| *p > 0));
                AnswerMedia {
                    relay: Some(RelayEndpoint { rtp, rtcp }),
                    codecs,
                    direction: Direction::from_flags(
                        remote_direction.sends() && m.direction.receives(),
                        remote_direction.receives() && m.direction.sends(),
                    ),
                    ptime,
                    rtcp_mux: m.rtcp_mux,
                    security: self.crypto.get(s).map_or_else(Vec::new, |party| {
                        // An answer: the relay's key of the chosen tag, or
                        // its ICE and DTLS lines with the role it took.
                        party.clone().lines_toward(&self.policy, fingerprint)
                    }),
                    ice: self.crypto.get(s).is_some_and(|party| party.ice.is_some()),
                }
            })
            .collect();
        crate::sip::sdp::write_answer(&self.offer, template, &media, fallback_origin)
    }
}

/// The first body of a session, from `from`: the streams' hold as it says,
/// the body rewritten for the other party (pointing at the relay), and the
/// offer/answer state that starts with it.
pub(crate) fn answer_created(
    streams: &mut [NegotiatedStream],
    from: Party,
    body: Sdp,
    layout: Layout,
    policy: &SdesPolicy,
    fingerprint: &Fingerprint,
) -> Result<(String, SdpState), Status> {
    let other = from.other();
    let media = media_of(&body)?;
    for (m, slot) in media.iter().zip(&layout) {
        if let Some(stream) = slot.and_then(|s| streams.get_mut(s)) {
            stream.held[from.index()] = holds(m);
        }
    }
    let relay = relay_toward(streams, other);
    let security = security_toward(streams, other, policy, fingerprint);
    let mut out = render(&body, &layout, None, &relay, &[], &security, &[]);
    let mut state = SdpState::default();
    stamp(&mut out, &mut state.sent[other.index()]);
    state.layout[from.index()] = Some(layout);
    state.received[from.index()] = Some(body);
    Ok((out.render(), state))
}

/// Whether `media` holds its stream: a direction other than sendrecv.
pub(crate) fn holds(media: &Media) -> bool {
    media.direction != Direction::SendRecv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_fingerprint() -> Fingerprint {
        Fingerprint::of_certificate(baton_relay::core::dtls::HashFunction::Sha256, b"test")
    }

    /// One body of the corpus and what the relay must read from it.
    struct Case {
        name: &'static str,
        body: &'static str,
        /// Per m= line: the media type if the relay carries it.
        carried: &'static [Option<&'static str>],
        /// Codec names of the carried streams, in order.
        codecs: &'static [&'static [&'static str]],
        /// The sender's RTP address of the first stream, if signalled.
        peer: Option<&'static str>,
        rtcp_mux: bool,
        held: bool,
    }

    macro_rules! body {
        ($file:literal) => {
            include_str!(concat!("../../tests/sdp/", $file))
        };
    }

    const CORPUS: &[Case] = &[
        Case {
            name: "desk phone",
            body: body!("desk-phone.sdp"),
            carried: &[Some("audio")],
            codecs: &[&["G722", "PCMU", "PCMA", "G729", "telephone-event"]],
            peer: Some("192.0.2.41:11796"),
            rtcp_mux: false,
            held: false,
        },
        Case {
            name: "video endpoint with BFCP",
            body: body!("video-endpoint-bfcp.sdp"),
            carried: &[Some("audio"), Some("video"), None],
            codecs: &[
                &["opus", "G722", "PCMU", "PCMA", "telephone-event"],
                &["H264", "H264"],
            ],
            peer: Some("192.0.2.77:24580"),
            rtcp_mux: false,
            held: false,
        },
        Case {
            name: "softphone with ICE and a disabled video line",
            body: body!("softphone-ice.sdp"),
            carried: &[Some("audio"), None],
            codecs: &[&[
                "opus",
                "speex",
                "speex",
                "PCMU",
                "PCMA",
                "telephone-event",
                "telephone-event",
                "telephone-event",
            ]],
            peer: Some("198.51.100.23:7078"),
            rtcp_mux: false,
            held: false,
        },
        Case {
            name: "IPv6 softphone with rtcp-mux",
            body: body!("softphone-ipv6-mux.sdp"),
            carried: &[Some("audio")],
            codecs: &[&["opus", "G722", "PCMU", "PCMA", "GSM", "telephone-event"]],
            peer: Some("[2001:db8:10::5]:52016"),
            rtcp_mux: true,
            held: false,
        },
        Case {
            name: "WebRTC gateway (plain RTP toward SIP, ICE)",
            body: body!("webrtc-gateway.sdp"),
            carried: &[Some("audio")],
            codecs: &[&["opus", "PCMU", "PCMA", "telephone-event"]],
            peer: Some("203.0.113.9:16384"),
            rtcp_mux: true,
            held: false,
        },
        Case {
            name: "carrier trunk",
            body: body!("carrier.sdp"),
            carried: &[Some("audio")],
            codecs: &[&["PCMU", "PCMA", "telephone-event"]],
            peer: Some("198.51.100.201:17828"),
            rtcp_mux: false,
            held: false,
        },
        Case {
            name: "PBX with LF line endings",
            body: body!("pbx-lf-endings.sdp"),
            carried: &[Some("audio")],
            codecs: &[&["PCMA", "PCMU", "G722", "telephone-event", "CN"]],
            peer: Some("192.0.2.150:20412"),
            rtcp_mux: false,
            held: false,
        },
        Case {
            name: "hold with sendonly",
            body: body!("hold-sendonly.sdp"),
            carried: &[Some("audio")],
            codecs: &[&["PCMU", "telephone-event"]],
            peer: Some("192.0.2.41:11796"),
            rtcp_mux: false,
            held: true,
        },
        Case {
            name: "hold with c=0.0.0.0 (RFC 2543)",
            body: body!("hold-rfc2543.sdp"),
            carried: &[Some("audio")],
            codecs: &[&["PCMA", "PCMU"]],
            peer: None,
            rtcp_mux: false,
            held: true,
        },
        Case {
            name: "best-effort SRTP: both lines relayed, each in its own transport",
            body: body!("srtp-best-effort.sdp"),
            carried: &[Some("audio"), Some("audio")],
            codecs: &[
                &["PCMU", "PCMA", "telephone-event"],
                &["PCMU", "PCMA", "telephone-event"],
            ],
            peer: Some("192.0.2.88:3456"),
            rtcp_mux: false,
            held: false,
        },
    ];

    /// Relay addresses for `count` streams: user side 10.9.0.1, remote side
    /// 10.9.0.2 (or 2001:db8:99::2 for IPv6).
    fn records(specs: &[v1::StreamSpec], ipv6_remote: bool) -> Vec<NegotiatedStream> {
        specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let port = 40000 + 2 * i as u16;
                let user: SocketAddr = format!("10.9.0.1:{port}").parse().expect("addr");
                let remote: SocketAddr = if ipv6_remote {
                    format!("[2001:db8:99::2]:{}", port + 100)
                } else {
                    format!("10.9.0.2:{}", port + 100)
                }
                .parse()
                .expect("addr");
                let endpoint = |a: SocketAddr| v1::Endpoint {
                    rtp: a.to_string(),
                    rtcp: SocketAddr::new(a.ip(), a.port() + 1).to_string(),
                };
                NegotiatedStream {
                    kind: spec.kind.clone(),
                    udptl: spec.udptl,
                    datagrams: spec.udptl,
                    codecs: spec.codecs.clone(),
                    rtcp_mux: [spec.rtcp_mux; 2],
                    rtcp_sockets: true,
                    local: [endpoint(user), endpoint(remote)],
                    ptime: spec.ptime_ms,
                    held: [false; 2],
                    rejected: false,
                    user_payloads: Vec::new(),
                    crypto: Default::default(),
                    bundle: Default::default(),
                }
            })
            .collect()
    }

    #[test]
    fn t38_relocations_pair_disabled_lines_with_added_lines_that_switch_transport() {
        let body = |lines: &str| {
            Sdp::parse(&format!(
                "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n{lines}"
            ))
            .expect("parse")
        };
        let audio = "m=audio 4000 RTP/AVP 0\r\n";
        let audio_off = "m=audio 0 RTP/AVP 0\r\n";
        let image = "m=image 4002 udptl t38\r\n";
        let image_off = "m=image 0 udptl t38\r\n";
        let video = "m=video 4004 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n";
        let (specs, layout) =
            streams_from(&body(audio), Party::User, v1::AddressFamily::Ipv4).expect("streams");
        let mut streams = records(&specs, false);
        let moves = |text: String, streams: &[NegotiatedStream], layout: &Layout| {
            t38_relocations(layout, &media_of(&body(&text)).expect("media"), streams)
        };
        let to_fax = moves(format!("{audio_off}{image}"), &streams, &layout);
        assert_eq!(
            to_fax,
            [Relocation {
                from_line: 0,
                to_line: 1,
                stream: 0
            }]
        );
        let moved = relocate(&layout, &to_fax);
        assert_eq!(moved, [None, Some(0)]);
        // Not a T.38 switch: audio put on hold by port 0, video added.
        assert!(moves(format!("{audio_off}{video}"), &streams, &layout).is_empty());
        // Nothing disabled: an added image line is a new stream (refused).
        assert!(moves(format!("{audio}{image}"), &streams, &layout).is_empty());
        // An added line that is rejected too: nothing to move to.
        assert!(moves(format!("{audio_off}{image_off}"), &streams, &layout).is_empty());
        // And back: the T.38 stream goes to an audio line enabled again.
        streams[0].udptl = true;
        let back = moves(format!("{audio}{image_off}"), &streams, &moved);
        assert_eq!(
            back,
            [Relocation {
                from_line: 1,
                to_line: 0,
                stream: 0
            }]
        );
        assert_eq!(relocate(&moved, &back), [Some(0), None]);
        // A view whose target line carries another stream is left alone.
        let other = vec![Some(0), Some(1)];
        assert_eq!(relocate(&other, &to_fax), other);
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.is_empty()).collect()
    }

    fn is_ice_line(line: &str) -> bool {
        crate::sip::sdp::ICE_ATTRIBUTES.iter().any(|name| {
            line.strip_prefix("a=")
                .and_then(|rest| rest.strip_prefix(name))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))
        })
    }

    /// Checks that `output` is `input` with only the relay's lines changed:
    /// m= ports, c= addresses (some added at media level), a=rtcp, and ICE
    /// attributes removed, a=crypto lines the relay's own (each party has
    /// its keys). Returns the number of lines compared unchanged.
    fn assert_only_relay_lines_changed(name: &str, input: &str, output: &str) -> usize {
        // Each party's keys and DTLS identity are its own; the relay's ICE
        // lines and BUNDLE group are its own too.
        let relays = |l: &&str| {
            is_ice_line(l)
                || [
                    "a=crypto:",
                    "a=setup:",
                    "a=fingerprint:",
                    "a=tls-id:",
                    "a=group:",
                    "a=end-of-candidates",
                ]
                .iter()
                .any(|p| l.starts_with(p))
        };
        let input: Vec<&str> = lines(input).into_iter().filter(|l| !relays(l)).collect();
        let output: Vec<&str> = lines(output).into_iter().filter(|l| !relays(l)).collect();
        let (mut i, mut o, mut same) = (0, 0, 0);
        while i < input.len() || o < output.len() {
            let (Some(a), Some(b)) = (input.get(i), output.get(o)) else {
                panic!("{name}: bodies differ in length at input {i} / output {o}\n{output:#?}");
            };
            if b.starts_with("c=") && !a.starts_with("c=") {
                let previous = output[o - 1];
                assert!(
                    previous.starts_with("m=") || previous.starts_with("i="),
                    "{name}: c= added after {previous:?}"
                );
                o += 1;
                continue;
            }
            if a.starts_with("m=") {
                let strip_port = |l: &str| {
                    let mut f: Vec<&str> = l.split(' ').collect();
                    f[1] = "_";
                    f.join(" ")
                };
                assert_eq!(strip_port(a), strip_port(b), "{name}: m= line");
            } else if a.starts_with("c=") || a.starts_with("a=rtcp:") {
                assert_eq!(&a[..2], &b[..2], "{name}: {a:?} became {b:?}");
            } else {
                assert_eq!(a, b, "{name}: a line changed");
                same += 1;
            }
            i += 1;
            o += 1;
        }
        same
    }

    #[test]
    fn corpus_round_trips_with_only_the_relay_lines_changed() {
        for case in CORPUS {
            let name = case.name;
            let body = Sdp::parse(case.body).unwrap_or_else(|e| panic!("{name}: {e}"));
            let (specs, layout) = streams_from(&body, Party::User, v1::AddressFamily::Unspecified)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let carried: Vec<Option<String>> = layout
                .iter()
                .map(|slot| slot.map(|s| specs[s].kind.clone()))
                .collect();
            let expected: Vec<Option<String>> =
                case.carried.iter().map(|k| k.map(str::to_owned)).collect();
            assert_eq!(carried, expected, "{name}: streams");
            for (spec, names) in specs.iter().zip(case.codecs) {
                let got: Vec<&str> = spec.codecs.iter().map(|c| c.name.as_str()).collect();
                assert_eq!(&got, names, "{name}: codecs");
            }
            assert_eq!(
                specs[0].user_peer.as_ref().map(|e| e.rtp.as_str()),
                case.peer,
                "{name}: peer"
            );
            assert_eq!(specs[0].rtcp_mux, case.rtcp_mux, "{name}: rtcp-mux");
            let media = media_of(&body).expect("media");
            let first = layout.iter().position(Option::is_some).expect("a stream");
            assert_eq!(holds(&media[first]), case.held, "{name}: hold");

            let streams = records(&specs, false);
            let relay = relay_toward(&streams, Party::Remote);
            let out = render(&body, &layout, None, &relay, &[], &[], &[]);
            let text = out.render();
            let unchanged = assert_only_relay_lines_changed(name, case.body, &text);
            assert!(unchanged >= 3, "{name}: too little compared");
            assert!(
                !text.lines().any(is_ice_line),
                "{name}: ICE left in\n{text}"
            );

            // Read back: each carried stream points at the relay, with the
            // sender's codecs; the others have port 0.
            let again = Sdp::parse(&text).unwrap_or_else(|e| panic!("{name}: output: {e}"));
            for (index, slot) in layout.iter().enumerate() {
                let m = again.media(index).expect("media");
                match slot {
                    Some(s) => {
                        let relay_rtp: SocketAddr = streams[*s].local[1].rtp.parse().expect("addr");
                        assert_eq!(m.port, relay_rtp.port(), "{name}: port");
                        if !case.held || case.peer.is_some() {
                            assert_eq!(m.rtp, Some(relay_rtp), "{name}: address");
                        }
                        let names: Vec<&str> = m.codecs.iter().map(|c| c.name.as_str()).collect();
                        assert_eq!(&names, &case.codecs[*s], "{name}: codecs after");
                        if let Some(rtcp) = m.rtcp {
                            assert_eq!(rtcp.port(), relay_rtp.port() + 1, "{name}: a=rtcp");
                        }
                        assert_eq!(m.rtcp_mux, case.rtcp_mux, "{name}: a=rtcp-mux kept");
                        assert_eq!(m.direction, media[index].direction, "{name}: direction");
                    }
                    None => assert_eq!(m.port, 0, "{name}: m= line {index} not disabled"),
                }
            }
        }
    }

    #[test]
    fn ipv6_relay_legs_get_ipv6_connection_lines() {
        let body = Sdp::parse(body!("carrier.sdp")).expect("parse");
        let (specs, layout) =
            streams_from(&body, Party::Remote, v1::AddressFamily::Ipv6).expect("streams");
        assert_eq!(specs[0].user_family, v1::AddressFamily::Ipv6 as i32);
        let streams = records(&specs, true);
        // Sent to the user: the relay's user legs (IPv4 here) ...
        let to_user = render(
            &body,
            &layout,
            None,
            &relay_toward(&streams, Party::User),
            &[],
            &[],
            &[],
        )
        .render();
        assert!(to_user.contains("c=IN IP4 10.9.0.1\r\n"), "{to_user}");
        // ... and to a party behind IPv6 legs, IP6 lines.
        let to_remote = render(
            &body,
            &layout,
            None,
            &relay_toward(&streams, Party::Remote),
            &[],
            &[],
            &[],
        )
        .render();
        assert!(
            to_remote.contains("c=IN IP6 2001:db8:99::2\r\n"),
            "{to_remote}"
        );
        assert!(!to_remote.contains("IP4 198.51.100.201"), "{to_remote}");
    }

    #[test]
    fn t38_is_relayed_as_a_datagram_stream() {
        let t38 = Sdp::parse(body!("carrier-t38.sdp")).expect("parse");
        let (streams, layout) =
            streams_from(&t38, Party::User, v1::AddressFamily::Unspecified).expect("relayed");
        assert_eq!(layout, [None, Some(0)]);
        assert_eq!(streams.len(), 1);
        assert!(streams[0].udptl && streams[0].codecs.is_empty());
        assert_eq!(streams[0].kind, "image");
    }

    #[test]
    fn webrtc_options_are_read_or_refused_by_name() {
        use baton_relay::core::dtls::DtlsRole;
        let read = |setup: &str| {
            webrtc_toward(Some(&v1::WebRtcOptions {
                force_ice: true,
                dtls_setup: setup.to_owned(),
            }))
        };
        assert_eq!(read("").map(|w| (w.force_ice, w.role)), Ok((true, None)));
        assert_eq!(read("ACTPASS").map(|w| w.role), Ok(None));
        assert_eq!(read("active").map(|w| w.role), Ok(Some(DtlsRole::Client)));
        assert_eq!(read("passive").map(|w| w.role), Ok(Some(DtlsRole::Server)));
        for bad in ["holdconn", "x".repeat(10_000).as_str(), "active\u{1b}[2J"] {
            let error = read(bad).expect_err("refused");
            assert_eq!(error.code, v1::Code::InvalidArgument);
            assert!(error.message.contains("dtls_setup"), "{}", error.message);
            assert!(error.message.len() < 200 && !error.message.contains('\u{1b}'));
        }
    }

    #[test]
    fn a_browsers_dtls_offer_is_read_with_its_ice_and_fingerprint() {
        let body = Sdp::parse(body!("webrtc-browser-dtls.sdp")).expect("parse");
        let (streams, layout) = streams_from(&body, Party::User, v1::AddressFamily::Unspecified)
            .expect("a WebRTC line is relayed");
        assert_eq!(streams.len(), 1);
        assert!(streams[0].rtcp_mux);
        let crypto = crypto_from(
            &body,
            &layout,
            Party::User,
            Some(Transport::Avp),
            &SdesPolicy::default(),
            WebRtcToward::default(),
        )
        .expect("its DTLS and ICE read");
        let browser = &crypto[0][Party::User.index()];
        assert!(browser.transport.is_dtls());
        let params = browser.dtls_params().expect("fingerprint and role known");
        // The browser offered actpass: the relay answers passive (server).
        assert_eq!(params.role, baton_relay::core::dtls::DtlsRole::Server);
        assert!(browser.ice.is_some_and(|ice| ice.remote_ufrag.is_some()));
        let sip = &crypto[0][Party::Remote.index()];
        assert_eq!(sip.transport, Transport::Avp);
        assert!(sip.ice.is_none() && sip.dtls.is_none());
        assert!(matches!(
            sip.leg_crypto(),
            baton_relay::core::stream::LegCrypto::Plain
        ));
    }

    #[test]
    fn malformed_bodies_name_the_line() {
        let cases: [(&str, usize, &str); 8] = [
            ("", 0, "empty"),
            ("v=1\r\n", 1, "v=0"),
            (
                "v=0\r\no=- 1 x IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
                2,
                "version",
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 999.1.1.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
                4,
                "not an IP",
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\nthis is not sdp\r\n",
                7,
                "x=value",
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 70000 RTP/AVP 0\r\n",
                6,
                "port",
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 96\r\na=rtpmap:96 opus\r\n",
                7,
                "rtpmap",
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
                5,
                "no c= line",
            ),
        ];
        for (body, line, words) in cases {
            let error = Sdp::parse(body).expect_err(body);
            assert_eq!(error.line, line, "{body:?}: {error}");
            assert!(error.to_string().contains(words), "{body:?}: {error}");
        }
        // A dynamic payload type without a=rtpmap is no error (RFC 8866
        // §6.6): it is relayed by its number.
        let body = Sdp::parse(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 96\r\n",
        )
        .expect("parses");
        let media = body.media(0).expect("its line");
        assert_eq!(media.codecs.len(), 1);
        assert!(crate::sip::sdp::is_unnamed(&media.codecs[0]));
        assert_eq!(media.codecs[0].payload_type, 96);
    }

    #[test]
    fn versions_follow_rfc_3264() {
        let first = Sdp::parse(body!("desk-phone.sdp")).expect("parse");
        let mut sent = None;
        let mut body = first.clone();
        stamp(&mut body, &mut sent);
        assert_eq!(body.version(), 0);
        // The same body again keeps its version, even if the device counts up.
        let mut again = first.clone();
        again.set_version(7);
        stamp(&mut again, &mut sent);
        assert_eq!(again.version(), 0);
        // A changed body from another device: the receiver's origin, version + 1.
        let mut other = Sdp::parse(body!("hold-sendonly.sdp")).expect("parse");
        other.set_origin_identity(&[
            "bob".into(),
            "999".into(),
            "IN".into(),
            "IP4".into(),
            "192.0.2.99".into(),
        ]);
        other.set_session_name("another device");
        stamp(&mut other, &mut sent);
        assert_eq!(other.version(), 1);
        assert_eq!(other.origin_identity(), first.origin_identity());
        assert_eq!(other.session_name(), first.session_name());
    }

    /// A new device's best-effort SRTP offer whose SAVP line has no key the
    /// relay can honour (an MKI): that line is rejected in the answer (port
    /// 0, no key), the plain line takes the stream. With a usable key the
    /// SAVP line takes it, answered with the device's tag and a key of the
    /// relay's own; excluded by the request's options, it is declined.
    #[test]
    fn a_new_devices_srtp_lines_are_answered_or_rejected_by_rfc_4568() {
        let remote = Sdp::parse(
            "v=0\r\no=carrier 5 9 IN IP4 198.51.100.1\r\ns=call\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n\
             m=audio 30000 RTP/AVP 0\r\n",
        )
        .expect("remote");
        let (specs, _) =
            streams_from(&remote, Party::Remote, v1::AddressFamily::Unspecified).expect("streams");
        let streams = records(&specs, false);
        let key = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
        let offer = |params: &str| {
            format!(
                "v=0\r\no=b 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n\
                 m=audio 5004 RTP/SAVP 0\r\na=crypto:4 AES_CM_128_HMAC_SHA1_80 inline:{key}{params}\r\n\
                 m=audio 5006 RTP/AVP 0\r\n"
            )
        };
        let new_leg = v1::Endpoint {
            rtp: "10.9.0.1:41000".into(),
            rtcp: "10.9.0.1:41001".into(),
        };
        let answer_to = |text: &str, policy: &SdesPolicy| {
            let plan = AnswerPlan::new(
                Sdp::parse(text).expect("offer"),
                &streams,
                policy,
                test_fingerprint(),
            )
            .expect("plan");
            let answer = plan.answer(
                Some(&remote),
                &[None],
                &streams,
                std::slice::from_ref(&new_leg),
                &[vec![(0, 0)]],
                (1, "10.9.0.1".parse().expect("ip")),
            );
            (plan.layout.clone(), answer.render())
        };
        let (layout, answer) = answer_to(&offer("|2^31|1:4"), &SdesPolicy::default());
        assert_eq!(layout, vec![None, Some(0)], "the MKI line takes no stream");
        assert!(answer.contains("m=audio 0 RTP/SAVP"), "{answer}");
        assert!(answer.contains("m=audio 41000 RTP/AVP 0"), "{answer}");
        assert!(!answer.contains("a=crypto"), "{answer}");

        let (layout, answer) = answer_to(&offer(""), &SdesPolicy::default());
        assert_eq!(layout, vec![Some(0), None]);
        assert!(answer.contains("m=audio 41000 RTP/SAVP 0"), "{answer}");
        let line = answer
            .lines()
            .find(|l| l.starts_with("a=crypto:"))
            .expect("the relay's key");
        assert!(
            line.starts_with("a=crypto:4 AES_CM_128_HMAC_SHA1_80 inline:"),
            "{line}"
        );
        assert!(!line.contains(key), "the relay's own key, not the device's");

        let no_80 = SdesPolicy {
            excluded: vec![baton_relay::core::srtp::Suite::AesCm128HmacSha1_80],
            ..SdesPolicy::default()
        };
        let (layout, _) = answer_to(&offer(""), &no_80);
        assert_eq!(layout, vec![None, Some(0)], "excluded by the options");
    }

    #[test]
    fn answer_to_a_new_device_uses_its_numbering_and_the_remotes_state() {
        // The remote answered with sendonly (it holds the call) and ptime 30.
        let remote = Sdp::parse(
            "v=0\r\no=carrier 5 9 IN IP4 198.51.100.1\r\ns=call\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n\
             m=audio 30000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n\
             a=ptime:30\r\na=sendonly\r\n",
        )
        .expect("remote");
        let (specs, _) =
            streams_from(&remote, Party::Remote, v1::AddressFamily::Unspecified).expect("streams");
        let streams = records(&specs, false);
        // Device B numbers telephone-event 96 and also offers video.
        let offer = "v=0\r\no=b 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n\
                     m=audio 5004 RTP/AVP 8 0 96\r\na=rtpmap:96 telephone-event/8000\r\na=rtcp-mux\r\n\
                     m=video 5006 RTP/AVP 97\r\na=rtpmap:97 H264/90000\r\n";
        let plan = AnswerPlan::new(
            Sdp::parse(offer).expect("offer"),
            &streams,
            &SdesPolicy::default(),
            test_fingerprint(),
        )
        .expect("plan");
        assert_eq!(plan.layout, vec![Some(0), None]);
        let described = plan.transfer_streams(1);
        assert_eq!(described[0].rtcp_mux, Some(true));
        assert_eq!(
            described[0].peer.as_ref().map(|p| p.rtp.as_str()),
            Some("192.0.2.20:5004")
        );
        let new_leg = v1::Endpoint {
            rtp: "10.9.0.1:41000".into(),
            rtcp: "10.9.0.1:41001".into(),
        };
        let remote_layout = vec![Some(0)];
        let directions = [direction_in(Some(&remote), Some(&remote_layout), 0)];
        let answer = plan
            .answer(
                Some(&remote),
                &directions,
                &streams,
                &[new_leg],
                &[vec![(0, 0), (96, 101)]],
                (1, "10.9.0.1".parse().expect("ip")),
            )
            .render();
        let parsed = Sdp::parse(&answer).unwrap_or_else(|e| panic!("{e}\n{answer}"));
        assert!(
            answer.starts_with("v=0\r\no=carrier 5 9 IN IP4 198.51.100.1\r\ns=call\r\n"),
            "{answer}"
        );
        let audio = parsed.media(0).expect("audio");
        assert_eq!(audio.rtp, Some("10.9.0.1:41000".parse().expect("addr")));
        assert_eq!(audio.formats, ["0", "96"]);
        assert_eq!(
            audio.codecs[1].fmtp, "0-15",
            "the remote's fmtp, B's number"
        );
        assert_eq!(
            audio.direction,
            Direction::SendOnly,
            "the remote only sends"
        );
        assert_eq!(audio.ptime, Some(30));
        assert!(audio.rtcp_mux);
        // Without the remote's body (a session created from explicit
        // streams), the relay writes the session lines itself.
        let bare = plan
            .answer(
                None,
                &[None],
                &streams,
                &[v1::Endpoint {
                    rtp: "10.9.0.1:41000".into(),
                    rtcp: "10.9.0.1:41001".into(),
                }],
                &[vec![(0, 0)]],
                (77, "10.9.0.1".parse().expect("ip")),
            )
            .render();
        assert!(
            bare.starts_with(
                "v=0\r\no=baton 77 1 IN IP4 10.9.0.1\r\ns=baton\r\nc=IN IP4 10.9.0.1\r\nt=0 0\r\n"
            ),
            "{bare}"
        );
        let bare = Sdp::parse(&bare).expect("parses");
        assert_eq!(bare.media(0).expect("audio").direction, Direction::SendRecv);
        let video = parsed.media(1).expect("video");
        assert_eq!(
            (video.port, video.formats.as_slice()),
            (0, ["97".to_owned()].as_slice())
        );
    }

    #[test]
    fn bodies_are_renumbered_like_the_media() {
        // Device B numbers telephone-event 96 and G726 101; the remote has
        // telephone-event as 101.
        let mut body = Sdp::parse(
            "v=0\r\no=b 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n\
             m=audio 5004 RTP/AVP 0 96 101\r\na=rtpmap:96 telephone-event/8000\r\n\
             a=fmtp:96 0-15\r\na=rtpmap:101 G726-32/8000\r\na=rtcp-fb:* nack\r\na=sendonly\r\n",
        )
        .expect("parse");
        body.renumber(0, &[(96, 101)]);
        let text = body.render();
        assert!(text.contains("m=audio 5004 RTP/AVP 0 101\r\n"), "{text}");
        assert!(
            text.contains("a=rtpmap:101 telephone-event/8000\r\n"),
            "{text}"
        );
        assert!(text.contains("a=fmtp:101 0-15\r\n"), "{text}");
        assert!(
            !text.contains("G726"),
            "the colliding format is left out: {text}"
        );
        assert!(
            text.contains("a=rtcp-fb:* nack\r\na=sendonly\r\n"),
            "{text}"
        );
        // Identity maps change nothing.
        let before = body.render();
        body.renumber(0, &[(0, 0)]);
        assert_eq!(body.render(), before);
    }

    /// A WebRTC body: session lines `groups`, then per line (kind, port,
    /// payload type, MID, bundle-only).
    fn webrtc_body(groups: &[&str], lines: &[(&str, u16, u8, &str, bool)]) -> Sdp {
        let mut text = String::from("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
        for group in groups {
            text.push_str(&format!("a=group:BUNDLE {group}\r\n"));
        }
        for &(kind, port, pt, mid, bundle_only) in lines {
            let codec = if kind == "audio" {
                "PCMU/8000"
            } else {
                "VP8/90000"
            };
            text.push_str(&format!(
                "m={kind} {port} UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 127.0.0.1\r\n\
                 a=rtpmap:{pt} {codec}\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijklmn\r\n\
                 a=fingerprint:sha-256 {fp}\r\na=setup:actpass\r\na=rtcp-mux\r\na=mid:{mid}\r\n{only}",
                fp = ["AB"; 32].join(":"),
                only = if bundle_only { "a=bundle-only\r\n" } else { "" }
            ));
        }
        Sdp::parse(&text).expect("body")
    }

    /// (primary, mid) per stream of an offer's bundles.
    fn offered_bundles(body: &Sdp) -> Vec<Option<(usize, String)>> {
        let (specs, layout) =
            streams_from(body, Party::User, v1::AddressFamily::Ipv4).expect("streams");
        let media = media_of(body).expect("media");
        bundles_in_offer(body, &media, &layout, specs.len(), |_| true)
            .into_iter()
            .map(|b| b.map(|b| (b.primary, b.mid)))
            .collect()
    }

    #[test]
    fn an_offers_bundle_groups_become_transports_and_malformed_ones_do_not() {
        // max-bundle: the video line is bundle-only (port 0) and carried.
        let body = webrtc_body(
            &["0 1"],
            &[("audio", 9, 0, "0", false), ("video", 0, 96, "1", true)],
        );
        assert_eq!(
            offered_bundles(&body),
            vec![Some((0, "0".to_owned())), Some((0, "1".to_owned()))]
        );
        // A bundle-only line in no opened group is disabled, not carried.
        let body = webrtc_body(
            &[],
            &[("audio", 9, 0, "0", false), ("video", 0, 96, "1", true)],
        );
        let (specs, _) =
            streams_from(&body, Party::User, v1::AddressFamily::Ipv4).expect("streams");
        assert_eq!(specs.len(), 1);
        // A MID in two groups: the first group has it, the second bundles
        // without it.
        let body = webrtc_body(
            &["0 1", "1 2"],
            &[
                ("audio", 9, 0, "0", false),
                ("video", 9, 96, "1", false),
                ("video", 9, 97, "2", false),
            ],
        );
        assert_eq!(
            offered_bundles(&body),
            vec![
                Some((0, "0".to_owned())),
                Some((0, "1".to_owned())),
                Some((2, "2".to_owned()))
            ]
        );
        // A repeated MID, and one too long: those lines keep a transport of
        // their own.
        let long = "m".repeat(40);
        let body = webrtc_body(
            &[&format!("0 {long}")],
            &[
                ("audio", 9, 0, "0", false),
                ("video", 9, 96, "0", false),
                ("video", 9, 97, &long, false),
            ],
        );
        assert_eq!(
            offered_bundles(&body),
            vec![Some((0, "0".to_owned())), None, None]
        );
    }

    #[test]
    fn the_relays_own_bundle_leaves_out_overlapping_payload_types() {
        let body = webrtc_body(
            &[],
            &[
                ("audio", 9, 96, "a", false),
                ("video", 9, 96, "v", false),
                ("video", 9, 97, "w", false),
            ],
        );
        let (specs, layout) =
            streams_from(&body, Party::User, v1::AddressFamily::Ipv4).expect("streams");
        let media = media_of(&body).expect("media");
        let bundles: Vec<_> = bundles_toward(&media, &layout, specs.len(), |s| s != 2)
            .into_iter()
            .map(|b| b.map(|b| (b.primary, b.mid)))
            .collect();
        // The second line repeats payload type 96; the third is not WebRTC.
        assert_eq!(bundles, vec![Some((0, "a".to_owned())), None, None]);
    }
}
