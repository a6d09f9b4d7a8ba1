//! Zero-copy views of RTP and RTCP packets (RFC 3550 §5.1, §6.4).
//!
//! `RtpView::new_checked` validates the header once (version, CSRC count,
//! extension and padding lengths against the buffer); after that no accessor
//! can panic. Setters exist only for a mutable buffer and change fixed header
//! fields in place, so CSRCs, extensions, payload and padding pass untouched.
//! Written by hand: the `rtp` crate parses into an owned, allocating struct,
//! which the hot path cannot afford. [`RtpRepr`] is the owned counterpart
//! that builds packets, for tests, benches and the load generator.

/// Why bytes are not a valid RTP or RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than the fixed header, the CSRC list or the extension.
    Truncated,
    /// The version field is not 2.
    Version,
    /// The padding count is 0 or larger than the payload.
    Padding,
    /// An RTCP length field that does not fit the datagram.
    RtcpLength,
}

/// The largest datagram the relay handles (the receive buffer's size);
/// anything longer is dropped as too large.
pub const MAX_DATAGRAM: usize = 2048;

/// Length of the fixed RTP header.
pub const RTP_HEADER_LEN: usize = 12;

/// Whether a datagram on an rtcp-mux port is RTCP rather than RTP: RFC 5761
/// §4, the second byte (RTCP packet type, or RTP marker + payload type) is
/// in 192..=223 only for RTCP.
pub fn is_rtcp(datagram: &[u8]) -> bool {
    matches!(datagram.get(1), Some(192..=223))
}

/// A validated RTP packet.
#[derive(Debug)]
pub struct RtpView<T> {
    buf: T,
    header_len: usize,
    padding_len: usize,
}

impl<T: AsRef<[u8]>> RtpView<T> {
    /// Checks that `buf` holds a whole RTP header (RFC 3550 A.1 checks
    /// except the payload type, which the caller knows better).
    pub fn new_checked(buf: T) -> Result<Self, Malformed> {
        let bytes = buf.as_ref();
        let Some(&first) = bytes.first() else {
            return Err(Malformed::Truncated);
        };
        if first >> 6 != 2 {
            return Err(Malformed::Version);
        }
        if bytes.len() < RTP_HEADER_LEN {
            return Err(Malformed::Truncated);
        }
        let csrc_count = usize::from(first & 0x0f);
        let mut header_len = RTP_HEADER_LEN + 4 * csrc_count;
        if first & 0x10 != 0 {
            let ext = bytes
                .get(header_len..header_len + 4)
                .ok_or(Malformed::Truncated)?;
            let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
            header_len += 4 + 4 * words;
        }
        if header_len > bytes.len() {
            return Err(Malformed::Truncated);
        }
        let padding_len = if first & 0x20 != 0 {
            let count = usize::from(bytes[bytes.len() - 1]);
            if count == 0 || header_len + count > bytes.len() {
                return Err(Malformed::Padding);
            }
            count
        } else {
            0
        };
        Ok(Self {
            buf,
            header_len,
            padding_len,
        })
    }

    fn bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// The marker bit.
    pub fn marker(&self) -> bool {
        self.bytes()[1] & 0x80 != 0
    }

    /// The payload type (7 bits).
    pub fn payload_type(&self) -> u8 {
        self.bytes()[1] & 0x7f
    }

    /// The sequence number.
    pub fn sequence(&self) -> u16 {
        u16::from_be_bytes([self.bytes()[2], self.bytes()[3]])
    }

    /// The RTP timestamp.
    pub fn timestamp(&self) -> u32 {
        let b = self.bytes();
        u32::from_be_bytes([b[4], b[5], b[6], b[7]])
    }

    /// The synchronisation source.
    pub fn ssrc(&self) -> u32 {
        let b = self.bytes();
        u32::from_be_bytes([b[8], b[9], b[10], b[11]])
    }

    /// Bytes of fixed header, CSRCs and extension.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// The payload, without header and padding.
    pub fn payload(&self) -> &[u8] {
        let end = self.bytes().len() - self.padding_len;
        &self.bytes()[self.header_len..end]
    }

    /// Octets of payload, the unit of RTCP sender octet counts.
    pub fn payload_len(&self) -> usize {
        self.bytes().len() - self.header_len - self.padding_len
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RtpView<T> {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.buf.as_mut()
    }

    /// The payload, writable (an RTX packet's original sequence number).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.header_len, self.bytes().len() - self.padding_len);
        &mut self.bytes_mut()[start..end]
    }

    /// Sets or clears the marker bit.
    pub fn set_marker(&mut self, marker: bool) {
        let b = &mut self.bytes_mut()[1];
        *b = (*b & 0x7f) | if marker { 0x80 } else { 0 };
    }

    /// Sets the payload type (the top bit of `pt` is ignored).
    pub fn set_payload_type(&mut self, pt: u8) {
        let b = &mut self.bytes_mut()[1];
        *b = (*b & 0x80) | (pt & 0x7f);
    }

    /// Sets the sequence number.
    pub fn set_sequence(&mut self, seq: u16) {
        self.bytes_mut()[2..4].copy_from_slice(&seq.to_be_bytes());
    }

    /// Sets the RTP timestamp.
    pub fn set_timestamp(&mut self, ts: u32) {
        self.bytes_mut()[4..8].copy_from_slice(&ts.to_be_bytes());
    }

    /// Sets the synchronisation source.
    pub fn set_ssrc(&mut self, ssrc: u32) {
        self.bytes_mut()[8..12].copy_from_slice(&ssrc.to_be_bytes());
    }
}

/// The shortest valid RTCP datagram: one header and a sender SSRC.
pub const RTCP_MIN_LEN: usize = 8;

/// RTCP packet types (RFC 3550 §12.1, RFC 4585, RFC 3611).
pub const RTCP_SR: u8 = 200;
/// Receiver report.
pub const RTCP_RR: u8 = 201;
/// Source description.
pub const RTCP_SDES: u8 = 202;
/// Goodbye.
pub const RTCP_BYE: u8 = 203;
/// Application-defined.
pub const RTCP_APP: u8 = 204;
/// Transport-layer feedback (NACK, TMMBR, transport-wide CC).
pub const RTCP_RTPFB: u8 = 205;
/// Payload-specific feedback (PLI, FIR, REMB).
pub const RTCP_PSFB: u8 = 206;
/// Extended reports.
pub const RTCP_XR: u8 = 207;

/// The fewest bytes a sub-packet of `packet_type` with count field `count`
/// can have: its fixed part and what the count announces.
fn rtcp_min_len(packet_type: u8, count: usize) -> usize {
    match packet_type {
        // Header, sender SSRC, sender info, report blocks.
        RTCP_SR => 28 + 24 * count,
        RTCP_RR => 8 + 24 * count,
        // Each chunk is at least an SSRC and a null item padded to 32 bits.
        RTCP_SDES => 4 + 8 * count,
        RTCP_BYE => 4 + 4 * count,
        // Header, SSRC, name.
        RTCP_APP => 12,
        // Header, sender SSRC, media SSRC.
        RTCP_RTPFB | RTCP_PSFB => 12,
        RTCP_XR => 8,
        _ => 4,
    }
}

/// An RTP packet's fixed header, owned: builds packets ([`RtpRepr::emit`])
/// and reads a view's fields back ([`RtpRepr::parse`]). No CSRCs, no
/// extension, no padding: what the relay's tests and generator send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtpRepr {
    /// The marker bit.
    pub marker: bool,
    /// The payload type (7 bits).
    pub payload_type: u8,
    /// The sequence number.
    pub sequence: u16,
    /// The RTP timestamp.
    pub timestamp: u32,
    /// The synchronisation source.
    pub ssrc: u32,
}

impl RtpRepr {
    /// The fields of a checked packet.
    pub fn parse<T: AsRef<[u8]>>(view: &RtpView<T>) -> Self {
        Self {
            marker: view.marker(),
            payload_type: view.payload_type(),
            sequence: view.sequence(),
            timestamp: view.timestamp(),
            ssrc: view.ssrc(),
        }
    }

    /// Writes the header and `payload` to the start of `buf`; the packet's
    /// length, or `None` when `buf` is too short.
    pub fn emit(&self, buf: &mut [u8], payload: &[u8]) -> Option<usize> {
        let len = RTP_HEADER_LEN + payload.len();
        self.emit_header(buf.get_mut(..len)?)?;
        buf[RTP_HEADER_LEN..len].copy_from_slice(payload);
        Some(len)
    }

    /// Writes the 12-byte header alone (the caller writes the payload after
    /// it, in place); `None` when `buf` is too short.
    pub fn emit_header(&self, buf: &mut [u8]) -> Option<()> {
        let out = buf.get_mut(..RTP_HEADER_LEN)?;
        out[0] = 0x80;
        out[1] = (u8::from(self.marker) << 7) | (self.payload_type & 0x7f);
        out[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        Some(())
    }

    /// The packet as a new buffer (tests and set-up paths, not the hot one).
    pub fn to_vec(&self, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0; RTP_HEADER_LEN + payload.len()];
        let len = self.emit(&mut buf, payload).unwrap_or(0);
        buf.truncate(len);
        buf
    }
}

/// Checks the structure of a (compound) RTCP packet (RFC 3550 A.2, relaxed
/// for RFC 5506 reduced-size RTCP: any RTCP packet type may come first): every
/// sub-packet has version 2, a type in 192..=223, a length that fits, room
/// for what its type and count field announce, and padding within itself;
/// the lengths add up to the datagram. Returns the first sender SSRC. What
/// passes is safe to walk by length and count without further checks.
pub fn check_rtcp(datagram: &[u8]) -> Result<u32, Malformed> {
    if datagram.len() < RTCP_MIN_LEN {
        return Err(Malformed::Truncated);
    }
    let mut offset = 0;
    while offset < datagram.len() {
        let header = datagram
            .get(offset..offset + 4)
            .ok_or(Malformed::RtcpLength)?;
        if header[0] >> 6 != 2 {
            return Err(Malformed::Version);
        }
        if !(192..=223).contains(&header[1]) {
            return Err(Malformed::RtcpLength);
        }
        let total = 4 * (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1);
        let packet = datagram
            .get(offset..offset + total)
            .ok_or(Malformed::RtcpLength)?;
        let padding = if header[0] & 0x20 != 0 {
            let count = usize::from(packet[total - 1]);
            if count == 0 || count > total - 4 {
                return Err(Malformed::Padding);
            }
            count
        } else {
            0
        };
        if total - padding < rtcp_min_len(header[1], usize::from(header[0] & 0x1f)) {
            return Err(Malformed::RtcpLength);
        }
        offset += total;
    }
    Ok(u32::from_be_bytes([
        datagram[4],
        datagram[5],
        datagram[6],
        datagram[7],
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(first: u8, pt: u8, seq: u16, ts: u32, ssrc: u32, tail: &[u8]) -> Vec<u8> {
        let mut p = vec![first, pt];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(tail);
        p
    }

    #[test]
    fn reads_fields_like_the_rtp_crate() {
        use webrtc_util::marshal::Marshal;
        let built = rtp::packet::Packet {
            header: rtp::header::Header {
                version: 2,
                marker: true,
                payload_type: 96,
                sequence_number: 65535,
                timestamp: 0xdead_beef,
                ssrc: 0x1234_5678,
                csrc: vec![1, 2],
                ..Default::default()
            },
            payload: bytes::Bytes::from_static(&[9; 20]),
        }
        .marshal()
        .expect("marshal");
        let view = RtpView::new_checked(&built[..]).expect("valid");
        assert!(view.marker());
        assert_eq!(view.payload_type(), 96);
        assert_eq!(view.sequence(), 65535);
        assert_eq!(view.timestamp(), 0xdead_beef);
        assert_eq!(view.ssrc(), 0x1234_5678);
        assert_eq!(view.header_len(), 12 + 8);
        assert_eq!(view.payload(), &[9; 20]);
    }

    #[test]
    fn repr_emits_what_the_view_and_the_rtp_crate_read() {
        use webrtc_util::marshal::Unmarshal;
        let repr = RtpRepr {
            marker: true,
            payload_type: 101,
            sequence: 65535,
            timestamp: 0xdead_beef,
            ssrc: 0x1234_5678,
        };
        let bytes = repr.to_vec(&[7; 20]);
        let view = RtpView::new_checked(&bytes[..]).expect("valid");
        assert_eq!(RtpRepr::parse(&view), repr);
        assert_eq!(view.payload(), &[7; 20]);
        let parsed = rtp::packet::Packet::unmarshal(&mut &bytes[..]).expect("rtp crate");
        assert_eq!(parsed.header.sequence_number, 65535);
        assert!(parsed.header.marker);
        assert_eq!(repr.emit(&mut [0u8; 31], &[7; 20]), None, "too short");
    }

    #[test]
    fn setters_change_only_their_field() {
        let original = packet(
            0x90,
            0,
            1,
            2,
            3,
            &[0xbe, 0xde, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd, 7, 7],
        );
        let mut bytes = original.clone();
        let mut view = RtpView::new_checked(&mut bytes[..]).expect("valid");
        view.set_marker(true);
        view.set_payload_type(101);
        view.set_sequence(0xfffe);
        view.set_timestamp(0x0102_0304);
        view.set_ssrc(0x0a0b_0c0d);
        assert!(view.marker());
        assert_eq!(view.payload_type(), 101);
        assert_eq!(
            (view.sequence(), view.timestamp(), view.ssrc()),
            (0xfffe, 0x0102_0304, 0x0a0b_0c0d)
        );
        // Extension and payload untouched.
        assert_eq!(bytes[12..], original[12..]);
        assert_eq!(bytes[0], original[0]);
    }

    #[test]
    fn refuses_malformed_headers() {
        assert_eq!(
            RtpView::new_checked(&[][..]).err(),
            Some(Malformed::Truncated)
        );
        assert_eq!(
            RtpView::new_checked(&[0x80; 11][..]).err(),
            Some(Malformed::Truncated)
        );
        assert_eq!(
            RtpView::new_checked(&packet(0x40, 0, 0, 0, 0, &[])[..]).err(),
            Some(Malformed::Version)
        );
        // 15 CSRCs announced, none present.
        assert_eq!(
            RtpView::new_checked(&packet(0x8f, 0, 0, 0, 0, &[0; 8])[..]).err(),
            Some(Malformed::Truncated)
        );
        // Extension header announcing more words than present.
        assert_eq!(
            RtpView::new_checked(&packet(0x90, 0, 0, 0, 0, &[0xbe, 0xde, 0, 9])[..]).err(),
            Some(Malformed::Truncated)
        );
        // Padding count 0, and padding larger than the packet.
        assert_eq!(
            RtpView::new_checked(&packet(0xa0, 0, 0, 0, 0, &[1, 0])[..]).err(),
            Some(Malformed::Padding)
        );
        assert_eq!(
            RtpView::new_checked(&packet(0xa0, 0, 0, 0, 0, &[1, 200])[..]).err(),
            Some(Malformed::Padding)
        );
        // Valid padding.
        let padded = packet(0xa0, 0, 0, 0, 0, &[5, 5, 0, 0, 3]);
        assert_eq!(
            RtpView::new_checked(&padded[..]).expect("valid").payload(),
            &[5, 5]
        );
    }

    #[test]
    fn rtcp_demultiplexing_and_checks() {
        let sr = rtcp::sender_report::SenderReport {
            ssrc: 0xabcd,
            ..Default::default()
        };
        let sdes = rtcp::source_description::SourceDescription {
            chunks: vec![rtcp::source_description::SourceDescriptionChunk {
                source: 0xabcd,
                items: vec![rtcp::source_description::SourceDescriptionItem {
                    sdes_type: rtcp::source_description::SdesType::SdesCname,
                    text: bytes::Bytes::from_static(b"a@b"),
                }],
            }],
        };
        let compound = rtcp::packet::marshal(&[
            Box::new(sr) as Box<dyn rtcp::packet::Packet + Send + Sync>,
            Box::new(sdes),
        ])
        .expect("marshal");
        assert!(is_rtcp(&compound));
        assert_eq!(check_rtcp(&compound), Ok(0xabcd));
        // PT 0 with the marker set is byte 128, PT 127 with it 255: RTP.
        assert!(!is_rtcp(&packet(0x80, 0x80, 1, 1, 1, &[])));
        assert!(!is_rtcp(&packet(0x80, 0xff, 1, 1, 1, &[])));
        // Cut the compound short, or lie about a length.
        assert_eq!(
            check_rtcp(&compound[..compound.len() - 4]),
            Err(Malformed::RtcpLength)
        );
        let mut lying = compound.to_vec();
        lying[3] = 0xff;
        assert_eq!(check_rtcp(&lying), Err(Malformed::RtcpLength));
    }

    #[test]
    fn rtcp_counts_and_padding_must_fit_their_packet() {
        // An RR announcing one report block, with none.
        assert_eq!(
            check_rtcp(&[0x81, 201, 0, 1, 0, 0, 0, 1]),
            Err(Malformed::RtcpLength)
        );
        // A BYE announcing two sources, with one.
        assert_eq!(
            check_rtcp(&[0x82, 203, 0, 1, 0, 0, 0, 1]),
            Err(Malformed::RtcpLength)
        );
        // Feedback without its media SSRC.
        assert_eq!(
            check_rtcp(&[0x81, 206, 0, 1, 0, 0, 0, 1]),
            Err(Malformed::RtcpLength)
        );
        // Padding of 0, and padding past the header.
        assert_eq!(
            check_rtcp(&[0xa0, 201, 0, 1, 0, 0, 0, 0]),
            Err(Malformed::Padding)
        );
        assert_eq!(
            check_rtcp(&[0xa0, 201, 0, 1, 0, 0, 0, 5]),
            Err(Malformed::Padding)
        );
        // A FIR of three words is structurally fine (its entries are the
        // feedback's business, which is passed through).
        assert_eq!(
            check_rtcp(&[
                0x84, 206, 0, 3, 0, 0, 0x11, 0x11, 0, 0, 0x22, 0x22, 0, 0, 0x33, 0x33
            ]),
            Ok(0x1111)
        );
    }
}
