//! RTCP that agrees with the rewritten RTP (RFC 3550 §7.2, RFC 8079).
//!
//! Toward the remote party, reports from the user's current device speak of
//! the outward stream: the sender SSRC becomes the outward SSRC, a sender
//! report's RTP timestamp moves to the outward timeline and its packet and
//! octet counts become what the relay actually sent outward; SDES keeps the
//! first device's CNAME; BYE is removed (the outward stream ends only with
//! the session). Toward the device, reception reports the remote sends about
//! the outward SSRC are mapped back to the device's own SSRC and sequence
//! space. Until the first change of source nothing needs rewriting, and
//! packets pass untouched.
//!
//! Feedback (RFC 4585, RFC 5104) follows the device. From the remote, what
//! names the outward SSRC names the current device's: PLI, FIR, TMMBR and
//! TMMBN entries, REMB's list; a generic NACK's sequence numbers go back
//! into the device's own numbering, and a NACK for packets only the device
//! before the switch sent is removed (it must not reach the new one). FIR
//! command numbers are the relay's own toward each side, one more for each
//! new request, so a device that never saw the other one's requests still
//! takes the next as new. From the device, feedback's sender becomes the
//! outward SSRC, and NACKs about the remote's stream go back to the
//! remote's numbering when the relay shifted it.
//!
//! Written by hand over the bytes, not with the `rtcp` crate: that crate
//! panics on some feedback packets whose length is not a multiple of their
//! entry size (one 24-byte datagram used to take a worker down), allocates
//! per sub-packet, and parses packets nothing here rewrites (a transport-wide
//! congestion control report cost ~50 µs). Here every sub-packet is bounded
//! by [`check_rtcp`](crate::core::rtp::check_rtcp) first, only SR, RR and SDES are
//! read, every other packet type is copied through byte for byte, and the
//! cost is one pass over the datagram.

use crate::core::continuity::{Continuity, SequenceShift};
use crate::core::rtp::{
    self, MAX_DATAGRAM as BUF_LEN, RTCP_BYE, RTCP_PSFB, RTCP_RR, RTCP_RTPFB, RTCP_SDES, RTCP_SR,
};

/// SDES item type of the canonical name (RFC 3550 §6.5.1).
const SDES_CNAME: u8 = 1;
/// Offset of the first report block in an SR and in an RR.
const SR_BLOCKS: usize = 28;
const RR_BLOCKS: usize = 8;
/// Bytes of one reception report block.
const BLOCK_LEN: usize = 24;
/// Feedback message types (RFC 4585 §6.1, RFC 5104 §4).
const FMT_NACK: u8 = 1;
const FMT_TMMBR: u8 = 3;
const FMT_TMMBN: u8 = 4;
const FMT_FIR: u8 = 4;
const FMT_AFB: u8 = 15;
/// The common feedback header: V/P/FMT, PT, length, sender, media source.
const FB_HEADER: usize = 12;

/// What the translator remembers about a stream.
#[derive(Debug, Clone, Default)]
pub struct RtcpState {
    /// The CNAME of the first device, learned once (RTCP may allocate).
    first_cname: Option<Box<[u8]>>,
    /// FIR command numbers toward the user's device and toward the remote.
    fir_to_user: FirNumbers,
    fir_to_remote: FirNumbers,
    /// The current device's RTX stream and the outward repair stream.
    repair: Option<RepairMap>,
}

/// How the current device's RTX stream (RFC 4588) maps to the outward
/// repair stream: its SSRC, and the offset of the outward sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairMap {
    /// The device's repair SSRC.
    pub device: u32,
    /// The outward repair SSRC.
    pub outward: u32,
    /// Outward repair sequence number minus the device's.
    pub seq_offset: u16,
}

impl RtcpState {
    /// Records the repair stream's mapping (with every repair forwarded),
    /// so RTCP about it is translated like the main stream's.
    pub fn set_repair(&mut self, map: RepairMap) {
        self.repair = Some(map);
    }

    /// The FIR command number for a new request toward the user's device
    /// that the relay makes itself (a keyframe at a switch).
    pub fn next_fir_to_user(&mut self) -> u8 {
        self.fir_to_user.out = self.fir_to_user.out.wrapping_add(1);
        self.fir_to_user.out
    }
}

/// The relay's FIR command numbers toward one side (RFC 5104 §4.3.1.1): a
/// request whose (requester, number) differs from the last one seen is new
/// and gets the next number; a repeat keeps it.
#[derive(Debug, Clone, Copy, Default)]
struct FirNumbers {
    seen: Option<(u32, u8)>,
    out: u8,
}

impl FirNumbers {
    fn number(&mut self, requester: u32, seq: u8) -> u8 {
        if self.seen != Some((requester, seq)) {
            self.seen = Some((requester, seq));
            self.out = self.out.wrapping_add(1);
        }
        self.out
    }
}

/// Why RTCP could not be translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TranslateError {
    /// Not a well-formed compound, or its translation would not fit.
    Malformed,
    /// Nothing is left to send (it was only a BYE).
    Empty,
    /// Nothing is left to send: it was only NACKs for packets the device
    /// before the switch sent.
    StaleNack,
}

/// One sub-packet of a checked compound: its type, count field, all its
/// bytes, and the part before any trailing padding.
struct SubPacket<'a> {
    packet_type: u8,
    count: u8,
    bytes: &'a [u8],
    body: &'a [u8],
}

/// The sub-packets of a compound, each bounded by its length field; stops
/// (with `Malformed` from the caller's check) at anything that does not fit.
fn sub_packets(datagram: &[u8]) -> impl Iterator<Item = Result<SubPacket<'_>, TranslateError>> {
    let mut offset = 0;
    std::iter::from_fn(move || {
        if offset >= datagram.len() {
            return None;
        }
        let Some(header) = datagram.get(offset..offset + 4) else {
            offset = datagram.len();
            return Some(Err(TranslateError::Malformed));
        };
        let total = 4 * (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1);
        let Some(bytes) = datagram.get(offset..offset + total) else {
            offset = datagram.len();
            return Some(Err(TranslateError::Malformed));
        };
        offset += total;
        // Padding (P bit): the last octet counts the octets to ignore.
        let body_len = if header[0] & 0x20 != 0 {
            let pad = usize::from(bytes[total - 1]);
            if pad == 0 || pad > total - 4 {
                offset = datagram.len();
                return Some(Err(TranslateError::Malformed));
            }
            total - pad
        } else {
            total
        };
        Some(Ok(SubPacket {
            packet_type: header[1],
            count: header[0] & 0x1f,
            bytes,
            body: &bytes[..body_len],
        }))
    })
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn write_u32(bytes: &mut [u8], at: usize, value: u32) {
    if let Some(b) = bytes.get_mut(at..at + 4) {
        b.copy_from_slice(&value.to_be_bytes());
    }
}

/// An output buffer that refuses to overflow.
struct Writer<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), TranslateError> {
        let end = self.len + bytes.len();
        self.out
            .get_mut(self.len..end)
            .ok_or(TranslateError::Malformed)?
            .copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }
}

/// How the current device's SSRCs (its media's and its repair stream's)
/// map to the outward ones.
#[derive(Clone, Copy)]
struct Mapping {
    outward: u32,
    device: u32,
    ts_offset: u32,
    active: bool,
    repair: Option<RepairMap>,
}

impl Mapping {
    fn of(continuity: &Continuity, state: &RtcpState) -> Self {
        match (continuity.outward_ssrc(), continuity.current()) {
            (Some(outward), Some((device, _, ts_offset))) => Self {
                outward,
                device,
                ts_offset,
                active: true,
                repair: state.repair,
            },
            // No RTP sent yet: nothing to map to.
            _ => Self {
                outward: 0,
                device: 0,
                ts_offset: 0,
                active: false,
                repair: None,
            },
        }
    }

    fn ssrc(self, ssrc: u32) -> u32 {
        match self.repair {
            _ if self.active && ssrc == self.device => self.outward,
            Some(repair) if ssrc == repair.device => repair.outward,
            Some(_) | None => ssrc,
        }
    }

    /// The other way: an outward SSRC (as the remote names it) becomes the
    /// current device's.
    fn to_device(self, ssrc: u32) -> u32 {
        match self.repair {
            _ if self.active && ssrc == self.outward => self.device,
            Some(repair) if ssrc == repair.outward => repair.device,
            Some(_) | None => ssrc,
        }
    }
}

/// Translates RTCP from the user's current device toward the remote, in
/// place in `buf` (whose first `len` bytes are the datagram). Returns the new
/// length, which may differ (a BYE removed, a CNAME replaced).
///
/// Reception reports the device sends about the remote's stream go back to
/// the remote's own numbering when the relay shifted it (`toward_user`,
/// RFC 3550 §7.2).
pub fn toward_remote(
    buf: &mut [u8],
    len: usize,
    continuity: &Continuity,
    toward_user: &SequenceShift,
    state: &mut RtcpState,
) -> Result<usize, TranslateError> {
    let datagram = buf.get(..len).ok_or(TranslateError::Malformed)?;
    rtp::check_rtcp(datagram).map_err(|_| TranslateError::Malformed)?;
    let mut has_bye = false;
    let mut has_sdes = false;
    let mut has_feedback = false;
    for packet in sub_packets(datagram) {
        match packet?.packet_type {
            RTCP_BYE => has_bye = true,
            RTCP_SDES => has_sdes = true,
            RTCP_RTPFB | RTCP_PSFB => has_feedback = true,
            _ => {}
        }
    }
    let learns_cname = state.first_cname.is_none() && has_sdes;
    let shifted = toward_user.active();
    if continuity.is_identity() && !has_bye && !learns_cname && shifted.is_none() && !has_feedback {
        return Ok(len);
    }
    let map = Mapping::of(continuity, state);
    // The translation goes to a scratch buffer on the stack (no heap), then
    // back over the datagram: an SDES may grow when the first CNAME is
    // longer than the device's.
    let mut scratch = [0u8; BUF_LEN];
    let mut out = Writer {
        out: &mut scratch,
        len: 0,
    };
    for packet in sub_packets(datagram) {
        let packet = packet?;
        match packet.packet_type {
            RTCP_SR => {
                let start = out.len;
                out.put(packet.bytes)?;
                let sr = &mut out.out[start..out.len];
                let ssrc = read_u32(sr, 4).ok_or(TranslateError::Malformed)?;
                if map.active && ssrc == map.device {
                    let rtp_time = read_u32(sr, 16).ok_or(TranslateError::Malformed)?;
                    let (packets, octets) = continuity.sent_counts();
                    write_u32(sr, 4, map.outward);
                    write_u32(sr, 16, rtp_time.wrapping_add(map.ts_offset));
                    write_u32(sr, 20, packets);
                    write_u32(sr, 24, octets);
                } else if let Some(repair) = map.repair.filter(|r| map.active && r.device == ssrc) {
                    // The repair stream's report: its outward SSRC, on the
                    // main stream's timeline (RTX keeps its original's
                    // timestamps, RFC 4588 §4).
                    let rtp_time = read_u32(sr, 16).ok_or(TranslateError::Malformed)?;
                    write_u32(sr, 4, repair.outward);
                    write_u32(sr, 16, rtp_time.wrapping_add(map.ts_offset));
                }
                unshift_blocks(sr, SR_BLOCKS, packet.count, shifted)?;
            }
            RTCP_RR => {
                let start = out.len;
                out.put(packet.bytes)?;
                let rr = &mut out.out[start..out.len];
                let ssrc = read_u32(rr, 4).ok_or(TranslateError::Malformed)?;
                write_u32(rr, 4, map.ssrc(ssrc));
                unshift_blocks(rr, RR_BLOCKS, packet.count, shifted)?;
            }
            RTCP_SDES => sdes_toward_remote(&packet, map, state, &mut out)?,
            RTCP_RTPFB | RTCP_PSFB => {
                feedback_toward_remote(&packet, map, shifted, state, &mut out)?;
            }
            // The outward stream goes on with the next device.
            RTCP_BYE => {}
            // Feedback, APP, XR and the rest pass untouched.
            _ => out.put(packet.bytes)?,
        }
    }
    let new_len = out.len;
    if new_len < rtp::RTCP_MIN_LEN {
        // Nothing worth sending is left (a lone BYE, an empty SDES), and
        // so short a datagram would not be valid RTCP.
        return Err(TranslateError::Empty);
    }
    buf.get_mut(..new_len)
        .ok_or(TranslateError::Malformed)?
        .copy_from_slice(&scratch[..new_len]);
    Ok(new_len)
}

/// Report blocks (from `first`, `count` of them) about the remote's SSRC,
/// whose numbers the relay shifted toward the device by `offset`: their
/// extended highest sequence number goes back to the remote's numbering.
fn unshift_blocks(
    packet: &mut [u8],
    first: usize,
    count: u8,
    shifted: Option<(u32, u16)>,
) -> Result<(), TranslateError> {
    let Some((remote, offset)) = shifted else {
        return Ok(());
    };
    for block in 0..usize::from(count) {
        let at = first + block * BLOCK_LEN;
        if at + BLOCK_LEN > packet.len() {
            return Err(TranslateError::Malformed);
        }
        if read_u32(packet, at) == Some(remote) {
            let highest = read_u32(packet, at + 8).ok_or(TranslateError::Malformed)?;
            write_u32(packet, at + 8, highest.wrapping_sub(u32::from(offset)));
        }
    }
    Ok(())
}

/// Re-emits an SDES packet with each chunk's source mapped and every CNAME
/// replaced by the first device's (learned from the first one seen), without
/// padding: each chunk is null-padded to 32 bits as RFC 3550 §6.5 says.
fn sdes_toward_remote(
    packet: &SubPacket<'_>,
    map: Mapping,
    state: &mut RtcpState,
    out: &mut Writer<'_>,
) -> Result<(), TranslateError> {
    let input = packet.body;
    if packet.count == 0 {
        // No chunk, nothing to say.
        return Ok(());
    }
    let start = out.len;
    out.put(&[0x80 | packet.count, RTCP_SDES, 0, 0])?;
    let mut pos = 4;
    for _ in 0..packet.count {
        let ssrc = read_u32(input, pos).ok_or(TranslateError::Malformed)?;
        pos += 4;
        out.put(&map.ssrc(ssrc).to_be_bytes())?;
        loop {
            let item_type = *input.get(pos).ok_or(TranslateError::Malformed)?;
            if item_type == 0 {
                // The end of the item list, then null octets to the next
                // 32-bit boundary.
                pos = (pos + 1).next_multiple_of(4);
                break;
            }
            let item_len = usize::from(*input.get(pos + 1).ok_or(TranslateError::Malformed)?);
            let text = input
                .get(pos + 2..pos + 2 + item_len)
                .ok_or(TranslateError::Malformed)?;
            pos += 2 + item_len;
            let text = if item_type == SDES_CNAME {
                state
                    .first_cname
                    .get_or_insert_with(|| text.to_vec().into_boxed_slice())
            } else {
                text
            };
            // A learned CNAME came from an item, so it fits the length byte.
            let text_len = u8::try_from(text.len()).map_err(|_| TranslateError::Malformed)?;
            out.put(&[item_type, text_len])?;
            out.put(text)?;
        }
        out.put(&[0])?;
        while !(out.len - start).is_multiple_of(4) {
            out.put(&[0])?;
        }
    }
    if pos > input.len() {
        return Err(TranslateError::Malformed);
    }
    let words = u16::try_from((out.len - start) / 4 - 1).map_err(|_| TranslateError::Malformed)?;
    out.out[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
    Ok(())
}

/// The common header and the FCI of a feedback packet whose FCI is a
/// whole number of `entry`-byte entries; `None` for one that is not (it is
/// passed on untouched: nothing in it can be read safely, and refusing it
/// would take the reports beside it too).
fn feedback_parts<'a>(packet: &SubPacket<'a>, entry: usize) -> Option<(&'a [u8], &'a [u8])> {
    // Rewritten without its padding, the packet must still be whole words.
    if !packet.body.len().is_multiple_of(4) {
        return None;
    }
    let header = packet.body.get(..FB_HEADER)?;
    let fci = &packet.body[FB_HEADER..];
    fci.len().is_multiple_of(entry).then_some((header, fci))
}

/// The FCI entry size of a feedback message this module rewrites (1 for
/// those read as a whole or passed on).
fn entry_size(packet_type: u8, fmt: u8) -> usize {
    match (packet_type, fmt) {
        (RTCP_RTPFB, FMT_NACK) => 4,
        (RTCP_RTPFB, FMT_TMMBR | FMT_TMMBN) | (RTCP_PSFB, FMT_FIR) => 8,
        _ => 1,
    }
}

/// Starts a feedback packet in `out`: its common header with the sender and
/// media source given, padding dropped. Returns where it starts.
fn put_feedback_header(
    out: &mut Writer<'_>,
    header: &[u8],
    sender: u32,
    media: u32,
) -> Result<usize, TranslateError> {
    let start = out.len;
    out.put(&[header[0] & !0x20, header[1], 0, 0])?;
    out.put(&sender.to_be_bytes())?;
    out.put(&media.to_be_bytes())?;
    Ok(start)
}

/// Sets the length field of the packet written from `start`.
fn finish_packet(out: &mut Writer<'_>, start: usize) -> Result<(), TranslateError> {
    let words = u16::try_from((out.len - start) / 4 - 1).map_err(|_| TranslateError::Malformed)?;
    out.out[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
    Ok(())
}

/// Feedback from the device about the remote's stream: its sender becomes
/// the outward SSRC, NACKed numbers go back to the remote's own when the
/// relay shifted them, FIR numbers are the relay's toward the remote.
fn feedback_toward_remote(
    packet: &SubPacket<'_>,
    map: Mapping,
    shifted: Option<(u32, u16)>,
    state: &mut RtcpState,
    out: &mut Writer<'_>,
) -> Result<(), TranslateError> {
    let Some((header, fci)) = feedback_parts(packet, entry_size(packet.packet_type, packet.count))
    else {
        return out.put(packet.bytes);
    };
    let sender = read_u32(header, 4).ok_or(TranslateError::Malformed)?;
    let media = read_u32(header, 8).ok_or(TranslateError::Malformed)?;
    let start = put_feedback_header(out, header, map.ssrc(sender), media)?;
    match (packet.packet_type, packet.count) {
        (RTCP_RTPFB, FMT_NACK) => {
            for entry in fci.chunks_exact(4) {
                let pid = u16::from_be_bytes([entry[0], entry[1]]);
                let pid = match shifted {
                    Some((remote, offset)) if remote == media => pid.wrapping_sub(offset),
                    Some(_) | None => pid,
                };
                out.put(&pid.to_be_bytes())?;
                out.put(&entry[2..4])?;
            }
        }
        (RTCP_PSFB, FMT_FIR) => {
            for entry in fci.chunks_exact(8) {
                let number = state.fir_to_remote.number(sender, entry[4]);
                out.put(&entry[..4])?;
                out.put(&[number])?;
                out.put(&entry[5..8])?;
            }
        }
        _ => out.put(fci)?,
    }
    finish_packet(out, start)
}

/// Feedback from the remote: what names the outward stream names the
/// current device's (see the module documentation). Returns false when
/// nothing of it is left (a NACK only for the earlier device's packets).
fn feedback_toward_user(
    packet: &SubPacket<'_>,
    map: Mapping,
    continuity: &Continuity,
    state: &mut RtcpState,
    out: &mut Writer<'_>,
) -> Result<bool, TranslateError> {
    let Some((header, fci)) = feedback_parts(packet, entry_size(packet.packet_type, packet.count))
    else {
        out.put(packet.bytes)?;
        return Ok(true);
    };
    let sender = read_u32(header, 4).ok_or(TranslateError::Malformed)?;
    let media = read_u32(header, 8).ok_or(TranslateError::Malformed)?;
    let start = put_feedback_header(out, header, sender, map.to_device(media))?;
    match (packet.packet_type, packet.count) {
        (RTCP_RTPFB, FMT_NACK) if map.active && media == map.outward => {
            if !nack_toward_device(fci, continuity, out)? {
                out.len = start;
                return Ok(false);
            }
        }
        (RTCP_RTPFB, FMT_TMMBR | FMT_TMMBN) => {
            for entry in fci.chunks_exact(8) {
                let ssrc = read_u32(entry, 0).ok_or(TranslateError::Malformed)?;
                out.put(&map.to_device(ssrc).to_be_bytes())?;
                out.put(&entry[4..8])?;
            }
        }
        (RTCP_PSFB, FMT_FIR) => {
            for entry in fci.chunks_exact(8) {
                let ssrc = read_u32(entry, 0).ok_or(TranslateError::Malformed)?;
                let number = state.fir_to_user.number(sender, entry[4]);
                out.put(&map.to_device(ssrc).to_be_bytes())?;
                out.put(&[number])?;
                out.put(&entry[5..8])?;
            }
        }
        (RTCP_PSFB, FMT_AFB) if fci.starts_with(b"REMB") => {
            // "REMB", the SSRC count, exponent and mantissa, then the SSRCs.
            let count = fci.get(4).map_or(usize::MAX / 8, |&n| usize::from(n));
            let Some(ssrcs) = fci.get(8..8 + 4 * count) else {
                // A list longer than the packet: on untouched, as above.
                out.len = start;
                out.put(packet.bytes)?;
                return Ok(true);
            };
            out.put(&fci[..8])?;
            for ssrc in ssrcs.chunks_exact(4) {
                let ssrc = read_u32(ssrc, 0).ok_or(TranslateError::Malformed)?;
                out.put(&map.to_device(ssrc).to_be_bytes())?;
            }
            out.put(&fci[8 + 4 * count..])?;
        }
        _ => out.put(fci)?,
    }
    finish_packet(out, start)?;
    Ok(true)
}

/// A generic NACK's entries (RFC 4585 §6.2.1) in the current device's
/// numbering: each lost outward number that the device sent is mapped, the
/// rest (the earlier device's) left out. Returns false if none is left.
fn nack_toward_device(
    fci: &[u8],
    continuity: &Continuity,
    out: &mut Writer<'_>,
) -> Result<bool, TranslateError> {
    let mut any = false;
    for entry in fci.chunks_exact(4) {
        let pid = u16::from_be_bytes([entry[0], entry[1]]);
        let blp = u16::from_be_bytes([entry[2], entry[3]]);
        // The packet ID and the (up to) 16 after it that the bitmask names,
        // mapped; within one source the offset is fixed, so those left fit
        // one entry again.
        let mut first: Option<u16> = None;
        let mut mask = 0u16;
        for k in 0..17u16 {
            if k > 0 && blp & (1 << (k - 1)) == 0 {
                continue;
            }
            let Some(own) = continuity.to_source(pid.wrapping_add(k)) else {
                continue;
            };
            match first {
                None => first = Some(own),
                Some(base) => {
                    let distance = own.wrapping_sub(base);
                    if (1..=16).contains(&distance) {
                        mask |= 1 << (distance - 1);
                    }
                }
            }
        }
        if let Some(base) = first {
            out.put(&base.to_be_bytes())?;
            out.put(&mask.to_be_bytes())?;
            any = true;
        }
    }
    Ok(any)
}

/// Translates RTCP from the remote toward the user's current device, in
/// place: report blocks about the outward SSRC are mapped back to the
/// device's SSRC and sequence space (RFC 3550 §7.2), and feedback follows
/// the device (see the module documentation). Returns the new length and
/// how many NACKs were removed for naming only the earlier device's
/// packets; [`TranslateError::StaleNack`] when nothing else was in it.
pub fn toward_user(
    buf: &mut [u8],
    len: usize,
    continuity: &Continuity,
    state: &mut RtcpState,
) -> Result<(usize, u32), TranslateError> {
    let datagram = buf.get(..len).ok_or(TranslateError::Malformed)?;
    rtp::check_rtcp(datagram).map_err(|_| TranslateError::Malformed)?;
    let mut has_feedback = false;
    for packet in sub_packets(datagram) {
        if matches!(packet?.packet_type, RTCP_RTPFB | RTCP_PSFB) {
            has_feedback = true;
        }
    }
    let map = Mapping::of(continuity, state);
    let reports = !continuity.is_identity() && map.active;
    if !reports && !has_feedback {
        return Ok((len, 0));
    }
    let mut scratch = [0u8; BUF_LEN];
    let mut out = Writer {
        out: &mut scratch,
        len: 0,
    };
    let mut removed = 0u32;
    for packet in sub_packets(datagram) {
        let packet = packet?;
        match packet.packet_type {
            RTCP_SR | RTCP_RR if reports => {
                let first = if packet.packet_type == RTCP_SR {
                    SR_BLOCKS
                } else {
                    RR_BLOCKS
                };
                let start = out.len;
                out.put(packet.bytes)?;
                let report = &mut out.out[start..out.len];
                for block in 0..usize::from(packet.count) {
                    let at = first + block * BLOCK_LEN;
                    if at + BLOCK_LEN > report.len() {
                        return Err(TranslateError::Malformed);
                    }
                    let about = read_u32(report, at).ok_or(TranslateError::Malformed)?;
                    let highest = read_u32(report, at + 8).ok_or(TranslateError::Malformed)?;
                    if about == map.outward {
                        write_u32(report, at, map.device);
                        if let Some(own) = continuity.to_source_extended(highest) {
                            write_u32(report, at + 8, own);
                        }
                    } else if let Some(repair) = map.repair.filter(|r| r.outward == about) {
                        // The outward repair numbers, back in the device's.
                        let low = (highest as u16).wrapping_sub(repair.seq_offset);
                        write_u32(report, at, repair.device);
                        write_u32(report, at + 8, (highest & 0xffff_0000) | u32::from(low));
                    }
                }
            }
            RTCP_RTPFB | RTCP_PSFB => {
                if !feedback_toward_user(&packet, map, continuity, state, &mut out)? {
                    removed += 1;
                }
            }
            _ => out.put(packet.bytes)?,
        }
    }
    let new_len = out.len;
    if new_len < rtp::RTCP_MIN_LEN {
        return Err(TranslateError::StaleNack);
    }
    buf.get_mut(..new_len)
        .ok_or(TranslateError::Malformed)?
        .copy_from_slice(&scratch[..new_len]);
    Ok((new_len, removed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rtp::RtpView;
    use bytes::Bytes;
    use rtcp::goodbye::Goodbye;
    use rtcp::packet::Packet;
    use rtcp::receiver_report::ReceiverReport;
    use rtcp::reception_report::ReceptionReport;
    use rtcp::sender_report::SenderReport;
    use rtcp::source_description::{
        SdesType, SourceDescription, SourceDescriptionChunk, SourceDescriptionItem,
    };
    use std::time::{Duration, Instant};

    type Boxed = Box<dyn Packet + Send + Sync>;

    fn rtp(seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
        crate::core::rtp::RtpRepr {
            sequence: seq,
            timestamp: ts,
            ssrc,
            ..Default::default()
        }
        .to_vec(&[0; 160])
    }

    fn send(c: &mut Continuity, now: Instant, leg: usize, seq: u16, ts: u32, ssrc: u32) {
        let mut bytes = rtp(seq, ts, ssrc);
        let mut view = RtpView::new_checked(&mut bytes[..]).expect("valid");
        c.rewrite(now, leg, &mut view, 8000).expect("sent");
    }

    fn compound(packets: Vec<Boxed>) -> Vec<u8> {
        rtcp::packet::marshal(&packets).expect("marshal").to_vec()
    }

    /// Parses with the `rtcp` crate, only after our own check (the crate
    /// panics on some malformed input).
    fn parse(datagram: &[u8]) -> Vec<Boxed> {
        rtp::check_rtcp(datagram).expect("well-formed");
        rtcp::packet::unmarshal(&mut Bytes::copy_from_slice(datagram)).expect("parses")
    }

    fn sdes(ssrc: u32, cname: &'static [u8]) -> SourceDescription {
        SourceDescription {
            chunks: vec![SourceDescriptionChunk {
                source: ssrc,
                items: vec![SourceDescriptionItem {
                    sdes_type: SdesType::SdesCname,
                    text: Bytes::from_static(cname),
                }],
            }],
        }
    }

    /// A talked (SSRC 0xA, seq 100…), then B took over (SSRC 0xB, seq 5000…).
    fn after_switch() -> (Continuity, RtcpState) {
        let mut c = Continuity::default();
        let mut state = RtcpState::default();
        let t0 = Instant::now();
        for i in 0..10u16 {
            send(
                &mut c,
                t0 + Duration::from_millis(20 * u64::from(i)),
                0,
                100 + i,
                1000 + 160 * u32::from(i),
                0xA,
            );
        }
        // A's SDES is seen first: its CNAME is the stream's.
        let mut first = compound(vec![Box::new(sdes(0xA, b"alice@desk"))]);
        let len = first.len();
        first.resize(BUF_LEN, 0);
        toward_remote(&mut first, len, &c, &SequenceShift::default(), &mut state).expect("learned");
        for i in 0..5u16 {
            send(
                &mut c,
                t0 + Duration::from_millis(300 + 20 * u64::from(i)),
                1,
                5000 + i,
                77 + 160 * u32::from(i),
                0xB,
            );
        }
        (c, state)
    }

    fn translate_toward_remote(
        c: &Continuity,
        state: &mut RtcpState,
        packets: Vec<Boxed>,
    ) -> Result<Vec<Boxed>, TranslateError> {
        let mut buf = compound(packets);
        let len = buf.len();
        buf.resize(BUF_LEN, 0);
        let new_len = toward_remote(&mut buf, len, c, &SequenceShift::default(), state)?;
        Ok(parse(&buf[..new_len]))
    }

    #[test]
    fn untouched_before_any_switch() {
        let mut c = Continuity::default();
        send(&mut c, Instant::now(), 0, 1, 1, 0xA);
        let sr = SenderReport {
            ssrc: 0xA,
            rtp_time: 5,
            packet_count: 1,
            ..Default::default()
        };
        let original = compound(vec![Box::new(sr)]);
        let mut buf = original.clone();
        buf.resize(BUF_LEN, 0);
        let len = toward_remote(
            &mut buf,
            original.len(),
            &c,
            &SequenceShift::default(),
            &mut RtcpState::default(),
        )
        .expect("ok");
        assert_eq!(&buf[..len], &original[..]);
    }

    #[test]
    fn sender_report_speaks_of_the_outward_stream() {
        let (c, mut state) = after_switch();
        let (_, _, ts_offset) = c.current().expect("source");
        let sr = SenderReport {
            ssrc: 0xB,
            ntp_time: 0x1234_5678_9abc_def0,
            rtp_time: 77 + 160 * 4,
            packet_count: 5,
            octet_count: 800,
            reports: vec![ReceptionReport {
                ssrc: 0xF,
                last_sequence_number: 42,
                ..Default::default()
            }],
            ..Default::default()
        };
        let out = translate_toward_remote(
            &c,
            &mut state,
            vec![Box::new(sr), Box::new(sdes(0xB, b"alice@mobile"))],
        )
        .expect("translated");
        let sr = out[0].as_any().downcast_ref::<SenderReport>().expect("SR");
        assert_eq!(sr.ssrc, 0xA, "outward SSRC");
        assert_eq!(sr.ntp_time, 0x1234_5678_9abc_def0);
        assert_eq!(sr.rtp_time, (77 + 160 * 4u32).wrapping_add(ts_offset));
        assert_eq!(
            (sr.packet_count, sr.octet_count),
            (15, 15 * 160),
            "cumulative outward counts"
        );
        assert_eq!(sr.reports[0].ssrc, 0xF, "blocks about the remote untouched");
        assert_eq!(sr.reports[0].last_sequence_number, 42);
        let sdes = out[1]
            .as_any()
            .downcast_ref::<SourceDescription>()
            .expect("SDES");
        assert_eq!(sdes.chunks[0].source, 0xA);
        assert_eq!(
            &sdes.chunks[0].items[0].text[..],
            b"alice@desk",
            "the first CNAME is kept"
        );
    }

    #[test]
    fn sdes_keeps_other_items_and_grows_or_shrinks_with_the_cname() {
        let (c, mut state) = after_switch();
        let chunk = |source, cname: &'static [u8]| SourceDescriptionChunk {
            source,
            items: vec![
                SourceDescriptionItem {
                    sdes_type: SdesType::SdesName,
                    text: Bytes::from_static(b"Alice"),
                },
                SourceDescriptionItem {
                    sdes_type: SdesType::SdesCname,
                    text: Bytes::from_static(cname),
                },
                SourceDescriptionItem {
                    sdes_type: SdesType::SdesTool,
                    text: Bytes::from_static(b"phone 1.0"),
                },
            ],
        };
        for cname in [&b"b"[..], b"a-much-longer-cname@mobile.example.com"] {
            let sdes = SourceDescription {
                chunks: vec![chunk(0xB, cname), chunk(0x99, cname)],
            };
            let out =
                translate_toward_remote(&c, &mut state, vec![Box::new(sdes)]).expect("translated");
            let sdes = out[0]
                .as_any()
                .downcast_ref::<SourceDescription>()
                .expect("SDES");
            assert_eq!(sdes.chunks.len(), 2);
            assert_eq!(sdes.chunks[0].source, 0xA);
            assert_eq!(sdes.chunks[1].source, 0x99, "other sources untouched");
            for chunk in &sdes.chunks {
                let texts: Vec<&[u8]> = chunk.items.iter().map(|i| &i.text[..]).collect();
                assert_eq!(texts, [&b"Alice"[..], b"alice@desk", b"phone 1.0"]);
            }
        }
    }

    #[test]
    fn bye_is_removed_and_a_lone_bye_is_not_sent() {
        let (c, mut state) = after_switch();
        let rr = ReceiverReport {
            ssrc: 0xB,
            ..Default::default()
        };
        let bye = Goodbye {
            sources: vec![0xB],
            reason: Bytes::new(),
        };
        let out =
            translate_toward_remote(&c, &mut state, vec![Box::new(rr), Box::new(bye.clone())])
                .expect("translated");
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0]
                .as_any()
                .downcast_ref::<ReceiverReport>()
                .expect("RR")
                .ssrc,
            0xA
        );
        assert_eq!(
            translate_toward_remote(&c, &mut state, vec![Box::new(bye)]).err(),
            Some(TranslateError::Empty)
        );
    }

    #[test]
    fn reports_about_the_outward_stream_map_back_to_the_device() {
        let (c, _) = after_switch();
        // The remote reports on the outward stream: highest seq 114 (A's
        // 100..=109, then B's 5000..=5004 as 110..=114).
        let block = ReceptionReport {
            ssrc: 0xA,
            last_sequence_number: 114,
            jitter: 3,
            ..Default::default()
        };
        let other = ReceptionReport {
            ssrc: 0x77,
            last_sequence_number: 9,
            ..Default::default()
        };
        let rr = ReceiverReport {
            ssrc: 0xFACE,
            reports: vec![block.clone(), other],
            ..Default::default()
        };
        let sr = SenderReport {
            ssrc: 0xFACE,
            reports: vec![block],
            ..Default::default()
        };
        let mut buf = compound(vec![Box::new(sr), Box::new(rr)]);
        let len = buf.len();
        buf.resize(BUF_LEN, 0);
        let (new_len, _) =
            toward_user(&mut buf, len, &c, &mut RtcpState::default()).expect("translated");
        assert_eq!(new_len, len);
        let out = parse(&buf[..new_len]);
        let sr = out[0].as_any().downcast_ref::<SenderReport>().expect("SR");
        assert_eq!(sr.reports[0].ssrc, 0xB);
        assert_eq!(sr.reports[0].last_sequence_number, 5004);
        let rr = out[1]
            .as_any()
            .downcast_ref::<ReceiverReport>()
            .expect("RR");
        assert_eq!(rr.ssrc, 0xFACE);
        assert_eq!(rr.reports[0].ssrc, 0xB, "B's own SSRC");
        assert_eq!(
            rr.reports[0].last_sequence_number, 5004,
            "B's own sequence space"
        );
        assert_eq!(rr.reports[0].jitter, 3);
        assert_eq!(rr.reports[1].ssrc, 0x77, "blocks about others untouched");
    }

    /// The device's reports about the remote's stream go back to the
    /// remote's numbering when the relay shifted it toward the device.
    #[test]
    fn reports_about_the_remotes_shifted_stream_go_back_to_its_numbers() {
        let c = Continuity::default();
        let mut shift = SequenceShift::default();
        shift.rewrite(0xF, 5000);
        shift.rewrite(0xF, 7);
        let (remote, offset) = shift.active().expect("shifted");
        let rr = ReceiverReport {
            ssrc: 0xA,
            reports: vec![
                ReceptionReport {
                    ssrc: remote,
                    last_sequence_number: (1 << 16) | u32::from(7u16.wrapping_add(offset)),
                    ..Default::default()
                },
                ReceptionReport {
                    ssrc: 0x77,
                    last_sequence_number: 42,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let mut buf = compound(vec![Box::new(rr)]);
        let len = buf.len();
        buf.resize(BUF_LEN, 0);
        let new_len =
            toward_remote(&mut buf, len, &c, &shift, &mut RtcpState::default()).expect("ok");
        let out = parse(&buf[..new_len]);
        let rr = out[0]
            .as_any()
            .downcast_ref::<ReceiverReport>()
            .expect("an RR");
        assert_eq!(rr.reports[0].last_sequence_number, (1 << 16) | 7);
        assert_eq!(
            rr.reports[1].last_sequence_number, 42,
            "other sources untouched"
        );
    }

    #[test]
    fn extended_numbers_map_across_wraps() {
        // A from 65530 (wraps after 6 packets), B from 65000 (wraps later).
        let mut c = Continuity::default();
        let t0 = Instant::now();
        for i in 0..10u16 {
            send(&mut c, t0, 0, 65530u16.wrapping_add(i), 0, 0xA);
        }
        for i in 0..1000u16 {
            send(
                &mut c,
                t0 + Duration::from_millis(1),
                1,
                65000u16.wrapping_add(i),
                0,
                0xB,
            );
        }
        // Outward: 65530 … 65539 (ext), then B's 65000 is outward ext 65540.
        assert_eq!(c.to_source_extended(65540), Some(65000));
        // B's 999th packet after its start: 65999 in B's extended space,
        // i.e. cycle 1, seq 463.
        assert_eq!(c.to_source_extended(65540 + 999), Some(65999));
        assert_eq!(65999u32 & 0xffff, u32::from(65000u16.wrapping_add(999)));
    }

    #[test]
    fn malformed_rtcp_is_an_error_not_a_panic() {
        let (c, mut state) = after_switch();
        let mut junk = vec![0x80, 200, 0, 1, 0, 0, 0, 0xB];
        junk.resize(BUF_LEN, 0);
        assert_eq!(
            toward_remote(&mut junk, 8, &c, &SequenceShift::default(), &mut state),
            Err(TranslateError::Malformed)
        );
    }

    /// Datagrams that crashed the worker through the `rtcp` crate (issue
    /// 14): feedback packets whose length is not a multiple of their entry
    /// size, in a compound with a BYE (toward the remote) or alone (toward
    /// the device after a switch). Feedback passes through untouched.
    #[test]
    fn feedback_crashers_pass_through_without_panicking() {
        let crashers: [&[u8]; 3] = [
            // BYE + PSFB FIR of three words.
            &[
                0x81, 0xcb, 0, 1, 0, 0, 0x11, 0x11, 0x84, 0xce, 0, 3, 0, 0, 0x11, 0x11, 0, 0, 0x22,
                0x22, 0, 0, 0x33, 0x33,
            ],
            // RR + RTPFB NACK with a half entry.
            &[
                0x80, 0xc9, 0, 1, 0, 0, 0x11, 0x11, 0x81, 0xcd, 0, 3, 0, 0, 0x11, 0x11, 0, 0, 0xa,
                0xa, 0, 1, 0, 0,
            ],
            // PSFB FIR alone.
            &[
                0x84, 0xce, 0, 3, 0, 0, 0x11, 0x11, 0, 0, 0, 0xa, 0, 0, 0x33, 0x33,
            ],
        ];
        let (c, mut state) = after_switch();
        for crasher in crashers {
            let mut buf = [0u8; BUF_LEN];
            buf[..crasher.len()].copy_from_slice(crasher);
            let (len, _) = toward_user(&mut buf, crasher.len(), &c, &mut state).expect("passes");
            assert_eq!(&buf[..len], crasher, "toward the device: untouched");
            let len = toward_remote(
                &mut buf,
                crasher.len(),
                &c,
                &SequenceShift::default(),
                &mut state,
            )
            .expect("passes");
            let feedback = crasher
                .chunks(4)
                .position(|w| w[1] == 0xce || w[1] == 0xcd)
                .expect("has feedback");
            assert_eq!(
                buf[..len].last_chunk::<4>(),
                crasher.last_chunk::<4>(),
                "the feedback packet's last word went out as it came"
            );
            assert!(len >= crasher.len() - 4 * feedback);
        }
    }

    /// Found by the `rtcp_translate` fuzz target: an SDES without chunks
    /// (but with a length) alone became a 4-byte datagram, which is not
    /// RTCP. Now nothing is sent.
    #[test]
    fn a_translation_that_leaves_nothing_valid_is_not_sent() {
        let (c, mut state) = after_switch();
        let input: [u8; 28] = [
            0x80, 0xca, 0, 6, 0, 0, 0, 0xb, 0x12, 0x34, 0, 0, 0x80, 0xb, 0xcd, 0x1b, 0xff, 0, 1, 0,
            0, 3, 0x40, 0, 5, 0x63, 0x65, 0,
        ];
        let mut buf = [0u8; BUF_LEN];
        buf[..input.len()].copy_from_slice(&input);
        assert_eq!(
            toward_remote(
                &mut buf,
                input.len(),
                &c,
                &SequenceShift::default(),
                &mut state
            ),
            Err(TranslateError::Empty)
        );
    }

    #[test]
    fn lying_counts_and_items_are_refused() {
        let (c, mut state) = after_switch();
        let cases: [&[u8]; 5] = [
            // RR announcing 2 report blocks with none present.
            &[0x82, 0xc9, 0, 1, 0, 0, 0, 0xB],
            // SR shorter than its sender info.
            &[0x80, 0xc8, 0, 2, 0, 0, 0, 0xB, 0, 0, 0, 0],
            // SDES announcing 3 chunks in one word.
            &[0x83, 0xca, 0, 1, 0, 0, 0, 0xB],
            // SDES item longer than the packet.
            &[0x81, 0xca, 0, 2, 0, 0, 0, 0xB, 1, 200, b'x', b'y'],
            // Padding larger than the packet.
            &[0xa0, 0xc9, 0, 1, 0, 0, 0, 0xB - 1, 0, 0, 0, 0xff],
        ];
        for case in cases {
            let mut buf = [0u8; BUF_LEN];
            buf[..case.len()].copy_from_slice(case);
            assert_eq!(
                toward_remote(
                    &mut buf,
                    case.len(),
                    &c,
                    &SequenceShift::default(),
                    &mut state
                ),
                Err(TranslateError::Malformed),
                "{case:02x?}"
            );
            assert!(toward_user(&mut buf, case.len(), &c, &mut state).is_err() || case[1] == 0xca);
        }
    }

    use rtcp::payload_feedbacks::full_intra_request::{FirEntry, FullIntraRequest};
    use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
    use rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};

    /// Translates `packets` from the remote toward the device.
    fn to_user(
        c: &Continuity,
        state: &mut RtcpState,
        packets: Vec<Boxed>,
    ) -> Result<(Vec<Boxed>, u32), TranslateError> {
        let mut buf = compound(packets);
        let len = buf.len();
        buf.resize(BUF_LEN, 0);
        let (len, removed) = toward_user(&mut buf, len, c, state)?;
        Ok((parse(&buf[..len]), removed))
    }

    fn nack(pairs: &[(u16, u16)]) -> TransportLayerNack {
        TransportLayerNack {
            sender_ssrc: 0xFACE,
            media_ssrc: 0xA,
            nacks: pairs
                .iter()
                .map(|&(packet_id, lost_packets)| NackPair {
                    packet_id,
                    lost_packets,
                })
                .collect(),
        }
    }

    fn fir(sender: u32, target: u32, seq: u8) -> FullIntraRequest {
        FullIntraRequest {
            sender_ssrc: sender,
            media_ssrc: 0,
            fir: vec![FirEntry {
                ssrc: target,
                sequence_number: seq,
            }],
        }
    }

    /// Issue 18: after a switch the remote's PLI, FIR and REMB name the
    /// outward SSRC (A's); the new device B gets them naming its own, and a
    /// new FIR gets the relay's next command number (a repeat keeps it).
    #[test]
    fn the_remotes_feedback_names_the_current_device() {
        let (c, mut state) = after_switch();
        let pli = PictureLossIndication {
            sender_ssrc: 0xFACE,
            media_ssrc: 0xA,
        };
        let remb = ReceiverEstimatedMaximumBitrate {
            sender_ssrc: 0xFACE,
            bitrate: 1_000_000.0,
            ssrcs: vec![0xA, 0xC],
        };
        let (out, removed) = to_user(
            &c,
            &mut state,
            vec![Box::new(pli), Box::new(fir(0xFACE, 0xA, 9)), Box::new(remb)],
        )
        .expect("translated");
        assert_eq!(removed, 0);
        let pli = out[0]
            .as_any()
            .downcast_ref::<PictureLossIndication>()
            .expect("PLI");
        assert_eq!((pli.sender_ssrc, pli.media_ssrc), (0xFACE, 0xB));
        let first = out[1]
            .as_any()
            .downcast_ref::<FullIntraRequest>()
            .expect("FIR");
        assert_eq!(first.fir[0].ssrc, 0xB);
        let remb = out[2]
            .as_any()
            .downcast_ref::<ReceiverEstimatedMaximumBitrate>()
            .expect("REMB");
        assert_eq!(remb.ssrcs, vec![0xB, 0xC], "other SSRCs are left alone");
        let number = |state: &mut RtcpState, seq: u8| {
            let (out, _) =
                to_user(&c, state, vec![Box::new(fir(0xFACE, 0xA, seq))]).expect("translated");
            out[0]
                .as_any()
                .downcast_ref::<FullIntraRequest>()
                .expect("FIR")
                .fir[0]
                .sequence_number
        };
        let repeat = number(&mut state, 9);
        assert_eq!(repeat, first.fir[0].sequence_number, "a repeat is not new");
        let next = number(&mut state, 10);
        assert_eq!(next, repeat.wrapping_add(1), "a new request is");
        // The relay's own request (a keyframe at a switch) takes the next.
        assert_eq!(state.next_fir_to_user(), next.wrapping_add(1));
    }

    /// Issue 18: a NACK's outward numbers go back into B's numbering; what
    /// only A sent never reaches B (removed and counted), and a datagram
    /// left with nothing is refused as such.
    #[test]
    fn nacks_map_into_the_devices_numbering_and_stale_ones_are_removed() {
        let (c, mut state) = after_switch();
        // Outward 100..=109 were A's, 110..=114 are B's 5000..=5004.
        let rr = ReceiverReport {
            ssrc: 0xFACE,
            ..Default::default()
        };
        let (out, removed) = to_user(
            &c,
            &mut state,
            vec![
                Box::new(rr.clone()),
                // 108 (A), 109 (A), 110 and 112 (B).
                Box::new(nack(&[(108, 0b1011)])),
                // 105 only: A's.
                Box::new(nack(&[(105, 0)])),
                // 111, 113.
                Box::new(nack(&[(111, 0b10)])),
            ],
        )
        .expect("translated");
        assert_eq!(removed, 1, "the NACK for A's packet alone");
        assert_eq!(out.len(), 3);
        let lost = |packet: &Boxed| {
            let nack = packet
                .as_any()
                .downcast_ref::<TransportLayerNack>()
                .expect("NACK");
            assert_eq!(nack.media_ssrc, 0xB);
            nack.nacks
                .iter()
                .flat_map(|pair| pair.packet_list())
                .collect::<Vec<u16>>()
        };
        assert_eq!(lost(&out[1]), vec![5000, 5002]);
        assert_eq!(lost(&out[2]), vec![5001, 5003]);
        assert_eq!(
            to_user(&c, &mut state, vec![Box::new(nack(&[(100, 0xff)]))]).err(),
            Some(TranslateError::StaleNack),
            "only A's packets: nothing to send"
        );
    }

    /// Review finding: a padded feedback packet whose content is not whole
    /// words passes untouched (rewritten without its padding it would be
    /// malformed), and the compound stays well-formed.
    #[test]
    fn padded_feedback_of_odd_length_passes_untouched() {
        let (c, mut state) = after_switch();
        // PLI with P set: 3 words of header, 1 word of FCI whose last 3
        // octets are padding (count 3).
        let pli = [
            0xa1, 206, 0, 3, 0, 0, 0xFA, 0xCE, 0, 0, 0, 0xA, 0xEE, 0, 0, 3,
        ];
        let mut buf = [0u8; BUF_LEN];
        buf[..pli.len()].copy_from_slice(&pli);
        let (len, _) = toward_user(&mut buf, pli.len(), &c, &mut state).expect("passes");
        assert_eq!(&buf[..len], &pli[..]);
        rtp::check_rtcp(&buf[..len]).expect("well-formed");
        buf[..pli.len()].copy_from_slice(&pli);
        let len = toward_remote(
            &mut buf,
            pli.len(),
            &c,
            &SequenceShift::default(),
            &mut state,
        )
        .expect("passes");
        rtp::check_rtcp(&buf[..len]).expect("well-formed");
    }

    /// Review finding (issue 18): RTCP about the repair stream is
    /// translated like the main stream's: B's RTX sender report speaks as
    /// the outward repair SSRC on the outward timeline, and the remote's
    /// report about that SSRC reaches B about its own, in its numbers.
    #[test]
    fn rtcp_about_the_repair_stream_follows_the_device() {
        let (c, mut state) = after_switch();
        state.set_repair(RepairMap {
            device: 0xBB,
            outward: 0xAA,
            seq_offset: 100,
        });
        let sr = SenderReport {
            ssrc: 0xBB,
            rtp_time: 1000,
            ..Default::default()
        };
        let mut buf = compound(vec![Box::new(sr)]);
        let len = buf.len();
        buf.resize(BUF_LEN, 0);
        let len = toward_remote(&mut buf, len, &c, &SequenceShift::default(), &mut state)
            .expect("translated");
        let out = parse(&buf[..len]);
        let sr = out[0].as_any().downcast_ref::<SenderReport>().expect("SR");
        let (_, _, ts_offset) = c.current().expect("B is the source");
        assert_eq!(
            (sr.ssrc, sr.rtp_time),
            (0xAA, 1000u32.wrapping_add(ts_offset))
        );
        let rr = ReceiverReport {
            ssrc: 0xFACE,
            reports: vec![ReceptionReport {
                ssrc: 0xAA,
                last_sequence_number: 0x0001_0200,
                ..Default::default()
            }],
            ..Default::default()
        };
        let (out, _) = to_user(&c, &mut state, vec![Box::new(rr)]).expect("translated");
        let rr = out[0]
            .as_any()
            .downcast_ref::<ReceiverReport>()
            .expect("RR");
        assert_eq!(rr.reports[0].ssrc, 0xBB);
        assert_eq!(rr.reports[0].last_sequence_number, 0x0001_0200 - 100);
    }

    /// Issue 18: TMMBR entries naming the outward SSRC name B's.
    #[test]
    fn tmmbr_names_the_current_device() {
        let (c, mut state) = after_switch();
        // V=2 FMT=3, RTPFB, 4 words: sender, media 0, then (SSRC, bitrate).
        let mut buf = vec![
            0x83, 205, 0, 4, 0, 0, 0xFA, 0xCE, 0, 0, 0, 0, 0, 0, 0, 0xA, 0x08, 0x01, 0x23, 0x45,
        ];
        let len = buf.len();
        buf.resize(BUF_LEN, 0);
        let (len, _) = toward_user(&mut buf, len, &c, &mut state).expect("translated");
        assert_eq!(read_u32(&buf[..len], 12), Some(0xB));
        assert_eq!(
            &buf[16..20],
            &[0x08, 0x01, 0x23, 0x45],
            "the bitrate as sent"
        );
    }

    /// Issue 18: the device's feedback speaks as the outward stream (its
    /// sender is the outward SSRC), and its FIR numbers are the relay's
    /// toward the remote: B's first request is new to the remote even when
    /// it carries the number A's last one did.
    #[test]
    fn the_devices_feedback_speaks_as_the_outward_stream() {
        let (c, mut state) = after_switch();
        let from_device = |state: &mut RtcpState, packet: Boxed| {
            let mut buf = compound(vec![packet]);
            let len = buf.len();
            buf.resize(BUF_LEN, 0);
            let len = toward_remote(&mut buf, len, &c, &SequenceShift::default(), state)
                .expect("translated");
            parse(&buf[..len])
        };
        let a_fir = from_device(&mut state, Box::new(fir(0xA, 0xFACE, 5)));
        let b_fir = from_device(&mut state, Box::new(fir(0xB, 0xFACE, 5)));
        let seq = |out: &[Boxed]| {
            let fir = out[0]
                .as_any()
                .downcast_ref::<FullIntraRequest>()
                .expect("FIR");
            (fir.sender_ssrc, fir.fir[0].ssrc, fir.fir[0].sequence_number)
        };
        let (sender, target, a_number) = seq(&a_fir);
        assert_eq!((sender, target), (0xA, 0xFACE));
        let (sender, target, b_number) = seq(&b_fir);
        assert_eq!(
            (sender, target),
            (0xA, 0xFACE),
            "B speaks as the outward SSRC"
        );
        assert_ne!(b_number, a_number, "B's request is new to the remote");
        let pli = from_device(
            &mut state,
            Box::new(PictureLossIndication {
                sender_ssrc: 0xB,
                media_ssrc: 0xFACE,
            }),
        );
        let pli = pli[0]
            .as_any()
            .downcast_ref::<PictureLossIndication>()
            .expect("PLI");
        assert_eq!((pli.sender_ssrc, pli.media_ssrc), (0xA, 0xFACE));
    }

    #[test]
    fn a_cname_that_would_overflow_the_buffer_is_refused() {
        let (c, _) = after_switch();
        // The first CNAME is 255 bytes; then a compound of many chunks with
        // one-byte CNAMEs would grow past the buffer.
        let mut state = RtcpState {
            first_cname: Some(vec![b'c'; 255].into_boxed_slice()),
            ..RtcpState::default()
        };
        let chunks = 31;
        let mut packet = vec![0x80 | chunks, 0xca, 0, 0];
        for _ in 0..chunks {
            packet.extend_from_slice(&0xBu32.to_be_bytes());
            packet.extend_from_slice(&[1, 1, b'b', 0]);
        }
        let words = u16::try_from(packet.len() / 4 - 1).expect("fits");
        packet[2..4].copy_from_slice(&words.to_be_bytes());
        let mut buf = [0u8; BUF_LEN];
        buf[..packet.len()].copy_from_slice(&packet);
        assert_eq!(
            toward_remote(
                &mut buf,
                packet.len(),
                &c,
                &SequenceShift::default(),
                &mut state
            ),
            Err(TranslateError::Malformed)
        );
    }
}
