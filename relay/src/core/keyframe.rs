//! Video at a handoff: which payload formats the relay knows, where a
//! keyframe starts in each, and the request that asks a device for one.
//!
//! At a switch the remote's decoder holds reference frames of the old
//! device; inter frames of the new one decoded against them are garbage
//! until a keyframe. So the relay asks the new device for a keyframe (PLI
//! and FIR, RFC 4585 §6.3.1 and RFC 5104 §4.3.1, in one compound: a device
//! answers whichever it negotiated) and holds its video until the first
//! keyframe starts ([`Stream`](crate::core::stream::Stream) does the hold).
//!
//! Written by hand over the payload bytes: the detection reads a few bytes
//! of the payload descriptor and NAL headers, bounded by the slice, with no
//! allocation; a depacketizer crate would parse (and allocate for) far more
//! than the one bit needed per packet.

/// A payload format the relay treats specially, by its `a=rtpmap` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    /// RFC 4588 retransmissions.
    Rtx,
    /// VP8 (RFC 7741).
    Vp8,
    /// VP9 (RFC 9628).
    Vp9,
    /// H.264 (RFC 6184), packetization modes 0 and 1.
    H264,
    /// G.711 µ-law (RFC 3551): its silence can be written over a payload.
    Pcmu,
    /// G.711 A-law (RFC 3551): likewise.
    Pcma,
}

impl PayloadFormat {
    /// The format of an `a=rtpmap` encoding name, if it is one of these.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            ("rtx", Self::Rtx),
            ("VP8", Self::Vp8),
            ("VP9", Self::Vp9),
            ("H264", Self::H264),
            ("PCMU", Self::Pcmu),
            ("PCMA", Self::Pcma),
        ]
        .into_iter()
        .find(|(known, _)| name.eq_ignore_ascii_case(known))
        .map(|(_, format)| format)
    }

    /// Whether a keyframe can be found in its packets.
    pub fn is_video(self) -> bool {
        matches!(self, Self::Vp8 | Self::Vp9 | Self::H264)
    }

    /// The byte a payload of silence is made of, for a format that has
    /// one: G.711's encodings of a zero sample.
    pub fn silence_byte(self) -> Option<u8> {
        match self {
            Self::Pcmu => Some(0xFF),
            Self::Pcma => Some(0xD5),
            Self::Rtx | Self::Vp8 | Self::Vp9 | Self::H264 => None,
        }
    }
}

/// Whether an RTP payload of `format` starts a keyframe (its first packet,
/// where the decoder can start afresh). Malformed or truncated payloads are
/// not keyframes.
pub fn starts_keyframe(format: PayloadFormat, payload: &[u8]) -> bool {
    match format {
        PayloadFormat::Vp8 => vp8_starts_keyframe(payload),
        PayloadFormat::Vp9 => vp9_starts_keyframe(payload),
        PayloadFormat::H264 => h264_starts_keyframe(payload),
        PayloadFormat::Rtx | PayloadFormat::Pcmu | PayloadFormat::Pcma => false,
    }
}

/// VP8 (RFC 7741 §4.2, §4.3): the payload descriptor, then, at the start of
/// partition 0 (S set, partition index 0), the VP8 payload header whose
/// lowest bit is 0 for a key frame.
fn vp8_starts_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let start_of_partition = first & 0x10 != 0;
    let partition = first & 0x07;
    if !start_of_partition || partition != 0 {
        return false;
    }
    let mut at = 1;
    if first & 0x80 != 0 {
        // X: the extension byte says which optional fields follow.
        let Some(&ext) = payload.get(1) else {
            return false;
        };
        at = 2;
        if ext & 0x80 != 0 {
            // I: PictureID, one byte or (M set) two.
            let Some(&picture) = payload.get(at) else {
                return false;
            };
            at += if picture & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            // L: TL0PICIDX.
            at += 1;
        }
        if ext & 0x30 != 0 {
            // T or K: TID/Y/KEYIDX.
            at += 1;
        }
    }
    payload.get(at).is_some_and(|header| header & 0x01 == 0)
}

/// VP9 (RFC 9628 §4.2): the first byte of the payload descriptor has I P L
/// F B E V Z; a packet that begins a frame (B) not predicted from an
/// earlier picture (P clear) starts a keyframe, in the base spatial layer
/// when layers are signalled (L: the SID in the layer byte).
fn vp9_starts_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let predicted = first & 0x40 != 0;
    let begins_frame = first & 0x08 != 0;
    if predicted || !begins_frame {
        return false;
    }
    if first & 0x20 == 0 {
        return true;
    }
    // L: the layer byte follows the picture ID, if any.
    let at = if first & 0x80 == 0 {
        1
    } else {
        match payload.get(1) {
            Some(&picture) if picture & 0x80 != 0 => 3,
            Some(_) => 2,
            None => return false,
        }
    };
    payload
        .get(at)
        .is_some_and(|layers| (layers >> 1) & 0x07 == 0)
}

/// NAL unit types that start a keyframe: a sequence parameter set (sent
/// before the IDR picture it belongs to) or an IDR slice.
fn h264_starts(nal_type: u8) -> bool {
    matches!(nal_type, 5 | 7)
}

/// H.264 (RFC 6184 §5.6-§5.8): a single NAL unit, each unit of a STAP-A,
/// or the first fragment (S set) of an FU-A.
fn h264_starts_keyframe(payload: &[u8]) -> bool {
    let Some(&header) = payload.first() else {
        return false;
    };
    match header & 0x1f {
        // STAP-A: a 16-bit size before each unit.
        24 => {
            let mut at = 1;
            while let Some(size) = payload.get(at..at + 2) {
                let size = usize::from(u16::from_be_bytes([size[0], size[1]]));
                let Some(&unit) = payload.get(at + 2) else {
                    return false;
                };
                if size == 0 {
                    return false;
                }
                if h264_starts(unit & 0x1f) {
                    return true;
                }
                at += 2 + size;
            }
            false
        }
        // FU-A: the FU header's start bit and the fragmented unit's type.
        28 => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && h264_starts(fu & 0x1f)),
        nal_type => h264_starts(nal_type),
    }
}

/// Which keyframe request a device takes, from what it negotiated
/// (`a=rtcp-fb:… nack pli`, `a=rtcp-fb:… ccm fir`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyframeBy {
    /// PLI (RFC 4585 §6.3.1).
    Pli,
    /// FIR (RFC 5104 §4.3.1).
    Fir,
    /// Both: the device negotiated neither (or it is not known), and acts
    /// on the one it implements.
    #[default]
    Both,
}

impl KeyframeBy {
    /// From what a device's SDP offered: PLI when it offered PLI, else FIR
    /// when it offered FIR, else both.
    pub fn negotiated(pli: bool, fir: bool) -> Self {
        match (pli, fir) {
            (true, _) => Self::Pli,
            (false, true) => Self::Fir,
            (false, false) => Self::Both,
        }
    }
}

/// Bytes of the longest request [`write_request`] writes (both kinds).
pub const REQUEST_LEN: usize = 40;

/// Writes a keyframe request toward a device into `buf`: an empty receiver
/// report (a compound starts with one, RFC 3550 §6.1), then a PLI, a FIR
/// with command number `fir_number`, or both (`by`), from `sender` about
/// the device's `media` SSRC. Returns its length; `None` if `buf` is too
/// short.
pub fn write_request(
    buf: &mut [u8],
    sender: u32,
    media: u32,
    fir_number: u8,
    by: KeyframeBy,
) -> Option<usize> {
    let len = match by {
        KeyframeBy::Pli => 20,
        KeyframeBy::Fir => 28,
        KeyframeBy::Both => REQUEST_LEN,
    };
    let out = buf.get_mut(..len)?;
    let s = sender.to_be_bytes();
    let m = media.to_be_bytes();
    // RR, no report blocks: 2 words.
    out[..4].copy_from_slice(&[0x80, 201, 0, 1]);
    out[4..8].copy_from_slice(&s);
    let mut at = 8;
    if by != KeyframeBy::Fir {
        // PLI (PSFB FMT 1): 3 words.
        out[at..at + 4].copy_from_slice(&[0x81, 206, 0, 2]);
        out[at + 4..at + 8].copy_from_slice(&s);
        out[at + 8..at + 12].copy_from_slice(&m);
        at += 12;
    }
    if by != KeyframeBy::Pli {
        // FIR (PSFB FMT 4): media source 0, one entry (SSRC, number,
        // reserved).
        out[at..at + 4].copy_from_slice(&[0x84, 206, 0, 4]);
        out[at + 4..at + 8].copy_from_slice(&s);
        out[at + 8..at + 12].copy_from_slice(&[0; 4]);
        out[at + 12..at + 16].copy_from_slice(&m);
        out[at + 16..at + 20].copy_from_slice(&[fir_number, 0, 0, 0]);
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn vp8_keyframes_are_found_behind_every_descriptor_form() {
        // S, partition 0, no extension; payload header P bit clear.
        assert!(starts_keyframe(PayloadFormat::Vp8, &[0x10, 0x00, 0, 0]));
        assert!(
            !starts_keyframe(PayloadFormat::Vp8, &[0x10, 0x01, 0, 0]),
            "inter frame"
        );
        assert!(
            !starts_keyframe(PayloadFormat::Vp8, &[0x00, 0x00]),
            "not a start"
        );
        assert!(
            !starts_keyframe(PayloadFormat::Vp8, &[0x11, 0x00]),
            "partition 1"
        );
        // X with a 15-bit picture ID, TL0PICIDX and TID (what Chromium sends).
        assert!(starts_keyframe(
            PayloadFormat::Vp8,
            &[0x90, 0xe0, 0x80 | 0x12, 0x34, 0x05, 0x40, 0x00]
        ));
        assert!(!starts_keyframe(
            PayloadFormat::Vp8,
            &[0x90, 0xe0, 0x80 | 0x12, 0x34, 0x05, 0x40, 0x01]
        ));
        // A 7-bit picture ID only.
        assert!(starts_keyframe(
            PayloadFormat::Vp8,
            &[0x90, 0x80, 0x12, 0x00]
        ));
        assert!(
            !starts_keyframe(PayloadFormat::Vp8, &[0x90, 0x80, 0x92]),
            "truncated"
        );
    }

    #[test]
    fn vp9_keyframes_begin_a_frame_unpredicted() {
        // B set, P clear, no picture ID, no layers.
        assert!(starts_keyframe(PayloadFormat::Vp9, &[0x08, 0]));
        assert!(
            !starts_keyframe(PayloadFormat::Vp9, &[0x48, 0]),
            "predicted"
        );
        assert!(
            !starts_keyframe(PayloadFormat::Vp9, &[0x00, 0]),
            "not the frame's start"
        );
        // I (15-bit picture ID) and L: SID 0 is the base layer.
        assert!(starts_keyframe(
            PayloadFormat::Vp9,
            &[0xa8, 0x81, 0x02, 0x00]
        ));
        assert!(
            !starts_keyframe(PayloadFormat::Vp9, &[0xa8, 0x81, 0x02, 0x02]),
            "SID 1"
        );
        assert!(
            !starts_keyframe(PayloadFormat::Vp9, &[0xa8, 0x81]),
            "truncated"
        );
    }

    #[test]
    fn h264_keyframes_in_single_units_aggregates_and_fragments() {
        // Single NAL units: IDR (5), SPS (7); a non-IDR slice (1) is not.
        assert!(starts_keyframe(PayloadFormat::H264, &[0x65, 0x88]));
        assert!(starts_keyframe(PayloadFormat::H264, &[0x67, 0x42]));
        assert!(!starts_keyframe(PayloadFormat::H264, &[0x41, 0x9a]));
        // STAP-A carrying SPS and PPS, then one with only a non-IDR slice.
        assert!(starts_keyframe(
            PayloadFormat::H264,
            &[0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce]
        ));
        assert!(!starts_keyframe(
            PayloadFormat::H264,
            &[0x78, 0, 2, 0x68, 0xce, 0, 2, 0x41, 0x9a]
        ));
        // A size running past the packet ends the walk.
        assert!(!starts_keyframe(
            PayloadFormat::H264,
            &[0x78, 0xff, 0xff, 0x41]
        ));
        assert!(!starts_keyframe(PayloadFormat::H264, &[0x78, 0, 0, 0x65]));
        // FU-A: the first fragment of an IDR slice, a middle one, a non-IDR.
        assert!(starts_keyframe(PayloadFormat::H264, &[0x7c, 0x85, 0]));
        assert!(!starts_keyframe(PayloadFormat::H264, &[0x7c, 0x05, 0]));
        assert!(!starts_keyframe(PayloadFormat::H264, &[0x7c, 0x81, 0]));
    }

    #[test]
    fn the_request_is_rr_pli_and_fir_about_the_device() {
        let mut buf = [0u8; 64];
        let len = write_request(&mut buf, 0xF00D, 0xB0B, 7, KeyframeBy::Both).expect("room");
        assert_eq!(len, REQUEST_LEN);
        crate::core::rtp::check_rtcp(&buf[..len]).expect("well-formed");
        let parsed = rtcp::packet::unmarshal(&mut bytes::Bytes::copy_from_slice(&buf[..len]))
            .expect("parses");
        let pli = parsed[1]
            .as_any()
            .downcast_ref::<rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
            .expect("PLI");
        assert_eq!((pli.sender_ssrc, pli.media_ssrc), (0xF00D, 0xB0B));
        let fir = parsed[2]
            .as_any()
            .downcast_ref::<rtcp::payload_feedbacks::full_intra_request::FullIntraRequest>()
            .expect("FIR");
        assert_eq!((fir.fir[0].ssrc, fir.fir[0].sequence_number), (0xB0B, 7));
        assert_eq!(
            write_request(&mut [0u8; 39], 1, 2, 3, KeyframeBy::Both),
            None
        );
    }

    /// A device that negotiated only one kind gets only that one.
    #[test]
    fn the_request_is_the_kind_the_device_negotiated() {
        assert_eq!(KeyframeBy::negotiated(true, true), KeyframeBy::Pli);
        assert_eq!(KeyframeBy::negotiated(false, true), KeyframeBy::Fir);
        assert_eq!(KeyframeBy::negotiated(false, false), KeyframeBy::Both);
        for (by, types) in [
            (KeyframeBy::Pli, vec![201u8, 206]),
            (KeyframeBy::Fir, vec![201, 206]),
        ] {
            let mut buf = [0u8; 64];
            let len = write_request(&mut buf, 1, 2, 3, by).expect("room");
            crate::core::rtp::check_rtcp(&buf[..len]).expect("well-formed");
            let parsed = rtcp::packet::unmarshal(&mut bytes::Bytes::copy_from_slice(&buf[..len]))
                .expect("parses");
            assert_eq!(parsed.len(), types.len(), "{by:?}");
            let fmt = buf[8] & 0x1f;
            assert_eq!(fmt, if by == KeyframeBy::Pli { 1 } else { 4 }, "{by:?}");
        }
    }

    #[test]
    fn names_map_to_formats() {
        assert_eq!(PayloadFormat::from_name("vp8"), Some(PayloadFormat::Vp8));
        assert_eq!(PayloadFormat::from_name("H264"), Some(PayloadFormat::H264));
        assert_eq!(PayloadFormat::from_name("RTX"), Some(PayloadFormat::Rtx));
        assert_eq!(PayloadFormat::from_name("AV1"), None);
    }

    proptest! {
        /// Any bytes: an answer, never a panic or a read past the slice.
        #[test]
        fn any_payload_is_answered(payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            for format in [PayloadFormat::Vp8, PayloadFormat::Vp9, PayloadFormat::H264, PayloadFormat::Rtx] {
                let _ = starts_keyframe(format, &payload);
            }
        }
    }
}
