//! One media stream (an `m=` line) of a session, as a sans-IO state machine.
//!
//! A stream has legs, each a pair of relay sockets toward one peer: the
//! remote party's leg, fixed for the life of the call, and the user's
//! current device's leg. During a transfer a *pending* leg for the new
//! device exists beside it; after the switch the old device's leg is
//! *retired* (its packets are dropped) until its grace period ends. Legs
//! keep their [`LegId`] for life, so sockets map to legs without ever being
//! re-keyed.
//!
//! A datagram goes through two steps. [`Stream::accept`] parses it and
//! applies the receiving leg's source policy and payload rules; what it
//! refuses is a counted drop and changes nothing. [`Stream::route`] decides
//! where an accepted datagram goes and rewrites it in place. Between the two,
//! the [`Session`](crate::core::session::Session) may switch the call to a
//! new device, so the packet that triggers a switch is forwarded in the same
//! pass. [`Stream::on_packet`] runs both for a stream on its own. Nothing
//! here reads a clock or touches a socket, so every rule is unit-tested
//! without either.
//!
//! Source policy (defence against RTP Bleed / injection): a leg whose peer was
//! signalled accepts only that address; otherwise it latches the first source
//! seen inside its learning window (only from [`LegConfig::peer_ip`] when the
//! signalling gave the IP) and is strict afterwards. With `relearn`, a
//! latched leg moves to a new address (a NAT rebinding) only for a packet of
//! the same SSRC with a sequence number close to the last one.
//!
//! Payload types: every device, the first included, may send only the
//! payload types it negotiated (in its own numbering, mapped to the
//! remote's); anything else is dropped and counted, so the rule is the same
//! before and after a transfer.
//!
//! Toward the remote, RTP goes through the [`Continuity`] engine (one SSRC,
//! continuous sequence numbers and timestamps, whoever sends) and RTCP
//! through [`rtcp_translate`](crate::core::rtcp_translate).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::core::continuity::{Continuity, Refused, SequenceShift};
use crate::core::dtls::DtlsParams;
use crate::core::fastpath::{Direction, FastPath, FastProgress, FastStart, PASS, STEADY_PACKETS};
use crate::core::ids::{LegId, Party};
use crate::core::keyframe::PayloadFormat;
use crate::core::rtcp_translate::{self, RtcpState, TranslateError};
use crate::core::rtp::{self, RtpView};
use crate::core::srtp::{MasterKey, SrtpError, SrtpReceiver, SrtpSender, Unprotected};
use crate::core::stats::Reception;
use crate::core::stun::{self, IceCredentials, StunRefusal};

/// How long an RFC 4733 event without its end packet counts as in progress.
const DTMF_STALE: Duration = Duration::from_millis(1000);
/// After a switch, the new device's video waits this long at most for its
/// first keyframe; then it passes anyway (counted).
pub const KEYFRAME_WAIT: Duration = Duration::from_secs(1);
/// While it waits, the keyframe request is repeated this often (a request
/// or its answer may be lost).
const KEYFRAME_REQUEST_EVERY: Duration = Duration::from_millis(250);
/// The clock rate of every video payload format (RFC 3551 §5): on such a
/// stream a new source's first packet keeps its own marker, which marks a
/// frame's end, not a talkspurt's start.
pub const VIDEO_CLOCK_RATE: u32 = 90_000;
/// "No payload type" in a payload map.
const NO_PT: u8 = 0xff;

/// RTP or RTCP. On an rtcp-mux leg both use the RTP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// Media.
    Rtp = 0,
    /// Control.
    Rtcp = 1,
}

impl Component {
    /// The index of per-component arrays: RTP 0, RTCP 1.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rtp => "rtp",
            Self::Rtcp => "rtcp",
        }
    }
}

/// Why a datagram was not forwarded. Each is counted per leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a valid RTP header.
    MalformedRtp = 0,
    /// Not a valid (compound) RTCP packet.
    MalformedRtcp = 1,
    /// From an address other than the leg's peer.
    Stranger = 2,
    /// No peer was signalled or learned and the learning window is over.
    LearningClosed = 3,
    /// The other leg's peer is not known yet: nowhere to send it.
    NoDestination = 4,
    /// Larger than the receive buffer.
    TooLarge = 5,
    /// The kernel refused to send it (buffer full, unreachable).
    SendFailed = 6,
    /// From a device the call has been transferred away from.
    OldSource = 7,
    /// From the new device before the switch (commit mode, or while an
    /// RFC 4733 event of the old device finishes).
    TransferPending = 8,
    /// A payload type the sending side has not negotiated.
    UnknownPayloadType = 9,
    /// Older than the start of its source's segment in the outward stream.
    Late = 10,
    /// A copy of a packet already forwarded.
    Duplicate = 11,
    /// RTCP that was only a BYE (never forwarded from a user device).
    RtcpBye = 12,
    /// From a new device without a signalled address, before enough
    /// in-order packets proved the source.
    Probation = 13,
    /// SRTP/SRTCP that failed authentication (wrong key, tampered, or not
    /// SRTP at all on an SRTP leg).
    SrtpAuth = 14,
    /// SRTP/SRTCP replayed, or older than the replay window.
    SrtpReplay = 15,
    /// On an SRTP leg whose keys are not negotiated yet (an offer without
    /// its answer): nothing can be decrypted or encrypted.
    SrtpNoKey = 16,
    /// Toward an SRTP leg from a ninth source: the relay keeps the SRTP
    /// index of eight sources per leg and never forgets one (its indexes
    /// could come round again under the same key).
    SrtpTooManySources = 17,
    /// STUN on an ICE leg that is malformed or not authenticated with the
    /// leg's credentials (a prober, or a peer of an ended session): never
    /// answered, never moves the leg.
    StunUnauthenticated = 18,
    /// A well-formed STUN message that asks nothing (a response or an
    /// indication): not answered.
    StunIgnored = 19,
    /// On an ICE leg, media or DTLS from an address no authenticated,
    /// nominated check selected (before ICE completes, or a stranger).
    IceUnchecked = 20,
    /// A DTLS record the handshake thread could not take (its queue full,
    /// or larger than a datagram it reads); the peer retransmits.
    HandshakeBusy = 21,
    /// Toward a BUNDLE transport, an SSRC another stream of the bundle
    /// sends already (a SIP party may use one SSRC for its audio and its
    /// video): on one transport, under one SRTP key, the two would reuse
    /// keystream and could not be told apart.
    BundleSsrcCollision = 22,
    /// A NACK (one RTCP feedback message) from the remote naming only
    /// packets the device before a switch sent: removed, so the new
    /// device is never asked to resend what it never sent.
    StaleNack = 23,
    /// Video from the new device after a switch, before its first keyframe
    /// (the remote's decoder still holds the old device's pictures).
    AwaitingKeyframe = 24,
    /// Media from a participant whose media is blocked (ng `block media`).
    MediaBlocked = 25,
    /// An RFC 4733 event from a participant whose DTMF is blocked.
    DtmfBlocked = 26,
}

impl DropReason {
    /// Number of reasons (size of a counter array).
    pub const COUNT: usize = 27;
    /// Every reason, in counter order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::MalformedRtp,
        Self::MalformedRtcp,
        Self::Stranger,
        Self::LearningClosed,
        Self::NoDestination,
        Self::TooLarge,
        Self::SendFailed,
        Self::OldSource,
        Self::TransferPending,
        Self::UnknownPayloadType,
        Self::Late,
        Self::Duplicate,
        Self::RtcpBye,
        Self::Probation,
        Self::SrtpAuth,
        Self::SrtpReplay,
        Self::SrtpNoKey,
        Self::SrtpTooManySources,
        Self::StunUnauthenticated,
        Self::StunIgnored,
        Self::IceUnchecked,
        Self::HandshakeBusy,
        Self::BundleSsrcCollision,
        Self::StaleNack,
        Self::AwaitingKeyframe,
        Self::MediaBlocked,
        Self::DtmfBlocked,
    ];

    /// snake_case name, for reports and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::MalformedRtp => "malformed_rtp",
            Self::MalformedRtcp => "malformed_rtcp",
            Self::Stranger => "stranger",
            Self::LearningClosed => "learning_closed",
            Self::NoDestination => "no_destination",
            Self::TooLarge => "too_large",
            Self::SendFailed => "send_failed",
            Self::OldSource => "old_source",
            Self::TransferPending => "transfer_pending",
            Self::UnknownPayloadType => "unknown_payload_type",
            Self::Late => "late",
            Self::Duplicate => "duplicate",
            Self::RtcpBye => "rtcp_bye",
            Self::Probation => "probation",
            Self::SrtpAuth => "srtp_auth_failed",
            Self::SrtpReplay => "srtp_replay",
            Self::SrtpNoKey => "srtp_no_key",
            Self::SrtpTooManySources => "srtp_too_many_sources",
            Self::StunUnauthenticated => "stun_unauthenticated",
            Self::StunIgnored => "stun_ignored",
            Self::IceUnchecked => "ice_unchecked",
            Self::HandshakeBusy => "dtls_busy",
            Self::BundleSsrcCollision => "bundle_ssrc_collision",
            Self::StaleNack => "stale_nack",
            Self::AwaitingKeyframe => "awaiting_keyframe",
            Self::MediaBlocked => "media_blocked",
            Self::DtmfBlocked => "dtmf_blocked",
        }
    }
}

/// SRTCP indexes a resumed leg skips: reports the process before may have
/// sent after its snapshot (a few a second), with room to spare.
const SRTCP_RESUME_MARGIN: u32 = 4096;
/// Retransmission numbers a resumed stream skips, likewise.
const REPAIR_RESUME_MARGIN: u16 = 1024;

/// How a leg knows its peer's address (stored as its lower-case name for
/// high availability).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerSource {
    /// Not known yet.
    #[default]
    Unknown,
    /// Given by signalling; only this address is accepted.
    Signalled,
    /// Latched from the first packet inside the learning window.
    Learned,
    /// Selected by ICE: the address of the last authenticated check that
    /// nominated it; only this address is accepted.
    Ice,
}

impl PeerSource {
    /// Lower-case name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Signalled => "signalled",
            Self::Learned => "learned",
            Self::Ice => "ice",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    addr: Option<SocketAddr>,
    source: PeerSource,
}

impl Peer {
    fn from_signalled(addr: Option<SocketAddr>) -> Self {
        Self {
            addr,
            source: if addr.is_some() {
                PeerSource::Signalled
            } else {
                PeerSource::Unknown
            },
        }
    }
}

/// Which payload types a device may send and receive, and how it numbers
/// them relative to the remote party's numbering (which is the stream's).
#[derive(Debug, Clone, Copy)]
pub struct PayloadMap {
    to_remote: [u8; 128],
    from_remote: [u8; 128],
    telephone_event: Option<u8>,
    /// The keyframe request the device negotiated (for a video switch).
    keyframe_by: crate::core::keyframe::KeyframeBy,
    /// The device numbers as the remote does: the map follows the stream's
    /// codecs when they are renegotiated.
    identity: bool,
}

impl PayloadMap {
    /// The device numbers as the remote does (the first device) and may use
    /// exactly `negotiated`.
    pub fn identity(negotiated: impl IntoIterator<Item = u8>, telephone_event: Option<u8>) -> Self {
        let mut map = Self::none(telephone_event);
        for pt in negotiated {
            if pt < 128 {
                map.to_remote[usize::from(pt)] = pt;
                map.from_remote[usize::from(pt)] = pt;
            }
        }
        map.identity = true;
        map
    }

    /// From `(device PT, remote PT)` pairs of the codecs both sides share;
    /// other payload types are refused in both directions.
    pub fn from_pairs(pairs: &[(u8, u8)], telephone_event: Option<u8>) -> Self {
        let mut map = Self::none(telephone_event);
        for &(device, remote) in pairs {
            if device < 128 && remote < 128 {
                map.to_remote[usize::from(device)] = remote;
                map.from_remote[usize::from(remote)] = device;
            }
        }
        map
    }

    fn none(telephone_event: Option<u8>) -> Self {
        Self {
            to_remote: [NO_PT; 128],
            from_remote: [NO_PT; 128],
            telephone_event,
            keyframe_by: crate::core::keyframe::KeyframeBy::Both,
            identity: false,
        }
    }

    /// The same map, with the keyframe request the device negotiated.
    pub fn with_keyframe_by(mut self, by: crate::core::keyframe::KeyframeBy) -> Self {
        self.keyframe_by = by;
        self
    }

    /// The remote's number for the device's `pt`, if negotiated.
    pub fn to_remote(&self, pt: u8) -> Option<u8> {
        self.to_remote
            .get(usize::from(pt))
            .copied()
            .filter(|&pt| pt != NO_PT)
    }

    /// The device's number for the remote's `pt`, if negotiated.
    pub fn from_remote(&self, pt: u8) -> Option<u8> {
        self.from_remote
            .get(usize::from(pt))
            .copied()
            .filter(|&pt| pt != NO_PT)
    }
}

/// Counters of one leg. Packets "in" passed the source policy; "out" were
/// handed to the kernel on this leg's socket.
#[derive(Debug, Clone, Default)]
pub struct LegCounters {
    /// RTP packets accepted from the peer.
    pub rtp_in: u64,
    /// RTCP packets accepted from the peer.
    pub rtcp_in: u64,
    /// Bytes accepted from the peer (RTP and RTCP datagrams).
    pub bytes_in: u64,
    /// Packets sent to the peer.
    pub packets_out: u64,
    /// Bytes sent to the peer.
    pub bytes_out: u64,
    /// Datagrams dropped, indexed by [`DropReason`].
    pub drops: [u64; DropReason::COUNT],
    /// Switches after which this device's video passed without a keyframe
    /// because none came within [`KEYFRAME_WAIT`].
    pub keyframe_waits_expired: u64,
    /// Of `rtp_in`, the packets the kernel fast path carried.
    pub kernel_rtp_in: u64,
}

/// The SRTP keys of one leg (SDES, or later DTLS-SRTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegKeys {
    /// What the peer sends with: the relay decrypts with it.
    pub peer: MasterKey,
    /// What the relay sends with: the peer decrypts with it.
    pub relay: MasterKey,
}

/// Whether a leg is plain RTP or SRTP, and its keys.
#[derive(Debug, Clone, Copy, Default)]
pub enum LegCrypto {
    /// RTP/AVP(F): forwarded as it is.
    #[default]
    Plain,
    /// SRTP whose keys are not negotiated yet: its media is dropped.
    AwaitingKeys,
    /// SRTP: every packet is authenticated and decrypted on the way in,
    /// and encrypted with the relay's key on the way out.
    Srtp(LegKeys),
}

/// A leg's SRTP contexts: the peer's (inbound) and the relay's (outbound).
/// The outbound one belongs to the leg, not to whoever sends through it,
/// so the SRTP index toward a peer continues across a switch exactly like
/// the sequence numbers do.
struct LegSrtp {
    keys: LegKeys,
    receiver: SrtpReceiver,
    sender: SrtpSender,
    /// After the peer re-keyed (a re-offer): its old key, until the first
    /// packet under the new one. The peer sends under the old key until
    /// the answer reaches it, and its media must not stop meanwhile.
    previous: Option<SrtpReceiver>,
    /// Also until then: the new key going on from the old key's rollover
    /// counters. A peer that makes a new SRTP context for a new key starts
    /// its streams at rollover counter 0 (`receiver`); one that re-keys in
    /// place (libsrtp's `srtp_update`) carries them on — past 65 536
    /// packets only this one authenticates its packets.
    continuing: Option<SrtpReceiver>,
}

/// Which of a leg's receivers accepted a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opened {
    /// The current key, fresh.
    Current,
    /// The current key, going on from the old key's counters.
    Continuing,
    /// The old key, before the peer switched to the new one.
    Previous,
}

impl std::fmt::Debug for LegSrtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegSrtp")
            .field("peer_suite", &self.keys.peer.suite())
            .field("relay_suite", &self.keys.relay.suite())
            .finish()
    }
}

/// How an SRTP refusal is counted. On the way out `Replayed` and `TooOld`
/// mean the index was used already (the sender went back): never sent
/// twice under one key.
fn srtp_drop(error: SrtpError, component: Component) -> DropReason {
    match error {
        SrtpError::Replayed | SrtpError::TooOld => DropReason::SrtpReplay,
        SrtpError::TooShort | SrtpError::Malformed => match component {
            Component::Rtp => DropReason::MalformedRtp,
            Component::Rtcp => DropReason::MalformedRtcp,
        },
        SrtpError::TooManySources => DropReason::SrtpTooManySources,
        // The buffers keep room for the largest trailer.
        SrtpError::NoRoom => DropReason::TooLarge,
        SrtpError::AuthFailed | SrtpError::BadKey => DropReason::SrtpAuth,
    }
}

/// Settings of one leg.
#[derive(Debug, Clone, Copy)]
pub struct LegConfig {
    /// RTP and RTCP share the RTP socket (RFC 5761).
    pub rtcp_mux: bool,
    /// The peer's RTP address, if signalled.
    pub peer_rtp: Option<SocketAddr>,
    /// The peer's RTCP address, if signalled (defaults to RTP port + 1 for a
    /// signalled RTP address, or the RTP address with rtcp-mux).
    pub peer_rtcp: Option<SocketAddr>,
    /// When no address was signalled: the only IP the peer may be learned
    /// from (for a new device, the IP the proxy saw its request come from).
    /// Packets from any other IP are strangers and change nothing.
    pub peer_ip: Option<IpAddr>,
    /// Plain RTP or SRTP.
    pub crypto: LegCrypto,
    /// ICE-lite on this leg (a WebRTC peer): its credentials. The peer's
    /// address is then only what its nominated checks select; nothing is
    /// learned from media. Needs `rtcp_mux`.
    pub ice: Option<IceCredentials>,
    /// DTLS-SRTP on this leg: the keys come from a handshake with the
    /// ICE-selected peer (the leg's crypto is `AwaitingKeys` until then).
    pub dtls: Option<DtlsParams>,
}

/// Settings shared by all legs.
#[derive(Debug, Clone, Copy)]
pub struct StreamConfig {
    /// How long after opening (or after a signalling update) a leg without a
    /// signalled peer latches the first source.
    pub learning_window: Duration,
    /// Whether a latched leg may move to a new source address (NAT
    /// rebinding) when the same SSRC continues with a nearby sequence number.
    pub relearn: bool,
    /// Legs with a signalled peer accept its media from any source while
    /// still sending to the signalled address, for endpoints that send from
    /// another port than they receive on (rtpengine's `asymmetric`). Off:
    /// only the signalled address is accepted, which is what stops RTP
    /// injection. A pending leg still needs the signalled IP.
    pub asymmetric: bool,
}

/// A second copy of a datagram: the remote's media to a pending device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fork {
    /// The pending leg (or, for a keyframe request, the new device's).
    pub leg: LegId,
    /// Its peer.
    pub to: SocketAddr,
    /// The socket it leaves on.
    pub socket: Component,
    /// The payload type in that device's numbering.
    pub payload_type: u8,
    /// Length of the copy (set by [`Session::handle_packet`](crate::core::session::Session::handle_packet),
    /// which writes it into the fork buffer, encrypted for that leg).
    pub len: usize,
}

/// What happened to a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the first `len` bytes of the (rewritten) buffer out of `leg`'s
    /// socket for `component` to `to`, and a copy per `fork`.
    Forward {
        /// The leg that sends it.
        leg: LegId,
        /// The socket of that leg.
        component: Component,
        /// The destination.
        to: SocketAddr,
        /// Length of the datagram to send.
        len: usize,
        /// A copy for a pending device.
        fork: Option<Fork>,
    },
    /// Do not send; counted on the receiving leg.
    Drop(DropReason),
    /// A DTLS record from `leg`'s ICE-selected peer: the caller hands the
    /// datagram, as it is, to that leg's DTLS endpoint (which runs off the
    /// media path).
    Handshake {
        /// The leg it arrived on.
        leg: LegId,
    },
}

/// A peer address that a leg has just learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latched {
    /// The party the leg faces (a pending device's leg faces the user).
    pub party: Party,
    /// RTP or RTCP.
    pub component: Component,
    /// The address now accepted.
    pub addr: SocketAddr,
    /// True when it replaced an earlier learned address (NAT re-learning).
    pub relearned: bool,
}

/// The result of [`Stream::on_packet`] and [`Stream::route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Where the datagram goes.
    pub verdict: Verdict,
    /// A leg learned its peer.
    pub latched: Option<Latched>,
    /// This was the first packet of the new device forwarded to the remote
    /// after a switch (the end of the media gap).
    pub new_device_started: bool,
    /// A switch that waited for the old device's RFC 4733 event to end
    /// happened on this packet (the event's end went out).
    pub switch_completed: bool,
}

impl Outcome {
    fn verdict(verdict: Verdict) -> Self {
        Self {
            verdict,
            latched: None,
            new_device_started: false,
            switch_completed: false,
        }
    }
}

/// A keyframe request due toward a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyframeRequest {
    /// The device's leg.
    pub leg: LegId,
    /// Where its RTCP goes.
    pub to: SocketAddr,
    /// The socket it leaves on (RTP with rtcp-mux).
    pub socket: Component,
    /// The device's SSRC (the request is about it).
    pub media: u32,
}

/// What the keyframe wait does with a packet (each with a request to send,
/// when one is due).
enum Gate {
    Pass(Option<KeyframeRequest>),
    Hold(Option<KeyframeRequest>),
}

/// After a video switch: the keyframe request and the hold of the new
/// device's video (see [`crate::core::keyframe`]).
#[derive(Debug, Clone, Copy, Default)]
struct KeyframeWait {
    /// A switch happened on a video stream and its keyframe has not come.
    active: bool,
    /// The hold ends here (set by the new device's first packet).
    until: Option<Instant>,
    /// The last request; `None` when one is due.
    requested_at: Option<Instant>,
}

/// What a leg is to its stream now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegRole {
    /// The user's current device.
    Device,
    /// The remote party.
    Remote,
    /// A device a transfer is open to, not switched yet.
    Pending,
    /// A device the call was transferred away from, in its grace period.
    Retired,
}

/// A datagram [`Stream::accept`] let in: its leg, what it is, and whether
/// its leg learned a peer from it.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    leg: LegId,
    fields: Option<RtpFields>,
    latched: Option<Latched>,
    /// Length after decryption (the received length on a plain leg).
    len: usize,
    /// A UDPTL datagram (see [`Stream::set_datagrams`]).
    datagram: bool,
}

impl Accepted {
    /// The leg it arrived on.
    pub fn leg(&self) -> LegId {
        self.leg
    }

    /// Whether it is media (RTP, or a UDPTL datagram) rather than RTCP.
    pub fn is_media(&self) -> bool {
        self.fields.is_some() || self.datagram
    }
}

/// What [`Stream::switch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// The pending device is now the user's device.
    Done,
    /// The current device is in the middle of an RFC 4733 event; the
    /// switch happens when the event ends (or goes stale).
    Waiting,
    /// No transfer is open on this stream.
    NothingPending,
}

/// In-order RTP packets from one source a pending device's leg needs, when
/// its address was not signalled, before it latches (DESIGN: a switch is
/// never authorised by one stray packet).
const PENDING_PROBATION: u8 = 3;

/// How far a sequence number may move for a NAT re-learn to be believed.
const RELEARN_MAX_SEQ_DISTANCE: u16 = 64;
/// A probation candidate's next packet may skip this many sequence numbers
/// (lost packets) and still count as in order.
const PROBATION_MAX_GAP: u16 = 3;
/// Longest a switch waits for the old device's RFC 4733 event to end: a
/// device that never ends its events cannot hold the switch off.
const MAX_SWITCH_WAIT: Duration = Duration::from_secs(2);

/// A source on probation for a leg that needs several in-order packets.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    addr: SocketAddr,
    ssrc: u32,
    seq: u16,
    seen: u8,
}

/// What a leg keeps of its [`LegConfig`] on the packet path: the ICE
/// credentials live in its (boxed) `IceState` and its DTLS settings in a
/// box of their own, so that a plain leg's per-packet fields stay close
/// together.
#[derive(Debug, Clone, Copy)]
struct LegSettings {
    rtcp_mux: bool,
    peer_rtp: Option<SocketAddr>,
    peer_rtcp: Option<SocketAddr>,
    peer_ip: Option<IpAddr>,
    crypto: LegCrypto,
}

#[derive(Debug)]
struct Leg {
    config: LegSettings,
    /// DTLS-SRTP settings of a WebRTC leg.
    dtls: Option<Box<DtlsParams>>,
    peers: [Peer; 2],
    learning_until: Instant,
    counters: LegCounters,
    reception: Reception,
    payloads: PayloadMap,
    last_ssrc_seq: Option<(u32, u16)>,
    last_payload_type: Option<u8>,
    last_packet_at: Option<Instant>,
    /// An RFC 4733 event from this device is in progress until then.
    dtmf_until: Option<Instant>,
    /// Learning needs this many in-order packets (1: the first one).
    probation: u8,
    /// Sources on probation. Two, so that a second source from the allowed
    /// IP (an event stream on its own SSRC, a NAT neighbour) cannot keep
    /// resetting the device's own progress.
    candidates: [Option<Candidate>; 2],
    /// SRTP contexts; `None` on a plain leg (and on an SRTP leg awaiting
    /// keys, which `config.crypto` tells apart). Boxed: cipher state is
    /// large and most legs are plain.
    srtp: Option<Box<LegSrtp>>,
    /// ICE-lite state on a WebRTC leg.
    /// Boxed, like `srtp`: most legs are not WebRTC legs.
    ice: Option<Box<IceState>>,
}

/// A leg's ICE outcome, shared with the streams bundled on its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IceView {
    /// The address the peer's nominated check selected.
    pub selected: Option<SocketAddr>,
    /// Consent ran out (RFC 7675): nothing is sent.
    pub consent_lost: bool,
}

/// How long a selected ICE pair keeps consent without an authenticated
/// check (RFC 7675 §5.1: 30 seconds).
pub const CONSENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A leg's ICE-lite state.
#[derive(Debug, Clone, Copy)]
struct IceState {
    /// The credentials the peer's checks must carry now.
    current: IceCredentials,
    /// After an ICE restart: the old ones, until the first check with the
    /// new ones (the peer checks with the old set until the answer
    /// reaches it).
    previous: Option<IceCredentials>,
    /// The last authenticated check from the selected address.
    last_check: Option<Instant>,
    /// Consent expired: nothing is sent to the peer until a new nominated
    /// check selects an address again.
    consent_lost: bool,
    /// Transaction ids of the last checks: a check seen before (the
    /// peer's retransmission, or someone replaying it from elsewhere) is
    /// answered but selects nothing and renews no consent.
    recent: [[u8; 12]; RECENT_CHECKS],
    /// Next slot of `recent` to overwrite.
    recent_next: usize,
    /// DTLS records the leg may still hand to the handshake thread, and
    /// when that budget was last refilled.
    dtls_budget: (u32, Instant),
}

/// Checks remembered per ICE leg: more than a browser sends in the 30 s
/// of a consent period (a check per pair every few seconds, a few pairs,
/// retransmissions), so a check captured and replayed later than that is
/// still recognised while it could matter.
const RECENT_CHECKS: usize = 64;
/// DTLS records a leg may pass to the handshake thread at once: a
/// handshake is about a dozen, with retransmissions a few dozen.
const DTLS_BURST: u32 = 64;
/// …and per second after that.
const DTLS_PER_SECOND: u32 = 20;

impl IceState {
    fn new(current: IceCredentials, now: Instant) -> Self {
        Self {
            current,
            previous: None,
            last_check: None,
            consent_lost: false,
            recent: [[0; 12]; RECENT_CHECKS],
            recent_next: 0,
            dtls_budget: (DTLS_BURST, now),
        }
    }

    /// Remembers a check's transaction id; false if it was seen already.
    fn first_seen(&mut self, transaction: &[u8; 12]) -> bool {
        if self.recent.contains(transaction) {
            return false;
        }
        self.recent[self.recent_next] = *transaction;
        self.recent_next = (self.recent_next + 1) % RECENT_CHECKS;
        true
    }

    /// Takes one DTLS record from the leg's budget (a token bucket), so
    /// one peer cannot fill the handshake thread's queue.
    fn take_dtls_token(&mut self, now: Instant) -> bool {
        let (tokens, since) = self.dtls_budget;
        let elapsed = now.saturating_duration_since(since);
        let refill = (elapsed.as_millis() as u64 * u64::from(DTLS_PER_SECOND) / 1000) as u32;
        let tokens = if refill > 0 {
            self.dtls_budget.1 = now;
            (tokens + refill).min(DTLS_BURST)
        } else {
            tokens
        };
        if tokens == 0 {
            self.dtls_budget.0 = 0;
            return false;
        }
        self.dtls_budget.0 = tokens - 1;
        true
    }
}

impl Leg {
    fn new(config: LegConfig, now: Instant, window: Duration, payloads: PayloadMap) -> Self {
        let mut leg = Self {
            config: LegSettings {
                rtcp_mux: config.rtcp_mux,
                peer_rtp: config.peer_rtp,
                peer_rtcp: config.peer_rtcp,
                peer_ip: config.peer_ip,
                crypto: config.crypto,
            },
            dtls: config.dtls.map(Box::new),
            peers: [Peer::from_signalled(None); 2],
            learning_until: now + window,
            counters: LegCounters::default(),
            reception: Reception::default(),
            payloads,
            last_ssrc_seq: None,
            last_payload_type: None,
            last_packet_at: None,
            dtmf_until: None,
            probation: 1,
            candidates: [None; 2],
            srtp: None,
            ice: config
                .ice
                .map(|credentials| Box::new(IceState::new(credentials, now))),
        };
        if config.ice.is_some() {
            // ICE selects the peer (the SDP's address is only a candidate);
            // media teaches nothing.
            leg.learning_until = now;
        } else {
            leg.set_signalled(config.peer_rtp, config.peer_rtcp);
        }
        leg.set_crypto(config.crypto);
        leg
    }

    fn snapshot(&self) -> crate::core::snapshot::LegSnapshot {
        use crate::core::snapshot::LegSnapshot;
        let rtp = self.peers[Component::Rtp.index()];
        let rtcp = self.peers[Component::Rtcp.index()];
        let (srtp_in, (srtp_out, srtcp_out)) = match &self.srtp {
            Some(srtp) => (
                srtp.receiver.highest_indexes(),
                srtp.sender.highest_indexes(),
            ),
            None => (Vec::new(), (Vec::new(), 0)),
        };
        LegSnapshot {
            rtp: rtp.addr,
            rtcp: rtcp.addr,
            source: rtp.source,
            srtp_in,
            srtp_out,
            srtcp_out,
        }
    }

    fn resume(&mut self, snapshot: &crate::core::snapshot::LegSnapshot) {
        let source = snapshot.source;
        if snapshot.rtp.is_some() && source != PeerSource::Unknown {
            self.peers[Component::Rtp.index()] = Peer {
                addr: snapshot.rtp,
                source,
            };
            if snapshot.rtcp.is_some() {
                self.peers[Component::Rtcp.index()] = Peer {
                    addr: snapshot.rtcp,
                    source,
                };
            }
        }
        if let Some(srtp) = self.srtp.as_mut() {
            srtp.receiver.resume_from(&snapshot.srtp_in);
            srtp.sender
                .resume_from(&snapshot.srtp_out, snapshot.srtcp_out, SRTCP_RESUME_MARGIN);
        }
    }

    /// Applies new crypto settings. Contexts whose keys did not change are
    /// kept (a re-offer with the same keys must not reset the replay
    /// window or the rollover counters).
    fn set_crypto(&mut self, crypto: LegCrypto) {
        self.config.crypto = crypto;
        match crypto {
            LegCrypto::Plain | LegCrypto::AwaitingKeys => self.srtp = None,
            LegCrypto::Srtp(keys) => {
                if self.srtp.as_ref().is_some_and(|s| s.keys == keys) {
                    return;
                }
                let old = self.srtp.take();
                let (sender, receiver, previous, continuing) = match old {
                    Some(old) => {
                        let old = *old;
                        // The side that did not change keeps its context: the
                        // outbound index toward the peer continues, the
                        // replay window of the peer's stream too.
                        let sender = if old.keys.relay == keys.relay {
                            old.sender
                        } else {
                            SrtpSender::new(&keys.relay)
                        };
                        if old.keys.peer == keys.peer {
                            (sender, old.receiver, old.previous, old.continuing)
                        } else {
                            let continuing = SrtpReceiver::continuing(&keys.peer, &old.receiver);
                            (
                                sender,
                                SrtpReceiver::new(&keys.peer),
                                Some(old.receiver),
                                Some(continuing),
                            )
                        }
                    }
                    None => (
                        SrtpSender::new(&keys.relay),
                        SrtpReceiver::new(&keys.peer),
                        None,
                        None,
                    ),
                };
                self.srtp = Some(Box::new(LegSrtp {
                    keys,
                    receiver,
                    sender,
                    previous,
                    continuing,
                }));
            }
        }
    }

    /// Authenticates and decrypts in place what the peer sent, on an SRTP
    /// leg; nothing is recorded until [`Leg::commit_srtp`].
    fn unprotect(
        &mut self,
        component: Component,
        buf: &mut [u8],
        len: usize,
    ) -> Result<Option<(Unprotected, Opened)>, DropReason> {
        let open = |receiver: &SrtpReceiver, buf: &mut [u8]| match component {
            Component::Rtp => receiver.unprotect_rtp(buf, len),
            Component::Rtcp => receiver.unprotect_rtcp(buf, len),
        };
        // By reference: the keys make the settings a hundred bytes, and this
        // runs for every packet, plain ones too.
        let (LegCrypto::Srtp(_), Some(srtp)) = (&self.config.crypto, self.srtp.as_ref()) else {
            return match &self.config.crypto {
                LegCrypto::Plain => Ok(None),
                LegCrypto::AwaitingKeys | LegCrypto::Srtp(_) => Err(DropReason::SrtpNoKey),
            };
        };
        let mut result = open(&srtp.receiver, buf).map(|plain| (plain, Opened::Current));
        // Only after a re-key, and only for what the current key refused as
        // forged: a failed attempt leaves the buffer as it was (the tag is
        // checked before anything is decrypted).
        for (alternative, which) in [
            (&srtp.continuing, Opened::Continuing),
            (&srtp.previous, Opened::Previous),
        ] {
            if let (Err(SrtpError::AuthFailed), Some(receiver)) = (&result, alternative)
                && let Ok(plain) = open(receiver, buf)
            {
                result = Ok((plain, which));
            }
        }
        result.map(Some).map_err(|e| srtp_drop(e, component))
    }

    /// Records an accepted packet in the window of the receiver that took
    /// it; the first packet under the new key retires the old key and the
    /// reading of the new one that the peer does not use.
    fn commit_srtp(&mut self, unprotected: Option<(Unprotected, Opened)>) {
        let (Some((plain, opened)), Some(srtp)) = (unprotected, self.srtp.as_mut()) else {
            return;
        };
        match opened {
            Opened::Previous => {
                if let Some(previous) = srtp.previous.as_mut() {
                    previous.commit(&plain);
                }
            }
            Opened::Current => {
                srtp.receiver.commit(&plain);
                srtp.previous = None;
                srtp.continuing = None;
            }
            Opened::Continuing => {
                if let Some(mut continuing) = srtp.continuing.take() {
                    continuing.commit(&plain);
                    srtp.receiver = continuing;
                }
                srtp.previous = None;
            }
        }
    }

    /// Encrypts in place what the relay sends to the peer, on an SRTP leg.
    fn protect(&mut self, rtcp: bool, buf: &mut [u8], len: usize) -> Result<usize, DropReason> {
        match (&self.config.crypto, self.srtp.as_mut()) {
            (LegCrypto::Plain, _) => Ok(len),
            (LegCrypto::AwaitingKeys, _) | (LegCrypto::Srtp(_), None) => Err(DropReason::SrtpNoKey),
            (LegCrypto::Srtp(_), Some(srtp)) => {
                let (result, component) = if rtcp {
                    (srtp.sender.protect_rtcp(buf, len), Component::Rtcp)
                } else {
                    (srtp.sender.protect_rtp(buf, len), Component::Rtp)
                };
                result.map_err(|e| srtp_drop(e, component))
            }
        }
    }

    fn set_signalled(&mut self, rtp: Option<SocketAddr>, rtcp: Option<SocketAddr>) {
        if rtp.is_none() && rtcp.is_none() {
            return; // nothing signalled: keep what is known
        }
        self.config.peer_rtp = rtp;
        self.config.peer_rtcp = rtcp;
        let rtcp = match (rtcp, rtp) {
            (Some(rtcp), _) => Some(rtcp),
            (None, Some(rtp)) if self.config.rtcp_mux => Some(rtp),
            (None, Some(mut rtp)) => {
                // RFC 3550 §11: RTCP on the next higher (odd) port.
                rtp.set_port(rtp.port().wrapping_add(1));
                Some(rtp)
            }
            (None, None) => None,
        };
        // A signalled address replaces a learned one; no address keeps what
        // was learned. With rtcp-mux only the RTP entry is used.
        if rtp.is_some() {
            self.peers[Component::Rtp.index()] = Peer::from_signalled(rtp);
        }
        if rtcp.is_some() && !self.config.rtcp_mux {
            self.peers[Component::Rtcp.index()] = Peer::from_signalled(rtcp);
        }
    }

    /// Where the leg's RTCP comes from, as far as it is known (the RTP
    /// peer with rtcp-mux).
    fn rtcp_peer(&self) -> Option<SocketAddr> {
        self.peers[self.peer_slot(Component::Rtcp)].addr
    }

    /// Which peer entry a component uses: with rtcp-mux there is one peer
    /// for both.
    fn peer_slot(&self, component: Component) -> usize {
        if self.config.rtcp_mux {
            Component::Rtp.index()
        } else {
            component.index()
        }
    }

    fn destination(&self, component: Component) -> Option<SocketAddr> {
        if self.ice.as_ref().is_some_and(|ice| ice.consent_lost) {
            // RFC 7675 §5.1: without consent nothing more is sent.
            return None;
        }
        self.peers[self.peer_slot(component)].addr
    }

    /// Where `component` goes to this leg's peer: the socket it leaves on
    /// (the RTP one with rtcp-mux) and the peer's address.
    fn send_path(&self, component: Component) -> Option<(Component, SocketAddr)> {
        let socket = if self.config.rtcp_mux {
            Component::Rtp
        } else {
            component
        };
        Some((socket, self.destination(component)?))
    }

    /// Answers a STUN datagram on an ICE leg: an authenticated Binding
    /// request gets its success response written over it in `buf`, and
    /// selects its source when it nominates (or keeps consent for the
    /// selected one). Anything else is a counted drop that changes
    /// nothing.
    /// On an ICE leg (RFC 7983: one port carries STUN, DTLS and
    /// (S)RTP(C)): STUN is answered, DTLS handed to the handshake, both
    /// and media only from the pair ICE selected. `None`: media from that
    /// pair, to go on with. Apart from `accept`, so that plain legs'
    /// packets do not carry its code.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn ice_demux(
        &mut self,
        now: Instant,
        leg: LegId,
        party: Party,
        arrived_on: Component,
        from: SocketAddr,
        buf: &mut [u8],
        wire_len: usize,
    ) -> Option<Outcome> {
        if stun::is_stun(&buf[..wire_len]) {
            return Some(self.on_stun(now, leg, party, arrived_on, from, buf, wire_len));
        }
        if self.peers[Component::Rtp.index()].addr != Some(from) {
            return Some(self.drop(DropReason::IceUnchecked));
        }
        if stun::is_dtls(&buf[..wire_len]) {
            let within_budget = self
                .ice
                .as_mut()
                .is_some_and(|ice| ice.take_dtls_token(now));
            if !within_budget {
                return Some(self.drop(DropReason::HandshakeBusy));
            }
            return Some(Outcome::verdict(Verdict::Handshake { leg }));
        }
        None
    }

    // Cold: a few checks a second per WebRTC leg.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn on_stun(
        &mut self,
        now: Instant,
        leg: LegId,
        party: Party,
        arrived_on: Component,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Outcome {
        let Some(ice) = self.ice.as_mut() else {
            return self.drop(DropReason::StunUnauthenticated);
        };
        let sets = [ice.current, ice.previous.unwrap_or(ice.current)];
        // One HMAC per forged message unless an ICE restart is under way.
        let count = if ice.previous.is_some() { 2 } else { 1 };
        let checked = stun::check_binding(&buf[..len.min(buf.len())], &sets[..count]);
        let (request, set) = match checked {
            Ok(found) => found,
            Err(StunRefusal::NotARequest) => return self.drop(DropReason::StunIgnored),
            Err(StunRefusal::Malformed | StunRefusal::Unauthenticated) => {
                return self.drop(DropReason::StunUnauthenticated);
            }
        };
        if set == 0 {
            // The peer uses the new credentials: the old ones are done.
            ice.previous = None;
        }
        let pwd = sets[set].local_pwd;
        let slot = Component::Rtp.index();
        let selected = self.peers[slot].addr;
        let mut latched = None;
        if !ice.first_seen(&request.transaction) {
            // A retransmission (or a replay from elsewhere): answered,
            // nothing more.
        } else if selected == Some(from) {
            ice.last_check = Some(now);
            ice.consent_lost = false;
        } else if request.use_candidate {
            // A nominated pair (RFC 8445 §7.3.1.5): the peer's address now,
            // also after an ICE restart or a network change.
            self.peers[slot] = Peer {
                addr: Some(from),
                source: PeerSource::Ice,
            };
            ice.last_check = Some(now);
            ice.consent_lost = false;
            latched = Some(Latched {
                party,
                component: Component::Rtp,
                addr: from,
                relearned: selected.is_some(),
            });
        }
        // Other checks are answered too, so the peer's pair succeeds and
        // it can nominate it, but they select nothing.
        let Some(reply_len) = stun::write_success(buf, &request, from, &pwd) else {
            return self.drop(DropReason::TooLarge);
        };
        Outcome {
            verdict: Verdict::Forward {
                leg,
                component: arrived_on,
                to: from,
                len: reply_len,
                fork: None,
            },
            latched,
            new_device_started: false,
            switch_completed: false,
        }
    }

    /// When the selected peer's consent runs out without a new check.
    fn consent_deadline(&self) -> Option<Instant> {
        let ice = self.ice.as_ref().filter(|ice| !ice.consent_lost)?;
        Some(ice.last_check? + CONSENT_TIMEOUT)
    }

    /// Whether the ICE-selected peer's consent has run out by `now`; marks
    /// it lost (once).
    fn consent_expires(&mut self, now: Instant) -> bool {
        let Some(ice) = self.ice.as_mut() else {
            return false;
        };
        let expired = !ice.consent_lost
            && ice
                .last_check
                .is_some_and(|at| now.saturating_duration_since(at) >= CONSENT_TIMEOUT);
        if expired {
            ice.consent_lost = true;
        }
        expired
    }

    /// NAT re-learning: RTP of the same SSRC, a little ahead of the last
    /// accepted sequence number; RTCP from the IP that RTP already moved to.
    fn may_relearn(&self, component: Component, from: SocketAddr, rtp: Option<RtpFields>) -> bool {
        match (component, rtp, self.last_ssrc_seq) {
            (Component::Rtp, Some(fields), Some((last_ssrc, last_seq))) => {
                fields.ssrc == last_ssrc
                    && fields.seq.wrapping_sub(last_seq).wrapping_sub(1) < RELEARN_MAX_SEQ_DISTANCE
            }
            (Component::Rtcp, _, _) => {
                self.peers[Component::Rtp.index()].addr.map(|a| a.ip()) == Some(from.ip())
            }
            (Component::Rtp, _, _) => false,
        }
    }

    fn drop(&mut self, reason: DropReason) -> Outcome {
        self.counters.drops[reason as usize] += 1;
        Outcome::verdict(Verdict::Drop(reason))
    }

    /// Whether an RFC 4733 event from this device is in progress.
    /// Plain RTP, no ICE or DTLS: what the kernel fast path can carry.
    fn is_plain(&self) -> bool {
        matches!(self.config.crypto, LegCrypto::Plain)
            && self.srtp.is_none()
            && self.ice.is_none()
            && self.dtls.is_none()
    }

    /// RTP came within the last second.
    fn recently(&self, now: Instant) -> bool {
        self.last_packet_at
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1))
    }

    fn dtmf_active(&self, now: Instant) -> bool {
        self.dtmf_until.is_some_and(|until| now < until)
    }
}

#[derive(Debug, Clone, Copy)]
struct RtpFields {
    ssrc: u32,
    seq: u16,
    ts: u32,
    pt: u8,
}

/// One media stream: its legs, their roles and the outward timeline.
#[derive(Debug)]
pub struct Stream {
    config: StreamConfig,
    legs: [Option<Leg>; LegId::COUNT],
    device: LegId,
    remote: LegId,
    pending: Option<LegId>,
    retired: Option<LegId>,
    /// Legs removed by a switch that the caller must close.
    closed: Option<LegId>,
    /// A switch was asked for while the current device was in the middle of
    /// an RFC 4733 event; it happens when the event ends, or at this time.
    switch_waiting_until: Option<Instant>,
    /// After a switch, until the new device's first packet is forwarded.
    awaiting_new_device: bool,
    /// Clock rate by payload type in the remote's numbering (0: unknown).
    clock_rates: [u32; 128],
    continuity: Continuity,
    rtcp: RtcpState,
    epoch: Instant,
    last_rtp_at: Option<Instant>,
    last_packet_at: Option<Instant>,
    last_toward_remote_at: Option<Instant>,
    /// Some leg is SRTP without keys yet (checked per packet only then).
    awaiting_keys: bool,
    /// The remote's sequence numbers toward the user's side, continuous
    /// across the remote's own restarts.
    toward_user: SequenceShift,
    /// Formats the relay treats specially (RTX, video codecs), by payload
    /// type in the remote's numbering.
    formats: [Option<PayloadFormat>; 128],
    /// The devices' retransmissions toward the remote, as one repair stream.
    repair: RepairStream,
    /// After a video switch, until the new device's first keyframe.
    keyframe: KeyframeWait,
    /// A keyframe request the packet just routed asks for (kept here, not
    /// in [`Outcome`], so that every packet's outcome stays small).
    keyframe_request: Option<KeyframeRequest>,
    /// What the proxy asked to block or silence, by the sending party
    /// (whichever device the user's side is).
    controls: [MediaControl; 2],
    /// Some control is set (one flag read per packet otherwise).
    controlled: bool,
    /// UDPTL (T.38 fax, RFC 3362): datagrams relayed as they are, no RTP
    /// or RTCP read, rewritten or generated.
    datagrams: bool,
}

/// What the proxy asked to do with one participant's media (rtpengine's
/// `block media`, `silence media`, `block DTMF`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MediaControl {
    /// Its media is not forwarded (its RFC 4733 events still are).
    pub block_media: bool,
    /// Its G.711 media goes on with silence for a payload; other codecs'
    /// goes on unchanged.
    pub silence_media: bool,
    /// Its RFC 4733 events are not forwarded.
    pub block_dtmf: bool,
}

impl MediaControl {
    /// Either control, set on the call or on the participant.
    pub fn union(self, other: Self) -> Self {
        Self {
            block_media: self.block_media || other.block_media,
            silence_media: self.silence_media || other.silence_media,
            block_dtmf: self.block_dtmf || other.block_dtmf,
        }
    }
}

/// The outward RTX stream (RFC 4588): the first device's repair SSRC for
/// every device, its own sequence numbers continuing +1 (SRTP's index never
/// repeats), and each packet's original sequence number in the outward
/// numbering of the main stream.
#[derive(Debug, Clone, Copy, Default)]
struct RepairStream {
    ssrc: Option<u32>,
    next_seq: u16,
}

impl RepairStream {
    /// The SSRC and sequence number for the next repair packet; the first
    /// one keeps its own.
    fn next(&mut self, ssrc: u32, seq: u16) -> (u32, u16) {
        let outward = *self.ssrc.get_or_insert_with(|| {
            self.next_seq = seq;
            ssrc
        });
        let out = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        (outward, out)
    }
}

impl Stream {
    /// A stream whose legs open now. `clock_rates` lists the negotiated
    /// payload types with their rates and `telephone_event` the RFC 4733
    /// type, in the remote's numbering, which the first device shares.
    pub fn new(
        now: Instant,
        config: StreamConfig,
        device: LegConfig,
        remote: LegConfig,
        clock_rates: &[(u8, u32)],
        telephone_event: Option<u8>,
    ) -> Self {
        let identity = PayloadMap::identity(clock_rates.iter().map(|&(pt, _)| pt), telephone_event);
        let mut legs: [Option<Leg>; LegId::COUNT] = [None, None, None, None];
        legs[LegId::FIRST_DEVICE.index()] =
            Some(Leg::new(device, now, config.learning_window, identity));
        legs[LegId::REMOTE.index()] = Some(Leg::new(remote, now, config.learning_window, identity));
        let mut stream = Self {
            config,
            legs,
            device: LegId::FIRST_DEVICE,
            remote: LegId::REMOTE,
            pending: None,
            retired: None,
            closed: None,
            switch_waiting_until: None,
            awaiting_new_device: false,
            clock_rates: [0; 128],
            continuity: Continuity::default(),
            rtcp: RtcpState::default(),
            epoch: now,
            last_rtp_at: None,
            last_packet_at: None,
            last_toward_remote_at: None,
            awaiting_keys: false,
            toward_user: SequenceShift::default(),
            formats: [None; 128],
            repair: RepairStream::default(),
            keyframe: KeyframeWait::default(),
            keyframe_request: None,
            controls: [MediaControl::default(); 2],
            controlled: false,
            datagrams: false,
        };
        stream.set_clock_rates(clock_rates);
        stream.note_awaiting_keys();
        stream
    }

    fn leg(&self, id: LegId) -> Option<&Leg> {
        self.legs[id.index()].as_ref()
    }

    fn leg_mut(&mut self, id: LegId) -> Option<&mut Leg> {
        self.legs[id.index()].as_mut()
    }

    /// Replaces the payload type → clock rate map (after a renegotiation).
    /// Legs that number as the remote does may use exactly these types now.
    pub fn set_clock_rates(&mut self, clock_rates: &[(u8, u32)]) {
        self.clock_rates = [0; 128];
        for &(pt, rate) in clock_rates {
            if let Some(slot) = self.clock_rates.get_mut(usize::from(pt)) {
                *slot = rate;
            }
        }
        for leg in self.legs.iter_mut().flatten() {
            if leg.payloads.identity {
                leg.payloads = PayloadMap::identity(
                    clock_rates.iter().map(|&(pt, _)| pt),
                    leg.payloads.telephone_event,
                );
            }
        }
    }

    /// Sets which payload types (the remote's numbering) are of a format
    /// the relay treats specially, after a negotiation.
    pub fn set_formats(&mut self, formats: &[(u8, PayloadFormat)]) {
        self.formats = [None; 128];
        for &(pt, format) in formats {
            if let Some(slot) = self.formats.get_mut(usize::from(pt)) {
                *slot = Some(format);
            }
        }
    }

    /// Carries UDPTL datagrams as they are (T.38 fax), or RTP again (a
    /// re-INVITE back to audio).
    pub fn set_datagrams(&mut self, datagrams: bool) {
        self.datagrams = datagrams;
    }

    /// What another relay process needs to go on with this stream (see
    /// [`crate::core::snapshot`]).
    pub fn snapshot(&self, now: Instant) -> crate::core::snapshot::StreamSnapshot {
        use crate::core::snapshot::StreamSnapshot;
        StreamSnapshot {
            device: self.leg(self.device).map(Leg::snapshot).unwrap_or_default(),
            remote: self.leg(self.remote).map(Leg::snapshot).unwrap_or_default(),
            continuity: self.continuity.snapshot(now, self.device.index()),
            toward_user: self.toward_user,
            repair: self.repair.ssrc.map(|ssrc| (ssrc, self.repair.next_seq)),
        }
    }

    /// Goes on from `snapshot`, taken `since` ago by another process, on a
    /// stream just made with the same settings (its device on the first
    /// device's leg): the same peers, SSRC and numbering, and SRTP indexes
    /// never used twice.
    pub fn resume(
        &mut self,
        snapshot: &crate::core::snapshot::StreamSnapshot,
        now: Instant,
        since: Duration,
    ) {
        if let Some(leg) = self.leg_mut(self.device) {
            leg.resume(&snapshot.device);
        }
        if let Some(leg) = self.leg_mut(self.remote) {
            leg.resume(&snapshot.remote);
        }
        self.continuity = Continuity::resume(&snapshot.continuity, now, since, self.device.index());
        self.toward_user = snapshot.toward_user.resumed(since);
        if let Some((ssrc, next_seq)) = snapshot.repair {
            self.repair = RepairStream {
                ssrc: Some(ssrc),
                // Past what may have gone out after the snapshot.
                next_seq: next_seq.wrapping_add(REPAIR_RESUME_MARGIN),
            };
        }
    }

    /// Sets how the current device numbers payload types.
    pub fn set_device_payloads(&mut self, payloads: PayloadMap) {
        if let Some(leg) = self.leg_mut(self.device) {
            leg.payloads = payloads;
        }
    }

    /// Packets taken in on the stream's legs (RTP and RTCP), for deciding
    /// whether it moved since it was last stored.
    pub fn packets_in(&self) -> u64 {
        self.legs
            .iter()
            .flatten()
            .map(|leg| leg.counters.rtp_in + leg.counters.rtcp_in)
            .sum()
    }

    /// Sets what is blocked or silenced, per sending party.
    pub fn set_controls(&mut self, controls: [MediaControl; 2]) {
        self.controls = controls;
        self.controlled = controls != [MediaControl::default(); 2];
    }

    /// Applies the sending party's controls to a packet about to go out:
    /// `Err` drops it; silence is written over a G.711 payload in place.
    #[cold]
    #[inline(never)]
    fn control(
        &self,
        party: Party,
        is_event: bool,
        remote_pt: u8,
        buf: &mut [u8],
        len: usize,
    ) -> Result<(), DropReason> {
        let control = self.controls[party.index()];
        if is_event {
            return if control.block_dtmf {
                Err(DropReason::DtmfBlocked)
            } else {
                Ok(())
            };
        }
        if control.block_media {
            return Err(DropReason::MediaBlocked);
        }
        if control.silence_media
            && let Some(byte) = self.format(remote_pt).and_then(PayloadFormat::silence_byte)
            && let Ok(mut view) = RtpView::new_checked(&mut buf[..len])
        {
            // Other codecs go on as they are, as in rtpengine: the relay
            // cannot write their silence without an encoder.
            view.payload_mut().fill(byte);
        }
        Ok(())
    }

    fn format(&self, remote_pt: u8) -> Option<PayloadFormat> {
        self.formats.get(usize::from(remote_pt)).copied().flatten()
    }

    fn is_rtx(&self, remote_pt: u8) -> bool {
        self.format(remote_pt) == Some(PayloadFormat::Rtx)
    }

    /// A retransmission from the current device (RFC 4588): it joins the
    /// outward repair stream, and its original sequence number becomes the
    /// outward one of the packet it repeats. It never moves the main
    /// stream's anchor, nor switches a transfer. A repeat of a packet the
    /// outward stream does not carry from this device is late.
    fn device_rtx(&mut self, leg: LegId, remote_pt: u8, buf: &mut [u8], len: usize) -> Outcome {
        let Ok(mut view) = RtpView::new_checked(&mut buf[..len]) else {
            return self.drop_on(leg, DropReason::MalformedRtp);
        };
        // Padding alone (bandwidth probes) has no original to map.
        if let Some(osn) = view
            .payload()
            .get(..2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
        {
            let Some(outward) = self.continuity.to_outward(leg.index(), osn) else {
                return self.drop_on(leg, DropReason::Late);
            };
            view.payload_mut()[..2].copy_from_slice(&outward.to_be_bytes());
        }
        let ts_offset = match self.continuity.current_input() {
            Some((current, _)) if current == leg.index() => {
                self.continuity.current().map_or(0, |(_, _, ts)| ts)
            }
            Some(_) | None => return self.drop_on(leg, DropReason::Late),
        };
        let (input_ssrc, input_seq) = (view.ssrc(), view.sequence());
        let (ssrc, seq) = self.repair.next(input_ssrc, input_seq);
        self.rtcp.set_repair(rtcp_translate::RepairMap {
            device: input_ssrc,
            outward: ssrc,
            seq_offset: seq.wrapping_sub(input_seq),
        });
        view.set_ssrc(ssrc);
        view.set_sequence(seq);
        view.set_timestamp(view.timestamp().wrapping_add(ts_offset));
        view.set_payload_type(remote_pt);
        let remote = self.remote;
        self.forward_to(leg, remote, Component::Rtp, len)
    }

    /// The leg that faces `party` now.
    pub fn leg_of(&self, party: Party) -> LegId {
        match party {
            Party::User => self.device,
            Party::Remote => self.remote,
        }
    }

    /// Where leg `id`'s RTCP comes from, as far as it is known.
    pub fn rtcp_peer(&self, id: LegId) -> Option<SocketAddr> {
        self.leg(id).and_then(Leg::rtcp_peer)
    }

    /// The party a leg faces: the remote leg the remote, every other leg
    /// (current, pending, retired device) the user.
    pub fn party_of(&self, leg: LegId) -> Party {
        if leg == self.remote {
            Party::Remote
        } else {
            Party::User
        }
    }

    /// The new device's leg while a transfer is open.
    pub fn pending_leg(&self) -> Option<LegId> {
        self.pending
    }

    /// What `leg` is now; `None` if it no longer exists.
    pub fn role(&self, leg: LegId) -> Option<LegRole> {
        self.leg(leg)?;
        Some(if leg == self.remote {
            LegRole::Remote
        } else if leg == self.device {
            LegRole::Device
        } else if Some(leg) == self.pending {
            LegRole::Pending
        } else {
            LegRole::Retired
        })
    }

    /// Handles one datagram on its own stream (the first `len` bytes of
    /// `buf`) that arrived on `leg`'s `arrived_on` socket from `from`: the
    /// pending device's media is held, never switched to (that is the
    /// session's decision, see [`Stream::accept`]).
    pub fn on_packet(
        &mut self,
        now: Instant,
        leg: LegId,
        arrived_on: Component,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Outcome {
        let (mut outcome, rtcp) = match self.accept(now, leg, arrived_on, from, buf, len) {
            Ok(accepted) => (self.route(now, &accepted, buf), !accepted.is_media()),
            Err(outcome) => return outcome,
        };
        self.finish(leg, rtcp, &mut outcome.verdict, buf, None);
        outcome
    }

    /// Step one of a datagram: on an SRTP leg authenticate and decrypt it
    /// in place, parse it (a malformed or unauthenticated packet never
    /// latches, proves or switches anything), check the payload type a
    /// device may send and the leg's source policy, count it. A refusal
    /// comes back as the (counted) drop.
    // The refusal is returned by value: boxing it would allocate per packet.
    #[allow(clippy::result_large_err)]
    pub fn accept(
        &mut self,
        now: Instant,
        leg: LegId,
        arrived_on: Component,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Result<Accepted, Outcome> {
        let policy = self.config;
        let Some(role) = self.role(leg) else {
            return Err(Outcome::verdict(Verdict::Drop(DropReason::OldSource)));
        };
        let party = self.party_of(leg);
        let Some(this) = self.legs[leg.index()].as_mut() else {
            return Err(Outcome::verdict(Verdict::Drop(DropReason::OldSource)));
        };
        if role == LegRole::Retired {
            return Err(this.drop(DropReason::OldSource));
        }
        let wire_len = len.min(buf.len());
        if this.ice.is_some()
            && let Some(outcome) = this.ice_demux(now, leg, party, arrived_on, from, buf, wire_len)
        {
            return Err(outcome);
        }
        if self.datagrams {
            return Self::accept_datagram(
                this,
                now,
                leg,
                party,
                arrived_on,
                from,
                wire_len,
                policy,
                role == LegRole::Pending,
            )
            .map(|latched| {
                self.last_packet_at = Some(now);
                self.last_rtp_at = Some(now);
                Accepted {
                    leg,
                    fields: None,
                    latched,
                    len: wire_len,
                    datagram: true,
                }
            });
        }
        // The first bytes of SRTCP are RTCP's, in clear.
        let component = if arrived_on == Component::Rtp
            && this.config.rtcp_mux
            && rtp::is_rtcp(&buf[..wire_len])
        {
            Component::Rtcp
        } else {
            arrived_on
        };
        let pending = role == LegRole::Pending;
        // A stranger is refused before any cryptography: on a leg whose
        // peer is known, nobody else can make the relay spend an HMAC or
        // GCM check per datagram.
        if this.srtp.is_some() && plainly_stranger(this, component, from, policy, pending) {
            return Err(this.drop(DropReason::Stranger));
        }
        let unprotected = this
            .unprotect(component, buf, wire_len)
            .map_err(|reason| this.drop(reason))?;
        let len = unprotected.map_or(wire_len, |(plain, _)| plain.len());
        let packet = &buf[..len];
        let fields = match component {
            Component::Rtp => match RtpView::new_checked(packet) {
                Ok(view) => Some(RtpFields {
                    ssrc: view.ssrc(),
                    seq: view.sequence(),
                    ts: view.timestamp(),
                    pt: view.payload_type(),
                }),
                Err(_) => return Err(this.drop(DropReason::MalformedRtp)),
            },
            Component::Rtcp => {
                if rtp::check_rtcp(packet).is_err() {
                    return Err(this.drop(DropReason::MalformedRtcp));
                }
                None
            }
        };
        let negotiated = fields.is_none_or(|f| match role {
            LegRole::Remote => this.payloads.from_remote(f.pt).is_some(),
            LegRole::Device | LegRole::Pending | LegRole::Retired => {
                this.payloads.to_remote(f.pt).is_some()
            }
        });
        let learning = this.peers[this.peer_slot(component)].addr.is_none();
        if !negotiated && (pending || learning) {
            // Only a packet that would be forwarded may prove a source or
            // switch to a device: an unnegotiated type changes nothing.
            return Err(this.drop(DropReason::UnknownPayloadType));
        }
        let latched = check_source(this, party, now, component, from, fields, policy, pending)
            .map_err(|reason| this.drop(reason))?;
        // Only a packet from the leg's peer moves its replay window: a
        // stranger replaying the peer's packets first cannot get the
        // peer's own copies dropped.
        this.commit_srtp(unprotected);

        this.counters.bytes_in += wire_len as u64;
        this.last_packet_at = Some(now);
        self.last_packet_at = Some(now);
        if let Some(f) = fields {
            this.counters.rtp_in += 1;
            this.last_ssrc_seq = Some((f.ssrc, f.seq));
            this.last_payload_type = Some(f.pt);
            let remote_pt = if role == LegRole::Remote {
                Some(f.pt)
            } else {
                this.payloads.to_remote(f.pt)
            };
            let rate = remote_pt.map_or(0, |pt| self.clock_rates[usize::from(pt)]);
            let arrival = (rate != 0).then(|| {
                let nanos = now.saturating_duration_since(self.epoch).as_nanos();
                u64::try_from(nanos * u128::from(rate) / 1_000_000_000).unwrap_or(u64::MAX)
            });
            this.reception.record(f.ssrc, f.seq, f.ts, arrival);
            self.last_rtp_at = Some(now);
            if !negotiated {
                // From the leg's own peer, so counted as received, but not
                // a type this side may send.
                return Err(this.drop(DropReason::UnknownPayloadType));
            }
        } else {
            this.counters.rtcp_in += 1;
        }
        Ok(Accepted {
            leg,
            fields,
            latched,
            len,
            datagram: false,
        })
    }

    /// Step one for a UDPTL datagram: on the RTP port, from the leg's peer
    /// (by the same source policy as RTP), counted. Nothing in it is read.
    #[allow(clippy::result_large_err, clippy::too_many_arguments)]
    #[cold]
    #[inline(never)]
    fn accept_datagram(
        this: &mut Leg,
        now: Instant,
        _leg: LegId,
        party: Party,
        arrived_on: Component,
        from: SocketAddr,
        len: usize,
        policy: StreamConfig,
        pending: bool,
    ) -> Result<Option<Latched>, Outcome> {
        if arrived_on != Component::Rtp {
            // UDPTL has no RTCP: nothing belongs on the other port.
            return Err(this.drop(DropReason::Stranger));
        }
        let latched = check_source(
            this,
            party,
            now,
            Component::Rtp,
            from,
            None,
            policy,
            pending,
        )
        .map_err(|reason| this.drop(reason))?;
        this.counters.bytes_in += len as u64;
        this.counters.rtp_in += 1;
        this.last_packet_at = Some(now);
        Ok(latched)
    }

    /// Step two: where an accepted datagram goes, rewritten in place up to
    /// the buffer's length. The leg's role is read now, so a switch made
    /// between the two steps applies to the packet that caused it.
    pub fn route(&mut self, now: Instant, accepted: &Accepted, buf: &mut [u8]) -> Outcome {
        let (leg, len) = (accepted.leg, accepted.len);
        let role = self.role(leg);
        // Toward an SRTP leg still without keys nothing can go, and nothing
        // may be rewritten or counted as sent for it either.
        let toward = match role {
            Some(LegRole::Device) => Some(self.remote),
            Some(LegRole::Remote) => Some(self.device),
            Some(LegRole::Pending | LegRole::Retired) | None => None,
        };
        if self.awaiting_keys
            && toward
                .and_then(|t| self.leg(t))
                .is_some_and(|t| matches!(t.config.crypto, LegCrypto::AwaitingKeys))
        {
            let mut outcome = self.drop_on(leg, DropReason::SrtpNoKey);
            outcome.latched = accepted.latched;
            return outcome;
        }
        if accepted.datagram {
            let mut outcome = self.route_datagram(leg, role, len);
            outcome.latched = accepted.latched;
            return outcome;
        }
        let mut outcome = match (role, accepted.fields) {
            (Some(LegRole::Device), Some(f)) => self.device_rtp(now, leg, f, buf, len),
            (Some(LegRole::Device), None) => self.device_rtcp(leg, buf, len),
            (Some(LegRole::Remote), Some(f)) => self.remote_rtp(leg, f, buf, len),
            (Some(LegRole::Remote), None) => self.remote_rtcp(leg, buf, len),
            // The new device's media counts as its proof and waits for the
            // switch (commit mode, or an RFC 4733 event of the old device).
            (Some(LegRole::Pending), _) => self.drop_on(leg, DropReason::TransferPending),
            (Some(LegRole::Retired) | None, _) => self.drop_on(leg, DropReason::OldSource),
        };
        outcome.latched = accepted.latched;
        outcome
    }

    /// A UDPTL datagram to the other party, as it came (the proxy's block
    /// applies; fax data has no silence, so silencing blocks it).
    #[cold]
    #[inline(never)]
    fn route_datagram(&mut self, leg: LegId, role: Option<LegRole>, len: usize) -> Outcome {
        let (from, to) = match role {
            Some(LegRole::Device) => (Party::User, self.remote),
            Some(LegRole::Remote) => (Party::Remote, self.device),
            Some(LegRole::Pending) => return self.drop_on(leg, DropReason::TransferPending),
            Some(LegRole::Retired) | None => return self.drop_on(leg, DropReason::OldSource),
        };
        let control = self.controls[from.index()];
        if control.block_media || control.silence_media {
            return self.drop_on(leg, DropReason::MediaBlocked);
        }
        self.forward_to(leg, to, Component::Rtp, len)
    }

    fn drop_on(&mut self, leg: LegId, reason: DropReason) -> Outcome {
        match self.leg_mut(leg) {
            Some(leg) => leg.drop(reason),
            None => Outcome::verdict(Verdict::Drop(reason)),
        }
    }

    fn device_rtp(
        &mut self,
        now: Instant,
        leg: LegId,
        f: RtpFields,
        buf: &mut [u8],
        len: usize,
    ) -> Outcome {
        let Some(this) = self.legs[leg.index()].as_mut() else {
            return Outcome::verdict(Verdict::Drop(DropReason::OldSource));
        };
        let Some(remote_pt) = this.payloads.to_remote(f.pt) else {
            return this.drop(DropReason::UnknownPayloadType);
        };
        if self.controlled {
            let is_event = Some(f.pt) == this.payloads.telephone_event;
            if let Err(reason) = self.control(Party::User, is_event, remote_pt, buf, len) {
                return self.drop_on(leg, reason);
            }
        }
        if self.is_rtx(remote_pt) {
            return self.device_rtx(leg, remote_pt, buf, len);
        }
        let keyframe_request = if self.keyframe.active {
            let view = RtpView::new_checked(&buf[..len]).ok();
            let payload = view.as_ref().map_or(&[][..], |v| v.payload());
            match self.keyframe_gate(now, leg, remote_pt, f.ssrc, payload) {
                Gate::Pass(request) => request,
                Gate::Hold(request) => {
                    self.keyframe_request = request;
                    return self.drop_on(leg, DropReason::AwaitingKeyframe);
                }
            }
        } else {
            None
        };
        let Some(this) = self.legs[leg.index()].as_mut() else {
            return Outcome::verdict(Verdict::Drop(DropReason::OldSource));
        };
        let Ok(mut view) = RtpView::new_checked(&mut buf[..len]) else {
            return this.drop(DropReason::MalformedRtp);
        };
        let is_event = Some(f.pt) == this.payloads.telephone_event;
        let mut event_ended = false;
        if is_event {
            // RFC 4733: the E bit is the top bit of the second payload byte.
            let end = view.payload().get(1).is_some_and(|b| b & 0x80 != 0);
            if end {
                event_ended = this.dtmf_until.take().is_some();
            } else {
                this.dtmf_until = Some(now + DTMF_STALE);
            }
        } else if this.dtmf_until.is_some() {
            // Media resumed without an end packet (it was lost).
            this.dtmf_until = None;
            event_ended = true;
        }
        let rate = self.clock_rates[usize::from(remote_pt)];
        // RFC 4733 events on an SSRC of their own, beside the device's
        // media: they join the outward stream without moving its anchor.
        let secondary = is_event
            && self
                .continuity
                .current_input()
                .is_some_and(|(current_leg, ssrc)| current_leg == leg.index() && ssrc != f.ssrc);
        let rewritten = if secondary {
            self.continuity
                .rewrite_secondary(now, leg.index(), &mut view, rate)
        } else {
            self.continuity.rewrite(now, leg.index(), &mut view, rate)
        };
        match rewritten {
            Ok(_) => {}
            Err(Refused::Late) => return self.drop_on(leg, DropReason::Late),
            Err(Refused::Duplicate) => return self.drop_on(leg, DropReason::Duplicate),
        }
        view.set_payload_type(remote_pt);
        let Some(to) = self
            .leg(self.remote)
            .and_then(|r| r.destination(Component::Rtp))
        else {
            return self.drop_on(leg, DropReason::NoDestination);
        };
        self.last_toward_remote_at = Some(now);
        let mut outcome = Outcome::verdict(Verdict::Forward {
            leg: self.remote,
            component: Component::Rtp,
            to,
            len,
            fork: None,
        });
        if keyframe_request.is_some() {
            self.keyframe_request = keyframe_request;
        }
        if self.awaiting_new_device {
            self.awaiting_new_device = false;
            outcome.new_device_started = true;
        }
        if self.switch_waiting_until.is_some() && event_ended {
            // The event's end went out; now the new device takes over.
            self.complete_switch();
            outcome.switch_completed = true;
        }
        outcome
    }

    fn device_rtcp(&mut self, leg: LegId, buf: &mut [u8], len: usize) -> Outcome {
        let len = match rtcp_translate::toward_remote(
            buf,
            len,
            &self.continuity,
            &self.toward_user,
            &mut self.rtcp,
        ) {
            Ok(len) => len,
            Err(TranslateError::Empty) => return self.drop_on(leg, DropReason::RtcpBye),
            Err(TranslateError::Malformed | TranslateError::StaleNack) => {
                return self.drop_on(leg, DropReason::MalformedRtcp);
            }
        };
        let remote = self.remote;
        self.forward_to(leg, remote, Component::Rtcp, len)
    }

    fn remote_rtp(&mut self, leg: LegId, f: RtpFields, buf: &mut [u8], len: usize) -> Outcome {
        let Some(device) = self.leg(self.device) else {
            return self.drop_on(leg, DropReason::NoDestination);
        };
        let Some(device_pt) = device.payloads.from_remote(f.pt) else {
            return self.drop_on(leg, DropReason::UnknownPayloadType);
        };
        if self.controlled {
            let is_event = self
                .leg(leg)
                .is_some_and(|l| l.payloads.telephone_event == Some(f.pt));
            if let Err(reason) = self.control(Party::Remote, is_event, f.pt, buf, len) {
                return self.drop_on(leg, reason);
            }
        }
        let fork = self.pending.and_then(|pending| {
            let pending_leg = self.leg(pending)?;
            Some(Fork {
                leg: pending,
                to: pending_leg.destination(Component::Rtp)?,
                socket: Component::Rtp,
                payload_type: pending_leg.payloads.from_remote(f.pt)?,
                len: 0,
            })
        });
        let rtx = self.is_rtx(f.pt);
        // A repair stream keeps its own numbers (and leaves the main
        // stream's shift alone); its originals follow the shift.
        let seq = if rtx {
            f.seq
        } else {
            self.toward_user.rewrite(f.ssrc, f.seq)
        };
        let osn_shift = if rtx {
            self.toward_user.active().map_or(0, |(_, offset)| offset)
        } else {
            0
        };
        if (device_pt != f.pt || seq != f.seq || osn_shift != 0)
            && let Ok(mut view) = RtpView::new_checked(&mut buf[..len])
        {
            view.set_payload_type(device_pt);
            view.set_sequence(seq);
            if rtx && let Some(osn) = view.payload_mut().get_mut(..2) {
                let shifted = u16::from_be_bytes([osn[0], osn[1]]).wrapping_add(osn_shift);
                osn.copy_from_slice(&shifted.to_be_bytes());
            }
        }
        let device = self.device;
        let mut outcome = self.forward_to(leg, device, Component::Rtp, len);
        if let Verdict::Forward { fork: slot, .. } = &mut outcome.verdict {
            *slot = fork;
        }
        outcome
    }

    fn remote_rtcp(&mut self, leg: LegId, buf: &mut [u8], len: usize) -> Outcome {
        let len = match rtcp_translate::toward_user(buf, len, &self.continuity, &mut self.rtcp) {
            Ok((len, stale)) => {
                // Removed from a compound that still goes on.
                if let Some(from) = self.leg_mut(leg) {
                    from.counters.drops[DropReason::StaleNack as usize] += u64::from(stale);
                }
                len
            }
            Err(TranslateError::StaleNack) => return self.drop_on(leg, DropReason::StaleNack),
            Err(TranslateError::Empty | TranslateError::Malformed) => {
                return self.drop_on(leg, DropReason::MalformedRtcp);
            }
        };
        let device = self.device;
        self.forward_to(leg, device, Component::Rtcp, len)
    }

    /// Forwards to `out`'s peer for `component`, through the socket that
    /// carries it (the RTP socket with rtcp-mux).
    fn forward_to(
        &mut self,
        from_leg: LegId,
        out: LegId,
        component: Component,
        len: usize,
    ) -> Outcome {
        match self.leg(out).and_then(|l| l.send_path(component)) {
            Some((socket, to)) => Outcome::verdict(Verdict::Forward {
                leg: out,
                component: socket,
                to,
                len,
                fork: None,
            }),
            None => self.drop_on(from_leg, DropReason::NoDestination),
        }
    }

    /// Step three, for a datagram [`Stream::route`] forwards: on an SRTP
    /// leg, encrypt it in place with the relay's key for that leg (`buf`
    /// must have room for the suite's trailer; see
    /// [`srtp::MAX_OVERHEAD`](crate::core::srtp::MAX_OVERHEAD)). Returns
    /// the length to send. `rtcp` says what the datagram is (the socket
    /// alone does not, with rtcp-mux).
    fn seal(
        &mut self,
        leg: LegId,
        rtcp: bool,
        buf: &mut [u8],
        len: usize,
    ) -> Result<usize, DropReason> {
        let Some(out) = self.leg_mut(leg) else {
            return Err(DropReason::NoDestination);
        };
        if matches!(out.config.crypto, LegCrypto::Plain) {
            return Ok(len);
        }
        out.protect(rtcp, buf, len.min(buf.len()))
    }

    /// Step three for a datagram that arrived on `from` and that
    /// [`Stream::route`] forwards: the copy for a pending device written into
    /// `fork_buf` from the plaintext (when there is a buffer for it; a copy
    /// that cannot be made is left out), then the datagram sealed for the
    /// leg it leaves on ([`Stream::seal`]). One that cannot be sealed is
    /// dropped, counted on `from`.
    #[inline]
    pub fn finish(
        &mut self,
        from: LegId,
        rtcp: bool,
        verdict: &mut Verdict,
        buf: &mut [u8],
        fork_buf: Option<&mut [u8]>,
    ) {
        let Verdict::Forward {
            leg: out,
            len,
            fork,
            ..
        } = verdict
        else {
            return;
        };
        if let (Some(f), Some(copy)) = (fork.as_mut(), fork_buf) {
            match self.write_fork(f, buf, *len, copy) {
                Ok(sealed) => f.len = sealed,
                Err(_) => *fork = None,
            }
        }
        match self.seal(*out, rtcp, buf, *len) {
            Ok(sealed) => *len = sealed,
            Err(reason) => {
                self.record_drop(from, reason, 1);
                *verdict = Verdict::Drop(reason);
            }
        }
    }

    /// Writes the copy of the remote's media for a pending device into
    /// `copy`: the routed (plaintext) datagram `buf[..len]` with the
    /// device's payload type, sealed for its leg. Returns its length.
    fn write_fork(
        &mut self,
        fork: &Fork,
        buf: &[u8],
        len: usize,
        copy: &mut [u8],
    ) -> Result<usize, DropReason> {
        let (Some(source), Some(target)) = (buf.get(..len), copy.get_mut(..len)) else {
            return Err(DropReason::TooLarge);
        };
        target.copy_from_slice(source);
        if let Ok(mut view) = RtpView::new_checked(&mut target[..]) {
            view.set_payload_type(fork.payload_type);
        }
        self.seal(fork.leg, false, copy, len)
    }

    /// Opens a leg for the device a call is being transferred to. `None`
    /// when a transfer is already open or no leg slot is free.
    /// Its leg may learn the device for `learn_for` (at least the stream's
    /// learning window): a device may answer long after the transfer opens.
    pub fn add_pending(
        &mut self,
        now: Instant,
        config: LegConfig,
        payloads: PayloadMap,
        learn_for: Duration,
    ) -> Option<LegId> {
        if self.pending.is_some() {
            return None;
        }
        let slot = LegId::all().find(|&id| self.leg(id).is_none())?;
        let window = learn_for.max(self.config.learning_window);
        let mut leg = Leg::new(config, now, window, payloads);
        leg.probation = PENDING_PROBATION;
        self.legs[slot.index()] = Some(leg);
        self.pending = Some(slot);
        self.note_awaiting_keys();
        Some(slot)
    }

    /// Recomputes whether a leg waits for its SRTP keys (after a leg's
    /// crypto changed or a leg was added).
    fn note_awaiting_keys(&mut self) {
        self.awaiting_keys = self
            .legs
            .iter()
            .flatten()
            .any(|l| matches!(l.config.crypto, LegCrypto::AwaitingKeys));
    }

    /// Makes the pending device the user's current device, unless the
    /// current one is in the middle of an RFC 4733 event (then it happens
    /// when the event ends).
    pub fn switch(&mut self, now: Instant) -> Switch {
        if self.pending.is_none() {
            return Switch::NothingPending;
        }
        let busy = self.leg(self.device).is_some_and(|l| l.dtmf_active(now));
        if busy {
            self.switch_waiting_until = Some(now + MAX_SWITCH_WAIT);
            return Switch::Waiting;
        }
        self.complete_switch();
        Switch::Done
    }

    fn complete_switch(&mut self) {
        let Some(new) = self.pending.take() else {
            return;
        };
        self.switch_waiting_until = None;
        let old = std::mem::replace(&mut self.device, new);
        if let Some(previous) = self.retired.replace(old) {
            // A second switch before the first one's grace ended.
            self.legs[previous.index()] = None;
            self.closed = Some(previous);
        }
        self.awaiting_new_device = true;
        // A video stream: the new device is asked for a keyframe, and its
        // video waits for one.
        self.keyframe = KeyframeWait {
            active: self.is_video(),
            until: None,
            requested_at: None,
        };
    }

    /// Whether this stream carries video: a video format or a 90 kHz clock.
    fn is_video(&self) -> bool {
        self.formats.iter().flatten().any(|f| f.is_video())
            || self.clock_rates.contains(&VIDEO_CLOCK_RATE)
    }

    /// The keyframe wait, for a packet from the current device with the
    /// remote's payload type `remote_pt`: held (a request riding in its
    /// place when one is due), or passed (with a request beside it when
    /// one is due and the format has no keyframe to wait for).
    fn keyframe_gate(
        &mut self,
        now: Instant,
        leg: LegId,
        remote_pt: u8,
        ssrc: u32,
        payload: &[u8],
    ) -> Gate {
        if !self.keyframe.active || leg != self.device {
            return Gate::Pass(None);
        }
        let due = self
            .keyframe
            .requested_at
            .is_none_or(|at| now.saturating_duration_since(at) >= KEYFRAME_REQUEST_EVERY);
        let request = if due {
            self.leg(leg)
                .and_then(|l| l.send_path(Component::Rtcp))
                .map(|(socket, to)| KeyframeRequest {
                    leg,
                    to,
                    socket,
                    media: ssrc,
                })
        } else {
            None
        };
        if request.is_some() {
            self.keyframe.requested_at = Some(now);
        }
        let format = self.format(remote_pt).filter(|f| f.is_video());
        match format {
            Some(format) if crate::core::keyframe::starts_keyframe(format, payload) => {
                self.keyframe.active = false;
                return Gate::Pass(None);
            }
            None if !self.formats.iter().flatten().any(|f| f.is_video()) => {
                // Nothing to wait for on this line: asked once, then it
                // passes.
                self.keyframe.active = false;
                return Gate::Pass(request);
            }
            // Video that does not start a keyframe, or another format on a
            // line whose video is waited for (FEC, RED, a codec without a
            // known keyframe), which waits too rather than end the wait.
            Some(_) | None => {}
        }
        let until = *self.keyframe.until.get_or_insert(now + KEYFRAME_WAIT);
        if now >= until {
            // One expiry, whichever packet found it.
            self.keyframe.active = false;
            if let Some(device) = self.leg_mut(leg) {
                device.counters.keyframe_waits_expired += 1;
            }
            return Gate::Pass(None);
        }
        Gate::Hold(request)
    }

    /// The keyframe request the last routed packet asks for, if any (the
    /// session sends it with that packet's outcome).
    #[inline]
    pub fn take_keyframe_request(&mut self) -> Option<KeyframeRequest> {
        self.keyframe_request.take()
    }

    /// Writes (and seals, on an SRTP leg) the keyframe request `request`
    /// into `buf`, from the remote's SSRC with the relay's next FIR command
    /// number toward the device. Returns its length.
    pub fn write_keyframe_request(
        &mut self,
        request: &KeyframeRequest,
        buf: &mut [u8],
    ) -> Option<usize> {
        // The remote's SSRC when it has sent; else a fixed one of the relay's.
        const RELAY_SSRC: u32 = 0x6261_746f;
        let sender = self.toward_user.ssrc().unwrap_or(RELAY_SSRC);
        let number = self.rtcp.next_fir_to_user();
        let by = self.leg(request.leg)?.payloads.keyframe_by;
        let len = crate::core::keyframe::write_request(buf, sender, request.media, number, by)?;
        self.seal(request.leg, true, buf, len).ok()
    }

    /// Completes a switch that waits for an RFC 4733 event now (a newer
    /// transfer begins). True when there was one.
    pub fn finish_switch(&mut self) -> bool {
        if self.switch_waiting_until.is_some() {
            self.complete_switch();
            return true;
        }
        false
    }

    /// Whether a switch is waiting for an RFC 4733 event to end.
    pub fn switch_waiting(&self) -> bool {
        self.switch_waiting_until.is_some()
    }

    /// When a waiting switch goes ahead even without the event's end.
    pub fn switch_deadline(&self) -> Option<Instant> {
        let until = self.switch_waiting_until?;
        Some(
            self.leg(self.device)
                .and_then(|l| l.dtmf_until)
                .map_or(until, |stale| stale.min(until)),
        )
    }

    /// Periodic work: a switch waiting for an event whose end packet never
    /// came goes ahead once the event is stale, or once it has waited
    /// [`MAX_SWITCH_WAIT`]. True when it did.
    pub fn tick(&mut self, now: Instant) -> bool {
        let Some(until) = self.switch_waiting_until else {
            return false;
        };
        if now >= until || !self.leg(self.device).is_some_and(|l| l.dtmf_active(now)) {
            self.complete_switch();
            return true;
        }
        false
    }

    /// Removes the pending leg (a cancelled or timed-out transfer).
    pub fn cancel_pending(&mut self) -> Option<LegId> {
        let leg = self.pending.take()?;
        self.switch_waiting_until = None;
        self.legs[leg.index()] = None;
        Some(leg)
    }

    /// Removes the retired leg (its grace period is over).
    pub fn close_retired(&mut self) -> Option<LegId> {
        let leg = self.retired.take()?;
        self.legs[leg.index()] = None;
        Some(leg)
    }

    /// A leg a switch removed, whose sockets the caller must close.
    pub fn take_closed(&mut self) -> Option<LegId> {
        self.closed.take()
    }

    /// When the last packet from the user side went to the remote.
    pub fn last_toward_remote_at(&self) -> Option<Instant> {
        self.last_toward_remote_at
    }

    /// A signalling update for the leg facing `party`: new signalled
    /// addresses (replacing learned ones), whether the peer multiplexes
    /// RTCP, and a fresh learning window if it still has no peer, since
    /// media usually starts once the answer is through.
    pub fn update_leg(
        &mut self,
        now: Instant,
        party: Party,
        peer_rtp: Option<SocketAddr>,
        peer_rtcp: Option<SocketAddr>,
        rtcp_mux: Option<bool>,
        crypto: Option<LegCrypto>,
    ) {
        let window = self.config.learning_window;
        let id = self.leg_of(party);
        if let Some(leg) = self.leg_mut(id) {
            if let Some(crypto) = crypto {
                leg.set_crypto(crypto);
            }
            if let Some(mux) = rtcp_mux
                && mux != leg.config.rtcp_mux
            {
                leg.config.rtcp_mux = mux;
                // A signalled RTP peer implies its RTCP peer under the new
                // rule (same port, or the next one).
                if peer_rtp.is_none() && peer_rtcp.is_none() && leg.config.peer_rtp.is_some() {
                    let (rtp, rtcp) = (leg.config.peer_rtp, leg.config.peer_rtcp);
                    leg.set_signalled(rtp, rtcp);
                }
            }
            if leg.ice.is_none() {
                leg.set_signalled(peer_rtp, peer_rtcp);
                if leg.peers[Component::Rtp.index()].addr.is_none() {
                    leg.learning_until = now + window;
                }
            }
        }
        if crypto.is_some() {
            self.note_awaiting_keys();
        }
    }

    /// Sets the ICE credentials of the leg facing `party` (a re-offer or
    /// re-answer). New credentials are an ICE restart (RFC 8445 §9): the
    /// old set is still answered until the peer's first check with the
    /// new one, and the selected address stays until a nominated check
    /// moves it, so the media does not stop meanwhile.
    pub fn set_ice(&mut self, now: Instant, party: Party, credentials: IceCredentials) {
        let id = self.leg_of(party);
        let Some(leg) = self.leg_mut(id) else {
            return;
        };
        match leg.ice.as_mut() {
            Some(ice) if ice.current == credentials => {}
            Some(ice) => {
                ice.previous = Some(ice.current);
                ice.current = credentials;
            }
            None => {
                // The leg becomes an ICE leg: only a nominated check
                // selects its peer from now on.
                leg.ice = Some(Box::new(IceState::new(credentials, now)));
                leg.peers = [Peer::from_signalled(None); 2];
            }
        }
    }

    /// The leg facing `party` stops doing ICE (the peer's new body has
    /// none): the selected address stays as a learned one, and a new
    /// learning window opens, as after any signalling update.
    pub fn clear_ice(&mut self, now: Instant, party: Party) {
        let window = self.config.learning_window;
        let id = self.leg_of(party);
        let Some(leg) = self.leg_mut(id) else {
            return;
        };
        if leg.ice.take().is_none() {
            return;
        }
        for peer in &mut leg.peers {
            if peer.source == PeerSource::Ice {
                peer.source = PeerSource::Learned;
            }
        }
        leg.learning_until = now + window;
    }

    /// The leg facing `party` stops doing DTLS-SRTP; returns it if it did
    /// (its handshake is to end). Its crypto comes with the same update.
    pub fn clear_dtls(&mut self, party: Party) -> Option<LegId> {
        let id = self.leg_of(party);
        let leg = self.leg_mut(id)?;
        leg.dtls.take().map(|_| id)
    }

    /// Starts `leg`'s outbound SRTCP index at `index` at least (see
    /// [`SrtpSender::start_srtcp_index_at`]).
    pub fn start_srtcp_index_at(&mut self, leg: LegId, index: u32) {
        if let Some(srtp) = self.leg_mut(leg).and_then(|leg| leg.srtp.as_mut()) {
            srtp.sender.start_srtcp_index_at(index);
        }
    }

    /// Whether `leg` may send payload type `pt` (in its own numbering).
    pub fn takes_payload(&self, leg: LegId, pt: u8) -> bool {
        self.leg(leg)
            .is_some_and(|leg| leg.payloads.to_remote(pt).is_some())
    }

    /// What `leg`'s ICE selected and whether consent holds, to share with
    /// the streams bundled on its transport.
    pub fn ice_view(&self, leg: LegId) -> Option<IceView> {
        let leg = self.leg(leg)?;
        let ice = leg.ice.as_ref()?;
        Some(IceView {
            selected: leg.peers[Component::Rtp.index()]
                .addr
                .filter(|_| leg.peers[Component::Rtp.index()].source == PeerSource::Ice),
            consent_lost: ice.consent_lost,
        })
    }

    /// Makes `leg` (a bundle follower, with no checks of its own) take its
    /// transport owner's ICE state: the selected pair, and consent. It
    /// never times out by itself; the owner's expiry reaches it here.
    pub fn follow_ice(&mut self, leg: LegId, view: IceView) {
        let Some(leg) = self.leg_mut(leg) else {
            return;
        };
        let Some(ice) = leg.ice.as_mut() else {
            return;
        };
        ice.last_check = None;
        ice.consent_lost = view.consent_lost;
        if let Some(addr) = view.selected {
            leg.peers[Component::Rtp.index()] = Peer {
                addr: Some(addr),
                source: PeerSource::Ice,
            };
        }
    }

    /// When the next ICE consent of this stream runs out.
    pub fn consent_deadline(&self) -> Option<Instant> {
        self.legs
            .iter()
            .flatten()
            .filter_map(Leg::consent_deadline)
            .min()
    }

    /// Sets the DTLS settings of the leg facing `party`; returns the leg if
    /// they changed (a handshake is to start).
    pub fn set_dtls(&mut self, party: Party, params: DtlsParams) -> Option<LegId> {
        let id = self.leg_of(party);
        let leg = self.leg_mut(id)?;
        if leg.dtls.as_deref() == Some(&params) {
            return None;
        }
        leg.dtls = Some(Box::new(params));
        if matches!(leg.config.crypto, LegCrypto::Plain) {
            leg.set_crypto(LegCrypto::AwaitingKeys);
        }
        self.note_awaiting_keys();
        Some(id)
    }

    /// Installs keys that a DTLS-SRTP handshake on `leg` produced (RFC
    /// 5764), if the leg still has the DTLS settings that handshake ran
    /// under: a handshake overtaken by new settings, by the end of DTLS on
    /// the leg or by another device in the leg's slot installs nothing.
    /// Unchanged keys keep their contexts. Returns whether they went in.
    pub fn set_leg_keys(&mut self, leg: LegId, keys: LegKeys, under: &DtlsParams) -> bool {
        let Some(this) = self.leg_mut(leg) else {
            return false;
        };
        if this.dtls.as_deref() != Some(under) {
            return false;
        }
        this.set_crypto(LegCrypto::Srtp(keys));
        self.note_awaiting_keys();
        true
    }

    /// The legs whose ICE consent ran out by `now` (RFC 7675: 30 s
    /// without an authenticated check from the selected address), each
    /// reported once; nothing more is sent to them.
    pub fn expire_consent(&mut self, now: Instant) -> [Option<(LegId, Party)>; LegId::COUNT] {
        let mut expired = [None; LegId::COUNT];
        for id in LegId::all() {
            let party = self.party_of(id);
            if self.leg_mut(id).is_some_and(|leg| leg.consent_expires(now)) {
                expired[id.index()] = Some((id, party));
            }
        }
        expired
    }

    /// The directions the kernel may forward now (see
    /// [`crate::core::fastpath`]), by [`Direction::index`].
    pub fn fast_paths(&self, now: Instant) -> [Option<(FastPath, FastStart)>; 2] {
        let mut paths = [None, None];
        if self.datagrams
            || self.controlled
            || self.keyframe.active
            || self.pending.is_some()
            || self.switch_waiting_until.is_some()
            || self.awaiting_new_device
            || self.awaiting_keys
        {
            return paths;
        }
        let (Some(device), Some(remote)) = (self.leg(self.device), self.leg(self.remote)) else {
            return paths;
        };
        if !device.is_plain() || !remote.is_plain() {
            return paths;
        }
        paths[Direction::TowardRemote.index()] = self.fast_toward_remote(now, device, remote);
        paths[Direction::TowardUser.index()] = self.fast_toward_user(now, remote, device);
        paths
    }

    fn fast_toward_remote(
        &self,
        now: Instant,
        device: &Leg,
        remote: &Leg,
    ) -> Option<(FastPath, FastStart)> {
        let steady = self.continuity.steady_source(STEADY_PACKETS)?;
        if steady.leg != self.device.index() || device.dtmf_until.is_some() || !device.recently(now)
        {
            return None;
        }
        let source = device.peers[Component::Rtp.index()].addr?;
        let (socket, destination) = remote.send_path(Component::Rtp)?;
        let rate = device
            .last_payload_type
            .and_then(|pt| device.payloads.to_remote(pt))
            .map(|pt| self.clock_rates[usize::from(pt)])
            .filter(|&rate| rate != 0 && rate <= MAX_FAST_CLOCK_RATE)?;
        let (transit, jitter_x16, reception_max) = device.reception.steady(steady.ssrc)?;
        if socket != Component::Rtp || reception_max != steady.max_seq {
            return None;
        }
        let payload_types = self.kernel_payload_types(
            |pt| device.payloads.to_remote(pt).map(|out| (out, out)),
            device.payloads.telephone_event,
            rate,
        );
        Some((
            FastPath {
                from: self.device,
                to: self.remote,
                source,
                destination,
                in_ssrc: steady.ssrc,
                out_ssrc: steady.outward_ssrc,
                seq_offset: steady.seq_offset,
                ts_offset: steady.ts_offset,
                rewrite_ssrc_ts: true,
                check_ts: true,
                clock_rate: rate,
                payload_types,
                epoch: self.epoch,
            },
            FastStart {
                max_seq: steady.max_seq,
                last_ts: steady.last_ts,
                seen: steady.seen,
                transit,
                jitter_x16,
            },
        ))
    }

    fn fast_toward_user(
        &self,
        now: Instant,
        remote: &Leg,
        device: &Leg,
    ) -> Option<(FastPath, FastStart)> {
        let (ssrc, seq_offset, highest_in) = self.toward_user.steady()?;
        if !remote.recently(now) || remote.dtmf_until.is_some() {
            return None;
        }
        let (transit, jitter_x16, reception_max) = remote.reception.steady(ssrc)?;
        if reception_max != highest_in
            || remote.reception.received() < u64::from(STEADY_PACKETS)
            || remote.last_ssrc_seq != Some((ssrc, highest_in))
        {
            return None;
        }
        let source = remote.peers[Component::Rtp.index()].addr?;
        let (socket, destination) = device.send_path(Component::Rtp)?;
        let rate = remote
            .last_payload_type
            .map(|pt| self.clock_rates[usize::from(pt)])
            .filter(|&rate| rate != 0 && rate <= MAX_FAST_CLOCK_RATE)?;
        if socket != Component::Rtp {
            return None;
        }
        let payload_types = self.kernel_payload_types(
            |pt| device.payloads.from_remote(pt).map(|out| (out, pt)),
            remote.payloads.telephone_event,
            rate,
        );
        Some((
            FastPath {
                from: self.remote,
                to: self.device,
                source,
                destination,
                in_ssrc: ssrc,
                out_ssrc: ssrc,
                seq_offset,
                ts_offset: 0,
                rewrite_ssrc_ts: false,
                check_ts: false,
                clock_rate: rate,
                payload_types,
                epoch: self.epoch,
            },
            FastStart {
                max_seq: highest_in,
                last_ts: 0,
                seen: 1,
                transit,
                jitter_x16,
            },
        ))
    }

    /// The kernel's payload type map for a sender: `map` gives an input
    /// type's outward type and the same type in the remote's numbering
    /// (where rates and formats are kept); the sender's RFC 4733 type, RTX
    /// and types of another clock rate stay with the relay ([`PASS`]).
    fn kernel_payload_types(
        &self,
        map: impl Fn(u8) -> Option<(u8, u8)>,
        telephone_event: Option<u8>,
        rate: u32,
    ) -> [u8; 128] {
        let mut payload_types = [PASS; 128];
        for (pt, slot) in (0u8..128).zip(payload_types.iter_mut()) {
            if let Some((out, numbered)) = map(pt)
                && Some(pt) != telephone_event
                && !self.is_rtx(numbered)
                && self.clock_rates[usize::from(numbered)] == rate
            {
                *slot = out;
            }
        }
        payload_types
    }

    /// What the kernel forwarded on `path` since the last call: the
    /// stream's state and counters move as if it had passed here.
    pub fn absorb(&mut self, direction: Direction, path: &FastPath, progress: &FastProgress) {
        if progress.is_empty() {
            return;
        }
        match direction {
            Direction::TowardRemote => {
                self.continuity
                    .absorb(path.from.index(), path.in_ssrc, progress, path.clock_rate);
                self.last_toward_remote_at = later(self.last_toward_remote_at, progress.last_at);
            }
            Direction::TowardUser => self.toward_user.absorb(path.in_ssrc, progress.max_seq),
        }
        if let Some(leg) = self.leg_mut(path.from) {
            leg.counters.rtp_in += progress.packets;
            if progress.in_kernel {
                leg.counters.kernel_rtp_in += progress.packets;
            }
            leg.counters.bytes_in += progress.bytes;
            leg.last_packet_at = later(leg.last_packet_at, progress.last_at);
            leg.last_ssrc_seq = Some((path.in_ssrc, progress.max_seq));
            leg.reception.absorb(
                path.in_ssrc,
                progress.packets,
                progress.seq_advance,
                progress.max_seq,
                progress.transit,
                progress.jitter_x16,
            );
        }
        self.last_packet_at = later(self.last_packet_at, progress.last_at);
        self.last_rtp_at = later(self.last_rtp_at, progress.last_at);
        self.record_sent(
            path.to,
            progress.packets - progress.unsent.min(progress.packets),
            progress.bytes - progress.unsent_bytes.min(progress.bytes),
        );
        if progress.unsent > 0 {
            self.record_drop(path.to, DropReason::SendFailed, progress.unsent);
        }
    }

    /// Whether a datagram from an address other than a leg's peer may be
    /// accepted (asymmetric legs, NAT relearning): then a fast path must
    /// hand such datagrams' leg back before the session sees them.
    pub fn lax_sources(&self) -> bool {
        self.config.relearn || self.config.asymmetric
    }

    /// Accounts datagrams the kernel accepted on `leg`'s socket.
    pub fn record_sent(&mut self, leg: LegId, packets: u64, bytes: u64) {
        if let Some(leg) = self.leg_mut(leg) {
            leg.counters.packets_out += packets;
            leg.counters.bytes_out += bytes;
        }
    }

    /// Accounts datagrams the kernel refused on `leg`'s socket, or that
    /// arrived on it too large for the receive buffer.
    pub fn record_drop(&mut self, leg: LegId, reason: DropReason, packets: u64) {
        if let Some(leg) = self.leg_mut(leg) {
            leg.counters.drops[reason as usize] += packets;
        }
    }

    /// When RTP last arrived on any leg, if ever.
    pub fn last_rtp_at(&self) -> Option<Instant> {
        self.last_rtp_at
    }

    /// When any packet (RTP or RTCP) was last accepted on any leg, if ever.
    pub fn last_packet_at(&self) -> Option<Instant> {
        self.last_packet_at
    }

    /// A snapshot of the leg facing `party`.
    pub fn leg_report(&self, now: Instant, party: Party) -> LegReport {
        self.report_of(now, self.leg_of(party))
    }

    /// A snapshot of leg `id` (empty if it no longer exists).
    pub fn report_of(&self, now: Instant, id: LegId) -> LegReport {
        let Some(leg) = self.leg(id) else {
            return LegReport::default();
        };
        let rtp_peer = leg.peers[Component::Rtp.index()];
        let rtcp_peer = leg.peers[leg.peer_slot(Component::Rtcp)];
        let rate = leg
            .last_payload_type
            .and_then(|pt| {
                if id == self.remote {
                    Some(pt)
                } else {
                    leg.payloads.to_remote(pt)
                }
            })
            .map(|pt| self.clock_rates[usize::from(pt)])
            .filter(|&rate| rate != 0);
        LegReport {
            peer_rtp: rtp_peer.addr,
            peer_rtcp: rtcp_peer.addr,
            peer_source: rtp_peer.source,
            counters: leg.counters.clone(),
            expected: leg.reception.expected(),
            lost: leg.reception.lost(),
            jitter_ms: match rate {
                Some(rate) => f64::from(leg.reception.jitter()) * 1000.0 / f64::from(rate),
                None => 0.0,
            },
            last_packet_age: leg
                .last_packet_at
                .map(|at| now.saturating_duration_since(at)),
        }
    }
}

/// The source policy of one leg (see the module documentation). A pending
/// leg is where a switch is authorised, so it is stricter: `asymmetric`
/// still needs the signalled IP, and learning needs the signalled IP when
/// one was given.
#[allow(clippy::too_many_arguments)]
fn check_source(
    leg: &mut Leg,
    party: Party,
    now: Instant,
    component: Component,
    from: SocketAddr,
    fields: Option<RtpFields>,
    policy: StreamConfig,
    pending: bool,
) -> Result<Option<Latched>, DropReason> {
    let (relearn, asymmetric) = (policy.relearn, policy.asymmetric);
    let slot = leg.peer_slot(component);
    let peer = leg.peers[slot];
    let relearned = match (peer.source, peer.addr) {
        (_, Some(addr)) if addr == from => return Ok(None),
        (PeerSource::Signalled, Some(addr)) if asymmetric && pending => {
            if addr.ip() == from.ip() {
                return Ok(None);
            }
            return Err(DropReason::Stranger);
        }
        (PeerSource::Signalled, _) if asymmetric => return Ok(None),
        (PeerSource::Signalled | PeerSource::Ice, _) => return Err(DropReason::Stranger),
        (PeerSource::Unknown, _) if leg.ice.is_some() => return Err(DropReason::IceUnchecked),
        (PeerSource::Learned | PeerSource::Unknown, _) if !ip_allowed(leg, from) => {
            // Not from where the signalling saw the device: never a
            // candidate and never a re-learn, so it cannot displace the
            // real one.
            return Err(DropReason::Stranger);
        }
        (PeerSource::Learned, _) if relearn && leg.may_relearn(component, from, fields) => true,
        (PeerSource::Learned, _) => return Err(DropReason::Stranger),
        (PeerSource::Unknown, _) if now > leg.learning_until => {
            return Err(DropReason::LearningClosed);
        }
        (PeerSource::Unknown, _) if leg.probation > 1 => {
            match fields {
                Some(f) if on_probation(leg, from, f) => false,
                Some(_) => return Err(DropReason::Probation),
                // RTCP proves nothing by itself; it follows the source RTP
                // proved (on separate RTCP ports).
                None => {
                    let rtp_peer = leg.peers[Component::Rtp.index()].addr;
                    if rtp_peer.is_none_or(|addr| addr.ip() != from.ip()) {
                        return Err(DropReason::Probation);
                    }
                    false
                }
            }
        }
        (PeerSource::Unknown, _) => false,
    };
    leg.peers[slot] = Peer {
        addr: Some(from),
        source: PeerSource::Learned,
    };
    Ok(Some(Latched {
        party,
        component,
        addr: from,
        relearned,
    }))
}

/// Whether [`check_source`] would refuse `from` as a stranger whatever the
/// packet says (its verdicts that need no look at the packet, and change
/// nothing).
fn plainly_stranger(
    leg: &Leg,
    component: Component,
    from: SocketAddr,
    policy: StreamConfig,
    pending: bool,
) -> bool {
    let peer = leg.peers[leg.peer_slot(component)];
    match (peer.source, peer.addr) {
        (_, Some(addr)) if addr == from => false,
        (PeerSource::Signalled, Some(addr)) if policy.asymmetric && pending => {
            addr.ip() != from.ip()
        }
        (PeerSource::Signalled, _) => !policy.asymmetric,
        (PeerSource::Ice, _) => true,
        (PeerSource::Learned | PeerSource::Unknown, _) if !ip_allowed(leg, from) => true,
        (PeerSource::Learned, _) => !policy.relearn,
        (PeerSource::Unknown, _) => false,
    }
}

/// Whether `from` is the IP the signalling gave, when it gave one.
fn ip_allowed(leg: &Leg, from: SocketAddr) -> bool {
    leg.config
        .peer_ip
        .is_none_or(|ip| ip.to_canonical() == from.ip().to_canonical())
}

/// Counts an RTP packet towards its source's probation; true when the
/// source has proved itself (that many packets of one SSRC from one
/// address, each a little ahead of the last: a lost packet is allowed, a
/// duplicate or a late one is ignored, a jump starts over).
fn on_probation(leg: &mut Leg, from: SocketAddr, f: RtpFields) -> bool {
    let known = leg
        .candidates
        .iter_mut()
        .flatten()
        .find(|c| c.addr == from && c.ssrc == f.ssrc);
    let seen = match known {
        Some(candidate) => {
            let ahead = f.seq.wrapping_sub(candidate.seq);
            if ahead == 0 || ahead > u16::MAX / 2 {
                return false;
            }
            candidate.seen = if ahead <= PROBATION_MAX_GAP {
                candidate.seen.saturating_add(1)
            } else {
                1
            };
            candidate.seq = f.seq;
            candidate.seen
        }
        None => {
            // A free slot, else the one that has proved least (the later
            // slot on a tie, so the first source keeps its progress).
            let slot = (0..leg.candidates.len())
                .rev()
                .min_by_key(|&i| leg.candidates[i].map_or(0, |c| c.seen))
                .unwrap_or(0);
            leg.candidates[slot] = Some(Candidate {
                addr: from,
                ssrc: f.ssrc,
                seq: f.seq,
                seen: 1,
            });
            1
        }
    };
    if seen >= leg.probation {
        leg.candidates = [None; 2];
        return true;
    }
    false
}

/// A snapshot of one leg's state and counters.
#[derive(Debug, Clone, Default)]
pub struct LegReport {
    /// The peer's RTP address, if known.
    pub peer_rtp: Option<SocketAddr>,
    /// The peer's RTCP address, if known.
    pub peer_rtcp: Option<SocketAddr>,
    /// How the RTP peer became known.
    pub peer_source: PeerSource,
    /// Packet, byte and drop counters.
    pub counters: LegCounters,
    /// RTP packets expected from the peer (RFC 3550 A.3).
    pub expected: u64,
    /// RTP packets lost from the peer, cumulative (RFC 3550 A.3).
    pub lost: i64,
    /// Interarrival jitter of the peer's RTP, in milliseconds (A.8).
    pub jitter_ms: f64,
    /// Time since the last accepted packet from the peer.
    pub last_packet_age: Option<Duration>,
}

/// The highest clock rate the kernel fast path takes: its jitter arithmetic
/// (microseconds × rate) stays exact for years of uptime below it, and no
/// real payload format is faster.
const MAX_FAST_CLOCK_RATE: u32 = 192_000;

/// The later of a time that may be unset and another.
fn later(at: Option<Instant>, other: Instant) -> Option<Instant> {
    Some(at.map_or(other, |at| at.max(other)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    const WINDOW: Duration = Duration::from_secs(3);
    const USER: LegId = LegId::FIRST_DEVICE;
    const REMOTE: LegId = LegId::REMOTE;

    fn stream(now: Instant, user: LegConfig, remote: LegConfig, relearn: bool) -> Stream {
        Stream::new(
            now,
            StreamConfig {
                learning_window: WINDOW,
                relearn,
                asymmetric: false,
            },
            user,
            remote,
            &[(0, 8000), (101, 8000)],
            Some(101),
        )
    }

    fn leg(peer: Option<&str>, mux: bool) -> LegConfig {
        LegConfig {
            rtcp_mux: mux,
            peer_rtp: peer.map(addr),
            peer_rtcp: None,
            peer_ip: None,
            crypto: LegCrypto::Plain,
            ice: None,
            dtls: None,
        }
    }

    fn rtp_pt(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        crate::core::rtp::RtpRepr {
            marker: false,
            payload_type: pt,
            sequence: seq,
            timestamp: ts,
            ssrc,
        }
        .to_vec(payload)
    }

    fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
        rtp_pt(0, seq, u32::from(seq) * 160, ssrc, &[0xd5; 160])
    }

    fn rtcp_rr(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 201, 0, 1];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p
    }

    /// Feeds a datagram; returns the outcome and the bytes as they would go
    /// out (after in-place rewriting).
    fn feed(
        s: &mut Stream,
        now: Instant,
        leg: LegId,
        component: Component,
        from: &str,
        bytes: &[u8],
    ) -> (Outcome, Vec<u8>) {
        let mut buf = [0u8; 2048];
        buf[..bytes.len()].copy_from_slice(bytes);
        let outcome = s.on_packet(now, leg, component, addr(from), &mut buf, bytes.len());
        let len = match outcome.verdict {
            Verdict::Forward { len, .. } => len,
            Verdict::Drop(_) | Verdict::Handshake { .. } => bytes.len(),
        };
        (outcome, buf[..len].to_vec())
    }

    /// The kernel fast path's view: a direction qualifies once its source
    /// is steady, with the numbers the relay itself would write; what the
    /// kernel forwarded moves the state exactly, so the relay's next
    /// packet, and a new source's anchor, continue from the kernel's last.
    /// Two copies of one call: `whole` handles every packet itself, `laned`
    /// hands its steady directions to lanes, takes them back and goes on.
    /// The remote and the device hear the same bytes, and the reports
    /// agree.
    #[test]
    fn a_lane_forwards_what_the_session_would_and_hands_back_where_it_left_off() {
        use crate::core::fastpath::Lane;
        let t0 = Instant::now();
        let (device, remote) = ("127.0.0.1:6000", "127.0.0.1:7000");
        let new = || stream(t0, leg(Some(device), true), leg(Some(remote), true), false);
        let (mut whole, mut laned) = (new(), new());
        // Uneven arrival times (up to 3 ms late), so jitter has something
        // to measure; the device's numbers wrap while lanes carry them.
        let step = |k: u16| {
            t0 + Duration::from_millis(20 * u64::from(k) + 20)
                + Duration::from_micros(u64::from(k) * 7919 % 3000)
        };
        // The device's packet k (its numbers wrap, its timestamps go on)
        // and the remote's.
        let up = |k: u16| {
            rtp_pt(
                0,
                65_400u16.wrapping_add(k),
                1_000 + u32::from(k) * 160,
                0xA,
                &[0xd5; 160],
            )
        };
        let down = |k: u16| rtp(100 + k, 0xB);
        let both = |whole: &mut Stream, laned: &mut Stream, now, k: u16| {
            let (up, down) = (up(k), down(k));
            assert_eq!(
                feed(whole, now, USER, Component::Rtp, device, &up).1,
                feed(laned, now, USER, Component::Rtp, device, &up).1
            );
            assert_eq!(
                feed(whole, now, REMOTE, Component::Rtp, remote, &down).1,
                feed(laned, now, REMOTE, Component::Rtp, remote, &down).1
            );
        };
        let mut k = 0u16;
        while laned.fast_paths(step(k)).iter().any(Option::is_none) {
            let at = step(k);
            both(&mut whole, &mut laned, at, k);
            k += 1;
            assert!(k < 200, "both ways become steady");
        }
        let paths = laned.fast_paths(step(k));
        let mut lanes: Vec<_> = paths
            .iter()
            .flatten()
            .map(|(path, start)| Lane::new(path, start, step(k)).expect("one payload type"))
            .collect();
        for _ in 0..300 {
            let at = step(k);
            let (up, down) = (up(k), down(k));
            for (lane, bytes, leg, from) in [(0, &up, USER, device), (1, &down, REMOTE, remote)] {
                let expected = feed(&mut whole, at, leg, Component::Rtp, from, bytes).1;
                let mut buf = bytes.clone();
                assert!(lanes[lane].forward(at, addr(from), &mut buf, bytes.len()));
                assert_eq!(buf, expected, "packet {k}");
            }
            k += 1;
        }
        for (direction, ((path, _), lane)) in Direction::BOTH
            .into_iter()
            .zip(paths.iter().flatten().zip(&mut lanes))
        {
            laned.absorb(direction, path, &lane.take());
        }
        // Back in the session: a reordered packet and then the next ones
        // come out the same from both.
        let at = step(k);
        let (late, early) = (up(k + 1), up(k));
        for bytes in [&late, &early] {
            assert_eq!(
                feed(&mut whole, at, USER, Component::Rtp, device, bytes).1,
                feed(&mut laned, at, USER, Component::Rtp, device, bytes).1
            );
        }
        k += 2;
        for _ in 0..20 {
            let at = step(k);
            both(&mut whole, &mut laned, at, k);
            k += 1;
        }
        for party in [USER, REMOTE] {
            let (a, b) = (
                whole.report_of(step(k), party),
                laned.report_of(step(k), party),
            );
            assert_eq!(a.counters.rtp_in, b.counters.rtp_in, "{party:?}");
            // Sends are counted by the worker (not by `feed`); a lane's by
            // the session as it takes them in.
            assert_eq!(b.counters.packets_out - a.counters.packets_out, 300);
            assert_eq!(a.counters.bytes_in, b.counters.bytes_in);
            assert_eq!((a.expected, a.lost), (b.expected, b.lost), "{party:?}");
            assert_eq!(a.jitter_ms.to_bits(), b.jitter_ms.to_bits(), "{party:?}");
            assert_eq!(b.counters.kernel_rtp_in, 0, "a lane is not the kernel");
        }
    }

    #[test]
    fn steady_directions_go_to_the_kernel_and_come_back_where_it_left_them() {
        let t0 = Instant::now();
        let (device, remote) = ("127.0.0.1:6000", "127.0.0.1:7000");
        let mut s = stream(t0, leg(Some(device), true), leg(Some(remote), true), false);
        let ptime = Duration::from_millis(20);
        let mut now = t0;
        for seq in 1000..1030u16 {
            now += ptime;
            let (outcome, _) = feed(&mut s, now, USER, Component::Rtp, device, &rtp(seq, 0xA));
            assert!(matches!(outcome.verdict, Verdict::Forward { .. }));
        }
        assert!(
            s.fast_paths(now).iter().all(Option::is_none),
            "not steady yet"
        );
        for seq in 1030..1060u16 {
            now += ptime;
            feed(&mut s, now, USER, Component::Rtp, device, &rtp(seq, 0xA));
            feed(
                &mut s,
                now,
                REMOTE,
                Component::Rtp,
                remote,
                &rtp(seq - 900, 0xB),
            );
        }
        let [Some((up, start)), None] = s.fast_paths(now) else {
            panic!("toward the remote only: the remote sent 30 packets")
        };
        assert_eq!((up.from, up.to), (USER, REMOTE));
        assert_eq!((up.source, up.destination), (addr(device), addr(remote)));
        assert_eq!(
            (up.in_ssrc, up.out_ssrc, up.seq_offset, up.ts_offset),
            (0xA, 0xA, 0, 0)
        );
        assert_eq!(
            (up.payload_types[0], up.payload_types[101]),
            (0, PASS),
            "events stay here"
        );
        assert_eq!((start.max_seq, start.last_ts), (1059, 1059 * 160));
        for seq in 1060..1090u16 {
            now += ptime;
            feed(
                &mut s,
                now,
                REMOTE,
                Component::Rtp,
                remote,
                &rtp(seq - 900, 0xB),
            );
        }
        let [Some(_), Some((down, _))] = s.fast_paths(now) else {
            panic!("both ways once the remote is steady too")
        };
        assert!(!down.rewrite_ssrc_ts && down.seq_offset == 0);

        // The kernel forwards 100 of the device's packets, wrapping nothing.
        now += ptime * 100;
        s.absorb(
            Direction::TowardRemote,
            &up,
            &FastProgress {
                in_kernel: true,
                unsent: 0,
                unsent_bytes: 0,
                packets: 100,
                bytes: 100 * 172,
                payload_bytes: 100 * 160,
                seq_advance: 100,
                max_seq: 1159,
                last_ts: 1159 * 160,
                last_at: now,
                seen: u64::MAX,
                step: Some((160, 1)),
                transit: None,
                jitter_x16: 0,
            },
        );
        let report = s.report_of(now, USER);
        assert_eq!(report.counters.rtp_in, 160);
        assert_eq!(report.counters.kernel_rtp_in, 100);
        assert_eq!(report.lost, 0, "no loss: the kernel's packets count");
        // What the worker sends it counts itself; the kernel's count here.
        assert_eq!(s.report_of(now, REMOTE).counters.packets_out, 100);
        // A late copy of one the kernel sent is a duplicate here.
        let (late, _) = feed(&mut s, now, USER, Component::Rtp, device, &rtp(1150, 0xA));
        assert_eq!(late.verdict, Verdict::Drop(DropReason::Duplicate));
        // The device restarts its SSRC: the anchor goes on from the
        // kernel's last number and timestamp, 40 ms later.
        now += ptime * 2;
        let (anchored, bytes) = feed(&mut s, now, USER, Component::Rtp, device, &rtp(7, 0xC));
        assert!(matches!(anchored.verdict, Verdict::Forward { .. }));
        let view = RtpView::new_checked(&bytes[..]).expect("rtp");
        assert_eq!(view.ssrc(), 0xA);
        assert_eq!(view.sequence(), 1160);
        assert_eq!(view.timestamp(), 1159 * 160 + 320);
        assert!(view.marker());
        assert!(
            s.fast_paths(now)[Direction::TowardRemote.index()].is_none(),
            "a new source settles here first"
        );
    }

    /// T.38 fax (UDPTL): datagrams go through as they came, both ways,
    /// from the signalled peers only; a blocked party's do not; back in
    /// RTP mode a UDPTL datagram is malformed RTP again.
    #[test]
    fn udptl_datagrams_pass_as_they_are_from_the_peers_only() {
        let t0 = Instant::now();
        let mut s = stream(
            t0,
            leg(Some("10.0.0.1:4000"), false),
            leg(Some("10.0.0.2:5000"), false),
            false,
        );
        s.set_datagrams(true);
        // A UDPTL packet: sequence 0, a primary IFP, redundancy (T.38 §9).
        let udptl = [0x00, 0x00, 0x06, 0x40, 0x80, 0x6e, 0x10, 0x01, 0x00, 0x00];
        let (out, bytes) = feed(&mut s, t0, USER, Component::Rtp, "10.0.0.1:4000", &udptl);
        assert!(
            matches!(out.verdict, Verdict::Forward { leg, to, len: 10, .. } if leg == REMOTE && to == addr("10.0.0.2:5000")),
            "{:?}",
            out.verdict
        );
        assert_eq!(bytes, udptl);
        let (out, _) = feed(&mut s, t0, REMOTE, Component::Rtp, "10.0.0.2:5000", &udptl);
        assert!(matches!(out.verdict, Verdict::Forward { leg, .. } if leg == USER));
        let (out, _) = feed(&mut s, t0, USER, Component::Rtp, "10.0.0.9:4000", &udptl);
        assert_eq!(out.verdict, Verdict::Drop(DropReason::Stranger));
        let (out, _) = feed(&mut s, t0, USER, Component::Rtcp, "10.0.0.1:4001", &udptl);
        assert_eq!(out.verdict, Verdict::Drop(DropReason::Stranger));
        s.set_controls([
            MediaControl {
                block_media: true,
                ..MediaControl::default()
            },
            MediaControl::default(),
        ]);
        let (out, _) = feed(&mut s, t0, USER, Component::Rtp, "10.0.0.1:4000", &udptl);
        assert_eq!(out.verdict, Verdict::Drop(DropReason::MediaBlocked));
        s.set_controls([MediaControl::default(); 2]);
        s.set_datagrams(false);
        let (out, _) = feed(&mut s, t0, USER, Component::Rtp, "10.0.0.1:4000", &udptl);
        assert_eq!(out.verdict, Verdict::Drop(DropReason::MalformedRtp));
        let (out, _) = feed(
            &mut s,
            t0,
            USER,
            Component::Rtp,
            "10.0.0.1:4000",
            &rtp(1, 0xA),
        );
        assert!(matches!(out.verdict, Verdict::Forward { .. }));
    }

    /// A device 65 540 packets into its call (rollover counter 1) re-keys
    /// with a re-offer. Until the answer reaches it, it sends under the old
    /// key; then under the new key either with a fresh context (rollover
    /// counter 0, what most phones do) or going on from its counters
    /// (libsrtp's `srtp_update`). The relay accepts all three, and once the
    /// new key is in use, the old one no longer works.
    #[test]
    fn a_device_that_re_keys_is_understood_either_way() {
        use crate::core::srtp::{MAX_OVERHEAD, Suite};
        let t0 = Instant::now();
        let key = |n: u8| MasterKey::new(Suite::AesCm128HmacSha1_80, &[n; 30]).expect("key");
        let keys = |peer: u8| {
            LegCrypto::Srtp(LegKeys {
                peer: key(peer),
                relay: key(99),
            })
        };
        for in_place in [false, true] {
            let user = LegConfig {
                crypto: keys(1),
                ..leg(Some("10.0.0.1:4000"), true)
            };
            let mut s = stream(t0, user, leg(Some("10.0.0.2:5000"), true), false);
            let mut device = SrtpSender::new(&key(1));
            let send = |s: &mut Stream, device: &mut SrtpSender, seq: u16| {
                let plain = rtp(seq, 0xA);
                let mut buf = [0u8; 2048 + MAX_OVERHEAD];
                buf[..plain.len()].copy_from_slice(&plain);
                let len = device.protect_rtp(&mut buf, plain.len()).expect("protect");
                s.on_packet(
                    t0,
                    USER,
                    Component::Rtp,
                    addr("10.0.0.1:4000"),
                    &mut buf,
                    len,
                )
                .verdict
            };
            // Across the wrap: the device's rollover counter is 1 now.
            for seq in 65_530..=65_535u16 {
                assert!(matches!(
                    send(&mut s, &mut device, seq),
                    Verdict::Forward { .. }
                ));
            }
            for seq in 0..4u16 {
                assert!(matches!(
                    send(&mut s, &mut device, seq),
                    Verdict::Forward { .. }
                ));
            }
            s.update_leg(t0, Party::User, None, None, None, Some(keys(2)));
            assert!(
                matches!(send(&mut s, &mut device, 4), Verdict::Forward { .. }),
                "the old key until the answer arrives"
            );
            let mut renewed = if in_place {
                SrtpSender::continuing(&key(2), &device)
            } else {
                SrtpSender::new(&key(2))
            };
            assert!(
                matches!(send(&mut s, &mut renewed, 5), Verdict::Forward { .. }),
                "the new key (in place: {in_place})"
            );
            assert!(matches!(
                send(&mut s, &mut renewed, 6),
                Verdict::Forward { .. }
            ));
            assert_eq!(
                send(&mut s, &mut device, 7),
                Verdict::Drop(DropReason::SrtpAuth),
                "the old key is retired"
            );
        }
    }

    fn fwd(leg: LegId, component: Component, to: &str, len: usize) -> Verdict {
        Verdict::Forward {
            leg,
            component,
            to: addr(to),
            len,
            fork: None,
        }
    }

    #[test]
    fn forwards_between_signalled_peers_untouched() {
        let now = Instant::now();
        let mut s = stream(
            now,
            leg(Some("10.0.0.1:4000"), false),
            leg(Some("10.0.0.2:5000"), false),
            false,
        );
        let packet = rtp(1, 7);
        let (outcome, out) = feed(&mut s, now, USER, Component::Rtp, "10.0.0.1:4000", &packet);
        assert_eq!(
            outcome.verdict,
            fwd(REMOTE, Component::Rtp, "10.0.0.2:5000", packet.len())
        );
        assert_eq!(outcome.latched, None);
        assert_eq!(out, packet, "the first source passes byte for byte");
        // RTCP goes to the signalled RTP port + 1.
        let (outcome, _) = feed(
            &mut s,
            now,
            REMOTE,
            Component::Rtcp,
            "10.0.0.2:5001",
            &rtcp_rr(9),
        );
        assert_eq!(
            outcome.verdict,
            fwd(USER, Component::Rtcp, "10.0.0.1:4001", 8)
        );
    }

    #[test]
    fn asymmetric_legs_accept_any_source_but_send_to_the_signalled_peer() {
        let now = Instant::now();
        let mut s = Stream::new(
            now,
            StreamConfig {
                learning_window: WINDOW,
                relearn: false,
                asymmetric: true,
            },
            leg(Some("10.0.0.1:4000"), false),
            leg(Some("10.0.0.2:5000"), false),
            &[(0, 8000)],
            None,
        );
        // The device sends from another port than it receives on.
        let packet = rtp(1, 7);
        let (outcome, _) = feed(&mut s, now, USER, Component::Rtp, "10.0.0.1:4100", &packet);
        assert_eq!(
            outcome.verdict,
            fwd(REMOTE, Component::Rtp, "10.0.0.2:5000", packet.len())
        );
        let (outcome, _) = feed(
            &mut s,
            now,
            REMOTE,
            Component::Rtp,
            "10.0.0.2:5100",
            &rtp(1, 9),
        );
        assert_eq!(
            outcome.verdict,
            fwd(USER, Component::Rtp, "10.0.0.1:4000", packet.len()),
            "replies still go to the signalled address"
        );
    }

    #[test]
    fn signalled_peer_refuses_strangers() {
        let now = Instant::now();
        let mut s = stream(
            now,
            leg(Some("10.0.0.1:4000"), false),
            leg(Some("10.0.0.2:5000"), false),
            true,
        );
        let (outcome, _) = feed(
            &mut s,
            now,
            USER,
            Component::Rtp,
            "10.6.6.6:4000",
            &rtp(1, 7),
        );
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::Stranger));
        // Not even with the same SSRC and the next sequence number.
        feed(
            &mut s,
            now,
            USER,
            Component::Rtp,
            "10.0.0.1:4000",
            &rtp(1, 7),
        );
        let (outcome, _) = feed(
            &mut s,
            now,
            USER,
            Component::Rtp,
            "10.0.0.1:4444",
            &rtp(2, 7),
        );
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::Stranger));
        let report = s.leg_report(now, Party::User);
        assert_eq!(report.counters.drops[DropReason::Stranger as usize], 2);
        assert_eq!(report.counters.rtp_in, 1);
    }

    #[test]
    fn learns_the_first_source_then_is_strict() {
        let t0 = Instant::now();
        let mut s = stream(
            t0,
            leg(None, false),
            leg(Some("10.0.0.2:5000"), false),
            false,
        );
        let t1 = t0 + Duration::from_secs(1);
        let (outcome, _) = feed(
            &mut s,
            t1,
            USER,
            Component::Rtp,
            "192.0.2.1:7000",
            &rtp(1, 7),
        );
        assert!(matches!(outcome.verdict, Verdict::Forward { .. }));
        assert_eq!(
            outcome.latched,
            Some(Latched {
                party: Party::User,
                component: Component::Rtp,
                addr: addr("192.0.2.1:7000"),
                relearned: false
            })
        );
        let (outcome, _) = feed(
            &mut s,
            t1,
            USER,
            Component::Rtp,
            "192.0.2.9:7000",
            &rtp(2, 7),
        );
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::Stranger));
        // The remote's media now reaches the learned address.
        let (outcome, _) = feed(
            &mut s,
            t1,
            REMOTE,
            Component::Rtp,
            "10.0.0.2:5000",
            &rtp(1, 9),
        );
        assert_eq!(
            outcome.verdict,
            fwd(USER, Component::Rtp, "192.0.2.1:7000", 172)
        );
    }

    #[test]
    fn nothing_is_learned_after_the_window_until_signalling_reopens_it() {
        let t0 = Instant::now();
        let mut s = stream(
            t0,
            leg(None, false),
            leg(Some("10.0.0.2:5000"), false),
            false,
        );
        let late = t0 + WINDOW + Duration::from_millis(1);
        let (outcome, _) = feed(
            &mut s,
            late,
            USER,
            Component::Rtp,
            "192.0.2.1:7000",
            &rtp(1, 7),
        );
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::LearningClosed));
        assert_eq!(outcome.latched, None);
        s.update_leg(late, Party::User, None, None, None, None);
        let (outcome, _) = feed(
            &mut s,
            late,
            USER,
            Component::Rtp,
            "192.0.2.1:7000",
            &rtp(2, 7),
        );
        assert!(matches!(outcome.verdict, Verdict::Forward { .. }));
        assert!(outcome.latched.is_some());
    }

    #[test]
    fn packets_toward_an_unknown_peer_are_dropped() {
        let now = Instant::now();
        let mut s = stream(
            now,
            leg(Some("10.0.0.1:4000"), false),
            leg(None, false),
            false,
        );
        let (outcome, _) = feed(
            &mut s,
            now,
            USER,
            Component::Rtp,
            "10.0.0.1:4000",
            &rtp(1, 7),
        );
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::NoDestination));
        assert_eq!(
            s.leg_report(now, Party::User).counters.drops[DropReason::NoDestination as usize],
            1
        );
    }

    #[test]
    fn malformed_packets_are_dropped_and_never_latch() {
        let now = Instant::now();
        let mut s = stream(
            now,
            leg(None, false),
            leg(Some("10.0.0.2:5000"), false),
            false,
        );
        for junk in [vec![], vec![0x80; 5], vec![0x00; 40], vec![0x8f; 20]] {
            let (outcome, _) = feed(&mut s, now, USER, Component::Rtp, "192.0.2.66:1", &junk);
            assert_eq!(outcome.verdict, Verdict::Drop(DropReason::MalformedRtp));
            assert_eq!(outcome.latched, None);
        }
        let (outcome, _) = feed(
            &mut s,
            now,
            USER,
            Component::Rtcp,
            "192.0.2.66:1",
            &[0x80, 200, 0, 9],
        );
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::MalformedRtcp));
        // The legitimate device still latches afterwards.
        let (outcome, _) = feed(
            &mut s,
            now,
            USER,
            Component::Rtp,
            "192.0.2.1:7000",
            &rtp(1, 7),
        );
        assert!(outcome.latched.is_some());
    }

    #[test]
    fn rtcp_mux_demultiplexes_on_one_socket() {
        let now = Instant::now();
        let mut s = stream(
            now,
            leg(Some("10.0.0.1:4000"), true),
            leg(Some("10.0.0.2:5000"), false),
            false,
        );
        // RTCP on the user's mux socket goes to the remote's RTCP port.
        let (outcome, _) = feed(
            &mut s,
            now,
            USER,
            Component::Rtp,
            "10.0.0.1:4000",
            &rtcp_rr(7),
        );
        assert_eq!(
            outcome.verdict,
            fwd(REMOTE, Component::Rtcp, "10.0.0.2:5001", 8)
        );
        // RTCP from the remote leaves through the user's single socket to
        // the user's one address.
        let (outcome, _) = feed(
            &mut s,
            now,
            REMOTE,
            Component::Rtcp,
            "10.0.0.2:5001",
            &rtcp_rr(9),
        );
        assert_eq!(
            outcome.verdict,
            fwd(USER, Component::Rtp, "10.0.0.1:4000", 8)
        );
    }

    #[test]
    fn nat_relearning_is_opt_in_and_needs_the_same_ssrc_nearby() {
        let now = Instant::now();
        for relearn in [false, true] {
            let mut s = stream(
                now,
                leg(None, false),
                leg(Some("10.0.0.2:5000"), false),
                relearn,
            );
            feed(
                &mut s,
                now,
                USER,
                Component::Rtp,
                "192.0.2.1:7000",
                &rtp(100, 7),
            );
            // Another SSRC from the new address: never.
            let (outcome, _) = feed(
                &mut s,
                now,
                USER,
                Component::Rtp,
                "192.0.2.1:7100",
                &rtp(101, 8),
            );
            assert_eq!(outcome.verdict, Verdict::Drop(DropReason::Stranger));
            // Same SSRC but far away in sequence: never.
            let (outcome, _) = feed(
                &mut s,
                now,
                USER,
                Component::Rtp,
                "192.0.2.1:7100",
                &rtp(5000, 7),
            );
            assert_eq!(outcome.verdict, Verdict::Drop(DropReason::Stranger));
            // Same SSRC, next sequence number: only with relearn.
            let (outcome, _) = feed(
                &mut s,
                now,
                USER,
                Component::Rtp,
                "192.0.2.1:7100",
                &rtp(101, 7),
            );
            if relearn {
                assert!(matches!(outcome.verdict, Verdict::Forward { .. }));
                assert!(outcome.latched.is_some_and(|l| l.relearned));
            } else {
                assert_eq!(outcome.verdict, Verdict::Drop(DropReason::Stranger));
            }
        }
    }

    #[test]
    fn reports_loss_and_jitter_of_the_peer() {
        let t0 = Instant::now();
        let mut s = stream(
            t0,
            leg(Some("10.0.0.1:4000"), false),
            leg(Some("10.0.0.2:5000"), false),
            false,
        );
        for seq in (0u16..100).filter(|s| s % 10 != 5) {
            let at = t0 + Duration::from_millis(20 * u64::from(seq));
            feed(
                &mut s,
                at,
                USER,
                Component::Rtp,
                "10.0.0.1:4000",
                &rtp(seq, 7),
            );
        }
        let report = s.leg_report(t0 + Duration::from_secs(3), Party::User);
        assert_eq!(report.lost, 10);
        assert!(
            report.jitter_ms < 0.5,
            "perfect pacing has ~no jitter: {}",
            report.jitter_ms
        );
        assert_eq!(report.peer_source, PeerSource::Signalled);
        assert_eq!(
            report.last_packet_age,
            Some(Duration::from_millis(3000 - 20 * 99))
        );
    }

    fn fields(bytes: &[u8]) -> (bool, u8, u16, u32, u32) {
        let v = RtpView::new_checked(bytes).expect("rtp");
        (
            v.marker(),
            v.payload_type(),
            v.sequence(),
            v.timestamp(),
            v.ssrc(),
        )
    }

    /// A talks from 10.0.0.1 (SSRC 0xA), the remote is 10.0.0.2; B (at
    /// 10.0.0.3, numbering telephone-event 96) gets a pending leg.
    fn transfer_setup(t0: Instant) -> (Stream, LegId) {
        let mut s = stream(
            t0,
            leg(Some("10.0.0.1:4000"), true),
            leg(Some("10.0.0.2:5000"), true),
            false,
        );
        for i in 0..5u16 {
            let at = t0 + Duration::from_millis(20 * u64::from(i));
            feed(
                &mut s,
                at,
                USER,
                Component::Rtp,
                "10.0.0.1:4000",
                &rtp_pt(0, 1000 + i, 8000 + 160 * u32::from(i), 0xA, &[1; 160]),
            );
        }
        let b = s
            .add_pending(
                t0,
                leg(Some("10.0.0.3:6000"), true),
                PayloadMap::from_pairs(&[(0, 0), (96, 101)], Some(96)),
                WINDOW,
            )
            .expect("pending leg");
        (s, b)
    }

    #[test]
    fn transfer_switches_on_the_new_devices_first_packet() {
        let t0 = Instant::now();
        let (mut s, b) = transfer_setup(t0);
        // While pending, the remote's media goes to both devices.
        let (outcome, _) = feed(
            &mut s,
            t0,
            REMOTE,
            Component::Rtp,
            "10.0.0.2:5000",
            &rtp_pt(101, 7, 0, 0xF, &[1, 0, 0, 160]),
        );
        match outcome.verdict {
            Verdict::Forward {
                leg,
                fork: Some(fork),
                ..
            } => {
                assert_eq!(leg, USER);
                assert_eq!(
                    fork,
                    Fork {
                        leg: b,
                        to: addr("10.0.0.3:6000"),
                        socket: Component::Rtp,
                        payload_type: 96,
                        len: 0
                    }
                );
            }
            other @ (Verdict::Forward { .. } | Verdict::Drop(_) | Verdict::Handshake { .. }) => {
                panic!("expected a fork, got {other:?}")
            }
        }
        // B's first packet asks for the switch and is held.
        let t_b = t0 + Duration::from_millis(80 + 30);
        let first_b = rtp_pt(0, 40000, 777, 0xB, &[2; 160]);
        let (outcome, _) = feed(&mut s, t_b, b, Component::Rtp, "10.0.0.3:6000", &first_b);
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::TransferPending));
        assert_eq!(s.switch(t_b), Switch::Done);
        let (outcome, out) = feed(&mut s, t_b, b, Component::Rtp, "10.0.0.3:6000", &first_b);
        assert!(outcome.new_device_started);
        assert!(matches!(
            outcome.verdict,
            Verdict::Forward { leg: REMOTE, .. }
        ));
        let (marker, pt, seq, ts, ssrc) = fields(&out);
        assert_eq!(
            (marker, pt, seq, ssrc),
            (true, 0, 1005, 0xA),
            "same SSRC, next seq, marker"
        );
        assert_eq!(ts, 8000 + 160 * 4 + 30 * 8, "30 ms after A's last packet");
        // B's telephone-event (96) reaches the remote as 101.
        let (_, out) = feed(
            &mut s,
            t_b + Duration::from_millis(20),
            b,
            Component::Rtp,
            "10.0.0.3:6000",
            &rtp_pt(96, 40001, 937, 0xB, &[1, 10, 0, 160]),
        );
        assert_eq!(fields(&out).1, 101);
        assert_eq!(fields(&out).2, 1006);
        // A's late packets are dropped; the remote's media goes to B only,
        // in B's numbering.
        let (outcome, _) = feed(
            &mut s,
            t_b,
            USER,
            Component::Rtp,
            "10.0.0.1:4000",
            &rtp_pt(0, 1005, 8800, 0xA, &[1; 160]),
        );
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::OldSource));
        let (outcome, out) = feed(
            &mut s,
            t_b,
            REMOTE,
            Component::Rtp,
            "10.0.0.2:5000",
            &rtp_pt(101, 8, 0, 0xF, &[1, 0, 0, 160]),
        );
        assert_eq!(outcome.verdict, fwd(b, Component::Rtp, "10.0.0.3:6000", 16));
        assert_eq!(fields(&out).1, 96);
        assert_eq!(s.leg_of(Party::User), b);
        assert_eq!(s.close_retired(), Some(USER));
    }

    /// A video stream between A (10.0.0.1) and the remote (10.0.0.2),
    /// rtcp-mux, its payload types at 90 kHz with `formats`.
    fn video_stream(t0: Instant, formats: &[(u8, PayloadFormat)]) -> Stream {
        let rates: Vec<(u8, u32)> = formats.iter().map(|&(pt, _)| (pt, 90_000)).collect();
        let mut s = Stream::new(
            t0,
            StreamConfig {
                learning_window: WINDOW,
                relearn: false,
                asymmetric: false,
            },
            leg(Some("10.0.0.1:4000"), true),
            leg(Some("10.0.0.2:5000"), true),
            &rates,
            None,
        );
        s.set_formats(formats);
        s
    }

    /// Issue 18: RTX (RFC 4588). A device's retransmissions join one
    /// outward repair stream (the first device's repair SSRC, numbers +1)
    /// with their original sequence number in the outward numbering, and
    /// never move the main stream's anchor; after a switch the new device's
    /// repairs map into its part of the outward stream, and a repair of a
    /// packet from before its anchor is late.
    #[test]
    fn retransmissions_join_one_repair_stream_in_the_outward_numbering() {
        let t0 = Instant::now();
        let mut s = video_stream(t0, &[(96, PayloadFormat::Vp8), (97, PayloadFormat::Rtx)]);
        let video = |seq: u16, ssrc: u32| rtp_pt(96, seq, 3000 * u32::from(seq), ssrc, &[1; 100]);
        let repair = |seq: u16, ssrc: u32, osn: u16| {
            let mut payload = osn.to_be_bytes().to_vec();
            payload.extend_from_slice(&[1; 100]);
            rtp_pt(97, seq, 3000 * u32::from(osn), ssrc, &payload)
        };
        let osn = |out: &[u8]| {
            let view = RtpView::new_checked(out).expect("rtp");
            u16::from_be_bytes([view.payload()[0], view.payload()[1]])
        };
        let a = "10.0.0.1:4000";
        for seq in 100..105u16 {
            feed(&mut s, t0, USER, Component::Rtp, a, &video(seq, 0xA));
        }
        let (outcome, out) = feed(&mut s, t0, USER, Component::Rtp, a, &repair(500, 0xAA, 102));
        assert!(matches!(
            outcome.verdict,
            Verdict::Forward { leg: REMOTE, .. }
        ));
        assert_eq!(
            (fields(&out).1, fields(&out).2, fields(&out).4),
            (97, 500, 0xAA)
        );
        assert_eq!(osn(&out), 102);
        // The main stream goes on unanchored (no marker, next number).
        let (_, out) = feed(&mut s, t0, USER, Component::Rtp, a, &video(105, 0xA));
        assert_eq!(
            (fields(&out).0, fields(&out).2, fields(&out).4),
            (false, 105, 0xA)
        );

        let b = s
            .add_pending(
                t0,
                leg(Some("10.0.0.3:6000"), true),
                PayloadMap::from_pairs(&[(96, 96), (97, 97)], None),
                WINDOW,
            )
            .expect("pending leg");
        let b_at = "10.0.0.3:6000";
        let t1 = t0 + Duration::from_millis(40);
        // B's first packet starts a VP8 keyframe (S, partition 0, P clear).
        let key = rtp_pt(96, 9000, 3000 * 9000, 0xB, &[0x10, 0x00, 1, 1]);
        feed(&mut s, t1, b, Component::Rtp, b_at, &key);
        assert_eq!(s.switch(t1), Switch::Done);
        let (_, out) = feed(&mut s, t1, b, Component::Rtp, b_at, &key);
        // Video: the first packet keeps its own marker (a frame's end).
        assert_eq!(
            (fields(&out).0, fields(&out).2, fields(&out).4),
            (false, 106, 0xA)
        );
        feed(&mut s, t1, b, Component::Rtp, b_at, &video(9001, 0xB));
        // B's repair of its 9000: the first device's repair SSRC, the next
        // repair number, the original's outward number.
        let (_, out) = feed(&mut s, t1, b, Component::Rtp, b_at, &repair(42, 0xBB, 9000));
        assert_eq!((fields(&out).2, fields(&out).4), (501, 0xAA));
        assert_eq!(osn(&out), 106);
        let (outcome, _) = feed(&mut s, t1, b, Component::Rtp, b_at, &repair(43, 0xBB, 8999));
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::Late));
    }

    /// Issue 18: at a video switch the new device is asked for a keyframe
    /// (PLI and FIR to its RTCP address, in place of its first held
    /// packet, again every 250 ms), its inter frames are held until a
    /// keyframe starts, and after [`KEYFRAME_WAIT`] without one they pass,
    /// counted. The outward stream then goes on from the keyframe.
    #[test]
    fn a_video_switch_asks_for_a_keyframe_and_holds_until_one_starts() {
        let t0 = Instant::now();
        let remote_at = "10.0.0.2:5000";
        let new_stream = || {
            let mut s = video_stream(t0, &[(96, PayloadFormat::Vp8)]);
            let delta = rtp_pt(96, 100, 0, 0xA, &[0x10, 0x01, 1]);
            feed(&mut s, t0, USER, Component::Rtp, "10.0.0.1:4000", &delta);
            // The remote's video toward A: its SSRC is the requests' sender.
            let remote_video = rtp_pt(96, 1, 0, 0xF, &[0x10, 0, 1]);
            feed(&mut s, t0, REMOTE, Component::Rtp, remote_at, &remote_video);
            let b = s
                .add_pending(
                    t0,
                    leg(Some("10.0.0.3:6000"), true),
                    PayloadMap::from_pairs(&[(96, 96)], None),
                    WINDOW,
                )
                .expect("pending leg");
            assert_eq!(s.switch(t0), Switch::Done);
            (s, b)
        };
        let b_at = "10.0.0.3:6000";
        let delta = |seq: u16| rtp_pt(96, seq, 900 * u32::from(seq), 0xB, &[0x10, 0x01, 1]);
        let key = |seq: u16| rtp_pt(96, seq, 900 * u32::from(seq), 0xB, &[0x10, 0x00, 1]);
        let ms = |n: u64| t0 + Duration::from_millis(n);

        let (mut s, b) = new_stream();
        let (outcome, _) = feed(&mut s, ms(10), b, Component::Rtp, b_at, &delta(500));
        // Held, with a request to B (the session sends it in its place).
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::AwaitingKeyframe));
        let request = s.take_keyframe_request().expect("a request");
        assert_eq!(
            request,
            KeyframeRequest {
                leg: b,
                to: addr(b_at),
                socket: Component::Rtp,
                media: 0xB
            }
        );
        let mut out = [0u8; 64];
        let len = s
            .write_keyframe_request(&request, &mut out)
            .expect("written");
        let parsed =
            rtcp::packet::unmarshal(&mut bytes::Bytes::copy_from_slice(&out[..len])).expect("RTCP");
        let pli = parsed[1]
            .as_any()
            .downcast_ref::<rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
            .expect("PLI");
        assert_eq!((pli.sender_ssrc, pli.media_ssrc), (0xF, 0xB));
        // More inter frames: held quietly, until the request is due again.
        let (outcome, _) = feed(&mut s, ms(100), b, Component::Rtp, b_at, &delta(501));
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::AwaitingKeyframe));
        assert_eq!(s.take_keyframe_request(), None);
        let (outcome, _) = feed(&mut s, ms(300), b, Component::Rtp, b_at, &delta(502));
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::AwaitingKeyframe));
        assert!(s.take_keyframe_request().is_some(), "asked again");
        // The keyframe goes out as the next outward packet.
        let (outcome, out) = feed(&mut s, ms(320), b, Component::Rtp, b_at, &key(503));
        assert!(matches!(
            outcome.verdict,
            Verdict::Forward { leg: REMOTE, .. }
        ));
        assert_eq!((fields(&out).2, fields(&out).4), (101, 0xA));
        let (outcome, _) = feed(&mut s, ms(340), b, Component::Rtp, b_at, &delta(504));
        assert!(matches!(
            outcome.verdict,
            Verdict::Forward { leg: REMOTE, .. }
        ));
        let held = s.leg(b).expect("B").counters.drops[DropReason::AwaitingKeyframe as usize];
        assert_eq!(held, 3);

        // No keyframe within the wait: the video passes, counted.
        let (mut s, b) = new_stream();
        feed(&mut s, ms(10), b, Component::Rtp, b_at, &delta(500));
        let late = ms(10) + KEYFRAME_WAIT;
        let (outcome, _) = feed(&mut s, late, b, Component::Rtp, b_at, &delta(530));
        assert!(matches!(
            outcome.verdict,
            Verdict::Forward { leg: REMOTE, .. }
        ));
        assert_eq!(s.leg(b).expect("B").counters.keyframe_waits_expired, 1);

        // The wait ends on a packet of another format of the line (RED,
        // FEC: it waited too): counted the same.
        let mut s = video_stream(t0, &[(96, PayloadFormat::Vp8)]);
        feed(
            &mut s,
            t0,
            USER,
            Component::Rtp,
            "10.0.0.1:4000",
            &delta(100),
        );
        let b = s
            .add_pending(
                t0,
                leg(Some(b_at), true),
                PayloadMap::from_pairs(&[(96, 96), (100, 100)], None),
                WINDOW,
            )
            .expect("pending leg");
        assert_eq!(s.switch(t0), Switch::Done);
        let red = |seq: u16| rtp_pt(100, seq, 900 * u32::from(seq), 0xB, &[96, 1, 2, 3]);
        let (outcome, _) = feed(&mut s, ms(10), b, Component::Rtp, b_at, &red(500));
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::AwaitingKeyframe));
        let (outcome, _) = feed(&mut s, late, b, Component::Rtp, b_at, &red(501));
        assert!(
            matches!(outcome.verdict, Verdict::Forward { leg: REMOTE, .. }),
            "{outcome:?}"
        );
        assert_eq!(s.leg(b).expect("B").counters.keyframe_waits_expired, 1);
    }

    #[test]
    fn a_dtmf_event_in_progress_finishes_before_the_switch() {
        let t0 = Instant::now();
        let (mut s, b) = transfer_setup(t0);
        // A starts an event (telephone-event 101, no E bit).
        let event = |seq: u16, end: bool| {
            rtp_pt(
                101,
                seq,
                8800,
                0xA,
                &[5, if end { 0x8a } else { 0x0a }, 0, 160],
            )
        };
        feed(
            &mut s,
            t0,
            USER,
            Component::Rtp,
            "10.0.0.1:4000",
            &event(1005, false),
        );
        // B's first packet: the switch waits for the event's end.
        let (outcome, _) = feed(
            &mut s,
            t0,
            b,
            Component::Rtp,
            "10.0.0.3:6000",
            &rtp_pt(0, 1, 1, 0xB, &[2; 160]),
        );
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::TransferPending));
        assert_eq!(s.switch(t0), Switch::Waiting);
        assert!(s.switch_waiting());
        let (outcome, _) = feed(
            &mut s,
            t0,
            b,
            Component::Rtp,
            "10.0.0.3:6000",
            &rtp_pt(0, 2, 161, 0xB, &[2; 160]),
        );
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::TransferPending));
        // A's event continues and ends; every packet of it reaches the remote.
        for (seq, end) in [(1006, false), (1007, true)] {
            let (outcome, out) = feed(
                &mut s,
                t0,
                USER,
                Component::Rtp,
                "10.0.0.1:4000",
                &event(seq, end),
            );
            assert!(matches!(outcome.verdict, Verdict::Forward { .. }));
            assert_eq!(fields(&out).2, seq);
        }
        // Now B is the device, and its media continues the stream.
        assert_eq!(s.leg_of(Party::User), b);
        let (outcome, out) = feed(
            &mut s,
            t0,
            b,
            Component::Rtp,
            "10.0.0.3:6000",
            &rtp_pt(0, 3, 321, 0xB, &[2; 160]),
        );
        assert!(outcome.new_device_started);
        assert_eq!(fields(&out).2, 1008);
    }

    #[test]
    fn cancel_leaves_the_current_device_untouched() {
        let t0 = Instant::now();
        let (mut s, b) = transfer_setup(t0);
        assert!(
            s.add_pending(t0, leg(None, true), PayloadMap::identity([0], None), WINDOW)
                .is_none(),
            "one transfer at a time"
        );
        assert_eq!(s.cancel_pending(), Some(b));
        let (outcome, _) = feed(&mut s, t0, b, Component::Rtp, "10.0.0.3:6000", &rtp(1, 0xB));
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::OldSource));
        let (outcome, out) = feed(
            &mut s,
            t0,
            USER,
            Component::Rtp,
            "10.0.0.1:4000",
            &rtp_pt(0, 1005, 8800, 0xA, &[1; 160]),
        );
        assert!(matches!(
            outcome.verdict,
            Verdict::Forward { leg: REMOTE, .. }
        ));
        assert_eq!(fields(&out), (false, 0, 1005, 8800, 0xA));
    }

    #[test]
    fn the_user_devices_rtcp_bye_never_reaches_the_remote() {
        let t0 = Instant::now();
        let (mut s, _) = transfer_setup(t0);
        let mut bye = vec![0x81, 203, 0, 1];
        bye.extend_from_slice(&0xAu32.to_be_bytes());
        let (outcome, _) = feed(&mut s, t0, USER, Component::Rtp, "10.0.0.1:4000", &bye);
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::RtcpBye));
    }

    #[test]
    fn an_unsignalled_new_device_must_prove_itself_with_in_order_packets() {
        let t0 = Instant::now();
        let (mut s, _) = transfer_setup(t0);
        s.cancel_pending();
        let b = s
            .add_pending(
                t0,
                leg(None, true),
                PayloadMap::identity([0, 101], Some(101)),
                WINDOW,
            )
            .expect("pending");
        // Stray packets, even from one address, do not latch or switch.
        for (from, seq, ssrc) in [
            ("10.6.6.6:1", 1, 9),
            ("10.6.6.7:1", 2, 9),
            ("10.6.6.6:1", 9, 9),
            ("10.6.6.6:1", 10, 8),
        ] {
            let (outcome, _) = feed(&mut s, t0, b, Component::Rtp, from, &rtp(seq, ssrc));
            assert_eq!(outcome.verdict, Verdict::Drop(DropReason::Probation));
            assert!(outcome.latched.is_none());
        }
        // Three in order from one source: latched, and the switch is asked.
        let mut last = None;
        for seq in 20..23 {
            last = Some(
                feed(
                    &mut s,
                    t0,
                    b,
                    Component::Rtp,
                    "10.0.0.3:6000",
                    &rtp(seq, 0xB),
                )
                .0,
            );
        }
        let outcome = last.expect("fed");
        assert!(outcome.latched.is_some());
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::TransferPending));
    }

    #[test]
    fn payload_types_the_new_device_did_not_negotiate_are_dropped() {
        let t0 = Instant::now();
        let (mut s, b) = transfer_setup(t0);
        assert_eq!(s.switch(t0), Switch::Done);
        let (outcome, _) = feed(
            &mut s,
            t0,
            b,
            Component::Rtp,
            "10.0.0.3:6000",
            &rtp_pt(8, 1, 1, 0xB, &[2; 160]),
        );
        assert_eq!(
            outcome.verdict,
            Verdict::Drop(DropReason::UnknownPayloadType)
        );
    }

    /// Issue 14: a sprayer that sends three in-order packets to every port
    /// must not become the new device. With the IP the signalling saw, only
    /// that IP is a candidate, and strangers never reset the real candidate.
    #[test]
    fn a_sprayer_cannot_take_a_pending_leg_or_reset_its_candidate() {
        let t0 = Instant::now();
        let (mut s, _) = transfer_setup(t0);
        s.cancel_pending();
        let mut config = leg(None, true);
        config.peer_ip = Some("10.0.0.3".parse().expect("ip"));
        let b = s
            .add_pending(
                t0,
                config,
                PayloadMap::identity([0, 101], Some(101)),
                WINDOW,
            )
            .expect("pending");
        for seq in 0..3u16 {
            // The attacker: in order, its own SSRC, another IP.
            let (outcome, _) = feed(
                &mut s,
                t0,
                b,
                Component::Rtp,
                "10.6.6.6:6666",
                &rtp(100 + seq, 0x666),
            );
            assert_eq!(outcome.verdict, Verdict::Drop(DropReason::Stranger));
            assert!(outcome.latched.is_none());
            // The real device, interleaved: its candidate keeps counting.
            let (outcome, _) = feed(
                &mut s,
                t0,
                b,
                Component::Rtp,
                "10.0.0.3:6000",
                &rtp(20 + seq, 0xB),
            );
            if seq < 2 {
                assert_eq!(outcome.verdict, Verdict::Drop(DropReason::Probation));
            } else {
                assert_eq!(
                    outcome.verdict,
                    Verdict::Drop(DropReason::TransferPending),
                    "the third in-order packet proves B"
                );
                assert_eq!(outcome.latched.map(|l| l.addr), Some(addr("10.0.0.3:6000")));
            }
        }
    }

    /// Issue 14 and 22: a packet of a payload type the new device did not
    /// negotiate (comfort noise, PT 13) neither latches nor switches.
    #[test]
    fn an_unnegotiated_payload_type_never_switches() {
        let t0 = Instant::now();
        let (mut s, b) = transfer_setup(t0);
        let (outcome, _) = feed(
            &mut s,
            t0,
            b,
            Component::Rtp,
            "10.0.0.3:6000",
            &rtp_pt(13, 1, 1, 0xB, &[0x40]),
        );
        assert_eq!(
            outcome.verdict,
            Verdict::Drop(DropReason::UnknownPayloadType)
        );
        assert_eq!(s.leg_of(Party::User), USER, "A is still the device");
        // A's media still reaches the remote.
        let (outcome, _) = feed(
            &mut s,
            t0,
            USER,
            Component::Rtp,
            "10.0.0.1:4000",
            &rtp_pt(0, 1005, 8800, 0xA, &[1; 160]),
        );
        assert!(matches!(
            outcome.verdict,
            Verdict::Forward { leg: REMOTE, .. }
        ));
    }

    /// `asymmetric` lets a signalled peer send from another port, but a
    /// pending leg still needs the signalled IP.
    #[test]
    fn asymmetric_pending_legs_still_need_the_signalled_ip() {
        let t0 = Instant::now();
        let mut s = Stream::new(
            t0,
            StreamConfig {
                learning_window: WINDOW,
                relearn: false,
                asymmetric: true,
            },
            leg(Some("10.0.0.1:4000"), true),
            leg(Some("10.0.0.2:5000"), true),
            &[(0, 8000)],
            None,
        );
        let b = s
            .add_pending(
                t0,
                leg(Some("10.0.0.3:6000"), true),
                PayloadMap::identity([0], None),
                WINDOW,
            )
            .expect("pending");
        let (outcome, _) = feed(&mut s, t0, b, Component::Rtp, "10.6.6.6:6000", &rtp(1, 9));
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::Stranger));
        let (outcome, _) = feed(&mut s, t0, b, Component::Rtp, "10.0.0.3:6002", &rtp(1, 9));
        assert_eq!(
            outcome.verdict,
            Verdict::Drop(DropReason::TransferPending),
            "same IP, another port"
        );
    }

    /// Issue 14, finding 1: a 24-byte BYE + FIR compound from the device
    /// (toward the remote) and a FIR from the remote after a switch (toward
    /// the device) used to panic inside the `rtcp` crate and take the whole
    /// worker down. Now the feedback passes through.
    #[test]
    fn the_rtcp_crasher_is_forwarded_not_fatal() {
        let crasher = [
            0x81, 0xcb, 0, 1, 0, 0, 0x11, 0x11, 0x84, 0xce, 0, 3, 0, 0, 0x11, 0x11, 0, 0, 0x22,
            0x22, 0, 0, 0x33, 0x33,
        ];
        let t0 = Instant::now();
        let (mut s, b) = transfer_setup(t0);
        assert_eq!(s.switch(t0), Switch::Done);
        feed(&mut s, t0, b, Component::Rtp, "10.0.0.3:6000", &rtp(7, 0xB));
        let (outcome, out) = feed(&mut s, t0, b, Component::Rtp, "10.0.0.3:6000", &crasher);
        assert_eq!(
            outcome.verdict,
            fwd(REMOTE, Component::Rtp, "10.0.0.2:5000", 16),
            "the BYE is removed, the FIR goes on"
        );
        assert_eq!(&out[..], &crasher[8..]);
        let (outcome, out) = feed(
            &mut s,
            t0,
            REMOTE,
            Component::Rtp,
            "10.0.0.2:5000",
            &crasher[8..],
        );
        assert_eq!(outcome.verdict, fwd(b, Component::Rtp, "10.0.0.3:6000", 16));
        assert_eq!(&out[..], &crasher[8..]);
    }

    /// A new device that answers after the learning window still proves
    /// itself: its leg learns for as long as the transfer may wait. A lost
    /// packet does not break its probation, a second SSRC from its address
    /// (events on their own SSRC) does not reset it, and its RTCP on a
    /// separate port follows the source RTP proved.
    #[test]
    fn a_pending_device_proves_itself_late_with_gaps_and_a_second_ssrc() {
        let t0 = Instant::now();
        let mut s = stream(
            t0,
            leg(Some("10.0.0.1:4000"), false),
            leg(Some("10.0.0.2:5000"), false),
            false,
        );
        let mut config = leg(None, false);
        config.peer_ip = Some("10.0.0.3".parse().expect("ip"));
        let b = s
            .add_pending(
                t0,
                config,
                PayloadMap::identity([0, 101], Some(101)),
                Duration::from_secs(30),
            )
            .expect("pending");
        let late = t0 + Duration::from_secs(10);
        // RTCP first: nothing proven yet.
        let (outcome, _) = feed(
            &mut s,
            late,
            b,
            Component::Rtcp,
            "10.0.0.3:6001",
            &rtcp_rr(0xB),
        );
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::Probation));
        let sends = [(20u16, 0xB), (900, 0xD), (22, 0xB), (901, 0xD), (23, 0xB)];
        let mut last = None;
        for (seq, ssrc) in sends {
            last = Some(
                feed(
                    &mut s,
                    late,
                    b,
                    Component::Rtp,
                    "10.0.0.3:6000",
                    &rtp(seq, ssrc),
                )
                .0,
            );
        }
        let outcome = last.expect("fed");
        assert_eq!(
            outcome.verdict,
            Verdict::Drop(DropReason::TransferPending),
            "proven"
        );
        assert_eq!(outcome.latched.map(|l| l.addr), Some(addr("10.0.0.3:6000")));
        let (outcome, _) = feed(
            &mut s,
            late,
            b,
            Component::Rtcp,
            "10.0.0.3:6001",
            &rtcp_rr(0xB),
        );
        assert_eq!(outcome.latched.map(|l| l.component), Some(Component::Rtcp));
    }

    /// NAT re-learning keeps to the IP the signalling gave.
    #[test]
    fn relearning_stays_on_the_signalled_ip() {
        let t0 = Instant::now();
        let mut s = stream(
            t0,
            leg(Some("10.0.0.1:4000"), true),
            leg(Some("10.0.0.2:5000"), true),
            true,
        );
        let mut config = leg(None, true);
        config.peer_ip = Some("10.0.0.3".parse().expect("ip"));
        let b = s
            .add_pending(
                t0,
                config,
                PayloadMap::identity([0, 101], Some(101)),
                WINDOW,
            )
            .expect("pending");
        for seq in 1..4 {
            feed(
                &mut s,
                t0,
                b,
                Component::Rtp,
                "10.0.0.3:6000",
                &rtp(seq, 0xB),
            );
        }
        // The same SSRC, the next number, from another IP: not followed.
        let (outcome, _) = feed(&mut s, t0, b, Component::Rtp, "10.6.6.6:6000", &rtp(4, 0xB));
        assert_eq!(outcome.verdict, Verdict::Drop(DropReason::Stranger));
        // From another port of the same IP: followed (a NAT rebinding).
        let (outcome, _) = feed(&mut s, t0, b, Component::Rtp, "10.0.0.3:6100", &rtp(5, 0xB));
        assert!(outcome.latched.is_some_and(|l| l.relearned));
    }
}

#[cfg(test)]
mod ice_tests {
    #![allow(clippy::unwrap_used)]

    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::core::stun::IceText;

    const USER: LegId = LegId::FIRST_DEVICE;
    const REMOTE: LegId = LegId::REMOTE;
    const BROWSER: &str = "127.0.0.1:40000";
    const ELSEWHERE: &str = "127.0.0.1:40002";
    const PHONE: &str = "127.0.0.1:6000";

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn credentials(ufrag: &str, pwd: &str) -> IceCredentials {
        IceCredentials {
            local_ufrag: IceText::new(ufrag).unwrap(),
            local_pwd: IceText::new(pwd).unwrap(),
            remote_ufrag: Some(IceText::new("brws").unwrap()),
        }
    }

    const OLD: (&str, &str) = ("rly1", "relaypassword1relaypassword1");
    const NEW: (&str, &str) = ("rly2", "relaypassword2relaypassword2");

    /// A plain leg with ICE toward the user (as `ICE=force` makes), and a
    /// signalled phone as the remote.
    fn stream(now: Instant) -> Stream {
        let browser = LegConfig {
            rtcp_mux: true,
            peer_rtp: Some(addr("192.0.2.9:9")),
            peer_rtcp: None,
            peer_ip: None,
            crypto: LegCrypto::Plain,
            ice: Some(credentials(OLD.0, OLD.1)),
            dtls: None,
        };
        let phone = LegConfig {
            rtcp_mux: false,
            peer_rtp: Some(addr(PHONE)),
            peer_rtcp: None,
            peer_ip: None,
            crypto: LegCrypto::Plain,
            ice: None,
            dtls: None,
        };
        Stream::new(
            now,
            StreamConfig {
                learning_window: Duration::from_secs(3),
                relearn: true,
                asymmetric: true,
            },
            browser,
            phone,
            &[(0, 8000)],
            None,
        )
    }

    /// A check as the browser's ICE agent writes it (the writer is
    /// checked against an independent STUN stack in `core::stun`).
    fn check((ufrag, pwd): (&str, &str), nominate: bool) -> Vec<u8> {
        let mut buf = vec![0; 512];
        let transaction: [u8; 12] = rand::random();
        let pwd = IceText::new(pwd).unwrap();
        let len = stun::write_request(
            &mut buf,
            &transaction,
            &format!("{ufrag}:brws"),
            &pwd,
            nominate,
            1,
        )
        .unwrap();
        buf.truncate(len);
        buf
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0xFF; 160]);
        p
    }

    fn feed(s: &mut Stream, now: Instant, leg: LegId, from: &str, bytes: &[u8]) -> Outcome {
        let mut buf = [0u8; 2048];
        buf[..bytes.len()].copy_from_slice(bytes);
        s.on_packet(now, leg, Component::Rtp, addr(from), &mut buf, bytes.len())
    }

    fn answered(outcome: &Outcome, to: &str) -> bool {
        matches!(outcome.verdict, Verdict::Forward { leg, to: dest, .. } if leg == USER && dest == addr(to))
    }

    fn drops(s: &Stream, now: Instant, reason: DropReason) -> u64 {
        s.report_of(now, USER).counters.drops[reason as usize]
    }

    #[test]
    fn stun_without_the_credentials_is_dropped_counted_and_moves_nothing() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        for bad in [
            check(("rly1", "wrongpasswordwrongpassword"), true),
            check(("other", OLD.1), true),
            b"\x00\x01\x00\x00garbage-not-stun".to_vec(),
        ] {
            let outcome = feed(&mut s, t0, USER, BROWSER, &bad);
            assert_eq!(
                outcome.verdict,
                Verdict::Drop(DropReason::StunUnauthenticated)
            );
            assert!(outcome.latched.is_none());
        }
        assert_eq!(drops(&s, t0, DropReason::StunUnauthenticated), 3);
        // Media from anyone before a nominated check: nobody is selected,
        // the SDP's address included.
        for from in [BROWSER, "192.0.2.9:9"] {
            let outcome = feed(&mut s, t0, USER, from, &rtp(1));
            assert_eq!(outcome.verdict, Verdict::Drop(DropReason::IceUnchecked));
        }
        // Nothing reaches the browser either.
        let toward = feed(&mut s, t0, REMOTE, PHONE, &rtp(1));
        assert_eq!(toward.verdict, Verdict::Drop(DropReason::NoDestination));
    }

    #[test]
    fn a_nominated_check_selects_the_pair_and_only_it() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        // A check without nomination is answered, selects nothing.
        let probe = feed(&mut s, t0, USER, ELSEWHERE, &check(OLD, false));
        assert!(answered(&probe, ELSEWHERE), "{probe:?}");
        assert!(probe.latched.is_none());
        let nominated = feed(&mut s, t0, USER, BROWSER, &check(OLD, true));
        assert!(answered(&nominated, BROWSER));
        assert_eq!(nominated.latched.map(|l| l.addr), Some(addr(BROWSER)));
        let media = feed(&mut s, t0, USER, BROWSER, &rtp(1));
        assert!(
            matches!(media.verdict, Verdict::Forward { leg: REMOTE, to, .. } if to == addr(PHONE)),
            "{media:?}"
        );
        let toward = feed(&mut s, t0, REMOTE, PHONE, &rtp(1));
        assert!(
            matches!(toward.verdict, Verdict::Forward { leg: USER, to, .. } if to == addr(BROWSER))
        );
        // The other candidate's media, and unnominated checks from it,
        // never move the leg (asymmetric and relearn do not apply to ICE).
        let stranger = feed(&mut s, t0, USER, ELSEWHERE, &rtp(2));
        assert_eq!(stranger.verdict, Verdict::Drop(DropReason::IceUnchecked));
        let _ = feed(&mut s, t0, USER, ELSEWHERE, &check(OLD, false));
        let toward = feed(&mut s, t0, REMOTE, PHONE, &rtp(2));
        assert!(matches!(toward.verdict, Verdict::Forward { to, .. } if to == addr(BROWSER)));
    }

    #[test]
    fn consent_expires_after_30_seconds_without_checks_and_comes_back() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let _ = feed(&mut s, t0, USER, BROWSER, &check(OLD, true));
        // Consent checks every few seconds keep it.
        let t20 = t0 + Duration::from_secs(20);
        let _ = feed(&mut s, t20, USER, BROWSER, &check(OLD, false));
        assert_eq!(
            s.expire_consent(t0 + Duration::from_secs(49)),
            [None; LegId::COUNT]
        );
        let t50 = t0 + Duration::from_secs(50);
        let expired = s.expire_consent(t50);
        assert_eq!(expired[USER.index()], Some((USER, Party::User)));
        // Reported once; nothing more is sent to the browser.
        assert_eq!(
            s.expire_consent(t50 + Duration::from_secs(5)),
            [None; LegId::COUNT]
        );
        let toward = feed(&mut s, t50, REMOTE, PHONE, &rtp(3));
        assert_eq!(toward.verdict, Verdict::Drop(DropReason::NoDestination));
        // A new authenticated check from the selected address restores it.
        let back = feed(&mut s, t50, USER, BROWSER, &check(OLD, false));
        assert!(answered(&back, BROWSER));
        let toward = feed(&mut s, t50, REMOTE, PHONE, &rtp(4));
        assert!(matches!(toward.verdict, Verdict::Forward { to, .. } if to == addr(BROWSER)));
    }

    #[test]
    fn an_ice_restart_moves_the_leg_without_a_gap() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let _ = feed(&mut s, t0, USER, BROWSER, &check(OLD, true));
        // The re-offer with new credentials (the browser changed network).
        s.set_ice(t0, Party::User, credentials(NEW.0, NEW.1));
        // Until the answer reaches it the browser checks with the old set:
        // still answered, media still flows to the old address.
        let old = feed(&mut s, t0, USER, BROWSER, &check(OLD, false));
        assert!(answered(&old, BROWSER));
        let toward = feed(&mut s, t0, REMOTE, PHONE, &rtp(5));
        assert!(matches!(toward.verdict, Verdict::Forward { to, .. } if to == addr(BROWSER)));
        // Its new network's nominated check with the new set moves the leg.
        let moved = feed(&mut s, t0, USER, ELSEWHERE, &check(NEW, true));
        assert!(answered(&moved, ELSEWHERE));
        let latched = moved.latched.unwrap();
        assert!(latched.relearned && latched.addr == addr(ELSEWHERE));
        let toward = feed(&mut s, t0, REMOTE, PHONE, &rtp(6));
        assert!(matches!(toward.verdict, Verdict::Forward { to, .. } if to == addr(ELSEWHERE)));
        // From now on the old credentials are refused.
        let stale = feed(&mut s, t0, USER, BROWSER, &check(OLD, true));
        assert_eq!(
            stale.verdict,
            Verdict::Drop(DropReason::StunUnauthenticated)
        );
        let toward = feed(&mut s, t0, REMOTE, PHONE, &rtp(7));
        assert!(matches!(toward.verdict, Verdict::Forward { to, .. } if to == addr(ELSEWHERE)));
    }

    #[test]
    fn a_replayed_check_selects_nothing_and_renews_no_consent() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let nominating = check(OLD, true);
        let _ = feed(&mut s, t0, USER, BROWSER, &nominating);
        assert_eq!(s.consent_deadline(), Some(t0 + CONSENT_TIMEOUT));
        // Someone on the path replays it from elsewhere: answered (it
        // could be the peer's retransmission), but the leg stays.
        let t1 = t0 + Duration::from_secs(10);
        let replayed = feed(&mut s, t1, USER, ELSEWHERE, &nominating);
        assert!(answered(&replayed, ELSEWHERE));
        assert!(replayed.latched.is_none());
        let toward = feed(&mut s, t1, REMOTE, PHONE, &rtp(1));
        assert!(matches!(toward.verdict, Verdict::Forward { to, .. } if to == addr(BROWSER)));
        // Replayed from the selected address, it does not renew consent.
        let _ = feed(&mut s, t1, USER, BROWSER, &nominating);
        assert_eq!(s.consent_deadline(), Some(t0 + CONSENT_TIMEOUT));
        let _ = feed(&mut s, t1, USER, BROWSER, &check(OLD, false));
        assert_eq!(s.consent_deadline(), Some(t1 + CONSENT_TIMEOUT));
    }

    #[test]
    fn a_peer_cannot_flood_the_handshake_thread() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let _ = feed(&mut s, t0, USER, BROWSER, &check(OLD, true));
        let record = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let handed = (0..100)
            .filter(|_| {
                feed(&mut s, t0, USER, BROWSER, &record).verdict == Verdict::Handshake { leg: USER }
            })
            .count();
        assert_eq!(handed, DTLS_BURST as usize);
        assert_eq!(
            drops(&s, t0, DropReason::HandshakeBusy),
            100 - u64::from(DTLS_BURST)
        );
        // The budget refills with time (a real handshake retransmits).
        let t1 = t0 + Duration::from_secs(1);
        let handed = (0..100)
            .filter(|_| {
                feed(&mut s, t1, USER, BROWSER, &record).verdict == Verdict::Handshake { leg: USER }
            })
            .count();
        assert_eq!(handed, DTLS_PER_SECOND as usize);
    }

    #[test]
    fn dtls_records_go_to_the_handshake_only_from_the_selected_peer() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let hello = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            feed(&mut s, t0, USER, BROWSER, &hello).verdict,
            Verdict::Drop(DropReason::IceUnchecked)
        );
        let _ = feed(&mut s, t0, USER, BROWSER, &check(OLD, true));
        assert_eq!(
            feed(&mut s, t0, USER, BROWSER, &hello).verdict,
            Verdict::Handshake { leg: USER }
        );
        assert_eq!(
            feed(&mut s, t0, USER, ELSEWHERE, &hello).verdict,
            Verdict::Drop(DropReason::IceUnchecked)
        );
    }
}
