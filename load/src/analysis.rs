//! What a receiver of one generated flow saw, judged packet by packet.
//!
//! Every generated packet carries, after its RTP header, the flow it belongs
//! to, the generation of its sender (0 for the first device, +1 per handoff),
//! the sender's own packet index and the send time. The receiver therefore
//! knows what it *should* see and tells apart:
//! - loss: indices missing inside the span of a sender's delivered packets
//!   (packets an old device sent after the switch, or a new one before it,
//!   are not expected and not counted), plus packets later than `late`;
//! - duplicates and reordering;
//! - continuity violations of the stream as the receiver sees it: an SSRC
//!   change, a sequence step that the sender's own indices do not explain,
//!   a timestamp step inconsistent with the sender's clock (same sender) or
//!   with the time that passed (across a switch), a switch without marker.
//!
//! Video flows (`--video`) carry their frame number too: packets of one
//! frame share a timestamp, and a switch must land on a keyframe (the
//! relay holds the new device's video until one starts; there is no
//! marker rule, the marker ends a frame). The receiver measures each
//! switch from the new device's start to the arrival of its first
//! keyframe, the one the relay asked for.

use std::collections::HashMap;

/// Bytes of the generator's own header after the RTP header (after the
/// video payload descriptor on video flows).
pub const PAYLOAD_HEADER: usize = 35;

/// The generator's fields of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Flow number.
    pub flow: u32,
    /// Sender generation (device number for the user side).
    pub generation: u8,
    /// The sender's own packet index.
    pub index: u64,
    /// When it was sent, in nanoseconds on the generator's clock.
    pub sent_ns: u64,
    /// The sender's frame number (the packet index on audio).
    pub frame: u32,
    /// Whether the packet starts a keyframe (video).
    pub keyframe: bool,
    /// When this sender (device) started, on the generator's clock.
    pub generation_start_ns: u64,
}

impl Stamp {
    /// Writes the stamp at the start of `payload` (at least
    /// [`PAYLOAD_HEADER`] bytes).
    pub fn write(&self, payload: &mut [u8]) {
        payload[0..4].copy_from_slice(&self.flow.to_be_bytes());
        payload[4] = 0xba;
        payload[5] = self.generation;
        payload[6..14].copy_from_slice(&self.index.to_be_bytes());
        payload[14..22].copy_from_slice(&self.sent_ns.to_be_bytes());
        payload[22..26].copy_from_slice(&self.frame.to_be_bytes());
        payload[26] = u8::from(self.keyframe);
        payload[27..35].copy_from_slice(&self.generation_start_ns.to_be_bytes());
    }

    /// Reads a stamp from an RTP packet's payload, if it carries one.
    pub fn read(payload: &[u8]) -> Option<Self> {
        let p = payload.get(..PAYLOAD_HEADER)?;
        if p[4] != 0xba {
            return None;
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&p[i..i + 8]);
            u64::from_be_bytes(b)
        };
        Some(Self {
            flow: u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
            generation: p[5],
            index: u64_at(6),
            sent_ns: u64_at(14),
            frame: u32::from_be_bytes([p[22], p[23], p[24], p[25]]),
            keyframe: p[26] & 1 != 0,
            generation_start_ns: u64_at(27),
        })
    }
}

/// The RTP header fields the check needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// SSRC.
    pub ssrc: u32,
    /// Sequence number.
    pub seq: u16,
    /// Timestamp.
    pub ts: u32,
    /// Marker bit.
    pub marker: bool,
}

/// Counts of what went wrong with a flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Violations {
    /// The SSRC changed.
    pub ssrc_changes: u64,
    /// A sequence step not explained by the sender's indices.
    pub seq_errors: u64,
    /// A timestamp step inconsistent with the sender's clock or the time
    /// that passed.
    pub ts_errors: u64,
    /// A change of sender without the marker bit (audio).
    pub missing_markers: u64,
    /// A change of sender whose first packet does not start a keyframe
    /// (video).
    pub switches_off_keyframe: u64,
}

impl Violations {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.ssrc_changes
            + self.seq_errors
            + self.ts_errors
            + self.missing_markers
            + self.switches_off_keyframe
    }

    /// Adds another flow's counts.
    pub fn add(&mut self, other: &Self) {
        self.ssrc_changes += other.ssrc_changes;
        self.seq_errors += other.seq_errors;
        self.ts_errors += other.ts_errors;
        self.missing_markers += other.missing_markers;
        self.switches_off_keyframe += other.switches_off_keyframe;
    }
}

#[derive(Debug, Clone, Copy)]
struct Last {
    header: Header,
    stamp: Stamp,
    arrived_ns: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Span {
    first: u64,
    highest: u64,
    unique: u64,
    /// Indices `highest - i` seen (bit i), for duplicates.
    window: u64,
    /// This sender took over from another (a handoff), and whether its
    /// first keyframe has arrived.
    switched_in: bool,
    keyframe_seen: bool,
}

/// The receiver's judgement of one flow.
#[derive(Debug, Clone)]
pub struct FlowCheck {
    ts_per_frame: u32,
    clock_rate: u32,
    video: bool,
    late_ns: u64,
    last: Option<Last>,
    spans: HashMap<u8, Span>,
    /// Packets received (late ones included).
    pub received: u64,
    /// Copies of packets already received.
    pub duplicates: u64,
    /// Packets older than one already received from the same sender.
    pub reordered: u64,
    /// Packets that arrived later than the late threshold.
    pub late: u64,
    /// Continuity violations.
    pub violations: Violations,
    /// Receiver-side gaps at each change of sender: arrival of the old
    /// sender's last packet to the new sender's first, in nanoseconds.
    pub switch_gaps_ns: Vec<u64>,
    /// Video: for each sender that took over, from its start to the
    /// arrival of its first keyframe, in nanoseconds.
    pub switch_to_keyframe_ns: Vec<u64>,
    /// After an overload ending at this time (ns), when the first packet
    /// sent after it arrived.
    recovery_from_ns: Option<u64>,
    /// Arrival of the first packet sent after the overload, if any.
    pub recovered_at_ns: Option<u64>,
}

impl FlowCheck {
    /// A check for a flow whose senders advance their timestamp by
    /// `ts_per_frame` per frame (per packet on audio) at `clock_rate`;
    /// packets later than `late_ns` count as lost.
    pub fn new(ts_per_frame: u32, clock_rate: u32, late_ns: u64) -> Self {
        Self {
            ts_per_frame,
            clock_rate,
            video: false,
            late_ns,
            last: None,
            spans: HashMap::new(),
            received: 0,
            duplicates: 0,
            reordered: 0,
            late: 0,
            violations: Violations::default(),
            switch_gaps_ns: Vec::new(),
            switch_to_keyframe_ns: Vec::new(),
            recovery_from_ns: None,
            recovered_at_ns: None,
        }
    }

    /// Judges the flow as video: no marker at a switch, which must land on
    /// a keyframe instead.
    pub fn video(mut self) -> Self {
        self.video = true;
        self
    }

    /// Watches for the first packet sent at or after `end_ns` (the end of an
    /// overload): [`recovery_ns`](Self::recovery_ns) then says how long the
    /// flow took to get through again.
    pub fn watch_recovery(mut self, end_ns: Option<u64>) -> Self {
        self.recovery_from_ns = end_ns;
        self
    }

    /// Time from the end of the overload to the arrival of the first packet
    /// sent after it; `None` if none arrived (or no overload was watched).
    pub fn recovery_ns(&self) -> Option<u64> {
        Some(self.recovered_at_ns?.saturating_sub(self.recovery_from_ns?))
    }

    /// Judges one packet. Returns its one-way latency in nanoseconds.
    pub fn on_packet(&mut self, arrived_ns: u64, header: Header, stamp: Stamp) -> u64 {
        self.received += 1;
        if self
            .recovery_from_ns
            .is_some_and(|end| stamp.sent_ns >= end)
            && self.recovered_at_ns.is_none()
        {
            self.recovered_at_ns = Some(arrived_ns);
        }
        let latency = arrived_ns.saturating_sub(stamp.sent_ns);
        if latency > self.late_ns {
            self.late += 1;
        }
        let switched_in = self.last.is_some();
        let span = self.spans.entry(stamp.generation).or_insert(Span {
            first: stamp.index,
            highest: stamp.index,
            unique: 0,
            window: 0,
            switched_in,
            keyframe_seen: false,
        });
        if self.video && stamp.keyframe && span.switched_in && !span.keyframe_seen {
            span.keyframe_seen = true;
            self.switch_to_keyframe_ns
                .push(arrived_ns.saturating_sub(stamp.generation_start_ns));
        }
        if span.unique > 0 && stamp.index <= span.highest {
            let back = span.highest - stamp.index;
            let seen = back < 64 && span.window & (1 << back) != 0;
            if seen {
                self.duplicates += 1;
            } else {
                self.reordered += 1;
                span.unique += 1;
                span.first = span.first.min(stamp.index);
                if back < 64 {
                    span.window |= 1 << back;
                }
            }
            return latency;
        }
        let ahead = if span.unique == 0 {
            0
        } else {
            stamp.index - span.highest
        };
        span.window = if ahead >= 64 {
            1
        } else {
            (span.window << ahead) | 1
        };
        span.highest = stamp.index;
        span.unique += 1;

        if let Some(last) = self.last {
            let v = &mut self.violations;
            if header.ssrc != last.header.ssrc {
                v.ssrc_changes += 1;
            }
            let seq_step = header.seq.wrapping_sub(last.header.seq);
            let ts_step = header.ts.wrapping_sub(last.header.ts);
            if stamp.generation == last.stamp.generation {
                let index_step = stamp.index.wrapping_sub(last.stamp.index);
                if u64::from(seq_step) != index_step & 0xffff {
                    v.seq_errors += 1;
                }
                let frame_step = stamp.frame.wrapping_sub(last.stamp.frame);
                let expected_ts = frame_step.wrapping_mul(self.ts_per_frame);
                if ts_step != expected_ts {
                    v.ts_errors += 1;
                }
            } else {
                // A change of sender: the next number, the marker (audio)
                // or a keyframe (video), and a timestamp step matching the
                // time between the two sends (within two packet or frame
                // times either way, for scheduling).
                if seq_step != 1 {
                    v.seq_errors += 1;
                }
                if self.video && !stamp.keyframe {
                    v.switches_off_keyframe += 1;
                }
                if !self.video && !header.marker {
                    v.missing_markers += 1;
                }
                let elapsed_ns = stamp.sent_ns.saturating_sub(last.stamp.sent_ns);
                let expected = elapsed_ns as f64 * f64::from(self.clock_rate) / 1e9;
                let tolerance = f64::from(self.ts_per_frame) * 2.0;
                let step = f64::from(ts_step as i32);
                if step <= 0.0 || (step - expected).abs() > tolerance {
                    v.ts_errors += 1;
                }
                self.switch_gaps_ns
                    .push(arrived_ns.saturating_sub(last.arrived_ns));
            }
        }
        self.last = Some(Last {
            header,
            stamp,
            arrived_ns,
        });
        latency
    }

    /// What a receiver puts in an RTCP reception report about this flow:
    /// the SSRC it sees, the last sequence number in order, and packets
    /// lost so far. `None` before the first packet.
    pub fn reception(&self) -> Option<(u32, u16, u64)> {
        let last = self.last?;
        Some((last.header.ssrc, last.header.seq, self.lost()))
    }

    /// Packets the senders sent inside what reached this receiver that never
    /// arrived, plus late ones.
    pub fn lost(&self) -> u64 {
        let missing: u64 = self
            .spans
            .values()
            .map(|s| (s.highest - s.first + 1).saturating_sub(s.unique))
            .sum();
        missing + self.late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A sender: generation, SSRC, first seq and ts.
    struct Sender {
        generation: u8,
        ssrc: u32,
        seq: u16,
        ts: u32,
        index: u64,
    }

    impl Sender {
        fn new(generation: u8, ssrc: u32, seq: u16, ts: u32) -> Self {
            Self {
                generation,
                ssrc,
                seq,
                ts,
                index: 0,
            }
        }

        /// The next packet, sent at `at_ms`, as (header, stamp).
        fn next(&mut self, at_ms: u64, marker: bool) -> (Header, Stamp) {
            let packet = (
                Header {
                    ssrc: self.ssrc,
                    seq: self.seq,
                    ts: self.ts,
                    marker,
                },
                Stamp {
                    flow: 0,
                    generation: self.generation,
                    index: self.index,
                    sent_ns: at_ms * MS,
                    frame: self.index as u32,
                    keyframe: false,
                    generation_start_ns: 0,
                },
            );
            self.seq = self.seq.wrapping_add(1);
            self.ts = self.ts.wrapping_add(160);
            self.index += 1;
            packet
        }
    }

    fn check() -> FlowCheck {
        FlowCheck::new(160, 8000, 50 * MS)
    }

    fn deliver(c: &mut FlowCheck, (header, stamp): (Header, Stamp)) {
        c.on_packet(stamp.sent_ns + MS / 10, header, stamp);
    }

    #[test]
    fn a_clean_stream_through_a_wrap_has_no_findings() {
        let mut c = check();
        let mut s = Sender::new(0, 7, 65530, u32::MAX - 300);
        for i in 0..20 {
            deliver(&mut c, s.next(20 * i, false));
        }
        assert_eq!(
            (c.received, c.lost(), c.duplicates, c.reordered),
            (20, 0, 0, 0)
        );
        assert_eq!(c.violations.total(), 0);
    }

    #[test]
    fn loss_is_not_a_violation_but_an_unexplained_gap_is() {
        let mut c = check();
        let mut s = Sender::new(0, 7, 100, 0);
        deliver(&mut c, s.next(0, false));
        s.next(20, false); // lost in the network
        deliver(&mut c, s.next(40, false));
        assert_eq!(c.lost(), 1);
        assert_eq!(c.violations.total(), 0);
        // A relay that skips a sequence number with nothing lost.
        let (mut header, stamp) = s.next(60, false);
        header.seq = header.seq.wrapping_add(1);
        deliver(&mut c, (header, stamp));
        assert_eq!(c.violations.seq_errors, 1);
    }

    #[test]
    fn catches_an_ssrc_change() {
        let mut c = check();
        let mut s = Sender::new(0, 7, 1, 0);
        deliver(&mut c, s.next(0, false));
        let (mut header, stamp) = s.next(20, false);
        header.ssrc = 8;
        deliver(&mut c, (header, stamp));
        assert_eq!(c.violations.ssrc_changes, 1);
    }

    #[test]
    fn catches_a_timestamp_jump() {
        let mut c = check();
        let mut s = Sender::new(0, 7, 1, 0);
        deliver(&mut c, s.next(0, false));
        let (mut header, stamp) = s.next(20, false);
        header.ts = header.ts.wrapping_add(8000);
        deliver(&mut c, (header, stamp));
        assert_eq!(c.violations.ts_errors, 1);
    }

    #[test]
    fn catches_duplicates_and_counts_reordering() {
        let mut c = check();
        let mut s = Sender::new(0, 7, 1, 0);
        let packets: Vec<_> = (0..4).map(|i| s.next(20 * i, false)).collect();
        for i in [0, 2, 1, 3, 3] {
            deliver(&mut c, packets[i]);
        }
        assert_eq!((c.reordered, c.duplicates, c.lost()), (1, 1, 0));
        assert_eq!(
            c.violations.total(),
            0,
            "reordering is the network's, not a violation"
        );
    }

    #[test]
    fn judges_a_switch_between_senders() {
        // A good switch: next number, marker, timestamp by elapsed time.
        let mut c = check();
        let mut a = Sender::new(0, 7, 500, 1000);
        let mut b = Sender::new(1, 9, 9, 9);
        deliver(&mut c, a.next(0, false));
        deliver(&mut c, a.next(20, false));
        let (mut header, stamp) = b.next(50, true);
        header.ssrc = 7;
        header.seq = 502;
        header.ts = 1000 + 160 + 30 * 8;
        deliver(&mut c, (header, stamp));
        assert_eq!(c.violations.total(), 0);
        assert_eq!(c.switch_gaps_ns, vec![30 * MS]);

        // The bad ones, each caught.
        for (seq, ts, marker, what) in [
            (503u16, 1000 + 160 + 30 * 8, true, "seq"),
            (502, 1000 + 160 + 30 * 8, false, "marker"),
            (502, 1000 + 160 + 900 * 8, true, "ts"),
            (502, 1000, true, "ts backwards"),
        ] {
            let mut c = check();
            let mut a = Sender::new(0, 7, 500, 1000);
            let mut b = Sender::new(1, 9, 9, 9);
            deliver(&mut c, a.next(0, false));
            deliver(&mut c, a.next(20, false));
            let (mut header, stamp) = b.next(50, marker);
            header.ssrc = 7;
            header.seq = seq;
            header.ts = ts;
            deliver(&mut c, (header, stamp));
            assert_eq!(c.violations.total(), 1, "{what}: {:?}", c.violations);
        }
    }

    #[test]
    fn late_packets_count_as_lost() {
        let mut c = check();
        let mut s = Sender::new(0, 7, 1, 0);
        let (header, stamp) = s.next(0, false);
        c.on_packet(stamp.sent_ns + 80 * MS, header, stamp);
        assert_eq!((c.late, c.lost()), (1, 1));
    }

    #[test]
    fn recovery_after_an_overload() {
        let mut c = check().watch_recovery(Some(100 * MS));
        let mut s = Sender::new(0, 7, 1, 0);
        deliver(&mut c, s.next(90, false));
        assert_eq!(c.recovery_ns(), None, "sent before the end of the overload");
        let (header, stamp) = s.next(100, false);
        c.on_packet(130 * MS, header, stamp);
        assert_eq!(c.recovery_ns(), Some(30 * MS));
    }

    #[test]
    fn stamps_round_trip() {
        let stamp = Stamp {
            flow: 77,
            generation: 3,
            index: u64::MAX - 1,
            sent_ns: 123_456_789,
            frame: 0xfeed_f00d,
            keyframe: true,
            generation_start_ns: 987_654_321,
        };
        let mut payload = [0u8; 40];
        stamp.write(&mut payload);
        assert_eq!(Stamp::read(&payload), Some(stamp));
        assert_eq!(Stamp::read(&[0u8; 40]), None);
        assert_eq!(Stamp::read(&payload[..10]), None);
    }

    /// A video sender: `packets` per frame at 30 fps (3000 ticks), all of
    /// a frame's packets sent together.
    fn video_frame(
        s: &mut Sender,
        frame: u32,
        packets: usize,
        keyframe: bool,
        start_ms: u64,
    ) -> Vec<(Header, Stamp)> {
        (0..packets)
            .map(|i| {
                let (mut header, mut stamp) =
                    s.next(start_ms + u64::from(frame) * 33, i + 1 == packets);
                header.ts = frame.wrapping_mul(3000);
                stamp.frame = frame;
                stamp.keyframe = keyframe && i == 0;
                stamp.generation_start_ns = start_ms * MS;
                (header, stamp)
            })
            .collect()
    }

    #[test]
    fn video_frames_share_a_timestamp_and_a_switch_must_land_on_a_keyframe() {
        let video_check = || FlowCheck::new(3000, 90_000, 50 * MS).video();
        let mut c = video_check();
        let mut a = Sender::new(0, 7, 100, 0);
        for frame in 0..3 {
            for packet in video_frame(&mut a, frame, 4, frame == 0, 0) {
                deliver(&mut c, packet);
            }
        }
        assert_eq!(c.violations.total(), 0, "{:?}", c.violations);
        // The new device's keyframe, rewritten onto the outward stream as
        // a relay does (no marker: on video it ends a frame).
        for (keyframe, off) in [(true, 0), (false, 1)] {
            let mut c = c.clone();
            let mut b = Sender::new(1, 9, 5000, 0);
            let first = video_frame(&mut b, 3, 2, keyframe, 0);
            for (i, (mut header, stamp)) in first.into_iter().enumerate() {
                header.ssrc = 7;
                header.seq = 112 + i as u16;
                header.ts = 3 * 3000;
                deliver(&mut c, (header, stamp));
            }
            assert_eq!(c.violations.switches_off_keyframe, off);
            assert_eq!(c.violations.total(), off, "{:?}", c.violations);
            assert_eq!(c.switch_to_keyframe_ns.len(), usize::from(keyframe));
        }
        // Within a sender, a timestamp step that is not whole frames.
        let mut c = video_check();
        let mut a = Sender::new(0, 7, 100, 0);
        for packet in video_frame(&mut a, 0, 2, true, 0) {
            deliver(&mut c, packet);
        }
        let (mut header, stamp) = video_frame(&mut a, 1, 1, false, 0).remove(0);
        header.ts = 4500;
        deliver(&mut c, (header, stamp));
        assert_eq!(c.violations.ts_errors, 1);
    }
}
