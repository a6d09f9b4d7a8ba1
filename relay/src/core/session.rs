//! A call's media state, kept once: its streams and legs, the transfer
//! lifecycle, hold, and the timeouts that end it.
//!
//! A [`Session`] is sans-IO, in the manner of str0m's `Rtc`: it never reads
//! a clock or touches a socket. Time is an input ([`Session::handle_packet`]
//! and [`Session::handle_timeout`] take `now`; [`Session::poll_timeout`] says
//! when it next needs to be woken); decisions are outputs (the [`Verdict`]
//! for each datagram, and [`SessionEvent`]s from [`Session::poll_event`]).
//! The media worker only maps sockets to sessions, moves batches and drives
//! time, so every rule below is tested in memory on simulated time.
//!
//! A transfer moves through three phases:
//!
//! ```text
//!   Idle --begin_transfer--> Pending --switch--> Switched --new device's first packet--> Idle
//!                               |  ^                                 (TransferCompleted)
//!            cancel / timeout   |  |
//!      (TransferTimedOut) <-----+  +-- begin_transfer while Switched reports the
//!                                      previous transfer completed first
//! ```
//!
//! The switch happens on the new device's first usable packet (first-packet
//! mode: a negotiated payload type that passed the pending leg's source
//! policy) or on [`Session::commit`]; every stream switches together, and
//! the packet that caused it is forwarded in the same pass. A stream whose
//! current device is in the middle of an RFC 4733 event finishes the event
//! first. Once every stream has switched, the old device's legs are retired
//! for [`RETIRE_GRACE`] (their packets counted as dropped rather than
//! bounced with ICMP), then closed.
//!
//! Idle clocks: a session ends when no packet (RTP or RTCP) has arrived on
//! any leg for the media timeout, or when none ever arrived within the setup
//! timeout; while every stream is on hold the hold timeout replaces both.
//! Putting a session on hold and taking it off restarts the clock, so a
//! call resumed after a long hold has a whole media timeout for its media
//! to start again.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::core::bundle::{Bundle, BundleError, BundleTag, Routed};
use crate::core::dtls::DtlsParams;
use crate::core::ids::{LegId, Party, SessionId, StreamIndex, TransferId};
use crate::core::keyframe::PayloadFormat;
use crate::core::stream::{
    Component, DropReason, LegConfig, LegCrypto, LegKeys, LegReport, LegRole, PayloadMap, Stream,
    StreamConfig, Verdict,
};
use crate::core::stun::IceCredentials;

pub use crate::core::stream::Latched;

/// How long the old device's legs stay open after a switch, so its late
/// packets are counted as dropped rather than bounced with ICMP.
pub const RETIRE_GRACE: Duration = Duration::from_secs(2);
/// Informational events (a leg learned its peer) held at most; more are
/// dropped and counted, so the packet path never allocates for them.
const INFO_EVENTS: usize = 16;

/// Timeouts that end a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// No packet on any leg for this long ends a session that had media.
    pub media: Duration,
    /// No packet at all for this long after creation ends a session.
    pub setup: Duration,
    /// Replaces both while every stream of a session is on hold.
    pub hold: Duration,
}

/// One stream of a new session.
#[derive(Debug, Clone)]
pub struct StreamParams {
    /// Learning window, NAT re-learning, asymmetric peers.
    pub config: StreamConfig,
    /// The negotiated payload types with their clock rates (the remote's
    /// numbering, which the first device shares).
    pub clock_rates: Vec<(u8, u32)>,
    /// The RFC 4733 payload type, if negotiated.
    pub telephone_event: Option<u8>,
    /// Payload types of formats the relay treats specially (RTX, video
    /// codecs), in the remote's numbering.
    pub formats: Vec<(u8, PayloadFormat)>,
    /// The user's device's leg.
    pub device: LegConfig,
    /// The remote party's leg.
    pub remote: LegConfig,
}

/// The new device's leg of one stream.
#[derive(Debug, Clone, Copy)]
pub struct PendingLeg {
    /// Its signalled address or source IP.
    pub config: LegConfig,
    /// Its payload numbering against the remote's.
    pub payloads: PayloadMap,
}

/// When a transfer switches to the new device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchMode {
    /// On the new device's first usable media packet.
    FirstPacket,
    /// On an explicit commit.
    Commit,
}

/// New signalled addresses for one leg.
#[derive(Debug, Clone, Copy)]
pub struct LegUpdate {
    /// The stream.
    pub stream: StreamIndex,
    /// The party whose leg it is.
    pub party: Party,
    /// RTP address, if signalled.
    pub rtp: Option<SocketAddr>,
    /// RTCP address, if signalled.
    pub rtcp: Option<SocketAddr>,
    /// Whether the peer multiplexes RTCP on the RTP port, if that changes.
    pub rtcp_mux: Option<bool>,
    /// New crypto settings (plain, SRTP awaiting keys, SRTP keys), if they
    /// change. Unchanged keys keep their contexts.
    pub crypto: Option<LegCrypto>,
    /// The leg's ICE credentials, if given (new ones: an ICE restart).
    pub ice: Option<IceCredentials>,
    /// The leg's DTLS-SRTP settings, if given (new ones: a new handshake;
    /// the current keys stay until it completes).
    pub dtls: Option<DtlsParams>,
    /// The peer no longer does ICE (its body has none): the leg goes back
    /// to signalled or learned peers.
    pub ice_off: bool,
    /// The peer no longer does DTLS-SRTP: its handshake ends.
    pub dtls_off: bool,
}

/// A signalling update of a session (a re-INVITE, a hold).
#[derive(Debug, Clone, Default)]
pub struct SessionUpdate {
    /// Legs with new addresses.
    pub peers: Vec<LegUpdate>,
    /// Streams with renegotiated codecs: payload types and clock rates.
    pub clock_rates: Vec<(StreamIndex, Vec<(u8, u32)>)>,
    /// The same streams' special formats (RTX, video codecs).
    pub formats: Vec<(StreamIndex, Vec<(u8, PayloadFormat)>)>,
    /// On hold (every stream) or not; `None` leaves it.
    pub held: Option<bool>,
    /// What is blocked or silenced, per sending party (user, remote), on
    /// every stream; `None` leaves it.
    pub controls: Option<[crate::core::stream::MediaControl; 2]>,
    /// Streams that now carry UDPTL datagrams (T.38 fax: `true`) or RTP
    /// again (`false`).
    pub datagrams: Vec<(StreamIndex, bool)>,
    /// Recording starts (`Some(Some(tap))`) or stops (`Some(None)`).
    pub record: Option<Option<crate::core::record::RecordTap>>,
}

/// Why a transfer command was refused. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// A transfer is open (not switched) already.
    #[error("transfer {0} is already pending on this session")]
    AlreadyPending(TransferId),
    /// No transfer is open.
    #[error("no transfer is pending on this session")]
    NonePending,
    /// The transfer has switched to the new device already: too late to
    /// cancel (or commit) it.
    #[error("transfer {0} has switched to the new device already")]
    AlreadySwitched(TransferId),
    /// The open transfer is another one.
    #[error("transfer {asked} is not the one open on this session ({open})")]
    NotThisTransfer {
        /// The transfer named by the command.
        asked: TransferId,
        /// The transfer open on the session.
        open: TransferId,
    },
    /// The transfer describes another number of streams.
    #[error("the session has {streams} streams, the transfer gave {given}")]
    StreamCount {
        /// Streams of the session.
        streams: usize,
        /// Legs given.
        given: usize,
    },
    /// A stream has no room for another leg.
    #[error("no free leg slot on stream {0}")]
    NoLegSlot(StreamIndex),
}

/// Why a session ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Packets stopped for longer than the media (or hold) timeout.
    MediaTimeout,
    /// No packet ever arrived within the setup (or hold) timeout.
    SetupTimeout,
}

impl EndReason {
    /// snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::MediaTimeout => "media_timeout",
            Self::SetupTimeout => "setup_timeout",
        }
    }
}

/// Something a session tells its worker (and, through it, the control
/// plane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// A leg learned (or re-learned) its peer's address.
    SourceLatched {
        /// The stream.
        stream: StreamIndex,
        /// What was learned.
        latched: Latched,
    },
    /// The new device's media reached the remote: the transfer is done.
    TransferCompleted {
        /// The transfer.
        transfer: TransferId,
        /// The old device's last packet to the remote → the new one's
        /// first; `None` if the new device never sent before a newer
        /// transfer began.
        gap: Option<Duration>,
    },
    /// A transfer was rolled back because its timeout passed.
    TransferTimedOut {
        /// The transfer.
        transfer: TransferId,
    },
    /// A leg is gone: its sockets can be closed and its ports freed.
    LegClosed {
        /// The stream.
        stream: StreamIndex,
        /// The leg.
        leg: LegId,
    },
    /// A nominated ICE check selected a leg's peer address (the worker
    /// tells the leg's DTLS handshake where its peer is).
    IceSelected {
        /// The stream.
        stream: StreamIndex,
        /// The leg.
        leg: LegId,
        /// The selected address.
        addr: SocketAddr,
    },
    /// An ICE leg's peer stopped renewing consent (RFC 7675): nothing
    /// more is sent to it until it checks in again.
    ConsentExpired {
        /// The stream.
        stream: StreamIndex,
        /// The leg.
        leg: LegId,
        /// The party it faces.
        party: Party,
    },
    /// The session ended on its own; the worker removes it.
    Ended {
        /// Why.
        reason: EndReason,
    },
}

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferPhase {
    /// Open, not switched.
    Pending,
    /// Switched, the new device not heard yet.
    Switched,
}

/// A session's state, for `get_session` and final statistics.
#[derive(Debug, Clone)]
pub struct SessionReport {
    /// Per stream: the device's leg, the remote's leg.
    pub streams: Vec<[LegReport; 2]>,
    /// The transfer in progress, if any.
    pub transfer: Option<(TransferId, TransferPhase)>,
    /// Time since the last packet on any leg (or since creation if none).
    pub idle: Duration,
    /// Whether the session is on hold.
    pub held: bool,
}

impl SessionReport {
    /// Whether a transfer is open (not switched yet).
    pub fn transfer_pending(&self) -> bool {
        matches!(self.transfer, Some((_, TransferPhase::Pending)))
    }
}

#[derive(Debug, Clone, Copy)]
enum Transfer {
    Idle,
    Pending {
        id: TransferId,
        mode: SwitchMode,
        deadline: Instant,
    },
    Switched {
        id: TransferId,
        /// When the old device's last packet went to the remote.
        old_last_sent: Option<Instant>,
    },
}

/// One call on the relay. See the module documentation.
#[derive(Debug)]
pub struct Session {
    id: SessionId,
    streams: Vec<Stream>,
    transfer: Transfer,
    timeouts: Timeouts,
    held: bool,
    /// Creation, or the last change of hold: idle time counts from here.
    clock_start: Instant,
    /// When the old device's legs close, once every stream has switched.
    retire_at: Option<Instant>,
    events: VecDeque<SessionEvent>,
    info_events_dropped: u64,
    ended: bool,
    /// Streams of one party sharing a transport (RFC 8843); empty for
    /// most calls.
    bundles: Vec<Bundle>,
    /// The last packet was dropped for this reason, though its buffer went
    /// out carrying a keyframe request: the worker's drop counters take it
    /// from [`Session::take_hidden_drop`].
    hidden_drop: Option<DropReason>,
    /// While the call is recorded: where copies of what it forwards go.
    record: Option<crate::core::record::RecordTap>,
}

impl Session {
    /// A session whose legs open now.
    pub fn new(now: Instant, id: SessionId, streams: &[StreamParams], timeouts: Timeouts) -> Self {
        let streams = streams
            .iter()
            .map(|p| {
                let mut stream = Stream::new(
                    now,
                    p.config,
                    p.device,
                    p.remote,
                    &p.clock_rates,
                    p.telephone_event,
                );
                stream.set_formats(&p.formats);
                stream
            })
            .collect();
        Self {
            id,
            streams,
            transfer: Transfer::Idle,
            timeouts,
            held: false,
            clock_start: now,
            retire_at: None,
            events: VecDeque::with_capacity(INFO_EVENTS),
            info_events_dropped: 0,
            ended: false,
            bundles: Vec::new(),
            hidden_drop: None,
            record: None,
        }
    }

    /// The drop behind the last verdict, when that verdict forwards a
    /// keyframe request in the dropped packet's buffer instead (so the
    /// worker counts both).
    pub fn take_hidden_drop(&mut self) -> Option<DropReason> {
        self.hidden_drop.take()
    }

    /// Groups one party's legs into bundles (per stream, its leg and tag):
    /// after creation for each party's first legs, after a transfer opens
    /// for the new device's. Bundles of the same legs from before are
    /// replaced.
    pub fn set_bundles(
        &mut self,
        legs: &[(StreamIndex, LegId, Option<BundleTag>)],
    ) -> Result<(), BundleError> {
        let formed = Bundle::from_tags(legs)?;
        self.bundles.retain(|bundle| {
            !legs
                .iter()
                .any(|&(stream, leg, _)| bundle.contains(stream, leg))
        });
        self.bundles.extend(formed);
        Ok(())
    }

    /// Which member of the bundle owned by `stream`'s `leg` a datagram
    /// belongs to (see [`Bundle::route`]); the leg itself if it owns no
    /// bundle.
    pub fn route_bundle(&self, stream: StreamIndex, leg: LegId, buf: &[u8], len: usize) -> Routed {
        let own = Routed {
            stream,
            leg,
            learn: None,
        };
        let Some(bundle) = self.bundle_owned_by(stream, leg) else {
            return own;
        };
        bundle.route(buf, len, |member, member_leg, pt| {
            self.streams
                .get(member.0)
                .is_some_and(|s| s.takes_payload(member_leg, pt))
        })
    }

    /// Ties an SSRC to a bundle member whose leg accepted a packet with it.
    pub fn learn_bundle_ssrc(
        &mut self,
        owner: (StreamIndex, LegId),
        ssrc: u32,
        member: StreamIndex,
    ) {
        if let Some(bundle) = self.bundles.iter_mut().find(|b| b.primary() == owner) {
            bundle.learn(ssrc, member);
        }
    }

    /// The bundle whose transport `stream`'s `leg` owns, if any (where the
    /// streams are changed meanwhile, the field is searched directly).
    fn bundle_owned_by(&self, stream: StreamIndex, leg: LegId) -> Option<&Bundle> {
        self.bundles.iter().find(|b| b.primary() == (stream, leg))
    }

    /// Whether `stream`'s `leg` rides another stream's transport (it has
    /// no socket, ICE or handshake of its own).
    pub fn is_bundle_follower(&self, stream: StreamIndex, leg: LegId) -> bool {
        self.bundle_owner(stream, leg).is_some()
    }

    /// The stream and leg whose transport `stream`'s `leg` rides, if it
    /// is a bundle follower.
    pub fn bundle_owner(&self, stream: StreamIndex, leg: LegId) -> Option<(StreamIndex, LegId)> {
        self.bundles
            .iter()
            .find(|b| b.followers().any(|member| member == (stream, leg)))
            .map(Bundle::primary)
    }

    /// Whether `stream`'s `leg` owns a transport other streams ride.
    pub fn owns_bundle(&self, stream: StreamIndex, leg: LegId) -> bool {
        self.bundle_owned_by(stream, leg)
            .is_some_and(Bundle::has_followers)
    }

    /// Drops (and counts) RTP that `stream` would send on a BUNDLE
    /// transport under an SSRC another stream of the bundle sends, and
    /// likewise the copy for a pending device (the same packet, the same
    /// SSRC). Reads the routed header before it is sealed, so a refused
    /// packet advances no SRTP sender.
    fn check_bundle_ssrc(&mut self, stream: StreamIndex, verdict: &mut Verdict, buf: &[u8]) {
        let Verdict::Forward {
            leg,
            len,
            ref mut fork,
            ..
        } = *verdict
        else {
            return;
        };
        let at = 8;
        let Some(ssrc) = buf
            .get(at..at + 4)
            .filter(|_| len >= at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        else {
            return;
        };
        let mut refused = None;
        if let Some(copy) = *fork
            && let Some(bundle) = self
                .bundles
                .iter_mut()
                .find(|b| b.contains(stream, copy.leg))
            && !bundle.may_send(ssrc, stream)
        {
            *fork = None;
            refused = Some(copy.leg);
        }
        if let Some(bundle) = self.bundles.iter_mut().find(|b| b.contains(stream, leg))
            && !bundle.may_send(ssrc, stream)
        {
            *verdict = Verdict::Drop(DropReason::BundleSsrcCollision);
            refused = Some(leg);
        }
        if let (Some(leg), Some(s)) = (refused, self.streams.get_mut(stream.0)) {
            s.record_drop(leg, DropReason::BundleSsrcCollision, 1);
        }
    }

    /// Gives the followers of the bundle owned by `stream`'s `leg` what
    /// its ICE selected and whether consent holds: they share its pair.
    fn share_ice(&mut self, stream: StreamIndex, leg: LegId) {
        let Some(bundle) = self.bundles.iter().find(|b| b.primary() == (stream, leg)) else {
            return;
        };
        let Some(view) = self.streams.get(stream.0).and_then(|s| s.ice_view(leg)) else {
            return;
        };
        for (member, member_leg) in bundle.followers() {
            if let Some(s) = self.streams.get_mut(member.0) {
                s.follow_ice(member_leg, view);
            }
        }
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Its streams.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// One stream, for reports.
    pub fn stream(&self, index: StreamIndex) -> Option<&Stream> {
        self.streams.get(index.0)
    }

    /// Whether `stream` may accept a datagram from another address than a
    /// leg's peer (see [`Stream::lax_sources`]).
    pub fn lax_sources(&self, stream: StreamIndex) -> bool {
        self.streams.get(stream.0).is_some_and(Stream::lax_sources)
    }

    /// Where a leg's RTCP comes from, as far as it is known.
    pub fn rtcp_peer(&self, stream: StreamIndex, leg: LegId) -> Option<SocketAddr> {
        self.streams.get(stream.0)?.rtcp_peer(leg)
    }

    /// The party a leg faces (for accounting what was sent where).
    pub fn party_of(&self, stream: StreamIndex, leg: LegId) -> Party {
        self.streams
            .get(stream.0)
            .map_or(Party::User, |s| s.party_of(leg))
    }

    /// Whether it has ended (an [`SessionEvent::Ended`] was raised).
    pub fn has_ended(&self) -> bool {
        self.ended
    }

    /// Informational events dropped because too many were waiting.
    pub fn info_events_dropped(&self) -> u64 {
        self.info_events_dropped
    }

    /// The stream directions the kernel may forward now (see
    /// [`crate::core::fastpath`]): none while a transfer is open, the
    /// session is recorded or a stream shares a transport (BUNDLE).
    pub fn fast_paths(
        &self,
        now: Instant,
    ) -> impl Iterator<
        Item = (
            StreamIndex,
            crate::core::fastpath::Direction,
            crate::core::fastpath::FastPath,
            crate::core::fastpath::FastStart,
        ),
    > + '_ {
        let eligible = self.record.is_none()
            && self.bundles.is_empty()
            && !matches!(self.transfer, Transfer::Pending { .. });
        self.streams
            .iter()
            .enumerate()
            .filter(move |_| eligible)
            .flat_map(move |(index, stream)| {
                let paths = stream.fast_paths(now);
                crate::core::fastpath::Direction::BOTH
                    .into_iter()
                    .zip(paths)
                    .filter_map(move |(direction, path)| {
                        path.map(|(path, start)| (StreamIndex(index), direction, path, start))
                    })
            })
    }

    /// What the kernel forwarded on a stream direction since the last
    /// call (see [`Stream::absorb`]).
    pub fn absorb(
        &mut self,
        stream: StreamIndex,
        direction: crate::core::fastpath::Direction,
        path: &crate::core::fastpath::FastPath,
        progress: &crate::core::fastpath::FastProgress,
    ) {
        if let Some(s) = self.streams.get_mut(stream.0) {
            s.absorb(direction, path, progress);
        }
    }

    /// Handles one datagram (the first `len` bytes of `buf`) that arrived on
    /// `leg` of `stream` through its `arrived_on` socket from `from`, and
    /// says what to do with it, rewritten (and on SRTP legs decrypted and
    /// re-encrypted) in place. In first-packet mode the new device's first
    /// usable packet switches every stream and is forwarded in the same
    /// call. The copy of the remote's media for a pending device, if any,
    /// is written into `fork_buf` ([`Fork::len`](crate::core::stream::Fork::len) bytes). Both buffers need
    /// [`MAX_OVERHEAD`](crate::core::srtp::MAX_OVERHEAD) bytes of room past the largest datagram.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_packet(
        &mut self,
        now: Instant,
        stream: StreamIndex,
        leg: LegId,
        arrived_on: Component,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
        fork_buf: &mut [u8],
    ) -> Verdict {
        self.hidden_drop = None;
        let Some(s) = self.streams.get_mut(stream.0) else {
            return Verdict::Drop(DropReason::OldSource);
        };
        let accepted = match s.accept(now, leg, arrived_on, from, buf, len) {
            Ok(accepted) => accepted,
            Err(outcome) => {
                if !self.bundles.is_empty() {
                    // A check on a bundle's transport speaks for every
                    // stream on it.
                    self.share_ice(stream, leg);
                }
                // An ICE check that selected its sender latches too, and a
                // DTLS client starts toward it.
                if let Some(latched) = outcome.latched {
                    self.events.push_back(SessionEvent::IceSelected {
                        stream,
                        leg,
                        addr: latched.addr,
                    });
                    self.info(SessionEvent::SourceLatched { stream, latched });
                }
                return outcome.verdict;
            }
        };
        let first_packet = matches!(
            self.transfer,
            Transfer::Pending {
                mode: SwitchMode::FirstPacket,
                ..
            }
        );
        if first_packet && accepted.is_media() && s.role(leg) == Some(LegRole::Pending) {
            self.switch_all(now);
        }
        let mut outcome = self.streams[stream.0].route(now, &accepted, buf);
        if !self.bundles.is_empty() {
            // RTP only: RTCP may carry another member's SSRC before RTP
            // tied it to its stream (and the members' SRTCP index ranges
            // keep it from repeating under the key, see `set_leg_keys`).
            if accepted.is_media() {
                self.check_bundle_ssrc(stream, &mut outcome.verdict, buf);
            }
        }
        if let Some(tap) = &self.record
            && accepted.is_media()
            && let Verdict::Forward {
                leg: out,
                component: Component::Rtp,
                len,
                ..
            } = outcome.verdict
        {
            // What the receiver gets, in the clear (before `finish` seals
            // it).
            let toward = self.streams[stream.0].party_of(out);
            tap.copy(self.id, stream.0, toward, now, &buf[..len.min(buf.len())]);
        }
        self.streams[stream.0].finish(
            leg,
            !accepted.is_media(),
            &mut outcome.verdict,
            buf,
            Some(&mut *fork_buf),
        );
        if let Some(request) = self.streams[stream.0].take_keyframe_request() {
            // A held packet's buffer carries the request instead; beside a
            // forwarded one it takes the fork's (free: no transfer is open
            // once the switch happened).
            let s = &mut self.streams[stream.0];
            match &mut outcome.verdict {
                Verdict::Drop(reason) => {
                    let reason = *reason;
                    if let Some(len) = s.write_keyframe_request(&request, buf) {
                        self.hidden_drop = Some(reason);
                        outcome.verdict = Verdict::Forward {
                            leg: request.leg,
                            component: request.socket,
                            to: request.to,
                            len,
                            fork: None,
                        };
                    }
                }
                Verdict::Forward {
                    fork: slot @ None, ..
                } => {
                    if let Some(len) = s.write_keyframe_request(&request, fork_buf) {
                        *slot = Some(crate::core::stream::Fork {
                            leg: request.leg,
                            to: request.to,
                            socket: request.socket,
                            payload_type: 0,
                            len,
                        });
                    }
                }
                Verdict::Forward { .. } | Verdict::Handshake { .. } => {}
            }
        }
        if let Some(latched) = outcome.latched {
            self.info(SessionEvent::SourceLatched { stream, latched });
        }
        if outcome.switch_completed {
            self.collect_closed();
            self.start_retiring_if_switched(now);
        }
        if outcome.new_device_started
            && let Transfer::Switched { id, old_last_sent } = self.transfer
        {
            self.transfer = Transfer::Idle;
            self.events.push_back(SessionEvent::TransferCompleted {
                transfer: id,
                gap: old_last_sent.map(|at| now.saturating_duration_since(at)),
            });
        }
        outcome.verdict
    }

    /// Opens a transfer to a new device: one pending leg per stream, in
    /// order. Returns the new legs' ids; nothing changes on an error.
    pub fn begin_transfer(
        &mut self,
        now: Instant,
        id: TransferId,
        legs: &[PendingLeg],
        mode: SwitchMode,
        timeout: Duration,
    ) -> Result<Vec<LegId>, TransferError> {
        if let Transfer::Pending { id: open, .. } = self.transfer {
            return Err(TransferError::AlreadyPending(open));
        }
        if legs.len() != self.streams.len() {
            return Err(TransferError::StreamCount {
                streams: self.streams.len(),
                given: legs.len(),
            });
        }
        if let Transfer::Switched { id: previous, .. } = self.transfer {
            // Switched, but the new device never sent: that transfer is done.
            self.transfer = Transfer::Idle;
            self.events.push_back(SessionEvent::TransferCompleted {
                transfer: previous,
                gap: None,
            });
        }
        // A switch still waiting for an RFC 4733 event goes ahead now, and
        // retired legs in their grace period make room.
        for s in &mut self.streams {
            s.finish_switch();
        }
        self.collect_closed();
        self.close_retired();
        let mut opened = Vec::with_capacity(legs.len());
        for (index, pending) in legs.iter().enumerate() {
            // The new device may answer late: its leg learns for as long
            // as the transfer may wait.
            match self.streams[index].add_pending(now, pending.config, pending.payloads, timeout) {
                Some(leg) => opened.push(leg),
                None => {
                    for s in &mut self.streams[..index] {
                        s.cancel_pending();
                    }
                    return Err(TransferError::NoLegSlot(StreamIndex(index)));
                }
            }
        }
        self.transfer = Transfer::Pending {
            id,
            mode,
            deadline: now + timeout,
        };
        Ok(opened)
    }

    /// Switches to the pending device now (commit mode).
    pub fn commit(&mut self, now: Instant, id: TransferId) -> Result<(), TransferError> {
        self.open_transfer(Some(id))?;
        self.switch_all(now);
        Ok(())
    }

    /// Rolls an open transfer back: the new device's legs close, the current
    /// device is untouched. `None` cancels whichever is open.
    pub fn cancel(&mut self, id: Option<TransferId>) -> Result<TransferId, TransferError> {
        let open = self.open_transfer(id)?;
        self.roll_back();
        Ok(open)
    }

    fn open_transfer(&self, asked: Option<TransferId>) -> Result<TransferId, TransferError> {
        match (self.transfer, asked) {
            (Transfer::Pending { id, .. }, None) => Ok(id),
            (Transfer::Pending { id, .. }, Some(asked)) if asked == id => Ok(id),
            (Transfer::Pending { id, .. }, Some(asked)) => {
                Err(TransferError::NotThisTransfer { asked, open: id })
            }
            (Transfer::Switched { id, .. }, asked) if asked.is_none_or(|a| a == id) => {
                Err(TransferError::AlreadySwitched(id))
            }
            (Transfer::Idle | Transfer::Switched { .. }, _) => Err(TransferError::NonePending),
        }
    }

    fn roll_back(&mut self) {
        self.close_legs(Stream::cancel_pending);
        self.transfer = Transfer::Idle;
    }

    /// Every stream switches to its pending leg (or waits for an RFC 4733
    /// event to end first); the transfer counts as switched.
    fn switch_all(&mut self, now: Instant) {
        let Transfer::Pending { id, .. } = self.transfer else {
            return;
        };
        let old_last_sent = self
            .streams
            .iter()
            .filter_map(Stream::last_toward_remote_at)
            .max();
        for s in &mut self.streams {
            s.switch(now);
        }
        self.transfer = Transfer::Switched { id, old_last_sent };
        self.collect_closed();
        self.start_retiring_if_switched(now);
    }

    /// Once no stream waits for an event any more, the old legs retire.
    fn start_retiring_if_switched(&mut self, now: Instant) {
        if !self.streams.iter().any(Stream::switch_waiting) {
            self.retire_at = Some(now + RETIRE_GRACE);
        }
    }

    /// Legs a switch removed outright (a second switch within the grace).
    fn collect_closed(&mut self) {
        self.close_legs(Stream::take_closed);
    }

    fn close_retired(&mut self) {
        self.retire_at = None;
        self.close_legs(Stream::close_retired);
    }

    /// Closes, in every stream, the leg `close` gives up, and says so; a
    /// closed leg leaves its bundle (the bundle goes with its owner).
    fn close_legs(&mut self, mut close: impl FnMut(&mut Stream) -> Option<LegId>) {
        for (index, s) in self.streams.iter_mut().enumerate() {
            if let Some(leg) = close(s) {
                let stream = StreamIndex(index);
                self.bundles.retain(|b| b.primary() != (stream, leg));
                for bundle in &mut self.bundles {
                    bundle.forget(stream, leg);
                }
                self.events
                    .push_back(SessionEvent::LegClosed { stream, leg });
            }
        }
    }

    /// Applies a signalling update. Going on hold or off it restarts the
    /// idle clock.
    /// Returns the legs whose DTLS settings changed: the caller starts a
    /// handshake on each (`Some`), or ends it (`None`).
    pub fn update(
        &mut self,
        now: Instant,
        update: &SessionUpdate,
    ) -> Vec<(StreamIndex, LegId, Option<DtlsParams>)> {
        let mut handshakes = Vec::new();
        for peer in &update.peers {
            // A bundle follower's keys come from its owner's handshake.
            let follower = self
                .streams
                .get(peer.stream.0)
                .is_some_and(|s| self.is_bundle_follower(peer.stream, s.leg_of(peer.party)));
            if let Some(s) = self.streams.get_mut(peer.stream.0) {
                // ICE first: on an ICE leg the SDP's address is no peer.
                if let Some(credentials) = peer.ice {
                    s.set_ice(now, peer.party, credentials);
                } else if peer.ice_off {
                    s.clear_ice(now, peer.party);
                }
                if let Some(params) = peer.dtls
                    && let Some(leg) = s.set_dtls(peer.party, params)
                {
                    if !follower {
                        handshakes.push((peer.stream, leg, Some(params)));
                    }
                } else if peer.dtls_off
                    && let Some(leg) = s.clear_dtls(peer.party)
                    && !follower
                {
                    handshakes.push((peer.stream, leg, None));
                }
                s.update_leg(
                    now,
                    peer.party,
                    peer.rtp,
                    peer.rtcp,
                    peer.rtcp_mux,
                    peer.crypto,
                );
            }
        }
        for (index, rates) in &update.clock_rates {
            if let Some(s) = self.streams.get_mut(index.0) {
                s.set_clock_rates(rates);
            }
        }
        for (index, formats) in &update.formats {
            if let Some(s) = self.streams.get_mut(index.0) {
                s.set_formats(formats);
            }
        }
        if let Some(record) = &update.record {
            self.record.clone_from(record);
        }
        for &(index, datagrams) in &update.datagrams {
            if let Some(s) = self.streams.get_mut(index.0) {
                s.set_datagrams(datagrams);
            }
        }
        if let Some(controls) = update.controls {
            for s in &mut self.streams {
                s.set_controls(controls);
            }
        }
        if let Some(held) = update.held
            && held != self.held
        {
            self.held = held;
            self.clock_start = now;
        }
        handshakes
    }

    /// Installs the SRTP keys a DTLS-SRTP handshake on a leg produced under
    /// `under` (see [`Stream::set_leg_keys`]); returns whether they went in.
    pub fn set_leg_keys(
        &mut self,
        stream: StreamIndex,
        leg: LegId,
        keys: LegKeys,
        under: &DtlsParams,
    ) -> bool {
        let installed = self
            .streams
            .get_mut(stream.0)
            .is_some_and(|s| s.set_leg_keys(leg, keys, under));
        // One handshake keys every stream of a bundle (RFC 8843 §11: one
        // DTLS association per transport).
        if installed
            && let Some(bundle) = self.bundles.iter().find(|b| b.primary() == (stream, leg))
        {
            let members = bundle.followers().count() as u64 + 1;
            for (position, (member, member_leg)) in bundle.followers().enumerate() {
                if let Some(s) = self.streams.get_mut(member.0)
                    && s.set_leg_keys(member_leg, keys, under)
                {
                    // One key, one SRTCP index space: each member sends
                    // in its own range (2^31 / members: years of RTCP),
                    // so RTCP carrying another member's SSRC (sent before
                    // that SSRC was tied to its stream) never repeats an
                    // SSRC and index under the key.
                    let range = (1u64 << 31) / members;
                    s.start_srtcp_index_at(member_leg, ((position as u64 + 1) * range) as u32);
                }
            }
        }
        installed
    }

    /// Whether the session is on hold.
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// When the session next needs [`Session::handle_timeout`].
    pub fn poll_timeout(&self) -> Instant {
        let mut next = self.idle_deadline().0;
        if let Transfer::Pending { deadline, .. } = self.transfer {
            next = next.min(deadline);
        }
        if let Some(at) = self.retire_at {
            next = next.min(at);
        }
        for s in &self.streams {
            if let Some(at) = s.switch_deadline() {
                next = next.min(at);
            }
            if let Some(at) = s.consent_deadline() {
                next = next.min(at);
            }
        }
        next
    }

    /// Replaces the session's timeouts (a reload): the idle deadline is
    /// counted from the last packet with the new values.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
    }

    /// The idle deadline and what ends the session there.
    fn idle_deadline(&self) -> (Instant, EndReason) {
        let activity = self.last_packet_at();
        let (media, setup) = if self.held {
            (self.timeouts.hold, self.timeouts.hold)
        } else {
            (self.timeouts.media, self.timeouts.setup)
        };
        match activity {
            Some(at) => (at.max(self.clock_start) + media, EndReason::MediaTimeout),
            None => (self.clock_start + setup, EndReason::SetupTimeout),
        }
    }

    /// When any leg last received a packet it accepted.
    fn last_packet_at(&self) -> Option<Instant> {
        self.streams.iter().filter_map(Stream::last_packet_at).max()
    }

    /// Everything due by `now`: waiting switches whose event went stale,
    /// a transfer's timeout, the end of the old legs' grace, the idle
    /// timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        let mut completed = false;
        let mut expired = Vec::new();
        for (index, s) in self.streams.iter_mut().enumerate() {
            completed |= s.tick(now);
            for (leg, party) in s.expire_consent(now).into_iter().flatten() {
                expired.push((StreamIndex(index), leg));
                self.events.push_back(SessionEvent::ConsentExpired {
                    stream: StreamIndex(index),
                    leg,
                    party,
                });
            }
        }
        for (stream, leg) in expired {
            self.share_ice(stream, leg);
        }
        if completed {
            self.collect_closed();
            self.start_retiring_if_switched(now);
        }
        if let Transfer::Pending { id, deadline, .. } = self.transfer
            && now >= deadline
        {
            self.roll_back();
            self.events
                .push_back(SessionEvent::TransferTimedOut { transfer: id });
        }
        if self.retire_at.is_some_and(|at| now >= at) {
            self.close_retired();
        }
        let (deadline, reason) = self.idle_deadline();
        if now >= deadline {
            self.ended = true;
            self.events.push_back(SessionEvent::Ended { reason });
        }
    }

    /// The next event, if any. Call until `None` after every batch of
    /// packets, command and timeout.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// An informational event, dropped (and counted) rather than growing
    /// the queue on the packet path.
    fn info(&mut self, event: SessionEvent) {
        if self.events.len() < INFO_EVENTS {
            self.events.push_back(event);
        } else {
            self.info_events_dropped += 1;
        }
    }

    /// Accounts datagrams the kernel accepted on a leg's socket.
    pub fn record_sent(&mut self, stream: StreamIndex, leg: LegId, packets: u64, bytes: u64) {
        if let Some(s) = self.streams.get_mut(stream.0) {
            s.record_sent(leg, packets, bytes);
        }
    }

    /// Accounts datagrams dropped on a leg's socket outside the state
    /// machine (too large to receive, refused by the kernel).
    pub fn record_drop(
        &mut self,
        stream: StreamIndex,
        leg: LegId,
        reason: DropReason,
        packets: u64,
    ) {
        if let Some(s) = self.streams.get_mut(stream.0) {
            s.record_drop(leg, reason, packets);
        }
    }
    /// What another relay process needs to go on with this session's
    /// media (see [`crate::core::snapshot`]).
    pub fn snapshot(&self, now: Instant) -> crate::core::snapshot::SessionSnapshot {
        crate::core::snapshot::SessionSnapshot {
            streams: self.streams.iter().map(|s| s.snapshot(now)).collect(),
            packets_in: self.packets_in(),
        }
    }

    /// Goes on from `snapshot`, taken `since` ago by another process, on a
    /// session just made from the same settings. Streams beyond the
    /// snapshot's (or the session's) are left as made.
    pub fn resume(
        &mut self,
        snapshot: &crate::core::snapshot::SessionSnapshot,
        now: Instant,
        since: Duration,
    ) {
        for (stream, stored) in self.streams.iter_mut().zip(&snapshot.streams) {
            stream.resume(stored, now, since);
        }
    }

    /// Sets how the current device of `stream` numbers payload types (a
    /// resumed session whose device a transfer brought).
    pub fn set_device_payloads(&mut self, stream: StreamIndex, payloads: PayloadMap) {
        if let Some(stream) = self.streams.get_mut(stream.0) {
            stream.set_device_payloads(payloads);
        }
    }

    /// Datagrams taken in on every stream so far.
    pub fn packets_in(&self) -> u64 {
        self.streams.iter().map(Stream::packets_in).sum()
    }

    /// The session's state now.
    pub fn report(&self, now: Instant) -> SessionReport {
        let last = self.last_packet_at().unwrap_or(self.clock_start);
        SessionReport {
            streams: self
                .streams
                .iter()
                .map(|s| {
                    [
                        s.leg_report(now, Party::User),
                        s.leg_report(now, Party::Remote),
                    ]
                })
                .collect(),
            transfer: match self.transfer {
                Transfer::Idle => None,
                Transfer::Pending { id, .. } => Some((id, TransferPhase::Pending)),
                Transfer::Switched { id, .. } => Some((id, TransferPhase::Switched)),
            },
            idle: now.saturating_duration_since(last),
            held: self.held,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rtp::RtpRepr;

    const A: &str = "10.0.0.1:4000";
    const REMOTE: &str = "10.0.0.2:5000";
    const B: &str = "10.0.0.3:6000";
    const C: &str = "10.0.0.4:7000";
    const S0: StreamIndex = StreamIndex(0);
    const TIMEOUTS: Timeouts = Timeouts {
        media: Duration::from_secs(60),
        setup: Duration::from_secs(180),
        hold: Duration::from_secs(3600),
    };

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    fn leg(peer: Option<&str>) -> LegConfig {
        LegConfig {
            rtcp_mux: true,
            peer_rtp: peer.map(addr),
            peer_rtcp: None,
            peer_ip: None,
            crypto: crate::core::stream::LegCrypto::Plain,
            ice: None,
            dtls: None,
        }
    }

    fn params() -> StreamParams {
        StreamParams {
            config: StreamConfig {
                learning_window: Duration::from_secs(3),
                relearn: false,
                asymmetric: false,
            },
            clock_rates: vec![(0, 8000), (101, 8000)],
            formats: Vec::new(),
            telephone_event: Some(101),
            device: leg(Some(A)),
            remote: leg(Some(REMOTE)),
        }
    }

    /// A call driven on simulated time: a clock that only moves when told,
    /// and each device's RTP numbering.
    struct Call {
        session: Session,
        t0: Instant,
        now: Instant,
        /// Per device address: (SSRC, next sequence, next timestamp).
        devices: Vec<(&'static str, u32, u16, u32)>,
        events: Vec<SessionEvent>,
    }

    /// What the remote (or a device) received.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Heard {
        to: SocketAddr,
        ssrc: u32,
        seq: u16,
        ts: u32,
        marker: bool,
        pt: u8,
    }

    impl Call {
        fn new(streams: usize) -> Self {
            let t0 = Instant::now();
            let params: Vec<StreamParams> = (0..streams).map(|_| params()).collect();
            Self {
                session: Session::new(t0, SessionId(1), &params, TIMEOUTS),
                t0,
                now: t0,
                devices: vec![(A, 0xA, 1000, 8000), (B, 0xB, 40000, 777), (C, 0xC, 7, 5)],
                events: Vec::new(),
            }
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
            self.drive();
        }

        /// Runs the timeouts that are due and collects events.
        fn drive(&mut self) {
            if self.session.poll_timeout() <= self.now {
                self.session.handle_timeout(self.now);
            }
            while let Some(e) = self.session.poll_event() {
                self.events.push(e);
            }
        }

        fn feed(&mut self, leg: LegId, from: &str, bytes: &[u8]) -> (Verdict, Vec<u8>) {
            self.feed_on(S0, leg, from, bytes)
        }

        fn feed_on(
            &mut self,
            stream: StreamIndex,
            leg: LegId,
            from: &str,
            bytes: &[u8],
        ) -> (Verdict, Vec<u8>) {
            let mut buf = [0u8; 2048 + crate::core::srtp::MAX_OVERHEAD];
            let mut fork = [0u8; 2048 + crate::core::srtp::MAX_OVERHEAD];
            buf[..bytes.len()].copy_from_slice(bytes);
            let verdict = self.session.handle_packet(
                self.now,
                stream,
                leg,
                Component::Rtp,
                addr(from),
                &mut buf,
                bytes.len(),
                &mut fork,
            );
            self.drive();
            let len = match verdict {
                Verdict::Forward { len, .. } => len,
                Verdict::Drop(_) | Verdict::Handshake { .. } => bytes.len(),
            };
            (verdict, buf[..len].to_vec())
        }

        /// The device at `from` sends one media packet of `pt` on `leg`.
        fn speak(&mut self, leg: LegId, from: &'static str, pt: u8) -> Option<Heard> {
            let device = self
                .devices
                .iter_mut()
                .find(|d| d.0 == from)
                .expect("known device");
            let packet = RtpRepr {
                payload_type: pt,
                sequence: device.2,
                timestamp: device.3,
                ssrc: device.1,
                marker: false,
            }
            .to_vec(&[0xd5; 160]);
            device.2 = device.2.wrapping_add(1);
            device.3 = device.3.wrapping_add(160);
            heard(self.feed(leg, from, &packet))
        }

        fn remote_speaks(&mut self, pt: u8) -> Verdict {
            let packet = RtpRepr {
                payload_type: pt,
                sequence: 1,
                timestamp: 1,
                ssrc: 0xF,
                marker: false,
            }
            .to_vec(&[1, 0, 0, 160]);
            self.feed(LegId::REMOTE, REMOTE, &packet).0
        }

        fn transfer(&mut self, id: u64, to: &str, mode: SwitchMode) -> LegId {
            let legs = vec![
                PendingLeg {
                    config: leg(Some(to)),
                    payloads: PayloadMap::identity([0, 101], Some(101)),
                };
                self.session.stream_count()
            ];
            let opened = self
                .session
                .begin_transfer(
                    self.now,
                    TransferId(id),
                    &legs,
                    mode,
                    Duration::from_secs(30),
                )
                .expect("transfer opens");
            self.drive();
            opened[0]
        }

        fn take_events(&mut self) -> Vec<SessionEvent> {
            std::mem::take(&mut self.events)
        }
    }

    fn heard((verdict, bytes): (Verdict, Vec<u8>)) -> Option<Heard> {
        let Verdict::Forward { to, .. } = verdict else {
            return None;
        };
        let view = crate::core::rtp::RtpView::new_checked(&bytes[..]).expect("rtp");
        Some(Heard {
            to,
            ssrc: view.ssrc(),
            seq: view.sequence(),
            ts: view.timestamp(),
            marker: view.marker(),
            pt: view.payload_type(),
        })
    }

    fn closed(events: &[SessionEvent]) -> Vec<LegId> {
        events
            .iter()
            .filter_map(|e| match e {
                SessionEvent::LegClosed { leg, .. } => Some(*leg),
                SessionEvent::SourceLatched { .. }
                | SessionEvent::IceSelected { .. }
                | SessionEvent::ConsentExpired { .. }
                | SessionEvent::TransferCompleted { .. }
                | SessionEvent::TransferTimedOut { .. }
                | SessionEvent::Ended { .. } => None,
            })
            .collect()
    }

    fn completed(events: &[SessionEvent]) -> Vec<(TransferId, Option<Duration>)> {
        events
            .iter()
            .filter_map(|e| match e {
                SessionEvent::TransferCompleted { transfer, gap } => Some((*transfer, *gap)),
                SessionEvent::SourceLatched { .. }
                | SessionEvent::IceSelected { .. }
                | SessionEvent::ConsentExpired { .. }
                | SessionEvent::TransferTimedOut { .. }
                | SessionEvent::LegClosed { .. }
                | SessionEvent::Ended { .. } => None,
            })
            .collect()
    }

    const TICK: Duration = Duration::from_millis(20);

    #[test]
    fn switch_on_the_new_devices_first_packet_in_one_pass() {
        let mut call = Call::new(1);
        let mut last = None;
        for _ in 0..5 {
            last = call.speak(LegId::FIRST_DEVICE, A, 0);
            call.advance(TICK);
        }
        let last = last.expect("A heard");
        let b = call.transfer(1, B, SwitchMode::FirstPacket);
        // While pending, the remote's media goes to both devices.
        match call.remote_speaks(0) {
            Verdict::Forward { to, fork, .. } => {
                assert_eq!(to, addr(A));
                assert_eq!(fork.map(|f| (f.leg, f.to)), Some((b, addr(B))));
            }
            Verdict::Drop(reason) => panic!("dropped: {reason:?}"),
            Verdict::Handshake { .. } => panic!("not DTLS"),
        }
        call.advance(Duration::from_millis(10));
        // B's first packet switches and is itself forwarded.
        let first = call.speak(b, B, 0).expect("B's first packet is forwarded");
        assert_eq!(first.to, addr(REMOTE));
        assert_eq!(
            (first.ssrc, first.seq, first.marker),
            (0xA, last.seq + 1, true)
        );
        assert_eq!(first.ts, last.ts + 30 * 8, "30 ms after A's last packet");
        assert_eq!(
            completed(&call.take_events()),
            vec![(TransferId(1), Some(Duration::from_millis(30)))]
        );
        // A is retired: its packets are dropped, its leg closes after the
        // grace period.
        assert_eq!(call.speak(LegId::FIRST_DEVICE, A, 0), None);
        assert_eq!(
            call.session
                .stream(S0)
                .and_then(|s| s.role(LegId::FIRST_DEVICE)),
            Some(LegRole::Retired)
        );
        call.advance(RETIRE_GRACE);
        assert_eq!(closed(&call.take_events()), vec![LegId::FIRST_DEVICE]);
        // The remote's media now goes to B only.
        match call.remote_speaks(0) {
            Verdict::Forward { to, fork, .. } => assert_eq!((to, fork), (addr(B), None)),
            Verdict::Drop(reason) => panic!("dropped: {reason:?}"),
            Verdict::Handshake { .. } => panic!("not DTLS"),
        }
    }

    #[test]
    fn commit_mode_switches_on_commit_and_completes_on_first_media() {
        let mut call = Call::new(1);
        call.speak(LegId::FIRST_DEVICE, A, 0);
        let b = call.transfer(7, B, SwitchMode::Commit);
        call.advance(TICK);
        assert_eq!(call.speak(b, B, 0), None, "held until the commit");
        assert!(
            call.speak(LegId::FIRST_DEVICE, A, 0).is_some(),
            "A still talks"
        );
        assert_eq!(
            call.session.commit(call.now, TransferId(8)),
            Err(TransferError::NotThisTransfer {
                asked: TransferId(8),
                open: TransferId(7)
            })
        );
        call.session
            .commit(call.now, TransferId(7))
            .expect("commit");
        call.advance(TICK);
        assert_eq!(
            call.session.cancel(None),
            Err(TransferError::AlreadySwitched(TransferId(7)))
        );
        let first = call.speak(b, B, 0).expect("forwarded after the commit");
        assert!(first.marker);
        assert_eq!(
            completed(&call.take_events()),
            vec![(TransferId(7), Some(TICK))]
        );
    }

    #[test]
    fn cancel_and_timeout_roll_back_and_leave_the_device_untouched() {
        let mut call = Call::new(1);
        call.speak(LegId::FIRST_DEVICE, A, 0);
        let b = call.transfer(1, B, SwitchMode::FirstPacket);
        assert_eq!(call.session.cancel(Some(TransferId(1))), Ok(TransferId(1)));
        call.drive();
        assert_eq!(closed(&call.take_events()), vec![b]);
        assert_eq!(call.speak(b, B, 0), None, "B's leg is gone");
        let a = call.speak(LegId::FIRST_DEVICE, A, 0).expect("A talks");
        assert!(!a.marker, "nothing changed for the remote");

        let b = call.transfer(2, B, SwitchMode::FirstPacket);
        call.advance(Duration::from_secs(29));
        assert!(call.take_events().is_empty());
        call.advance(Duration::from_secs(1));
        let events = call.take_events();
        assert_eq!(closed(&events), vec![b]);
        assert!(events.contains(&SessionEvent::TransferTimedOut {
            transfer: TransferId(2)
        }));
        assert!(call.speak(LegId::FIRST_DEVICE, A, 0).is_some());
        // A new transfer can open after a rollback.
        call.transfer(3, C, SwitchMode::FirstPacket);
    }

    #[test]
    fn a_chain_of_transfers_is_one_stream_for_the_remote() {
        let mut call = Call::new(1);
        let mut heard = Vec::new();
        heard.extend(call.speak(LegId::FIRST_DEVICE, A, 0));
        call.advance(TICK);
        let b = call.transfer(1, B, SwitchMode::FirstPacket);
        for _ in 0..3 {
            heard.extend(call.speak(b, B, 0));
            call.advance(TICK);
        }
        // Back to A, on a new leg (a device gets a new leg each time).
        let a2 = call.transfer(2, A, SwitchMode::FirstPacket);
        for _ in 0..3 {
            heard.extend(call.speak(a2, A, 0));
            call.advance(TICK);
        }
        let c = call.transfer(3, C, SwitchMode::FirstPacket);
        for _ in 0..3 {
            heard.extend(call.speak(c, C, 0));
            call.advance(TICK);
        }
        assert_eq!(heard.len(), 10);
        assert!(heard.iter().all(|h| h.ssrc == 0xA && h.to == addr(REMOTE)));
        for pair in heard.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq.wrapping_add(1), "{pair:?}");
            assert_eq!(pair[1].ts.wrapping_sub(pair[0].ts), 160, "{pair:?}");
        }
        let markers: Vec<usize> = heard
            .iter()
            .enumerate()
            .filter(|(_, h)| h.marker)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(markers, [1, 4, 7], "one marker per switch");
        let done: Vec<TransferId> = completed(&call.take_events())
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(done, [TransferId(1), TransferId(2), TransferId(3)]);
    }

    fn event(seq: u16, ts: u32, end: bool) -> Vec<u8> {
        RtpRepr {
            payload_type: 101,
            sequence: seq,
            timestamp: ts,
            ssrc: 0xA,
            marker: false,
        }
        .to_vec(&[5, if end { 0x8a } else { 0x0a }, 0, 160])
    }

    #[test]
    fn a_dtmf_event_in_progress_finishes_before_the_switch_and_then_retires() {
        let mut call = Call::new(1);
        call.speak(LegId::FIRST_DEVICE, A, 0);
        let b = call.transfer(1, B, SwitchMode::FirstPacket);
        let start = heard(call.feed(LegId::FIRST_DEVICE, A, &event(1001, 8160, false)))
            .expect("A's event reaches the remote");
        // B's first packet: the switch waits for A's event to end.
        assert_eq!(call.speak(b, B, 0), None);
        call.advance(TICK);
        let end = heard(call.feed(LegId::FIRST_DEVICE, A, &event(1002, 8160, true)))
            .expect("A's end packet reaches the remote");
        assert_eq!(end.seq, 1002);
        assert_eq!(
            (end.ts, end.pt, end.ssrc),
            (start.ts, start.pt, start.ssrc),
            "the event keeps its timestamp, to its end"
        );
        // Now B is the device, and its next packet completes the transfer:
        // the same stream, a marker, a timestamp after the event's.
        let b_first = call.speak(b, B, 0).expect("B forwarded");
        assert_eq!((b_first.seq, b_first.marker), (1003, true));
        assert_eq!(b_first.ssrc, start.ssrc);
        assert!(b_first.ts.wrapping_sub(start.ts) as i32 > 0);
        assert_eq!(completed(&call.take_events()).len(), 1);
        // Issue 22 finding 10: the old device's leg closes after the grace
        // period even though the switch waited for the event.
        call.advance(RETIRE_GRACE);
        assert_eq!(closed(&call.take_events()), vec![LegId::FIRST_DEVICE]);
    }

    #[test]
    fn a_stale_event_lets_a_waiting_switch_go_ahead_and_retire() {
        let mut call = Call::new(1);
        call.speak(LegId::FIRST_DEVICE, A, 0);
        let b = call.transfer(1, B, SwitchMode::FirstPacket);
        call.feed(LegId::FIRST_DEVICE, A, &event(1001, 8160, false));
        call.speak(b, B, 0);
        // The end packet is lost; after the stale time the switch goes
        // ahead, and the grace period after it.
        call.advance(Duration::from_millis(1100));
        assert!(call.speak(b, B, 0).is_some());
        call.advance(Duration::from_secs(3));
        assert_eq!(closed(&call.take_events()), vec![LegId::FIRST_DEVICE]);
    }

    #[test]
    fn hold_across_the_switch_keeps_the_session() {
        let mut call = Call::new(1);
        call.speak(LegId::FIRST_DEVICE, A, 0);
        call.session.update(
            call.now,
            &SessionUpdate {
                held: Some(true),
                ..SessionUpdate::default()
            },
        );
        let b = call.transfer(1, B, SwitchMode::Commit);
        call.session
            .commit(call.now, TransferId(1))
            .expect("commit");
        // On hold, the new device is silent for longer than the media
        // timeout: the session stays.
        call.advance(TIMEOUTS.media * 2);
        assert!(!call.session.has_ended());
        assert!(call.session.report(call.now).held);
        call.session.update(
            call.now,
            &SessionUpdate {
                held: Some(false),
                ..SessionUpdate::default()
            },
        );
        call.advance(TICK);
        assert!(call.speak(b, B, 0).is_some());
        assert!(!call.session.has_ended());
    }

    /// Issue 22 finding 1: leaving hold restarts the idle clock; a call
    /// held for longer than the media timeout survives its resume whether
    /// the media restarts at once or a little later.
    #[test]
    fn a_resumed_call_survives_however_long_the_hold() {
        for restart_after in [0, 20, 50, 100, 5_000] {
            let mut call = Call::new(1);
            call.speak(LegId::FIRST_DEVICE, A, 0);
            let hold = |call: &mut Call, on| {
                call.session.update(
                    call.now,
                    &SessionUpdate {
                        held: Some(on),
                        ..SessionUpdate::default()
                    },
                );
                call.drive();
            };
            hold(&mut call, true);
            call.advance(Duration::from_secs(600));
            hold(&mut call, false);
            call.advance(Duration::from_millis(restart_after));
            assert!(
                !call.session.has_ended(),
                "ended {restart_after} ms after the resume"
            );
            assert!(call.speak(LegId::FIRST_DEVICE, A, 0).is_some());
            // The media timeout applies again from the last packet.
            call.advance(TIMEOUTS.media);
            assert!(call.take_events().contains(&SessionEvent::Ended {
                reason: EndReason::MediaTimeout
            }));
        }
    }

    /// The setup timeout had the same flaw: a session put on hold before
    /// any media and resumed later gets a whole setup timeout.
    #[test]
    fn the_setup_clock_restarts_on_resume_too() {
        let mut call = Call::new(1);
        call.session.update(
            call.now,
            &SessionUpdate {
                held: Some(true),
                ..SessionUpdate::default()
            },
        );
        call.advance(Duration::from_secs(400));
        call.session.update(
            call.now,
            &SessionUpdate {
                held: Some(false),
                ..SessionUpdate::default()
            },
        );
        call.advance(TIMEOUTS.setup - TICK);
        assert!(!call.session.has_ended());
        call.advance(TICK);
        assert!(call.take_events().contains(&SessionEvent::Ended {
            reason: EndReason::SetupTimeout
        }));
    }

    /// Issue 22 finding 12: a session whose only traffic is RTCP is alive.
    #[test]
    fn rtcp_alone_keeps_a_session_alive() {
        let mut call = Call::new(1);
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 0xA];
        for _ in 0..10 {
            call.advance(Duration::from_secs(30));
            call.feed(LegId::FIRST_DEVICE, A, &rr);
        }
        assert!(call.now - call.t0 > TIMEOUTS.setup);
        assert!(!call.session.has_ended());
    }

    /// Issue 22 findings 2 and 12: a packet the new device did not
    /// negotiate (comfort noise) neither switches nor wedges the transfer;
    /// the first device's unnegotiated types are dropped like any device's.
    #[test]
    fn an_unusable_packet_from_the_new_device_changes_nothing() {
        let mut call = Call::new(1);
        call.speak(LegId::FIRST_DEVICE, A, 0);
        assert_eq!(
            call.speak(LegId::FIRST_DEVICE, A, 13),
            None,
            "one rule for all"
        );
        let b = call.transfer(1, B, SwitchMode::FirstPacket);
        assert_eq!(call.speak(b, B, 13), None);
        assert!(
            call.speak(LegId::FIRST_DEVICE, A, 0)
                .is_some_and(|h| !h.marker),
            "A still the device"
        );
        // The transfer can still be cancelled, and a new one opened.
        assert_eq!(call.session.cancel(None), Ok(TransferId(1)));
        let c = call.transfer(2, C, SwitchMode::FirstPacket);
        assert!(call.speak(c, C, 0).is_some());
    }

    /// Issue 22 finding 5: commit to B, B silent, then a transfer to C: the
    /// report of B's switch names B, never C.
    #[test]
    fn every_transfer_report_names_its_own_transfer() {
        let mut call = Call::new(1);
        call.speak(LegId::FIRST_DEVICE, A, 0);
        call.transfer(1, B, SwitchMode::Commit);
        call.session
            .commit(call.now, TransferId(1))
            .expect("commit");
        call.advance(TICK);
        let c = call.transfer(2, C, SwitchMode::FirstPacket);
        assert_eq!(completed(&call.take_events()), vec![(TransferId(1), None)]);
        assert_eq!(
            call.session.report(call.now).transfer,
            Some((TransferId(2), TransferPhase::Pending))
        );
        // C's timeout is C's.
        call.advance(Duration::from_secs(30));
        let events = call.take_events();
        assert!(events.contains(&SessionEvent::TransferTimedOut {
            transfer: TransferId(2)
        }));
        assert!(closed(&events).contains(&c));
    }

    #[test]
    fn dtmf_across_the_switch_is_mapped_to_each_devices_numbering() {
        let mut call = Call::new(1);
        call.speak(LegId::FIRST_DEVICE, A, 0);
        let legs = [PendingLeg {
            config: leg(Some(B)),
            payloads: PayloadMap::from_pairs(&[(0, 0), (96, 101)], Some(96)),
        }];
        let b = call
            .session
            .begin_transfer(
                call.now,
                TransferId(1),
                &legs,
                SwitchMode::FirstPacket,
                Duration::from_secs(30),
            )
            .expect("transfer")[0];
        call.speak(b, B, 0);
        let digit = call.speak(b, B, 96).expect("B's telephone-event");
        assert_eq!(digit.pt, 101, "in the remote's numbering");
        let packet = RtpRepr {
            payload_type: 101,
            sequence: 9,
            timestamp: 9,
            ssrc: 0xF,
            marker: false,
        }
        .to_vec(&[1, 0, 0, 160]);
        let to_b = heard(call.feed(LegId::REMOTE, REMOTE, &packet)).expect("to B");
        assert_eq!((to_b.to, to_b.pt), (addr(B), 96), "in B's numbering");
    }

    #[test]
    fn every_stream_switches_together() {
        let mut call = Call::new(2);
        call.speak(LegId::FIRST_DEVICE, A, 0);
        let b = call.transfer(1, B, SwitchMode::FirstPacket);
        call.speak(b, B, 0);
        let s1 = call.session.stream(StreamIndex(1)).expect("video");
        assert_eq!(s1.role(b), Some(LegRole::Device));
        assert_eq!(s1.role(LegId::FIRST_DEVICE), Some(LegRole::Retired));
    }

    /// A device that never ends its RFC 4733 events (each packet without
    /// the end bit) cannot hold the switch off: it goes ahead after a
    /// bounded wait.
    #[test]
    fn endless_events_cannot_hold_a_switch_off() {
        let mut call = Call::new(1);
        call.speak(LegId::FIRST_DEVICE, A, 0);
        let b = call.transfer(1, B, SwitchMode::FirstPacket);
        let mut seq = 1001;
        call.feed(LegId::FIRST_DEVICE, A, &event(seq, 8160, false));
        assert_eq!(call.speak(b, B, 0), None, "waits for the event");
        for _ in 0..150 {
            seq += 1;
            call.feed(LegId::FIRST_DEVICE, A, &event(seq, 8160, false));
            call.advance(TICK);
        }
        assert_eq!(
            call.session.stream(S0).and_then(|s| s.role(b)),
            Some(LegRole::Device),
            "switched within the bound"
        );
        assert!(call.speak(b, B, 0).is_some());
    }

    /// Cancelling a transfer that has switched already is refused as such,
    /// not taken for a rollback.
    #[test]
    fn a_switched_transfer_cannot_be_cancelled() {
        let mut call = Call::new(1);
        call.speak(LegId::FIRST_DEVICE, A, 0);
        let b = call.transfer(3, B, SwitchMode::Commit);
        call.session
            .commit(call.now, TransferId(3))
            .expect("commit");
        assert_eq!(
            call.session.cancel(Some(TransferId(3))),
            Err(TransferError::AlreadySwitched(TransferId(3)))
        );
        assert_eq!(
            call.session.stream(S0).and_then(|s| s.role(b)),
            Some(LegRole::Device)
        );
    }
}

#[cfg(test)]
mod keyframe_tests {
    //! The keyframe request at a video switch, as the worker sends it.
    use super::*;
    use crate::core::keyframe::PayloadFormat;
    use crate::core::rtp::RtpRepr;
    use crate::core::srtp::{MasterKey, SrtpReceiver, SrtpSender, Suite};
    use crate::core::stream::{LegCrypto, LegKeys};

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    fn leg(peer: &str) -> LegConfig {
        LegConfig {
            rtcp_mux: true,
            peer_rtp: Some(addr(peer)),
            peer_rtcp: None,
            peer_ip: None,
            crypto: LegCrypto::Plain,
            ice: None,
            dtls: None,
        }
    }

    /// Review finding (issue 18): toward an SRTP device the request goes
    /// out as SRTCP under the relay's key for that leg (in the held
    /// packet's place), so the device can read it; it names its SSRC.
    #[test]
    fn the_keyframe_request_toward_an_srtp_device_is_srtcp() {
        let t0 = Instant::now();
        let key = |n: u8| MasterKey::new(Suite::AesCm128HmacSha1_80, &[n; 30]).expect("key");
        let params = StreamParams {
            config: StreamConfig {
                learning_window: Duration::from_secs(3),
                relearn: false,
                asymmetric: false,
            },
            clock_rates: vec![(96, 90_000)],
            formats: vec![(96, PayloadFormat::Vp8)],
            telephone_event: None,
            device: leg("10.0.0.1:4000"),
            remote: leg("10.0.0.2:5000"),
        };
        let timeouts = Timeouts {
            media: Duration::from_secs(60),
            setup: Duration::from_secs(60),
            hold: Duration::from_secs(60),
        };
        let mut session = Session::new(t0, SessionId(1), &[params], timeouts);
        let mut buf = [0u8; 2048 + crate::core::srtp::MAX_OVERHEAD];
        let mut fork = [0u8; 2048 + crate::core::srtp::MAX_OVERHEAD];
        let video = |ssrc: u32, seq: u16, payload: &[u8]| {
            RtpRepr {
                payload_type: 96,
                sequence: seq,
                timestamp: 3000 * u32::from(seq),
                ssrc,
                marker: false,
            }
            .to_vec(payload)
        };
        let a = video(0xA, 1, &[0x10, 0x00, 1]);
        buf[..a.len()].copy_from_slice(&a);
        let from_a = addr("10.0.0.1:4000");
        let sent = session.handle_packet(
            t0,
            StreamIndex(0),
            LegId::FIRST_DEVICE,
            Component::Rtp,
            from_a,
            &mut buf,
            a.len(),
            &mut fork,
        );
        assert!(matches!(sent, Verdict::Forward { .. }));
        assert_eq!(session.take_hidden_drop(), None, "A's packet just went");
        let b_keys = LegKeys {
            peer: key(1),
            relay: key(2),
        };
        let b = session
            .begin_transfer(
                t0,
                TransferId(1),
                &[PendingLeg {
                    config: LegConfig {
                        crypto: LegCrypto::Srtp(b_keys),
                        ..leg("10.0.0.3:6000")
                    },
                    payloads: PayloadMap::from_pairs(&[(96, 96)], None),
                }],
                SwitchMode::FirstPacket,
                Duration::from_secs(30),
            )
            .expect("transfer")[0];
        // B's first packet, an inter frame, under its SRTP key.
        let inter = video(0xB, 500, &[0x10, 0x01, 1]);
        buf[..inter.len()].copy_from_slice(&inter);
        let len = SrtpSender::new(&key(1))
            .protect_rtp(&mut buf, inter.len())
            .expect("protected");
        let from_b = addr("10.0.0.3:6000");
        let verdict = session.handle_packet(
            t0,
            StreamIndex(0),
            b,
            Component::Rtp,
            from_b,
            &mut buf,
            len,
            &mut fork,
        );
        let Verdict::Forward { leg, to, len, .. } = verdict else {
            panic!("expected the request, got {verdict:?}");
        };
        assert_eq!((leg, to), (b, from_b));
        // The held packet still counts as a drop where the worker counts.
        assert_eq!(
            session.take_hidden_drop(),
            Some(DropReason::AwaitingKeyframe)
        );
        assert_eq!(session.take_hidden_drop(), None);
        let plain = SrtpReceiver::new(&key(2))
            .unprotect_rtcp(&mut buf, len)
            .expect("SRTCP under the relay's key for B");
        let bytes = bytes::Bytes::copy_from_slice(&buf[..plain.len()]);
        let parsed = rtcp::packet::unmarshal(&mut bytes.clone()).expect("RTCP");
        let pli = parsed[1]
            .as_any()
            .downcast_ref::<rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
            .expect("PLI");
        assert_eq!(pli.media_ssrc, 0xB);
    }
}

#[cfg(test)]
mod bundle_tests {
    //! A browser's audio and video on one transport (RFC 8843), toward a
    //! phone with a port per stream: what the owner's ICE and DTLS decide
    //! holds for the follower, and routing never lets a stranger in.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::core::bundle::Mid;
    use crate::core::dtls::{DtlsRole, Fingerprint, HashFunction};
    use crate::core::srtp::{MasterKey, SrtpSender, Suite};
    use crate::core::stream::LegCrypto;
    use crate::core::stun::{self, IceText};

    const BROWSER: &str = "127.0.0.1:40000";
    const STRANGER: &str = "127.0.0.1:40001";
    const PHONE_AUDIO: &str = "127.0.0.1:6000";
    const PHONE_VIDEO: &str = "127.0.0.1:6002";
    const DEVICE: LegId = LegId::FIRST_DEVICE;
    const AUDIO: StreamIndex = StreamIndex(0);
    const VIDEO: StreamIndex = StreamIndex(1);
    const PWD: &str = "relaypassword1relaypassword1";

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn dtls() -> DtlsParams {
        DtlsParams {
            role: DtlsRole::Server,
            peer: Fingerprint::of_certificate(HashFunction::Sha256, b"browser"),
        }
    }

    fn session(now: Instant) -> Session {
        let ice = IceCredentials {
            local_ufrag: IceText::new("rly1").unwrap(),
            local_pwd: IceText::new(PWD).unwrap(),
            remote_ufrag: Some(IceText::new("brws").unwrap()),
        };
        let browser = LegConfig {
            rtcp_mux: true,
            peer_rtp: None,
            peer_rtcp: None,
            peer_ip: None,
            crypto: LegCrypto::AwaitingKeys,
            ice: Some(ice),
            dtls: Some(dtls()),
        };
        let phone = |at: &str| LegConfig {
            rtcp_mux: false,
            peer_rtp: Some(addr(at)),
            peer_rtcp: None,
            peer_ip: None,
            crypto: LegCrypto::Plain,
            ice: None,
            dtls: None,
        };
        let stream = |pt: u8, rate: u32, at: &str| StreamParams {
            config: StreamConfig {
                learning_window: Duration::from_secs(3),
                relearn: false,
                asymmetric: false,
            },
            clock_rates: vec![(pt, rate)],
            formats: Vec::new(),
            telephone_event: None,
            device: browser,
            remote: phone(at),
        };
        let timeouts = Timeouts {
            media: Duration::from_secs(3600),
            setup: Duration::from_secs(3600),
            hold: Duration::from_secs(3600),
        };
        let mut session = Session::new(
            now,
            SessionId(9),
            &[stream(0, 8000, PHONE_AUDIO), stream(96, 90000, PHONE_VIDEO)],
            timeouts,
        );
        let tag = |mid: &str| {
            Some(BundleTag {
                primary: AUDIO,
                mid: Mid::new(mid).unwrap(),
                mid_extension: Some(4),
            })
        };
        session
            .set_bundles(&[(AUDIO, DEVICE, tag("0")), (VIDEO, DEVICE, tag("1"))])
            .unwrap();
        session
    }

    /// Feeds a datagram arriving on the bundle's socket as the worker
    /// does: routed first, the SSRC learned once the member accepted it.
    fn arrive(
        session: &mut Session,
        now: Instant,
        from: &str,
        bytes: &[u8],
    ) -> (StreamIndex, Verdict, Vec<u8>) {
        let mut buf = [0u8; 2048];
        let mut fork = [0u8; 2048];
        buf[..bytes.len()].copy_from_slice(bytes);
        let routed = session.route_bundle(AUDIO, DEVICE, &buf, bytes.len());
        let verdict = session.handle_packet(
            now,
            routed.stream,
            routed.leg,
            Component::Rtp,
            addr(from),
            &mut buf,
            bytes.len(),
            &mut fork,
        );
        if let (Verdict::Forward { .. }, Some(ssrc)) = (verdict, routed.learn) {
            session.learn_bundle_ssrc((AUDIO, DEVICE), ssrc, routed.stream);
        }
        let len = match verdict {
            Verdict::Forward { len, .. } => len,
            Verdict::Drop(_) | Verdict::Handshake { .. } => bytes.len(),
        };
        (routed.stream, verdict, buf[..len].to_vec())
    }

    fn check(nominate: bool) -> Vec<u8> {
        let mut buf = vec![0; 512];
        let len = stun::write_request(
            &mut buf,
            &rand::random(),
            "rly1:brws",
            &IceText::new(PWD).unwrap(),
            nominate,
            7,
        )
        .unwrap();
        buf.truncate(len);
        buf
    }

    /// The browser's SRTP for one stream, under the DTLS-exported key.
    fn srtp(sender: &mut SrtpSender, pt: u8, seq: u16, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0u8; 2048];
        let header = [0x80, pt, (seq >> 8) as u8, seq as u8, 0, 0, 0, 1];
        p[..8].copy_from_slice(&header);
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p[12..172].fill(0x55);
        let len = sender.protect_rtp(&mut p, 172).unwrap();
        p.truncate(len);
        p
    }

    /// The phone sends RTP of `pt` (SSRC 0xB0B, sequence `seq`) on
    /// `stream`'s port.
    fn from_phone(s: &mut Session, now: Instant, stream: StreamIndex, pt: u8, seq: u16) -> Verdict {
        let mut packet = vec![0x80, pt, 0, 0, 0, 0, 0, 1, 0, 0, 0xB, 0xB];
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&[0x10; 100]);
        let mut buf = [0u8; 2048];
        buf[..packet.len()].copy_from_slice(&packet);
        let mut fork = [0u8; 2048];
        let from = if stream == AUDIO {
            PHONE_AUDIO
        } else {
            PHONE_VIDEO
        };
        s.handle_packet(
            now,
            stream,
            LegId::REMOTE,
            Component::Rtp,
            addr(from),
            &mut buf,
            packet.len(),
            &mut fork,
        )
    }

    fn sent_to(verdict: Verdict) -> Option<SocketAddr> {
        match verdict {
            Verdict::Forward { to, .. } => Some(to),
            Verdict::Drop(_) | Verdict::Handshake { .. } => None,
        }
    }

    #[test]
    fn the_follower_shares_the_owners_ice_keys_and_consent() {
        let t0 = Instant::now();
        let mut s = session(t0);
        assert!(s.is_bundle_follower(VIDEO, DEVICE));
        assert_eq!(s.bundle_owner(VIDEO, DEVICE), Some((AUDIO, DEVICE)));
        assert!(s.owns_bundle(AUDIO, DEVICE));

        // Before ICE, the browser's video is no one's media.
        let keys = LegKeys {
            peer: MasterKey::random(Suite::AesCm128HmacSha1_80),
            relay: MasterKey::random(Suite::AesCm128HmacSha1_80),
        };
        let mut browser_video = SrtpSender::new(&keys.peer);
        let mut browser_audio = SrtpSender::new(&keys.peer);
        let (_, verdict, _) = arrive(&mut s, t0, BROWSER, &srtp(&mut browser_video, 96, 1, 0x71D));
        assert_eq!(verdict, Verdict::Drop(DropReason::IceUnchecked));

        // A nominated check on the shared port selects the browser for both.
        let (to, verdict, _) = arrive(&mut s, t0, BROWSER, &check(true));
        assert_eq!(to, AUDIO, "STUN belongs to the transport's owner");
        assert_eq!(sent_to(verdict), Some(addr(BROWSER)));
        // One handshake (the owner's) keys both streams.
        assert!(s.set_leg_keys(AUDIO, DEVICE, keys, &dtls()));

        // Video by payload type to the video stream, then by its SSRC.
        let (to, verdict, plain) =
            arrive(&mut s, t0, BROWSER, &srtp(&mut browser_video, 96, 2, 0x71D));
        assert_eq!(to, VIDEO);
        assert_eq!(sent_to(verdict), Some(addr(PHONE_VIDEO)));
        assert_eq!(plain[1] & 0x7f, 96);
        let (to, verdict, _) = arrive(&mut s, t0, BROWSER, &srtp(&mut browser_audio, 0, 1, 0xA0D));
        assert_eq!((to, sent_to(verdict)), (AUDIO, Some(addr(PHONE_AUDIO))));

        // A stranger's packet with the video's SSRC reaches the video
        // stream's leg, which refuses it: nothing is forwarded or learned.
        let mut forged = SrtpSender::new(&keys.peer);
        let (to, verdict, _) = arrive(&mut s, t0, STRANGER, &srtp(&mut forged, 0, 3, 0x71D));
        assert_eq!(to, VIDEO);
        assert_eq!(verdict, Verdict::Drop(DropReason::IceUnchecked));
        // An unauthenticated packet from the browser's address with the
        // audio payload type cannot re-tie the video's SSRC either.
        let mut junk = srtp(&mut browser_video, 0, 4, 0x71D);
        let last = junk.len() - 1;
        junk[last] ^= 1;
        let (to, verdict, _) = arrive(&mut s, t0, BROWSER, &junk);
        assert_eq!(to, VIDEO, "the learned SSRC decides");
        assert_eq!(verdict, Verdict::Drop(DropReason::SrtpAuth));

        // The phone's video goes back to the browser through the shared pair.
        // RTCP naming the phone's video SSRC that reaches the audio stream
        // first (a phone's report, or one routed before the SSRC was tied
        // to its stream) is forwarded and claims nothing: the video's RTP
        // under that SSRC still goes.
        let mut report = vec![0x80, 200, 0, 6, 0, 0, 0xB, 0xB];
        report.extend_from_slice(&[0; 20]);
        let mut buf = [0u8; 2048];
        buf[..report.len()].copy_from_slice(&report);
        let mut fork = [0u8; 2048];
        let verdict = s.handle_packet(
            t0,
            AUDIO,
            LegId::REMOTE,
            Component::Rtcp,
            addr("127.0.0.1:6001"),
            &mut buf,
            report.len(),
            &mut fork,
        );
        assert_eq!(sent_to(verdict), Some(addr(BROWSER)), "{verdict:?}");
        // The phone's video (PT 96, SSRC 0xB0B) goes back to the browser
        // through the shared pair.
        let verdict = from_phone(&mut s, t0, VIDEO, 96, 9);
        assert_eq!(sent_to(verdict), Some(addr(BROWSER)));
        // The phone's audio under the same SSRC (legal on its separate
        // ports) would reuse keystream on the browser's one transport: it
        // is dropped and counted, never sent.
        let verdict = from_phone(&mut s, t0, AUDIO, 0, 9);
        assert_eq!(verdict, Verdict::Drop(DropReason::BundleSsrcCollision));
        let audio_report = s.report(t0);
        assert_eq!(
            audio_report.streams[0][0].counters.drops[DropReason::BundleSsrcCollision as usize],
            1
        );

        // Consent: checks on the owner keep it for both; when they stop for
        // 30 s, neither stream sends to the browser any more, and one event
        // (the transport's) is raised.
        let later = t0 + Duration::from_secs(20);
        let _ = arrive(&mut s, later, BROWSER, &check(false));
        s.handle_timeout(t0 + Duration::from_secs(31));
        while s.poll_event().is_some() {}
        let gone = later + crate::core::stream::CONSENT_TIMEOUT;
        s.handle_timeout(gone);
        let mut expired = Vec::new();
        while let Some(event) = s.poll_event() {
            if let SessionEvent::ConsentExpired { stream, .. } = event {
                expired.push(stream);
            }
        }
        assert_eq!(expired, vec![AUDIO]);
        let verdict = from_phone(&mut s, gone, VIDEO, 96, 10);
        assert_eq!(
            sent_to(verdict),
            None,
            "no consent, nothing sent: {verdict:?}"
        );
        // A new check brings both back.
        let _ = arrive(&mut s, gone, BROWSER, &check(false));
        let verdict = from_phone(&mut s, gone, VIDEO, 96, 11);
        assert_eq!(sent_to(verdict), Some(addr(BROWSER)));
    }

    #[test]
    fn a_renegotiated_dtls_starts_one_handshake_for_the_transport() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let fresh = DtlsParams {
            role: DtlsRole::Server,
            peer: Fingerprint::of_certificate(HashFunction::Sha256, b"browser after restart"),
        };
        let leg = |stream| LegUpdate {
            stream,
            party: Party::User,
            rtp: None,
            rtcp: None,
            rtcp_mux: None,
            crypto: None,
            ice: None,
            dtls: Some(fresh),
            ice_off: false,
            dtls_off: false,
        };
        let handshakes = s.update(
            t0,
            &SessionUpdate {
                peers: vec![leg(AUDIO), leg(VIDEO)],
                ..SessionUpdate::default()
            },
        );
        assert_eq!(handshakes, vec![(AUDIO, DEVICE, Some(fresh))]);
    }
}
