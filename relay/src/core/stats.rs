//! Reception statistics as RFC 3550 defines them: sequence tracking with
//! source validation (A.1), expected and lost packets (A.3) and interarrival
//! jitter (A.8). Pure arithmetic, no clock: the caller passes arrival times.

/// A source is valid after this many packets in sequence (A.1 MIN_SEQUENTIAL).
const MIN_SEQUENTIAL: u16 = 2;
/// Largest forward jump still taken as loss (A.1 MAX_DROPOUT).
const MAX_DROPOUT: u16 = 3000;
/// Largest backward jump taken as reordering (A.1 MAX_MISORDER).
const MAX_MISORDER: u16 = 100;
const RTP_SEQ_MOD: u32 = 1 << 16;

/// What one RTP source has been seen to do.
#[derive(Debug, Clone, Default)]
pub struct Reception {
    ssrc: Option<u32>,
    max_seq: u16,
    /// Sequence number wraps, times 2^16. 64 bits: a sender that wraps
    /// every few packets (crafted jumps under MAX_DROPOUT) cannot overflow it.
    cycles: u64,
    base_seq: u32,
    bad_seq: u32,
    probation: u16,
    received: u64,
    /// Transit time of the previous packet, in timestamp units.
    transit: Option<i64>,
    /// Jitter estimate scaled by 16 (A.8's integer form).
    jitter_x16: u64,
}

impl Reception {
    /// Accounts one packet from `ssrc` with sequence `seq` and timestamp
    /// `ts`, arrived at `arrival` (in the same clock units as `ts`, any
    /// origin; `None` when the clock rate is unknown, which skips jitter).
    pub fn record(&mut self, ssrc: u32, seq: u16, ts: u32, arrival: Option<u64>) {
        if self.ssrc != Some(ssrc) {
            // A new source starts its statistics afresh (A.1: probation).
            *self = Self {
                ssrc: Some(ssrc),
                probation: MIN_SEQUENTIAL,
                ..Self::default()
            };
            self.init_seq(seq);
            self.max_seq = seq.wrapping_sub(1);
        }
        if !self.update_seq(seq) {
            return;
        }
        if let Some(arrival) = arrival {
            // Differences are taken modulo 2^32 like RTP timestamps.
            let transit = i64::from(arrival as u32 as i32) - i64::from(ts as i32);
            if let Some(previous) = self.transit {
                let d = i64::from(((transit - previous) as i32).unsigned_abs());
                let jitter = self.jitter_x16 as i64;
                self.jitter_x16 = (jitter + d - ((jitter + 8) >> 4)).max(0) as u64;
            }
            self.transit = Some(transit);
        }
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
    }

    /// A.1's update_seq: false when the packet is not (yet) counted.
    fn update_seq(&mut self, seq: u16) -> bool {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return true;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return false;
        }
        if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += u64::from(RTP_SEQ_MOD);
            }
            self.max_seq = seq;
        } else if u32::from(udelta) <= RTP_SEQ_MOD - u32::from(MAX_MISORDER) {
            // A very large jump: a restarted source, believed after two
            // packets in sequence.
            if u32::from(seq) == self.bad_seq {
                self.init_seq(seq);
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
                return false;
            }
        }
        // else: a duplicate or reordered packet, counted as received.
        self.received += 1;
        true
    }

    /// The jitter state (last transit, jitter × 16) once past probation on
    /// `ssrc`, for the kernel fast path to go on from.
    pub fn steady(&self, ssrc: u32) -> Option<(Option<i64>, u64, u16)> {
        (self.ssrc == Some(ssrc) && self.probation == 0 && self.received > 0).then_some((
            self.transit,
            self.jitter_x16,
            self.max_seq,
        ))
    }

    /// `packets` in-order packets of `ssrc` the kernel took, moving the
    /// newest number `advance` steps to `max_seq`, with its jitter state.
    pub fn absorb(
        &mut self,
        ssrc: u32,
        packets: u64,
        advance: u64,
        max_seq: u16,
        transit: Option<i64>,
        jitter_x16: u64,
    ) {
        if self.ssrc != Some(ssrc) || self.probation > 0 || packets == 0 {
            return;
        }
        let extended = self.extended_max().saturating_add(advance);
        self.cycles = extended.saturating_sub(u64::from(max_seq)) & !u64::from(RTP_SEQ_MOD - 1);
        self.max_seq = max_seq;
        self.received = self.received.saturating_add(packets);
        self.transit = transit;
        self.jitter_x16 = jitter_x16;
    }

    /// The extended highest sequence number received (A.3).
    pub fn extended_max(&self) -> u64 {
        self.cycles + u64::from(self.max_seq)
    }

    /// Packets expected from the first to the highest sequence number.
    pub fn expected(&self) -> u64 {
        if self.received == 0 {
            return 0;
        }
        (self.extended_max() + 1).saturating_sub(u64::from(self.base_seq))
    }

    /// Packets received (duplicates included, as A.3 counts them).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Cumulative packets lost (A.3): negative when duplicates outnumber
    /// losses.
    pub fn lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    /// Interarrival jitter in timestamp units (A.8).
    pub fn jitter(&self) -> u32 {
        u32::try_from(self.jitter_x16 >> 4).unwrap_or(u32::MAX)
    }

    /// The source these statistics are about.
    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds packets 20 ms apart at 8 kHz (160 units) with the given
    /// sequence numbers; arrival follows the timestamp plus `delay(i)`.
    fn feed(r: &mut Reception, seqs: &[u16], delay: impl Fn(usize) -> u64) {
        for (i, &seq) in seqs.iter().enumerate() {
            let ts = u32::from(seq).wrapping_mul(160);
            r.record(7, seq, ts, Some(u64::from(ts) + 1_000_000 + delay(i)));
        }
    }

    /// Jumps just under MAX_DROPOUT wrap the sequence every 22 packets; a
    /// 32-bit wrap counter overflowed (a panic in debug builds) after about
    /// 1.4 million of them (issue 14).
    #[test]
    fn crafted_wraps_do_not_overflow_the_cycle_count() {
        let mut r = Reception::default();
        r.record(7, 0, 0, None);
        let mut seq = 1u16;
        for _ in 0..1_500_000u32 {
            r.record(7, seq, 0, None);
            seq = seq.wrapping_add(MAX_DROPOUT - 1);
        }
        assert!(r.extended_max() > u64::from(u32::MAX));
    }

    #[test]
    fn no_loss_in_order() {
        let mut r = Reception::default();
        let seqs: Vec<u16> = (100..200).collect();
        feed(&mut r, &seqs, |_| 0);
        // The first packet is spent on probation (A.1).
        assert_eq!(r.received(), 99);
        assert_eq!(r.expected(), 99);
        assert_eq!(r.lost(), 0);
        assert_eq!(r.jitter(), 0);
    }

    #[test]
    fn losses_are_counted_across_a_wrap() {
        let mut r = Reception::default();
        let seqs: Vec<u16> = (65500u32..65700)
            .map(|s| (s % 65536) as u16)
            .filter(|s| s % 10 != 3)
            .collect();
        feed(&mut r, &seqs, |_| 0);
        let expected_span = u64::from(seqs.len() as u32 + 20) - 1;
        assert_eq!(
            r.extended_max(),
            65536 + u64::from(*seqs.last().expect("some"))
        );
        assert_eq!(r.expected(), expected_span);
        assert_eq!(r.lost(), 20);
    }

    #[test]
    fn duplicates_make_loss_negative_as_rfc_3550_says() {
        let mut r = Reception::default();
        feed(&mut r, &[1, 2, 3, 3, 4, 4, 5], |_| 0);
        assert_eq!(r.lost(), -2);
    }

    #[test]
    fn jitter_converges_to_the_mean_deviation() {
        // Alternating delays 0 and 80 units: |D| = 80 on every packet after
        // the first, so J converges to 80 (J += (|D| - J) / 16).
        let mut r = Reception::default();
        let seqs: Vec<u16> = (0..2000).collect();
        feed(&mut r, &seqs, |i| if i % 2 == 0 { 0 } else { 80 });
        assert!((78..=80).contains(&r.jitter()), "jitter {}", r.jitter());
    }

    #[test]
    fn restarted_source_is_believed_after_two_packets() {
        let mut r = Reception::default();
        feed(&mut r, &(0..50).collect::<Vec<_>>(), |_| 0);
        feed(&mut r, &[30000, 30001, 30002], |_| 0);
        // The jump resets the base: nothing counted lost for it.
        assert_eq!(r.lost(), 0);
        assert_eq!(r.extended_max(), 30002);
    }

    #[test]
    fn new_ssrc_starts_afresh() {
        let mut r = Reception::default();
        feed(&mut r, &(0..10).collect::<Vec<_>>(), |_| 0);
        r.record(8, 500, 0, None);
        r.record(8, 501, 160, None);
        assert_eq!(r.ssrc(), Some(8));
        assert_eq!(r.received(), 1);
    }
}
