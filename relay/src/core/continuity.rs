//! The outward RTP timeline toward the remote party: one SSRC, sequence
//! numbers that continue +1 across a change of source, timestamps that
//! advance by the wall-clock time that passed.
//!
//! Every packet toward the remote goes through [`Continuity::rewrite`]. The
//! first source passes untouched (offsets zero, its own SSRC becomes the
//! outward one). A new source — another device after a transfer, or the same
//! device with a new SSRC, a sequence jump or a timestamp jump — is anchored:
//! its first packet gets the next sequence number after the highest sent, a
//! timestamp ahead of the last one sent by the elapsed time at the clock rate
//! (at least 1), and the marker bit. From then on its packets keep their own
//! spacing through fixed offsets, so gaps appear only where it lost packets.
//! Packets older than a source's anchor, and duplicates, are dropped so that
//! no sequence number is ever sent twice.
//!
//! RFC 4733 events that a device sends on an SSRC of their own, beside its
//! media, are a *secondary* source ([`Continuity::rewrite_secondary`]): each
//! packet takes the next outward sequence number (the main source's numbers
//! move up by one, so nothing collides), all packets of one event share one
//! outward timestamp taken from the clock at the event's first packet, and
//! the marker is the event's own. Re-anchoring on every change of SSRC
//! would make each packet a new event at the remote, and digits repeat.

use crate::core::rtp::RtpView;

use std::time::{Duration, Instant};

/// A sequence jump larger than this, within one SSRC, is a restart
/// (RFC 3550 A.1 MAX_DROPOUT).
const MAX_SEQ_JUMP: u16 = 3000;
/// A timestamp ahead of the elapsed time by more than this many seconds,
/// within one SSRC, is a restart. Generous: silence suppression skips ahead.
const TS_AHEAD_SECONDS: i64 = 3;
/// A newer packet whose timestamp is behind the last one by more than this
/// fraction of a second is a restart. DTMF repeats timestamps and video
/// B-frames step back a few frames; a restarted clock lands anywhere.
const TS_BEHIND_DIVISOR: i64 = 2;
/// Clock rate assumed when the payload type has none (keeps time moving).
const FALLBACK_CLOCK_RATE: u32 = 8000;

/// A reordered packet may be this far behind the newest and keep its
/// source's numbering (RFC 3550 A.1 MAX_MISORDER); further back is a
/// restart.
const MAX_MISORDER: u16 = 100;

/// The remote party's RTP toward the user's side. Its SSRC and timestamps
/// pass as they are, but its sequence numbers continue across a restart of
/// the remote's numbering on one SSRC (a PBX that restarts them on hold or
/// on its own transfer): an SRTP device would see old indexes and drop
/// everything after them (what rtpengine's users met, sipwise/rtpengine
/// #1483), and the relay never encrypts an index twice. A new SSRC starts
/// afresh, as SRTP starts it. Until a restart nothing is rewritten.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SequenceShift {
    ssrc: Option<u32>,
    /// Highest input sequence number of that SSRC.
    highest_in: u16,
    /// Added to the input's numbers since its last restart.
    offset: u16,
    /// After a restore: numbers past the stored highest the process before
    /// may have sent; a restart skips them (see [`Continuity::resume`]).
    #[serde(default, skip_serializing)]
    resume_margin: u16,
}

impl SequenceShift {
    /// The sequence number to send for the remote's `seq` on `ssrc`.
    pub fn rewrite(&mut self, ssrc: u32, seq: u16) -> u16 {
        match self.ssrc {
            Some(known) if known == ssrc => {
                let delta = seq.wrapping_sub(self.highest_in) as i16;
                let distance = delta.unsigned_abs();
                if delta > 0 && distance <= MAX_SEQ_JUMP {
                    self.highest_in = seq;
                    self.resume_margin = 0;
                } else if delta < 0 && distance <= MAX_MISORDER {
                    // Reordered: the same offset.
                } else if delta != 0 {
                    // A restart: the next number after the highest sent.
                    let highest_out = self
                        .highest_in
                        .wrapping_add(self.offset)
                        .wrapping_add(self.resume_margin);
                    self.offset = highest_out.wrapping_add(1).wrapping_sub(seq);
                    self.highest_in = seq;
                    self.resume_margin = 0;
                }
            }
            Some(_) | None => {
                *self = Self {
                    ssrc: Some(ssrc),
                    highest_in: seq,
                    offset: 0,
                    resume_margin: 0,
                };
            }
        }
        seq.wrapping_add(self.offset)
    }

    /// `self` as stored, restored `since` ago: a restart of the remote's
    /// numbering skips what the process before may have sent meanwhile.
    pub fn resumed(self, since: Duration) -> Self {
        Self {
            resume_margin: owed(ASSUMED_PACKET_RATE, since),
            ..self
        }
    }

    /// The SSRC of the stream followed (the remote's), once it has sent.
    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }

    /// The SSRC followed, its offset and highest input number, for the
    /// kernel fast path.
    pub fn steady(&self) -> Option<(u32, u16, u16)> {
        if self.resume_margin != 0 {
            return None;
        }
        self.ssrc.map(|ssrc| (ssrc, self.offset, self.highest_in))
    }

    /// The kernel forwarded `ssrc`'s numbers up to `highest_in`, in order.
    pub fn absorb(&mut self, ssrc: u32, highest_in: u16) {
        if self.ssrc == Some(ssrc) {
            self.highest_in = highest_in;
        }
    }

    /// While the remote's numbers are shifted: its SSRC and the offset, for
    /// reception reports about it going back to the remote.
    pub fn active(&self) -> Option<(u32, u16)> {
        self.ssrc
            .filter(|_| self.offset != 0)
            .map(|ssrc| (ssrc, self.offset))
    }
}

/// The current source of a [`Continuity`] as the kernel fast path takes
/// it (see [`Continuity::steady_source`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SteadySource {
    /// Input leg index.
    pub leg: usize,
    /// Input SSRC.
    pub ssrc: u32,
    /// The outward SSRC.
    pub outward_ssrc: u32,
    /// Added to its sequence numbers.
    pub seq_offset: u16,
    /// Added to its timestamps.
    pub ts_offset: u32,
    /// Its newest sequence number.
    pub max_seq: u16,
    /// Its newest input timestamp.
    pub last_ts: u32,
    /// Its numbers seen at `max_seq - i` (bit i).
    pub seen: u64,
}

/// Why a packet was not rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Older than the anchor of its source: its number would collide with
    /// what an earlier source sent.
    Late,
    /// A copy of a packet already sent.
    Duplicate,
}

#[derive(Debug, Clone, Copy)]
struct Source {
    /// (leg, SSRC) of the input.
    key: (usize, u32),
    seq_offset: u16,
    ts_offset: u32,
    /// First input sequence number after the anchor.
    base_seq: u16,
    /// Extended outward sequence number given to `base_seq`.
    anchor_ext: u64,
    /// Highest input sequence number seen.
    max_seq: u16,
    /// How far `max_seq` has moved past `base_seq` (saturating): a packet
    /// further behind `max_seq` than this is older than the anchor. Kept as
    /// a count, because comparing 16-bit sequence numbers with the base
    /// goes wrong once the source is 32 768 packets past it.
    progress: u32,
    /// Input sequence numbers seen at `max_seq - i` (bit i), for duplicates.
    seen: u64,
    last_ts: u32,
    last_at: Instant,
}

/// The outward stream's state. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Continuity {
    outward_ssrc: Option<u32>,
    source: Option<Source>,
    /// Highest outward sequence number sent, and the same extended with its
    /// wrap count (from the first packet, as the remote counts it).
    highest_seq: u16,
    highest_ext: u64,
    /// Timestamp and time of the newest packet sent.
    last_ts: u32,
    last_at: Option<Instant>,
    last_rate: u32,
    /// How much media the newest packet carried (its timestamp step from
    /// the packet before, per packet), in nanoseconds; 0 while unknown.
    last_duration_ns: u64,
    marker_pending: bool,
    packets_sent: u32,
    octets_sent: u32,
    /// The secondary source (events on their own SSRC): its input key, the
    /// input timestamp of its current event and that event's outward one.
    secondary: Option<((usize, u32), u32, u32)>,
    /// After a restore from a snapshot: how many numbers past the stored
    /// highest the process before may have sent. A new anchor skips them;
    /// the stored source's next packet proves the real highest and clears it.
    resume_margin: u16,
    /// Events on their own SSRC have taken numbers (each moves the main
    /// source's offset up by one): after a restore the stored offset may
    /// be behind the one the process before used last.
    secondary_used: bool,
}

/// A [`Continuity`] as stored for another relay process to go on from
/// (high availability): ages instead of instants, and the input source
/// kept only when it is the current device's.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContinuitySnapshot {
    /// The outward SSRC, once a packet went out.
    pub outward_ssrc: Option<u32>,
    /// The current device's source and its offsets.
    pub source: Option<SourceSnapshot>,
    /// Highest outward sequence number sent.
    pub highest_seq: u16,
    /// The same, extended with its wrap count.
    pub highest_ext: u64,
    /// Outward timestamp of the newest packet.
    pub last_ts: u32,
    /// How long before the snapshot the newest packet went out, in ms.
    pub last_age_ms: Option<u64>,
    /// Clock rate of the newest packet.
    pub last_rate: u32,
    /// Media duration of the newest packet, in ns (0 if unknown).
    pub last_duration_ns: u64,
    /// RTCP SR packet count.
    pub packets_sent: u32,
    /// RTCP SR octet count.
    pub octets_sent: u32,
    /// Events on their own SSRC took numbers on this stream.
    #[serde(default)]
    pub secondary_used: bool,
}

/// The current device's input source in a [`ContinuitySnapshot`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceSnapshot {
    /// The device's SSRC.
    pub ssrc: u32,
    /// Added to its sequence numbers.
    pub seq_offset: u16,
    /// Added to its timestamps.
    pub ts_offset: u32,
    /// Its first sequence number after the anchor.
    pub base_seq: u16,
    /// The extended outward number given to `base_seq`.
    pub anchor_ext: u64,
    /// Its highest sequence number seen.
    pub max_seq: u16,
    /// How far `max_seq` has moved past `base_seq`.
    pub progress: u32,
    /// Its newest input timestamp.
    pub last_ts: u32,
    /// How long before the snapshot its newest packet came, in ms.
    pub last_age_ms: u64,
}

/// Numbers a stream at `rate` packets a second may have sent in `since`,
/// with a quarter to spare, at most [`MAX_RESUME_MARGIN`].
fn owed(rate: u64, since: Duration) -> u16 {
    let owed = (u128::from(rate) * since.as_millis() * 5 / 4).div_ceil(1000) + 8;
    u16::try_from(owed.min(u128::from(MAX_RESUME_MARGIN))).unwrap_or(u16::MAX)
}

/// Packets a second assumed when a stream's packet duration is unknown.
const ASSUMED_PACKET_RATE: u64 = 100;
/// The most numbers a restore skips (half the sequence space would make
/// the remote read it as old).
const MAX_RESUME_MARGIN: u64 = 16_384;

/// What [`Continuity::rewrite`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// The packet starts a new source segment (marker set).
    pub anchored: bool,
}

impl Continuity {
    /// Rewrites one packet from input `leg` in place. `clock_rate` is that of
    /// the packet's (outward) payload type, 0 if unknown.
    pub fn rewrite<T: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        leg: usize,
        packet: &mut RtpView<T>,
        clock_rate: u32,
    ) -> Result<Rewritten, Refused> {
        let rate = if clock_rate == 0 {
            if self.last_rate == 0 {
                FALLBACK_CLOCK_RATE
            } else {
                self.last_rate
            }
        } else {
            clock_rate
        };
        let (ssrc, seq, ts) = (packet.ssrc(), packet.sequence(), packet.timestamp());
        let key = (leg, ssrc);
        let mut anchored = false;
        let mut newest = true;
        match &mut self.source {
            Some(source) if source.key == key => {
                let delta = seq.wrapping_sub(source.max_seq) as i16;
                if delta.unsigned_abs() > MAX_SEQ_JUMP {
                    anchored = true;
                } else if delta > 0 {
                    let elapsed = now.saturating_duration_since(source.last_at);
                    let expected = (elapsed.as_nanos() * u128::from(rate) / 1_000_000_000) as i64;
                    let actual = i64::from(ts.wrapping_sub(source.last_ts) as i32);
                    let behind = i64::from(rate) / TS_BEHIND_DIVISOR;
                    let ahead = TS_AHEAD_SECONDS * i64::from(rate);
                    if actual < -behind || actual > expected + ahead {
                        anchored = true;
                    } else {
                        if actual > 0 && actual <= i64::from(rate) {
                            // Lost packets in between share the step.
                            let per_packet =
                                actual.unsigned_abs() / u64::from(delta.unsigned_abs());
                            self.last_duration_ns = per_packet * 1_000_000_000 / u64::from(rate);
                        }
                        let shift = u32::from(delta.unsigned_abs());
                        source.seen = if shift >= 64 { 0 } else { source.seen << shift };
                        source.seen |= 1;
                        source.progress = source.progress.saturating_add(shift);
                        source.max_seq = seq;
                        source.last_ts = ts;
                        source.last_at = now;
                    }
                } else {
                    // At or behind the newest: reordered, or a duplicate.
                    newest = false;
                    let back = u32::from(delta.unsigned_abs());
                    if back > source.progress {
                        return Err(Refused::Late);
                    }
                    if back < 64 && source.seen & (1 << back) != 0 {
                        return Err(Refused::Duplicate);
                    }
                    if back < 64 {
                        source.seen |= 1 << back;
                    }
                }
            }
            Some(_) => anchored = true,
            None => {
                // The first source: its numbering becomes the outward one.
                self.outward_ssrc = Some(ssrc);
                self.source = Some(Source {
                    key,
                    seq_offset: 0,
                    ts_offset: 0,
                    base_seq: seq,
                    anchor_ext: u64::from(seq),
                    max_seq: seq,
                    progress: 0,
                    seen: 1,
                    last_ts: ts,
                    last_at: now,
                });
                self.highest_seq = seq.wrapping_sub(1);
                self.highest_ext = u64::from(seq).wrapping_sub(1);
            }
        }
        if anchored {
            self.anchor(now, key, seq, ts, rate);
        }
        let Some(source) = self.source else {
            return Err(Refused::Late);
        };
        let out_seq = seq.wrapping_add(source.seq_offset);
        let out_ts = ts.wrapping_add(source.ts_offset);
        if let Some(outward) = self.outward_ssrc {
            packet.set_ssrc(outward);
        }
        packet.set_sequence(out_seq);
        packet.set_timestamp(out_ts);
        if self.marker_pending {
            packet.set_marker(true);
            self.marker_pending = false;
        }
        let ahead = out_seq.wrapping_sub(self.highest_seq) as i16;
        if ahead > 0 {
            self.highest_seq = out_seq;
            self.highest_ext = self.highest_ext.wrapping_add(ahead.unsigned_abs().into());
            // The stored source went on: its numbers are the real highest.
            self.resume_margin = 0;
        }
        if newest {
            self.last_ts = out_ts;
            self.last_at = Some(now);
            self.last_rate = rate;
        }
        self.packets_sent = self.packets_sent.wrapping_add(1);
        self.octets_sent = self
            .octets_sent
            .wrapping_add(u32::try_from(packet.payload_len()).unwrap_or(u32::MAX));
        Ok(Rewritten { anchored })
    }

    fn anchor(&mut self, now: Instant, key: (usize, u32), seq: u16, ts: u32, rate: u32) {
        self.skip_resume_margin();
        let out_seq = self.highest_seq.wrapping_add(1);
        let out_ts = match self.last_at {
            Some(at) => {
                // The wall-clock time that passed, but at least the media
                // the last packet carried: a source that takes over right
                // after the last packet must not claim samples that packet
                // already covered (a jitter buffer drops or glitches on the
                // overlap). Never backwards, never the same instant twice.
                let elapsed = now.saturating_duration_since(at).as_nanos();
                let covered = elapsed.max(u128::from(self.last_duration_ns));
                let advance = covered * u128::from(rate) / 1_000_000_000;
                self.last_ts
                    .wrapping_add(u32::try_from(advance).unwrap_or(u32::MAX).max(1))
            }
            None => ts,
        };
        self.source = Some(Source {
            key,
            seq_offset: out_seq.wrapping_sub(seq),
            ts_offset: out_ts.wrapping_sub(ts),
            base_seq: seq,
            anchor_ext: self.highest_ext.wrapping_add(1),
            max_seq: seq,
            progress: 0,
            seen: 1,
            last_ts: ts,
            last_at: now,
        });
        // A talkspurt starts here; on video the marker ends a frame, and the
        // packet keeps its own.
        self.marker_pending = rate != crate::core::stream::VIDEO_CLOCK_RATE;
    }

    /// Rewrites one RFC 4733 event packet that input `leg` sends on an SSRC
    /// other than its media's (see the module documentation). Needs a main
    /// source; without one it is [`Continuity::rewrite`].
    pub fn rewrite_secondary<T: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        leg: usize,
        packet: &mut RtpView<T>,
        clock_rate: u32,
    ) -> Result<Rewritten, Refused> {
        if self.outward_ssrc.is_none() || self.source.is_none() {
            return self.rewrite(now, leg, packet, clock_rate);
        }
        // Right after a restore the numbers after the stored highest may be
        // taken: the event skips them, and the main source moves past too.
        let skipped = self.resume_margin;
        self.skip_resume_margin();
        self.secondary_used = true;
        let (Some(outward), Some(main)) = (self.outward_ssrc, self.source.as_mut()) else {
            return self.rewrite(now, leg, packet, clock_rate);
        };
        let key = (leg, packet.ssrc());
        let input_ts = packet.timestamp();
        let out_ts = match self.secondary {
            Some((k, ts, out)) if k == key && ts == input_ts => out,
            Some(_) | None => {
                // A new event: its timestamp is now on the outward clock.
                let rate = if clock_rate == 0 {
                    self.last_rate.max(1)
                } else {
                    clock_rate
                };
                let elapsed = self
                    .last_at
                    .map_or(0, |at| now.saturating_duration_since(at).as_nanos());
                let advance = elapsed * u128::from(rate) / 1_000_000_000;
                let out = self
                    .last_ts
                    .wrapping_add(u32::try_from(advance).unwrap_or(u32::MAX));
                self.secondary = Some((key, input_ts, out));
                out
            }
        };
        let out_seq = self.highest_seq.wrapping_add(1);
        // The main source's later packets move up past the number taken.
        main.seq_offset = main.seq_offset.wrapping_add(1).wrapping_add(skipped);
        main.anchor_ext = main.anchor_ext.wrapping_add(1 + u64::from(skipped));
        self.highest_seq = out_seq;
        self.highest_ext = self.highest_ext.wrapping_add(1);
        packet.set_ssrc(outward);
        packet.set_sequence(out_seq);
        packet.set_timestamp(out_ts);
        self.packets_sent = self.packets_sent.wrapping_add(1);
        self.octets_sent = self
            .octets_sent
            .wrapping_add(u32::try_from(packet.payload_len()).unwrap_or(u32::MAX));
        Ok(Rewritten { anchored: false })
    }

    /// Moves the highest number past what a process before a restore may
    /// have sent after its snapshot.
    fn skip_resume_margin(&mut self) {
        if self.resume_margin > 0 {
            self.highest_seq = self.highest_seq.wrapping_add(self.resume_margin);
            self.highest_ext = self.highest_ext.wrapping_add(self.resume_margin.into());
            self.resume_margin = 0;
        }
    }

    /// The state to store; `device_leg` is the current device's input leg
    /// (a source on any other leg is not kept: the next packet anchors).
    pub fn snapshot(&self, now: Instant, device_leg: usize) -> ContinuitySnapshot {
        let age = |at: Instant| {
            u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX)
        };
        ContinuitySnapshot {
            outward_ssrc: self.outward_ssrc,
            source: self
                .source
                .filter(|s| s.key.0 == device_leg)
                .map(|s| SourceSnapshot {
                    ssrc: s.key.1,
                    seq_offset: s.seq_offset,
                    ts_offset: s.ts_offset,
                    base_seq: s.base_seq,
                    anchor_ext: s.anchor_ext,
                    max_seq: s.max_seq,
                    progress: s.progress,
                    last_ts: s.last_ts,
                    last_age_ms: age(s.last_at),
                }),
            // A margin not used yet stays owed to the next process.
            highest_seq: self.highest_seq.wrapping_add(self.resume_margin),
            highest_ext: self.highest_ext.wrapping_add(self.resume_margin.into()),
            last_ts: self.last_ts,
            last_age_ms: self.last_at.map(age),
            last_rate: self.last_rate,
            last_duration_ns: self.last_duration_ns,
            packets_sent: self.packets_sent,
            octets_sent: self.octets_sent,
            secondary_used: self.secondary_used,
        }
    }

    /// The state a snapshot taken `since` ago describes, its source on
    /// input `device_leg`. Packets the process before may have sent after
    /// the snapshot are owed: a new anchor skips that many numbers (at the
    /// stream's packet rate, with room to spare), so no number is sent
    /// twice; the stored source's next packet needs no skip.
    pub fn resume(
        snapshot: &ContinuitySnapshot,
        now: Instant,
        since: Duration,
        device_leg: usize,
    ) -> Self {
        let at = |age_ms: u64| {
            now.checked_sub(since.saturating_add(Duration::from_millis(age_ms)))
                .unwrap_or(now)
        };
        let rate = 1_000_000_000u64
            .checked_div(snapshot.last_duration_ns)
            .map_or(ASSUMED_PACKET_RATE, |rate| rate.clamp(1, 2_000));
        let owed = owed(rate, since);
        // Events after the snapshot may have moved the source's offset up:
        // its numbers move past all that may have been sent (a jump of the
        // margin instead of the packets lost, on streams with such events
        // only).
        let shift = if snapshot.secondary_used { owed } else { 0 };
        Self {
            outward_ssrc: snapshot.outward_ssrc,
            source: snapshot.source.map(|s| Source {
                key: (device_leg, s.ssrc),
                seq_offset: s.seq_offset.wrapping_add(shift),
                ts_offset: s.ts_offset,
                base_seq: s.base_seq,
                anchor_ext: s.anchor_ext.wrapping_add(u64::from(shift)),
                max_seq: s.max_seq,
                progress: s.progress,
                // Which were sent is not known: a late packet is refused
                // rather than risk sending a number twice.
                seen: u64::MAX,
                last_ts: s.last_ts,
                last_at: at(s.last_age_ms),
            }),
            highest_seq: snapshot.highest_seq,
            highest_ext: snapshot.highest_ext,
            last_ts: snapshot.last_ts,
            last_at: snapshot.last_age_ms.map(at),
            last_rate: snapshot.last_rate,
            last_duration_ns: snapshot.last_duration_ns,
            marker_pending: false,
            packets_sent: snapshot.packets_sent,
            octets_sent: snapshot.octets_sent,
            secondary: None,
            resume_margin: owed,
            secondary_used: snapshot.secondary_used,
        }
    }

    /// The current source, when the kernel may go on with it: past its
    /// anchor's marker by `steady` packets, with no restored margin or
    /// event numbering pending. (leg, SSRC, outward SSRC, sequence and
    /// timestamp offsets, newest sequence number and its timestamp, seen.)
    pub fn steady_source(&self, steady: u32) -> Option<SteadySource> {
        let source = self.source?;
        if self.marker_pending || self.resume_margin != 0 || source.progress < steady {
            return None;
        }
        Some(SteadySource {
            leg: source.key.0,
            ssrc: source.key.1,
            outward_ssrc: self.outward_ssrc?,
            seq_offset: source.seq_offset,
            ts_offset: source.ts_offset,
            max_seq: source.max_seq,
            last_ts: source.last_ts,
            seen: source.seen,
        })
    }

    /// Packets the kernel forwarded for the current source on input `leg`
    /// with its offsets: the state moves as if they had passed through
    /// [`Continuity::rewrite`] (they were its newest, in order, and moved
    /// no anchor). `rate` is their clock rate.
    pub fn absorb(
        &mut self,
        leg: usize,
        ssrc: u32,
        progress: &crate::core::fastpath::FastProgress,
        rate: u32,
    ) {
        let Some(source) = self.source.as_mut() else {
            return;
        };
        if source.key != (leg, ssrc) || progress.seq_advance == 0 {
            return;
        }
        let advance = progress.seq_advance;
        // How far the source's newest number was past the highest sent
        // (0 unless events took numbers): exact, both are ours.
        let out_before = source.max_seq.wrapping_add(source.seq_offset);
        let lead = i64::from(out_before.wrapping_sub(self.highest_seq) as i16);
        source.max_seq = progress.max_seq;
        source.progress = source
            .progress
            .saturating_add(u32::try_from(advance).unwrap_or(u32::MAX));
        source.seen = progress.seen;
        source.last_ts = progress.last_ts;
        source.last_at = progress.last_at;
        let moved = lead.saturating_add(i64::try_from(advance).unwrap_or(i64::MAX));
        if moved > 0 {
            self.highest_seq = progress.max_seq.wrapping_add(source.seq_offset);
            self.highest_ext = self.highest_ext.wrapping_add(moved.unsigned_abs());
            self.resume_margin = 0;
        }
        self.last_ts = progress.last_ts.wrapping_add(source.ts_offset);
        self.last_at = Some(progress.last_at);
        if rate != 0 {
            self.last_rate = rate;
            if let Some((ts_step, seq_step)) = progress.step
                && seq_step > 0
            {
                let per_packet = u64::from(ts_step) / u64::from(seq_step);
                self.last_duration_ns = per_packet * 1_000_000_000 / u64::from(rate);
            }
        }
        self.packets_sent = self.packets_sent.wrapping_add(progress.packets as u32);
        self.octets_sent = self.octets_sent.wrapping_add(progress.payload_bytes as u32);
    }

    /// The input the outward stream follows now: (leg, SSRC).
    pub fn current_input(&self) -> Option<(usize, u32)> {
        self.source.map(|s| s.key)
    }

    /// The outward SSRC, once a packet has been sent.
    pub fn outward_ssrc(&self) -> Option<u32> {
        self.outward_ssrc
    }

    /// The current input source's SSRC and offsets (sequence, timestamp).
    pub fn current(&self) -> Option<(u32, u16, u32)> {
        self.source.map(|s| (s.key.1, s.seq_offset, s.ts_offset))
    }

    /// Maps an extended outward sequence number (as the remote reports it)
    /// to the current source's own extended sequence space, whose wrap count
    /// starts at 0 with the source's first packet after its anchor.
    pub fn to_source_extended(&self, outward_ext: u32) -> Option<u32> {
        let source = self.source?;
        let moved = u64::from(outward_ext).wrapping_sub(source.anchor_ext) as u32;
        Some(u32::from(source.base_seq).wrapping_add(moved))
    }

    /// The current source's own sequence number for an outward one the
    /// remote names (a NACK); `None` when an earlier source sent it (the
    /// device before a switch) or it was never sent.
    pub fn to_source(&self, outward_seq: u16) -> Option<u16> {
        let source = self.source?;
        let span = self.current_span(&source);
        let behind = self.highest_seq.wrapping_sub(outward_seq);
        (u32::from(behind) <= span).then(|| outward_seq.wrapping_sub(source.seq_offset))
    }

    /// The outward sequence number of `seq` of the current source, when it
    /// is input `leg`'s (an RTX packet's original sequence number, RFC 4588
    /// §4); `None` for another leg or a packet before the anchor.
    pub fn to_outward(&self, leg: usize, seq: u16) -> Option<u16> {
        let source = self.source.filter(|s| s.key.0 == leg)?;
        let outward = seq.wrapping_add(source.seq_offset);
        let behind = self.highest_seq.wrapping_sub(outward);
        (u32::from(behind) <= self.current_span(&source)).then_some(outward)
    }

    /// How many outward numbers before the highest belong to the current
    /// source (its anchor and after).
    fn current_span(&self, source: &Source) -> u32 {
        if source.progress >= 0x8000 {
            0x7fff
        } else {
            let anchor_out = source.base_seq.wrapping_add(source.seq_offset);
            u32::from(self.highest_seq.wrapping_sub(anchor_out)).min(0x7fff)
        }
    }

    /// Packets and payload octets sent outward (RTCP SR counts, mod 2^32).
    pub fn sent_counts(&self) -> (u32, u32) {
        (self.packets_sent, self.octets_sent)
    }

    /// True while the outward stream is exactly the current input (no
    /// rewriting has been needed yet), so RTCP needs no translation.
    pub fn is_identity(&self) -> bool {
        match (self.source, self.outward_ssrc) {
            (Some(s), Some(outward)) => s.key.1 == outward && s.seq_offset == 0 && s.ts_offset == 0,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn packet(seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
        crate::core::rtp::RtpRepr {
            sequence: seq,
            timestamp: ts,
            ssrc,
            ..Default::default()
        }
        .to_vec(&[0; 160])
    }

    struct Sent {
        seq: u16,
        ts: u32,
        ssrc: u32,
        marker: bool,
        at: Instant,
        source: usize,
        input_seq: u16,
        input_ts: u32,
    }

    fn run(
        c: &mut Continuity,
        now: Instant,
        leg: usize,
        seq: u16,
        ts: u32,
        ssrc: u32,
    ) -> Option<Sent> {
        let mut bytes = packet(seq, ts, ssrc);
        let mut view = RtpView::new_checked(&mut bytes[..]).expect("valid");
        c.rewrite(now, leg, &mut view, 8000).ok()?;
        Some(Sent {
            seq: view.sequence(),
            ts: view.timestamp(),
            ssrc: view.ssrc(),
            marker: view.marker(),
            at: now,
            source: leg,
            input_seq: seq,
            input_ts: ts,
        })
    }

    /// Issue 18: a NACK's outward numbers map back into the current
    /// device's own numbering, and those the device before the switch sent
    /// map to nothing; an RTX packet's original number maps forward.
    #[test]
    fn outward_numbers_map_to_the_current_source_and_back() {
        let mut c = Continuity::default();
        let t0 = Instant::now();
        for i in 0..5u16 {
            run(&mut c, t0, 0, 100 + i, 0, 0xA).expect("sent");
        }
        // Outward 100..=104 are A's own. B takes over at its 7000.
        assert_eq!(c.to_source(103), Some(103));
        for i in 0..3u16 {
            run(&mut c, t0 + Duration::from_millis(100), 1, 7000 + i, 0, 0xB).expect("sent");
        }
        // B's 7000..=7002 went out as 105..=107.
        assert_eq!(c.to_source(106), Some(7001));
        assert_eq!(c.to_source(105), Some(7000));
        assert_eq!(c.to_source(104), None, "A sent it");
        assert_eq!(c.to_source(108), None, "never sent");
        assert_eq!(c.to_outward(1, 7002), Some(107));
        assert_eq!(c.to_outward(1, 6999), None, "before B's anchor");
        assert_eq!(c.to_outward(0, 7001), None, "A is no longer the source");
    }

    /// A source 40 000 packets past its anchor still gets its reordered
    /// packets through (the check against the anchor used to compare 16-bit
    /// numbers and dropped them as late for half of every wrap).
    #[test]
    fn reordered_packets_pass_however_long_the_source_has_run() {
        let mut c = Continuity::default();
        let t0 = Instant::now();
        run(&mut c, t0, 0, 0, 0, 0xA);
        // Another source anchors; it then runs 40 000 packets.
        let mut seq = 1000u16;
        for i in 0..40_000u32 {
            let at = t0 + Duration::from_millis(u64::from(i) * 20);
            run(&mut c, at, 1, seq, i * 160, 0xB).expect("in order");
            seq = seq.wrapping_add(1);
        }
        // Two packets swapped: the later one first, then the earlier.
        let at = t0 + Duration::from_secs(801);
        run(&mut c, at, 1, seq.wrapping_add(1), 40_001 * 160, 0xB).expect("ahead");
        assert!(
            run(&mut c, at, 1, seq, 40_000 * 160, 0xB).is_some(),
            "a reordered packet is not late"
        );
    }

    /// Issue 22 finding 9: a device that sends RFC 4733 events on their
    /// own SSRC. Each event keeps one timestamp and its own marker at the
    /// remote (not one new event per packet), sequence numbers stay +1, and
    /// the media around it is not re-anchored.
    #[test]
    fn events_on_their_own_ssrc_keep_one_timestamp_per_event() {
        let mut c = Continuity::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for i in 0..3u16 {
            run(
                &mut c,
                at(20 * u64::from(i)),
                0,
                100 + i,
                1000 + 160 * u32::from(i),
                0xA,
            );
        }
        let mut event = Vec::new();
        for i in 0..4u16 {
            let mut bytes = packet(500 + i, 77_000, 0xD);
            bytes[1] |= if i == 0 { 0x80 } else { 0 };
            let mut view = RtpView::new_checked(&mut bytes[..]).expect("valid");
            c.rewrite_secondary(at(50 + 20 * u64::from(i)), 0, &mut view, 8000)
                .expect("sent");
            event.push((
                view.sequence(),
                view.timestamp(),
                view.ssrc(),
                view.marker(),
            ));
            // The media goes on between the event's packets.
            let media = run(
                &mut c,
                at(60 + 20 * u64::from(i)),
                0,
                103 + i,
                1480 + 160 * u32::from(i),
                0xA,
            )
            .expect("sent");
            assert!(!media.marker, "the media is not re-anchored");
            assert_eq!(media.ssrc, 0xA);
            assert_eq!(media.seq, event[usize::from(i)].0 + 1);
        }
        let seqs: Vec<u16> = event.iter().map(|e| e.0).collect();
        assert_eq!(seqs, [103, 105, 107, 109]);
        assert!(event.iter().all(|e| e.1 == event[0].1), "one timestamp");
        assert_eq!(event[0].1, 1000 + 160 * 2 + 10 * 8, "on the outward clock");
        assert!(event.iter().all(|e| e.2 == 0xA), "the outward SSRC");
        let markers: Vec<bool> = event.iter().map(|e| e.3).collect();
        assert_eq!(
            markers,
            [true, false, false, false],
            "the event's own marker"
        );
    }

    #[test]
    fn first_source_passes_untouched() {
        let mut c = Continuity::default();
        let t0 = Instant::now();
        for i in 0..10u16 {
            let s = run(
                &mut c,
                t0 + Duration::from_millis(20 * u64::from(i)),
                0,
                100 + i,
                1000 + 160 * u32::from(i),
                7,
            )
            .expect("sent");
            assert_eq!(
                (s.seq, s.ts, s.ssrc, s.marker),
                (100 + i, 1000 + 160 * u32::from(i), 7, false)
            );
        }
        assert!(c.is_identity());
    }

    #[test]
    fn switch_continues_sequence_and_clock() {
        let mut c = Continuity::default();
        let t0 = Instant::now();
        for i in 0..5u16 {
            run(
                &mut c,
                t0 + Duration::from_millis(20 * u64::from(i)),
                0,
                65533u16.wrapping_add(i),
                4_294_967_000u32.wrapping_add(160 * u32::from(i)),
                7,
            );
        }
        // A's last packet: seq 1 (wrapped), ts 4294967000 + 640 (wrapped).
        let t_b = t0 + Duration::from_millis(80 + 55);
        let first = run(&mut c, t_b, 1, 9000, 123_456, 99).expect("sent");
        assert_eq!(first.ssrc, 7, "outward SSRC stays the first source's");
        assert_eq!(first.seq, 2, "+1 across the switch, through the wrap");
        assert_eq!(
            first.ts,
            4_294_967_000u32.wrapping_add(640 + 55 * 8),
            "55 ms at 8 kHz later"
        );
        assert!(first.marker);
        let second = run(
            &mut c,
            t_b + Duration::from_millis(20),
            1,
            9001,
            123_616,
            99,
        )
        .expect("sent");
        assert_eq!(
            (second.seq, second.ts.wrapping_sub(first.ts), second.marker),
            (3, 160, false)
        );
        // A late packet from A never goes out.
        assert!(
            run(&mut c, t_b + Duration::from_millis(21), 0, 2, 0, 7).is_some_and(|s| s.marker),
            "A again is a new source"
        );
        assert!(!c.is_identity());
    }

    #[test]
    fn switch_at_the_same_instant_is_bumped_forward() {
        let mut c = Continuity::default();
        let t0 = Instant::now();
        let a = run(&mut c, t0, 0, 10, 500, 1).expect("sent");
        let b = run(&mut c, t0, 1, 70, 99, 2).expect("sent");
        assert_eq!(b.seq, a.seq + 1);
        assert_eq!(
            b.ts,
            a.ts + 1,
            "never the same timestamp twice across a switch"
        );
    }

    /// Issue 16: a switch 0.1 ms after A's last 20 ms packet. A receiver
    /// that places each packet's samples at its timestamp sees no overlap:
    /// B's first packet starts at or after the end of A's last, though
    /// only 0.1 ms of wall-clock time passed.
    #[test]
    fn a_switch_right_after_a_packet_does_not_overlap_its_samples() {
        let mut c = Continuity::default();
        let t0 = Instant::now();
        let mut sent = Vec::new();
        for i in 0..5u16 {
            let at = t0 + Duration::from_millis(20 * u64::from(i));
            sent.push(run(&mut c, at, 0, 100 + i, 8000 + 160 * u32::from(i), 0xA).expect("sent"));
        }
        let switch_at = t0 + Duration::from_micros(80_100);
        for i in 0..5u16 {
            let at = switch_at + Duration::from_millis(20 * u64::from(i));
            sent.push(run(&mut c, at, 1, 7000 + i, 555 + 160 * u32::from(i), 0xB).expect("sent"));
        }
        // Each packet carries 160 samples from its timestamp on.
        let mut end_of_previous: Option<u32> = None;
        for s in &sent {
            if let Some(end) = end_of_previous {
                let gap = s.ts.wrapping_sub(end) as i32;
                assert!(
                    gap >= 0,
                    "packet {} overlaps the one before by {} samples",
                    s.seq,
                    -gap
                );
            }
            end_of_previous = Some(s.ts.wrapping_add(160));
        }
        assert_eq!(
            sent[5].ts,
            sent[4].ts + 160,
            "one packet's duration, not 0.1 ms"
        );
        assert!(sent[5].marker);
    }

    /// Lost packets before the switch do not shrink the duration learned
    /// (the step is shared by the packets in between), and more time than
    /// one packet's duration still moves the clock by the time.
    #[test]
    fn the_switch_advance_is_the_larger_of_time_and_duration() {
        let mut c = Continuity::default();
        let t0 = Instant::now();
        run(&mut c, t0, 0, 10, 0, 0xA).expect("sent");
        // Two packets lost: one step of 3 × 160.
        let last = run(&mut c, t0 + Duration::from_millis(60), 0, 13, 480, 0xA).expect("sent");
        let b = run(&mut c, t0 + Duration::from_millis(61), 1, 1, 9, 0xB).expect("sent");
        assert_eq!(b.ts, last.ts + 160);
        let later = run(&mut c, t0 + Duration::from_millis(161), 0, 500, 9, 0xC).expect("sent");
        assert_eq!(later.ts, b.ts + 800, "100 ms at 8 kHz");
    }

    /// The remote's numbers toward the user's side: untouched until the
    /// remote restarts them on one SSRC, continuous after; reordering
    /// keeps its place; a new SSRC starts afresh.
    #[test]
    fn the_remotes_restarts_are_smoothed_toward_the_user() {
        let mut shift = SequenceShift::default();
        let out: Vec<u16> = [1000, 1001, 1002, 1003]
            .iter()
            .map(|&s| shift.rewrite(0xF, s))
            .collect();
        assert_eq!(out, [1000, 1001, 1002, 1003]);
        assert_eq!(shift.active(), None, "nothing rewritten yet");
        // The remote restarts far lower (hold, its own transfer).
        assert_eq!(shift.rewrite(0xF, 3), 1004);
        assert_eq!(shift.rewrite(0xF, 5), 1006);
        assert_eq!(shift.rewrite(0xF, 4), 1005, "reordered: its own place");
        assert_eq!(shift.active(), Some((0xF, 1001)));
        // Another restart, anywhere else: it goes on again.
        assert_eq!(shift.rewrite(0xF, 40_000), 1007);
        assert_eq!(shift.rewrite(0xF, 40_001), 1008);
        // A new SSRC is a new stream for the device: untouched.
        assert_eq!(shift.rewrite(0xE, 777), 777);
        assert_eq!(shift.active(), None);
    }

    #[test]
    fn same_ssrc_restarts_are_smoothed() {
        let mut c = Continuity::default();
        let t0 = Instant::now();
        run(&mut c, t0, 0, 10, 1000, 1);
        run(&mut c, t0 + Duration::from_millis(20), 0, 11, 1160, 1);
        // Sequence jump within one SSRC.
        let jumped = run(&mut c, t0 + Duration::from_millis(40), 0, 40000, 1320, 1).expect("sent");
        assert_eq!((jumped.seq, jumped.marker), (12, true));
        // Timestamp jump (restart of the clock) with continuing sequence.
        let restarted = run(
            &mut c,
            t0 + Duration::from_millis(60),
            0,
            40001,
            3_000_000_000,
            1,
        )
        .expect("sent");
        assert_eq!(restarted.seq, 13);
        assert_eq!(restarted.ts, jumped.ts + 160);
        assert!(restarted.marker);
        // DTMF-like repeated timestamps are not a jump.
        let same_ts = run(
            &mut c,
            t0 + Duration::from_millis(80),
            0,
            40002,
            3_000_000_000,
            1,
        )
        .expect("sent");
        assert!(!same_ts.marker);
    }

    #[test]
    fn late_and_duplicate_packets_are_refused() {
        let mut c = Continuity::default();
        let t0 = Instant::now();
        run(&mut c, t0, 0, 10, 0, 1);
        run(&mut c, t0, 1, 500, 0, 2).expect("switch");
        run(&mut c, t0, 1, 501, 160, 2).expect("sent");
        // From B, older than B's anchor: would collide with A's numbers.
        let mut bytes = packet(499, 0, 2);
        let mut view = RtpView::new_checked(&mut bytes[..]).expect("valid");
        assert_eq!(c.rewrite(t0, 1, &mut view, 8000), Err(Refused::Late));
        let mut bytes = packet(501, 160, 2);
        let mut view = RtpView::new_checked(&mut bytes[..]).expect("valid");
        assert_eq!(c.rewrite(t0, 1, &mut view, 8000), Err(Refused::Duplicate));
    }

    /// One input packet: which source sends it, its index in that source's
    /// sequence, and whether the network loses it.
    #[derive(Debug, Clone)]
    struct Input {
        source: usize,
        index: u32,
        lost: bool,
    }

    /// Per source (first sequence number, first timestamp, SSRC); the
    /// packets as they arrive; where the sources change.
    type Scenario = (Vec<(u16, u32, u32)>, Vec<Input>, Vec<usize>);

    fn scenario() -> impl Strategy<Value = Scenario> {
        // Start values anywhere, and often just below a wrap of the 16-bit
        // sequence or the 32-bit timestamp.
        let seq = prop_oneof![any::<u16>(), 65_400..=u16::MAX];
        let ts = prop_oneof![any::<u32>(), (u32::MAX - 40_000)..=u32::MAX];
        let sources = prop::collection::vec((seq, ts, any::<u32>()), 2..5);
        (
            sources,
            20usize..200,
            prop::collection::vec(0usize..200, 1..4),
            prop::collection::vec(any::<bool>(), 200),
            prop::collection::vec(0usize..3, 200),
        )
            .prop_map(|(sources, length, mut switches, lossy, swaps)| {
                switches.sort_unstable();
                // Source k sends packets [switches[k-1], switches[k]).
                let mut inputs = Vec::new();
                let mut per_source = vec![0u32; sources.len()];
                for (i, &lossy) in lossy.iter().enumerate().take(length) {
                    let source = switches
                        .iter()
                        .filter(|s| **s <= i)
                        .count()
                        .min(sources.len() - 1);
                    inputs.push(Input {
                        source,
                        index: per_source[source],
                        lost: lossy && i % 7 == 3,
                    });
                    per_source[source] += 1;
                }
                // Reorder neighbours inside one source now and then.
                for i in 1..inputs.len() {
                    if swaps[i] == 0 && inputs[i].source == inputs[i - 1].source {
                        inputs.swap(i, i - 1);
                    }
                }
                (sources, inputs, switches)
            })
    }

    proptest! {
        #[test]
        fn one_continuous_stream_whatever_the_sources((sources, inputs, _switches) in scenario()) {
            let mut c = Continuity::default();
            let t0 = Instant::now();
            let mut sent: Vec<Sent> = Vec::new();
            for (n, input) in inputs.iter().enumerate() {
                if input.lost {
                    continue;
                }
                let (seq0, ts0, ssrc) = sources[input.source];
                // Packets are 20 ms apart on the wire, whoever sends them.
                let now = t0 + Duration::from_millis(20 * n as u64);
                let seq = seq0.wrapping_add(input.index as u16);
                let ts = ts0.wrapping_add(160 * input.index);
                if let Some(s) = run(&mut c, now, input.source, seq, ts, ssrc) {
                    sent.push(s);
                }
            }
            prop_assume!(!sent.is_empty());
            // One outward SSRC: the first source's.
            let outward = sources[sent[0].source].2;
            prop_assert!(sent.iter().all(|s| s.ssrc == outward));
            // No sequence number twice.
            let mut seqs: Vec<u16> = sent.iter().map(|s| s.seq).collect();
            seqs.sort_unstable();
            seqs.dedup();
            prop_assert_eq!(seqs.len(), sent.len());
            // Per source segment: output = input + constant (gaps only where
            // the input lost packets), and each segment starts after every
            // packet of the segments before it.
            let mut segment_start = 0;
            let mut highest_before: Option<u16> = None;
            for i in 1..=sent.len() {
                if i == sent.len() || sent[i].source != sent[segment_start].source {
                    let segment = &sent[segment_start..i];
                    let offset = segment[0].seq.wrapping_sub(segment[0].input_seq);
                    let ts_offset = segment[0].ts.wrapping_sub(segment[0].input_ts);
                    for s in segment {
                        prop_assert_eq!(s.seq.wrapping_sub(s.input_seq), offset);
                        prop_assert_eq!(s.ts.wrapping_sub(s.input_ts), ts_offset);
                        if let Some(before) = highest_before {
                            prop_assert!((s.seq.wrapping_sub(before) as i16) > 0, "segment goes back");
                        }
                    }
                    if let Some(before) = highest_before {
                        // The first packet of a new segment: next number,
                        // marker, timestamp advanced by the elapsed time.
                        let first = &segment[0];
                        prop_assert_eq!(first.seq, before.wrapping_add(1));
                        prop_assert!(first.marker);
                        // Anchored on the newest packet sent before, which
                        // is not the last to arrive when packets reordered.
                        let previous = sent[..segment_start]
                            .iter()
                            .find(|s| s.seq == before)
                            .expect("the highest packet was sent");
                        let elapsed_ms = first.at.duration_since(previous.at).as_millis() as u32;
                        prop_assert_eq!(first.ts.wrapping_sub(previous.ts), (elapsed_ms * 8).max(1));
                    }
                    let max = segment.iter().map(|s| s.seq).max_by(|a, b| {
                        (a.wrapping_sub(segment[0].seq) as i16).cmp(&(b.wrapping_sub(segment[0].seq) as i16))
                    });
                    highest_before = max;
                    segment_start = i;
                }
            }
        }
    }

    /// A stream restored from its snapshot (another process going on)
    /// continues exactly when the device does: same SSRC, numbers that
    /// skip only what was lost; a device that comes back on a new SSRC gets
    /// numbers past anything the old process may have sent after the
    /// snapshot, and timestamps that follow the clock.
    #[test]
    fn a_resumed_stream_goes_on_without_reusing_a_number() {
        let start = Instant::now();
        let mut before = Continuity::default();
        let step = Duration::from_millis(20);
        // Device 1 (leg 2 after a handoff) sends 100 packets, then the
        // snapshot is taken, then 30 more go out before the process dies.
        let mut last = None;
        for i in 0..100u16 {
            last = run(
                &mut before,
                start + step * u32::from(i),
                2,
                5000 + i,
                160 * u32::from(i),
                0xD1,
            );
        }
        let outward_ssrc = last.as_ref().expect("sent").ssrc;
        let at_snapshot = start + step * 99;
        let stored = before.snapshot(at_snapshot, 2);
        let stored = serde_json::from_str::<ContinuitySnapshot>(
            &serde_json::to_string(&stored).expect("json"),
        )
        .expect("read back");
        let mut highest_sent = 0u16;
        for i in 100..130u16 {
            let sent = run(
                &mut before,
                start + step * u32::from(i),
                2,
                5000 + i,
                160 * u32::from(i),
                0xD1,
            )
            .expect("sent");
            highest_sent = sent.seq;
        }

        // Restored 1 s after the snapshot, on the first device's leg.
        let since = Duration::from_secs(1);
        let now = at_snapshot + since;
        let mut resumed = Continuity::resume(&stored, now, since, 0);
        // The device goes on (packets 130..150 were lost in the failover).
        let sent = run(&mut resumed, now, 0, 5000 + 150, 160 * 150, 0xD1).expect("sent");
        assert_eq!(sent.ssrc, outward_ssrc, "one SSRC");
        assert_eq!(
            sent.seq,
            highest_sent.wrapping_add(21),
            "the numbers skip exactly the 20 packets lost"
        );
        assert!(!sent.marker, "no new talkspurt: the same source");

        // The same, but the device restarted on a new SSRC meanwhile.
        let mut resumed = Continuity::resume(&stored, now, since, 0);
        let sent = run(&mut resumed, now, 0, 77, 999, 0xD2).expect("sent");
        assert_eq!(sent.ssrc, outward_ssrc, "one SSRC");
        let ahead = sent.seq.wrapping_sub(highest_sent) as i16;
        assert!(
            ahead > 0,
            "past every number sent: {} after {highest_sent}",
            sent.seq
        );
        let stored_ts = stored.last_ts;
        let elapsed_ts = sent.ts.wrapping_sub(stored_ts);
        assert!(
            elapsed_ts >= 8000,
            "the timestamp follows the clock past the snapshot: +{elapsed_ts}"
        );
        // And the margin is spent once: the next packet follows on.
        let next = run(&mut resumed, now + step, 0, 78, 999 + 160, 0xD2).expect("sent");
        assert_eq!(next.seq, sent.seq.wrapping_add(1));

        // Events on their own SSRC after the snapshot moved the source's
        // offset in the process before: after the restore, the source's
        // numbers still never come twice.
        let mut with_events = Continuity::default();
        for i in 0..50u16 {
            run(
                &mut with_events,
                start + step * u32::from(i),
                2,
                100 + i,
                160 * u32::from(i),
                0xE1,
            );
        }
        let event = |c: &mut Continuity, i: u16| {
            let mut bytes = packet(900 + i, 4000, 0xE2);
            let mut view = RtpView::new_checked(&mut bytes[..]).expect("valid");
            c.rewrite_secondary(start + step * 50, 2, &mut view, 8000)
                .expect("event");
            view.sequence()
        };
        let _ = event(&mut with_events, 0);
        let stored = with_events.snapshot(start + step * 50, 2);
        assert!(stored.secondary_used);
        let mut sent_after = Vec::new();
        for i in 1..6u16 {
            sent_after.push(event(&mut with_events, i));
            let main = run(
                &mut with_events,
                start + step * u32::from(50 + i),
                2,
                150 + i,
                160 * u32::from(50 + i),
                0xE1,
            )
            .expect("sent");
            sent_after.push(main.seq);
        }
        let mut resumed =
            Continuity::resume(&stored, start + step * 60, Duration::from_millis(200), 0);
        let next = run(&mut resumed, start + step * 60, 0, 160, 160 * 60, 0xE1).expect("sent");
        for earlier in &sent_after {
            assert!(
                (next.seq.wrapping_sub(*earlier) as i16) > 0,
                "{} after {earlier}: a number sent before",
                next.seq
            );
        }

        // The remote's numbering toward the device: a restart right after a
        // restore skips what may have gone out since the snapshot.
        let mut shift = SequenceShift::default();
        for seq in 1000..1100u16 {
            assert_eq!(shift.rewrite(0xAB, seq), seq);
        }
        let stored_shift: SequenceShift =
            serde_json::from_str(&serde_json::to_string(&shift).expect("json")).expect("read back");
        let mut resumed_shift = stored_shift.resumed(Duration::from_secs(1));
        // The remote restarts its numbers (a PBX's hold) during the outage.
        let after_restart = resumed_shift.rewrite(0xAB, 7);
        assert!(
            after_restart.wrapping_sub(1099) > 100,
            "past what the process before may have sent: {after_restart}"
        );

        // A snapshot of a resumed stream that has not sent yet still owes
        // the margin to the process after it.
        let untouched = Continuity::resume(&stored, now, since, 0);
        let again = untouched.snapshot(now, 0);
        assert!(again.highest_ext > stored.highest_ext + 30, "{again:?}");
    }
}
