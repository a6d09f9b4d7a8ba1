//! The kernel fast path, as the core sees it: which stream directions are
//! steady enough for the kernel to forward with fixed numbers, and how what
//! the kernel forwarded moves the stream's state afterwards.
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

use crate::core::ids::LegId;

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

/// What the kernel forwarded on one direction since the relay last looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelProgress {
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

impl KernelProgress {
    /// Nothing forwarded.
    pub fn is_empty(&self) -> bool {
        self.packets == 0
    }
}
