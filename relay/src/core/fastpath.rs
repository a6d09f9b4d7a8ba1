//! The fast paths, as the core sees them: which stream directions are
//! steady enough to forward with fixed numbers (by the kernel, or by a
//! [`Lane`] in the worker), and how what a fast path forwarded moves the
//! stream's state afterwards.
//!
//! A direction qualifies when the relay would do the same thing to every
//! next in-order packet of its current source: a plain leg with a known
//! peer toward a plain leg with a known destination, no transfer open, no
//! recording, no control, no keyframe wait, no event in progress, and a
//! source past its anchor's marker. The kernel then forwards only the
//! newest in-order packets of that source with a payload type from the
//! map; the relay takes the route back before anything else of that leg
//! is decided here (see `io::kernel`), so its decisions never depend on a
//! state the kernel has moved on from.

use std::net::SocketAddr;
use std::time::Instant;

use crate::core::ids::{LegId, Party};
use crate::core::rtp::RTP_HEADER_LEN;

/// A payload type the kernel leaves to the relay.
pub const PASS: u8 = 0xff;

/// Packets the current source must have sent since its anchor before the
/// kernel takes it (about a second of audio): a device that just started
/// or moved settles in the relay first.
pub const STEADY_PACKETS: u32 = 50;

/// Which way a stream direction goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The user's current device toward the remote party: SSRC, sequence
    /// numbers and timestamps rewritten onto the one outward stream.
    TowardRemote,
    /// The remote party toward the device: its own stream, sequence
    /// numbers shifted only across its restarts.
    TowardUser,
}

impl Direction {
    /// Both, in index order.
    pub const BOTH: [Direction; 2] = [Direction::TowardRemote, Direction::TowardUser];

    /// 0 or 1.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The party its packets go to.
    pub fn toward(self) -> Party {
        match self {
            Direction::TowardRemote => Party::Remote,
            Direction::TowardUser => Party::User,
        }
    }
}

/// A stream direction the kernel may forward: what the relay does to each
/// next in-order packet of the source, as fixed numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastPath {
    /// The input leg and the leg it leaves on.
    pub from: LegId,
    /// The output leg.
    pub to: LegId,
    /// The input leg's peer: the only sender whose packets are taken.
    pub source: SocketAddr,
    /// Where the output leg sends.
    pub destination: SocketAddr,
    /// The input SSRC taken.
    pub in_ssrc: u32,
    /// The SSRC sent (the input's own toward the user).
    pub out_ssrc: u32,
    /// Added to sequence numbers.
    pub seq_offset: u16,
    /// Added to timestamps (toward the remote).
    pub ts_offset: u32,
    /// SSRC and timestamps are rewritten (toward the remote).
    pub rewrite_ssrc_ts: bool,
    /// A packet's timestamp must not go back nor jump more than a second
    /// (the relay's own restart rule is wider, so it would agree).
    pub check_ts: bool,
    /// The clock rate of the payload types in the map.
    pub clock_rate: u32,
    /// Outward payload type by input payload type; [`PASS`] for the relay.
    pub payload_types: [u8; 128],
    /// The stream's epoch, the origin of its jitter clock.
    pub epoch: Instant,
}

/// Where the direction's source is when the kernel takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastStart {
    /// Newest input sequence number.
    pub max_seq: u16,
    /// Its input timestamp.
    pub last_ts: u32,
    /// Input sequence numbers seen at `max_seq - i` (bit i).
    pub seen: u64,
    /// RFC 3550 jitter state: the last transit time and jitter × 16.
    pub transit: Option<i64>,
    /// Jitter × 16.
    pub jitter_x16: u64,
}

/// What a fast path forwarded on one direction since the relay last looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastProgress {
    /// The kernel forwarded it (counted as such on the leg), not a lane.
    pub in_kernel: bool,
    /// Of `packets` (and `bytes`), those the output socket refused: taken
    /// from the source, never sent.
    pub unsent: u64,
    /// Their bytes.
    pub unsent_bytes: u64,
    /// Packets forwarded.
    pub packets: u64,
    /// Their RTP bytes (UDP payload).
    pub bytes: u64,
    /// Their RTP payload bytes (RTCP SR octets).
    pub payload_bytes: u64,
    /// How far the newest sequence number moved (sum of the steps).
    pub seq_advance: u64,
    /// Newest input sequence number.
    pub max_seq: u16,
    /// Its input timestamp.
    pub last_ts: u32,
    /// When it arrived.
    pub last_at: Instant,
    /// Input sequence numbers seen at `max_seq - i` (bit i).
    pub seen: u64,
    /// The last step of a timestamp (≤ 1 s) and of the sequence number
    /// over it: the media duration of a packet.
    pub step: Option<(u32, u16)>,
    /// Jitter state after the newest packet.
    pub transit: Option<i64>,
    /// Jitter × 16.
    pub jitter_x16: u64,
}

impl FastProgress {
    /// Nothing forwarded.
    pub fn is_empty(&self) -> bool {
        self.packets == 0
    }
}

/// Largest forward step of the sequence number a fast path takes (the
/// relay's own rule for a jump is the same).
pub const MAX_SEQ_JUMP: u16 = 3000;

/// A fast path in user space: the kernel route's twin, for when the kernel
/// path is off or cannot serve the legs. It lives beside the input socket
/// in the worker, so a packet it takes touches this record, its own bytes
/// and the output socket, and nothing of the session: at 50 packets/s per
/// stream a session's state is cold in the cache at every packet, and
/// reading it was most of the worker's own time per packet.
///
/// It takes exactly what the kernel program takes (the newest in-order
/// packet of the expected SSRC from the leg's peer, with a payload type
/// in the map and a timestamp that follows) and rewrites it the same way;
/// everything else goes to the session, after the worker has taken the
/// lane back ([`Lane::take`]) so that the session decides from where the
/// lane left the stream.
// Hot-first and packed (`repr(C)` keeps the order): a packet reads the
// first line (source, numbers, payload types) and writes the second
// (counters, jitter), and the struct stays a few lines long.
#[derive(Debug, Clone)]
#[repr(C)]
pub struct Lane {
    source: SocketAddr,
    in_ssrc: u32,
    max_seq: u16,
    seq_offset: u16,
    last_ts: u32,
    ts_offset: u32,
    out_ssrc: u32,
    clock_rate: u32,
    /// (input, output) payload types taken; the rest go to the session.
    payload_types: [(u8, u8); MAX_LANE_TYPES],
    rewrite_ssrc_ts: bool,
    check_ts: bool,
    /// Since the last [`Lane::take`].
    packets: u64,
    bytes: u64,
    payload_bytes: u64,
    seq_advance: u64,
    unsent: u64,
    unsent_bytes: u64,
    seen: u64,
    jitter_x16: u64,
    transit: Option<i64>,
    step: Option<(u32, u16)>,
    last_at: Instant,
    epoch: Instant,
    destination: SocketAddr,
}

/// Payload types a lane takes (the map's entries of one clock rate: a
/// codec or two in practice); a direction with more stays in the session.
pub const MAX_LANE_TYPES: usize = 6;

impl Lane {
    /// A lane for `path`, its source at `start`, opened at `now`; `None`
    /// when the path takes more payload types than a lane holds.
    pub fn new(path: &FastPath, start: &FastStart, now: Instant) -> Option<Self> {
        let mut payload_types = [(PASS, PASS); MAX_LANE_TYPES];
        let mut taken = (0u8..128)
            .zip(path.payload_types)
            .filter(|&(_, out)| out != PASS);
        for slot in &mut payload_types {
            match taken.next() {
                Some(pair) => *slot = pair,
                None => break,
            }
        }
        if taken.next().is_some() {
            return None;
        }
        Some(Self {
            source: path.source,
            in_ssrc: path.in_ssrc,
            max_seq: start.max_seq,
            seq_offset: path.seq_offset,
            last_ts: start.last_ts,
            ts_offset: path.ts_offset,
            out_ssrc: path.out_ssrc,
            clock_rate: path.clock_rate,
            payload_types,
            rewrite_ssrc_ts: path.rewrite_ssrc_ts,
            check_ts: path.check_ts,
            packets: 0,
            bytes: 0,
            payload_bytes: 0,
            seq_advance: 0,
            unsent: 0,
            unsent_bytes: 0,
            seen: start.seen,
            jitter_x16: start.jitter_x16,
            transit: start.transit,
            step: None,
            last_at: now,
            epoch: path.epoch,
            destination: path.destination,
        })
    }

    /// Whether `from` is the source the lane takes.
    pub fn is_source(&self, from: SocketAddr) -> bool {
        from == self.source
    }

    /// Where the lane sends.
    pub fn destination(&self) -> SocketAddr {
        self.destination
    }

    /// Takes the datagram (the first `len` bytes of `buf`, from `from`,
    /// received at `now`) if it is the source's next packet, rewritten in
    /// place for the destination; false leaves it untouched for the
    /// session.
    pub fn forward(&mut self, now: Instant, from: SocketAddr, buf: &mut [u8], len: usize) -> bool {
        if from != self.source {
            return false;
        }
        let Some(packet) = buf.get(..len) else {
            return false;
        };
        let Some(&[first, second, s0, s1, t0, t1, t2, t3, i0, i1, i2, i3]) =
            packet.get(..RTP_HEADER_LEN)
        else {
            return false;
        };
        // Version 2; RTCP on a multiplexed port (RFC 5761: 64-95) and the
        // types the map leaves to the relay (events, RTX) go to the session.
        let pt = second & 0x7f;
        if first >> 6 != 2 || (64..=95).contains(&pt) {
            return false;
        }
        let Some(&(_, out_pt)) = self.payload_types.iter().find(|&&(taken, _)| taken == pt) else {
            return false;
        };
        if u32::from_be_bytes([i0, i1, i2, i3]) != self.in_ssrc {
            return false;
        }
        let Some(payload_len) = payload_len(packet, first) else {
            return false;
        };
        let seq = u16::from_be_bytes([s0, s1]);
        let ts = u32::from_be_bytes([t0, t1, t2, t3]);
        let delta = seq.wrapping_sub(self.max_seq);
        let step = ts.wrapping_sub(self.last_ts) as i32;
        let rate = self.clock_rate;
        if delta == 0 || delta > MAX_SEQ_JUMP || (self.check_ts && (step < 0 || step as u32 > rate))
        {
            return false;
        }
        self.seen = if delta >= 64 {
            1
        } else {
            (self.seen << delta) | 1
        };
        self.seq_advance += u64::from(delta);
        self.max_seq = seq;
        if step > 0 && step as u32 <= rate {
            self.step = Some((step as u32, delta));
        }
        self.last_ts = ts;
        self.last_at = now;
        self.packets += 1;
        self.bytes += len as u64;
        self.payload_bytes += payload_len as u64;
        // RFC 3550 A.8, in the payload's clock since the stream's epoch,
        // as the session computes it.
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        // In 64 bits while they suffice (about a day at 192 kHz): a
        // division by a constant, not a 128-bit one per packet.
        let arrival = match u64::try_from(nanos)
            .ok()
            .and_then(|nanos| nanos.checked_mul(u64::from(rate)))
        {
            Some(scaled) => (scaled / 1_000_000_000) as u32,
            None => (nanos * u128::from(rate) / 1_000_000_000) as u32,
        };
        let transit = i64::from(arrival as i32) - i64::from(ts as i32);
        if let Some(previous) = self.transit {
            let d = i64::from(((transit - previous) as i32).unsigned_abs());
            let jitter = self.jitter_x16 as i64;
            self.jitter_x16 = (jitter + d - ((jitter + 8) >> 4)).max(0) as u64;
        }
        self.transit = Some(transit);

        let (out_ssrc, out_ts) = if self.rewrite_ssrc_ts {
            (self.out_ssrc, ts.wrapping_add(self.ts_offset))
        } else {
            (self.in_ssrc, ts)
        };
        let header = &mut buf[..RTP_HEADER_LEN];
        header[1] = (second & 0x80) | out_pt;
        header[2..4].copy_from_slice(&seq.wrapping_add(self.seq_offset).to_be_bytes());
        header[4..8].copy_from_slice(&out_ts.to_be_bytes());
        header[8..12].copy_from_slice(&out_ssrc.to_be_bytes());
        true
    }

    /// Datagrams it took were refused by the output socket: received from
    /// the source all the same, but not sent (the source's numbers stay
    /// where the lane moved them, as for a packet lost on the way).
    pub fn unsent(&mut self, packets: u64, bytes: u64) {
        self.unsent += packets;
        self.unsent_bytes += bytes;
    }

    /// What it forwarded since the last take, for the session to absorb.
    pub fn take(&mut self) -> FastProgress {
        FastProgress {
            in_kernel: false,
            unsent: std::mem::take(&mut self.unsent),
            unsent_bytes: std::mem::take(&mut self.unsent_bytes),
            packets: std::mem::take(&mut self.packets),
            bytes: std::mem::take(&mut self.bytes),
            payload_bytes: std::mem::take(&mut self.payload_bytes),
            seq_advance: std::mem::take(&mut self.seq_advance),
            max_seq: self.max_seq,
            last_ts: self.last_ts,
            last_at: self.last_at,
            seen: self.seen,
            step: self.step,
            transit: self.transit,
            jitter_x16: self.jitter_x16,
        }
    }
}

/// The RTP payload's length (without CSRCs, extension and padding), or
/// `None` for a packet whose lengths do not fit (the session refuses it).
fn payload_len(packet: &[u8], first: u8) -> Option<usize> {
    let mut header = RTP_HEADER_LEN + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let words = packet.get(header + 2..header + 4)?;
        header += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    let padding = if first & 0x20 != 0 {
        let count = usize::from(*packet.last()?);
        if count == 0 {
            return None;
        }
        count
    } else {
        0
    };
    packet.len().checked_sub(header)?.checked_sub(padding)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "192.0.2.1:4000";

    fn lane(now: Instant) -> Lane {
        let mut payload_types = [PASS; 128];
        payload_types[0] = 0;
        payload_types[8] = 8;
        let path = FastPath {
            from: LegId::FIRST_DEVICE,
            to: LegId::REMOTE,
            source: SOURCE.parse().expect("address"),
            destination: "198.51.100.2:5000".parse().expect("address"),
            in_ssrc: 0xA,
            out_ssrc: 0xB,
            seq_offset: 10,
            ts_offset: 1000,
            rewrite_ssrc_ts: true,
            check_ts: true,
            clock_rate: 8000,
            payload_types,
            epoch: now,
        };
        let start = FastStart {
            max_seq: 100,
            last_ts: 16_000,
            seen: 1,
            transit: None,
            jitter_x16: 0,
        };
        Lane::new(&path, &start, now).expect("two payload types")
    }

    fn packet(first: u8, pt: u8, seq: u16, ts: u32, ssrc: u32, payload: usize) -> Vec<u8> {
        let mut p = vec![first, pt];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.resize(RTP_HEADER_LEN + payload, 0xd5);
        p
    }

    /// Offers `p` from `from`; the bytes afterwards, if taken.
    fn offer(lane: &mut Lane, now: Instant, from: &str, p: &[u8]) -> Option<Vec<u8>> {
        let mut buf = p.to_vec();
        buf.resize(p.len() + 16, 0);
        lane.forward(now, from.parse().expect("address"), &mut buf, p.len())
            .then(|| buf[..p.len()].to_vec())
    }

    #[test]
    fn the_next_packet_is_rewritten_and_counted() {
        let now = Instant::now();
        let mut lane = lane(now);
        let out = offer(
            &mut lane,
            now,
            SOURCE,
            &packet(0x80, 0x88, 101, 16_160, 0xA, 160),
        )
        .expect("taken");
        // Marker kept, PCMA kept, numbers moved, SSRC replaced.
        assert_eq!(out[1], 0x88);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 111);
        assert_eq!(u32::from_be_bytes([out[4], out[5], out[6], out[7]]), 17_160);
        assert_eq!(u32::from_be_bytes([out[8], out[9], out[10], out[11]]), 0xB);
        assert_eq!(out[12..], [0xd5; 160]);
        let progress = lane.take();
        assert_eq!(
            (progress.packets, progress.bytes, progress.payload_bytes),
            (1, 172, 160)
        );
        assert_eq!(
            (progress.max_seq, progress.last_ts, progress.seq_advance),
            (101, 16_160, 1)
        );
        assert_eq!(progress.step, Some((160, 1)));
        assert!(!progress.in_kernel);
        assert!(lane.take().is_empty(), "taken once");
    }

    #[test]
    fn anything_else_is_left_untouched_for_the_session() {
        let now = Instant::now();
        let mut lane = lane(now);
        let next = |seq: u16, ts: u32| packet(0x80, 0, seq, ts, 0xA, 160);
        let mut padded_zero = next(101, 16_160);
        padded_zero[0] |= 0x20;
        *padded_zero.last_mut().expect("byte") = 0;
        let mut padded_long = next(101, 16_160);
        padded_long[0] |= 0x20;
        *padded_long.last_mut().expect("byte") = 200;
        let mut extension = packet(0x90, 0, 101, 16_160, 0xA, 4);
        extension[12..16].copy_from_slice(&[0xbe, 0xde, 0x00, 0x09]);
        let refused: [(&str, &str, Vec<u8>); 14] = [
            ("a stranger", "192.0.2.9:4000", next(101, 16_160)),
            (
                "the same host, another port",
                "192.0.2.1:4001",
                next(101, 16_160),
            ),
            (
                "another SSRC",
                SOURCE,
                packet(0x80, 0, 101, 16_160, 0xC, 160),
            ),
            ("an event", SOURCE, packet(0x80, 101, 101, 16_160, 0xA, 4)),
            ("RTCP", SOURCE, packet(0x80, 200, 101, 16_160, 0xA, 16)),
            ("a duplicate", SOURCE, next(100, 16_000)),
            ("an old one", SOURCE, next(99, 15_840)),
            ("a jump", SOURCE, next(100 + MAX_SEQ_JUMP + 1, 16_160)),
            ("time going back", SOURCE, next(101, 15_000)),
            ("over a second ahead", SOURCE, next(101, 16_000 + 8001)),
            ("version 1", SOURCE, packet(0x40, 0, 101, 16_160, 0xA, 160)),
            ("a padding count of 0", SOURCE, padded_zero),
            ("padding longer than the packet", SOURCE, padded_long),
            ("an extension past the end", SOURCE, extension),
        ];
        for (what, from, p) in &refused {
            assert_eq!(offer(&mut lane, now, from, p), None, "{what}");
        }
        for short in 0..RTP_HEADER_LEN {
            assert_eq!(
                offer(&mut lane, now, SOURCE, &next(101, 16_160)[..short]),
                None
            );
        }
        assert!(lane.take().is_empty(), "nothing counted");
        // And the next packet is still the one after 100.
        assert!(offer(&mut lane, now, SOURCE, &next(101, 16_160)).is_some());
    }

    #[test]
    fn a_refused_send_is_taken_back_out() {
        let now = Instant::now();
        let mut lane = lane(now);
        for seq in 101..104u16 {
            let ts = 16_000 + u32::from(seq - 100) * 160;
            assert!(offer(&mut lane, now, SOURCE, &packet(0x80, 0, seq, ts, 0xA, 160)).is_some());
        }
        lane.unsent(1, 172);
        let progress = lane.take();
        assert_eq!((progress.packets, progress.bytes), (3, 516), "all received");
        assert_eq!((progress.unsent, progress.unsent_bytes), (1, 172));
        assert_eq!(progress.max_seq, 103, "the numbers stay where they went");
    }

    #[test]
    fn a_path_with_more_payload_types_than_a_lane_holds_gets_none() {
        let now = Instant::now();
        let mut path = FastPath {
            from: LegId::FIRST_DEVICE,
            to: LegId::REMOTE,
            source: SOURCE.parse().expect("address"),
            destination: SOURCE.parse().expect("address"),
            in_ssrc: 1,
            out_ssrc: 1,
            seq_offset: 0,
            ts_offset: 0,
            rewrite_ssrc_ts: false,
            check_ts: false,
            clock_rate: 8000,
            payload_types: [PASS; 128],
            epoch: now,
        };
        for pt in 0..=MAX_LANE_TYPES as u8 {
            path.payload_types[usize::from(pt)] = pt;
        }
        let start = FastStart {
            max_seq: 0,
            last_ts: 0,
            seen: 0,
            transit: None,
            jitter_x16: 0,
        };
        assert!(Lane::new(&path, &start, now).is_none());
        path.payload_types[0] = PASS;
        assert!(Lane::new(&path, &start, now).is_some());
    }
}
