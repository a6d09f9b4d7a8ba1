//! One media stream (an `m=` line) of a session, as a sans-IO state machine.
//!
//! A stream has two legs: `User` (toward the user's current device) and
//! `Remote` (toward the remote party). [`Stream::on_packet`] takes the time,
//! the leg and socket a datagram arrived on, its source and its bytes, and
//! says where to send it or why to drop it. It never reads a clock or touches
//! a socket, so every rule here is unit-tested without either.
//!
//! Source policy (defence against RTP Bleed / injection): a leg whose peer was
//! signalled accepts only that address; otherwise it latches the first source
//! seen inside its learning window and is strict afterwards. With `relearn`,
//! a latched leg moves to a new address (a NAT rebinding) only for a packet of
//! the same SSRC with a sequence number close to the last one.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::rtp::{self, RtpView};
use crate::stats::Reception;

/// Which leg of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Toward the user's current device.
    User = 0,
    /// Toward the remote party.
    Remote = 1,
}

impl Side {
    /// The leg packets from this one are forwarded to.
    pub fn other(self) -> Self {
        match self {
            Self::User => Self::Remote,
            Self::Remote => Self::User,
        }
    }

    /// Lower-case name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Remote => "remote",
        }
    }
}

/// RTP or RTCP. On an rtcp-mux leg both use the RTP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// Media.
    Rtp = 0,
    /// Control.
    Rtcp = 1,
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
}

impl DropReason {
    /// Number of reasons (size of a counter array).
    pub const COUNT: usize = 7;
    /// Every reason, in counter order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::MalformedRtp,
        Self::MalformedRtcp,
        Self::Stranger,
        Self::LearningClosed,
        Self::NoDestination,
        Self::TooLarge,
        Self::SendFailed,
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
        }
    }
}

/// How a leg knows its peer's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerSource {
    /// Not known yet.
    Unknown,
    /// Given by signalling; only this address is accepted.
    Signalled,
    /// Latched from the first packet inside the learning window.
    Learned,
}

impl PeerSource {
    /// Lower-case name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Signalled => "signalled",
            Self::Learned => "learned",
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
}

/// Settings shared by both legs.
#[derive(Debug, Clone, Copy)]
pub struct StreamConfig {
    /// How long after opening (or after a signalling update) a leg without a
    /// signalled peer latches the first source.
    pub learning_window: Duration,
    /// Whether a latched leg may move to a new source address (NAT
    /// rebinding) when the same SSRC continues with a nearby sequence number.
    pub relearn: bool,
}

/// What happened to a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (possibly rewritten) datagram out of `side`'s socket for
    /// `component` to `to`.
    Forward {
        /// The leg that sends it.
        side: Side,
        /// The socket of that leg.
        component: Component,
        /// The destination.
        to: SocketAddr,
    },
    /// Do not send; counted on the receiving leg.
    Drop(DropReason),
}

/// A peer address that a leg has just learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latched {
    /// The leg.
    pub side: Side,
    /// RTP or RTCP.
    pub component: Component,
    /// The address now accepted.
    pub addr: SocketAddr,
    /// True when it replaced an earlier learned address (NAT re-learning).
    pub relearned: bool,
}

/// How far a sequence number may move for a NAT re-learn to be believed.
const RELEARN_MAX_SEQ_DISTANCE: u16 = 64;

#[derive(Debug, Clone)]
struct Leg {
    config: LegConfig,
    peers: [Peer; 2],
    learning_until: Instant,
    counters: LegCounters,
    reception: Reception,
    last_ssrc_seq: Option<(u32, u16)>,
    last_payload_type: Option<u8>,
    last_packet_at: Option<Instant>,
}

impl Leg {
    fn new(config: LegConfig, now: Instant, window: Duration) -> Self {
        let mut leg = Self {
            config,
            peers: [Peer::from_signalled(None); 2],
            learning_until: now + window,
            counters: LegCounters::default(),
            reception: Reception::default(),
            last_ssrc_seq: None,
            last_payload_type: None,
            last_packet_at: None,
        };
        leg.set_signalled(config.peer_rtp, config.peer_rtcp);
        leg
    }

    fn set_signalled(&mut self, rtp: Option<SocketAddr>, rtcp: Option<SocketAddr>) {
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
            self.peers[Component::Rtp as usize] = Peer::from_signalled(rtp);
        }
        if rtcp.is_some() && !self.config.rtcp_mux {
            self.peers[Component::Rtcp as usize] = Peer::from_signalled(rtcp);
        }
    }

    /// Which peer entry a component uses: with rtcp-mux there is one peer
    /// for both.
    fn peer_slot(&self, component: Component) -> usize {
        if self.config.rtcp_mux {
            Component::Rtp as usize
        } else {
            component as usize
        }
    }

    /// NAT re-learning: RTP of the same SSRC, a little ahead of the last
    /// accepted sequence number; RTCP from the IP that RTP already moved to.
    fn may_relearn(
        &self,
        component: Component,
        from: SocketAddr,
        rtp_fields: Option<(u32, u16, u32, u8)>,
    ) -> bool {
        match (component, rtp_fields, self.last_ssrc_seq) {
            (Component::Rtp, Some((ssrc, seq, ..)), Some((last_ssrc, last_seq))) => {
                ssrc == last_ssrc
                    && seq.wrapping_sub(last_seq).wrapping_sub(1) < RELEARN_MAX_SEQ_DISTANCE
            }
            (Component::Rtcp, _, _) => {
                self.peers[Component::Rtp as usize].addr.map(|a| a.ip()) == Some(from.ip())
            }
            (Component::Rtp, _, _) => false,
        }
    }

    fn drop(&mut self, reason: DropReason) -> Verdict {
        self.counters.drops[reason as usize] += 1;
        Verdict::Drop(reason)
    }
}

/// One media stream: its two legs and their state.
#[derive(Debug, Clone)]
pub struct Stream {
    config: StreamConfig,
    legs: [Leg; 2],
    /// Clock rate by payload type (0: unknown), for jitter.
    clock_rates: [u32; 128],
    epoch: Instant,
    last_rtp_at: Option<Instant>,
}

impl Stream {
    /// A stream whose legs open now.
    pub fn new(
        now: Instant,
        config: StreamConfig,
        user: LegConfig,
        remote: LegConfig,
        clock_rates: &[(u8, u32)],
    ) -> Self {
        let mut stream = Self {
            config,
            legs: [
                Leg::new(user, now, config.learning_window),
                Leg::new(remote, now, config.learning_window),
            ],
            clock_rates: [0; 128],
            epoch: now,
            last_rtp_at: None,
        };
        stream.set_clock_rates(clock_rates);
        stream
    }

    /// Replaces the payload type → clock rate map (after a renegotiation).
    pub fn set_clock_rates(&mut self, clock_rates: &[(u8, u32)]) {
        self.clock_rates = [0; 128];
        for &(pt, rate) in clock_rates {
            if let Some(slot) = self.clock_rates.get_mut(usize::from(pt)) {
                *slot = rate;
            }
        }
    }

    /// Handles one datagram that arrived on `side`'s `arrived_on` socket from
    /// `from`. Returns the verdict and, when this packet made a leg learn its
    /// peer, the new address.
    pub fn on_packet(
        &mut self,
        now: Instant,
        side: Side,
        arrived_on: Component,
        from: SocketAddr,
        packet: &mut [u8],
    ) -> (Verdict, Option<Latched>) {
        let leg = &mut self.legs[side as usize];
        let component =
            if arrived_on == Component::Rtp && leg.config.rtcp_mux && rtp::is_rtcp(packet) {
                Component::Rtcp
            } else {
                arrived_on
            };
        // Parse before the source check: a malformed packet must never latch.
        let rtp_fields = match component {
            Component::Rtp => match RtpView::new_checked(&*packet) {
                Ok(view) => Some((
                    view.ssrc(),
                    view.sequence(),
                    view.timestamp(),
                    view.payload_type(),
                )),
                Err(_) => return (leg.drop(DropReason::MalformedRtp), None),
            },
            Component::Rtcp => {
                if rtp::check_rtcp(packet).is_err() {
                    return (leg.drop(DropReason::MalformedRtcp), None);
                }
                None
            }
        };
        let relearn = self.config.relearn;
        let latched = match Self::check_source(leg, side, now, component, from, rtp_fields, relearn)
        {
            Ok(latched) => latched,
            Err(reason) => return (leg.drop(reason), None),
        };

        leg.counters.bytes_in += packet.len() as u64;
        leg.last_packet_at = Some(now);
        if let Some((ssrc, seq, ts, pt)) = rtp_fields {
            leg.counters.rtp_in += 1;
            leg.last_ssrc_seq = Some((ssrc, seq));
            leg.last_payload_type = Some(pt);
            let rate = self.clock_rates[usize::from(pt)];
            let arrival = (rate != 0).then(|| {
                let nanos = now.saturating_duration_since(self.epoch).as_nanos();
                u64::try_from(nanos * u128::from(rate) / 1_000_000_000).unwrap_or(u64::MAX)
            });
            leg.reception.record(ssrc, seq, ts, arrival);
            self.last_rtp_at = Some(now);
        } else {
            leg.counters.rtcp_in += 1;
        }

        let out = &mut self.legs[side.other() as usize];
        let out_component = if out.config.rtcp_mux {
            Component::Rtp
        } else {
            component
        };
        let verdict = match out.peers[out.peer_slot(component)].addr {
            Some(to) => Verdict::Forward {
                side: side.other(),
                component: out_component,
                to,
            },
            None => self.legs[side as usize].drop(DropReason::NoDestination),
        };
        (verdict, latched)
    }

    fn check_source(
        leg: &mut Leg,
        side: Side,
        now: Instant,
        component: Component,
        from: SocketAddr,
        rtp_fields: Option<(u32, u16, u32, u8)>,
        relearn: bool,
    ) -> Result<Option<Latched>, DropReason> {
        let slot = leg.peer_slot(component);
        let peer = leg.peers[slot];
        let relearned = match (peer.source, peer.addr) {
            (_, Some(addr)) if addr == from => return Ok(None),
            (PeerSource::Signalled, _) => return Err(DropReason::Stranger),
            (PeerSource::Learned, _) if relearn && leg.may_relearn(component, from, rtp_fields) => {
                true
            }
            (PeerSource::Learned, _) => return Err(DropReason::Stranger),
            (PeerSource::Unknown, _) if now > leg.learning_until => {
                return Err(DropReason::LearningClosed);
            }
            (PeerSource::Unknown, _) => false,
        };
        leg.peers[slot] = Peer {
            addr: Some(from),
            source: PeerSource::Learned,
        };
        Ok(Some(Latched {
            side,
            component,
            addr: from,
            relearned,
        }))
    }

    /// A signalling update for one leg: new signalled addresses (replacing
    /// learned ones), and a fresh learning window if it still has no peer,
    /// since media usually starts only once the answer is through.
    pub fn update_leg(
        &mut self,
        now: Instant,
        side: Side,
        peer_rtp: Option<SocketAddr>,
        peer_rtcp: Option<SocketAddr>,
    ) {
        let window = self.config.learning_window;
        let leg = &mut self.legs[side as usize];
        leg.set_signalled(peer_rtp, peer_rtcp);
        if leg.peers[Component::Rtp as usize].addr.is_none() {
            leg.learning_until = now + window;
        }
    }

    /// Accounts datagrams the kernel accepted on `side`'s socket.
    pub fn record_sent(&mut self, side: Side, packets: u64, bytes: u64) {
        let counters = &mut self.legs[side as usize].counters;
        counters.packets_out += packets;
        counters.bytes_out += bytes;
    }

    /// Accounts datagrams the kernel refused on `side`'s socket, or that
    /// arrived on it too large for the receive buffer.
    pub fn record_drop(&mut self, side: Side, reason: DropReason, packets: u64) {
        self.legs[side as usize].counters.drops[reason as usize] += packets;
    }

    /// When RTP last arrived on either leg, if ever.
    pub fn last_rtp_at(&self) -> Option<Instant> {
        self.last_rtp_at
    }

    /// Whether `side` multiplexes RTCP on its RTP socket.
    pub fn rtcp_mux(&self, side: Side) -> bool {
        self.legs[side as usize].config.rtcp_mux
    }

    /// A snapshot of one leg for reports.
    pub fn leg_report(&self, now: Instant, side: Side) -> LegReport {
        let leg = &self.legs[side as usize];
        let rtp_peer = leg.peers[Component::Rtp as usize];
        let rtcp_peer = leg.peers[leg.peer_slot(Component::Rtcp)];
        let rate = leg
            .last_payload_type
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

/// A snapshot of one leg's state and counters.
#[derive(Debug, Clone)]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    const WINDOW: Duration = Duration::from_secs(3);

    fn stream(now: Instant, user: LegConfig, remote: LegConfig, relearn: bool) -> Stream {
        Stream::new(
            now,
            StreamConfig {
                learning_window: WINDOW,
                relearn,
            },
            user,
            remote,
            &[(0, 8000), (101, 8000)],
        )
    }

    fn leg(peer: Option<&str>, mux: bool) -> LegConfig {
        LegConfig {
            rtcp_mux: mux,
            peer_rtp: peer.map(addr),
            peer_rtcp: None,
        }
    }

    fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 0];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xd5; 160]);
        p
    }

    fn rtcp_rr(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 201, 0, 1];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p
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
        let mut packet = rtp(1, 7);
        let original = packet.clone();
        let (verdict, latched) = s.on_packet(
            now,
            Side::User,
            Component::Rtp,
            addr("10.0.0.1:4000"),
            &mut packet,
        );
        assert_eq!(
            verdict,
            Verdict::Forward {
                side: Side::Remote,
                component: Component::Rtp,
                to: addr("10.0.0.2:5000")
            }
        );
        assert_eq!(latched, None);
        assert_eq!(packet, original);
        // RTCP goes to the signalled RTP port + 1.
        let (verdict, _) = s.on_packet(
            now,
            Side::Remote,
            Component::Rtcp,
            addr("10.0.0.2:5001"),
            &mut rtcp_rr(9),
        );
        assert_eq!(
            verdict,
            Verdict::Forward {
                side: Side::User,
                component: Component::Rtcp,
                to: addr("10.0.0.1:4001")
            }
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
        let (verdict, _) = s.on_packet(
            now,
            Side::User,
            Component::Rtp,
            addr("10.6.6.6:4000"),
            &mut rtp(1, 7),
        );
        assert_eq!(verdict, Verdict::Drop(DropReason::Stranger));
        // Not even with the same SSRC and the next sequence number.
        s.on_packet(
            now,
            Side::User,
            Component::Rtp,
            addr("10.0.0.1:4000"),
            &mut rtp(1, 7),
        );
        let (verdict, _) = s.on_packet(
            now,
            Side::User,
            Component::Rtp,
            addr("10.0.0.1:4444"),
            &mut rtp(2, 7),
        );
        assert_eq!(verdict, Verdict::Drop(DropReason::Stranger));
        let report = s.leg_report(now, Side::User);
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
        let (verdict, latched) = s.on_packet(
            t1,
            Side::User,
            Component::Rtp,
            addr("192.0.2.1:7000"),
            &mut rtp(1, 7),
        );
        assert!(matches!(verdict, Verdict::Forward { .. }));
        assert_eq!(
            latched,
            Some(Latched {
                side: Side::User,
                component: Component::Rtp,
                addr: addr("192.0.2.1:7000"),
                relearned: false
            })
        );
        let (verdict, _) = s.on_packet(
            t1,
            Side::User,
            Component::Rtp,
            addr("192.0.2.9:7000"),
            &mut rtp(2, 7),
        );
        assert_eq!(verdict, Verdict::Drop(DropReason::Stranger));
        // The remote's media now reaches the learned address.
        let (verdict, _) = s.on_packet(
            t1,
            Side::Remote,
            Component::Rtp,
            addr("10.0.0.2:5000"),
            &mut rtp(1, 9),
        );
        assert_eq!(
            verdict,
            Verdict::Forward {
                side: Side::User,
                component: Component::Rtp,
                to: addr("192.0.2.1:7000")
            }
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
        let (verdict, latched) = s.on_packet(
            late,
            Side::User,
            Component::Rtp,
            addr("192.0.2.1:7000"),
            &mut rtp(1, 7),
        );
        assert_eq!(verdict, Verdict::Drop(DropReason::LearningClosed));
        assert_eq!(latched, None);
        s.update_leg(late, Side::User, None, None);
        let (verdict, latched) = s.on_packet(
            late,
            Side::User,
            Component::Rtp,
            addr("192.0.2.1:7000"),
            &mut rtp(2, 7),
        );
        assert!(matches!(verdict, Verdict::Forward { .. }));
        assert!(latched.is_some());
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
        let (verdict, _) = s.on_packet(
            now,
            Side::User,
            Component::Rtp,
            addr("10.0.0.1:4000"),
            &mut rtp(1, 7),
        );
        assert_eq!(verdict, Verdict::Drop(DropReason::NoDestination));
        assert_eq!(
            s.leg_report(now, Side::User).counters.drops[DropReason::NoDestination as usize],
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
            let mut junk = junk;
            let (verdict, latched) = s.on_packet(
                now,
                Side::User,
                Component::Rtp,
                addr("192.0.2.66:1"),
                &mut junk,
            );
            assert_eq!(verdict, Verdict::Drop(DropReason::MalformedRtp));
            assert_eq!(latched, None);
        }
        let (verdict, _) = s.on_packet(
            now,
            Side::User,
            Component::Rtcp,
            addr("192.0.2.66:1"),
            &mut [0x80, 200, 0, 9],
        );
        assert_eq!(verdict, Verdict::Drop(DropReason::MalformedRtcp));
        // The legitimate device still latches afterwards.
        let (_, latched) = s.on_packet(
            now,
            Side::User,
            Component::Rtp,
            addr("192.0.2.1:7000"),
            &mut rtp(1, 7),
        );
        assert!(latched.is_some());
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
        let (verdict, _) = s.on_packet(
            now,
            Side::User,
            Component::Rtp,
            addr("10.0.0.1:4000"),
            &mut rtcp_rr(7),
        );
        assert_eq!(
            verdict,
            Verdict::Forward {
                side: Side::Remote,
                component: Component::Rtcp,
                to: addr("10.0.0.2:5001")
            }
        );
        // RTCP from the remote leaves through the user's single socket to
        // the user's one address.
        let (verdict, _) = s.on_packet(
            now,
            Side::Remote,
            Component::Rtcp,
            addr("10.0.0.2:5001"),
            &mut rtcp_rr(9),
        );
        assert_eq!(
            verdict,
            Verdict::Forward {
                side: Side::User,
                component: Component::Rtp,
                to: addr("10.0.0.1:4000")
            }
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
            s.on_packet(
                now,
                Side::User,
                Component::Rtp,
                addr("192.0.2.1:7000"),
                &mut rtp(100, 7),
            );
            // Another SSRC from the new address: never.
            let (verdict, _) = s.on_packet(
                now,
                Side::User,
                Component::Rtp,
                addr("192.0.2.1:7100"),
                &mut rtp(101, 8),
            );
            assert_eq!(verdict, Verdict::Drop(DropReason::Stranger));
            // Same SSRC but far away in sequence: never.
            let (verdict, _) = s.on_packet(
                now,
                Side::User,
                Component::Rtp,
                addr("192.0.2.1:7100"),
                &mut rtp(5000, 7),
            );
            assert_eq!(verdict, Verdict::Drop(DropReason::Stranger));
            // Same SSRC, next sequence number: only with relearn.
            let (verdict, latched) = s.on_packet(
                now,
                Side::User,
                Component::Rtp,
                addr("192.0.2.1:7100"),
                &mut rtp(101, 7),
            );
            if relearn {
                assert!(matches!(verdict, Verdict::Forward { .. }));
                assert!(latched.is_some_and(|l| l.relearned));
            } else {
                assert_eq!(verdict, Verdict::Drop(DropReason::Stranger));
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
            s.on_packet(
                at,
                Side::User,
                Component::Rtp,
                addr("10.0.0.1:4000"),
                &mut rtp(seq, 7),
            );
        }
        let report = s.leg_report(t0 + Duration::from_secs(3), Side::User);
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
}
