//! BUNDLE (RFC 8843): several streams of one party on one transport. The
//! first stream of a bundle owns the socket, its ICE and its DTLS; every
//! datagram arriving there is routed to the member stream it belongs to
//! (RFC 8843 §9.2): by the MID header extension when the packet carries
//! one, else by an SSRC a MID or payload type already tied to a stream,
//! else by its payload type. STUN, DTLS and anything unrecognised stay with
//! the first stream, whose leg answers or drops them.
//!
//! Routing reads only the clear RTP/RTCP header (SRTP leaves it readable),
//! never allocates, and learns an SSRC only once the member's leg has
//! accepted the packet (authenticated it, checked its source), so a forged
//! packet cannot steer later ones.

use crate::core::ids::{LegId, StreamIndex};

/// A MID's longest accepted form. RFC 8843 MIDs are short tokens (browsers
/// use "0", "1", "audio"); the one-byte header extension form holds 16.
pub const MID_MAX: usize = 32;

/// A media identification tag (RFC 8843 `a=mid`), kept inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mid {
    bytes: [u8; MID_MAX],
    len: u8,
}

impl Mid {
    /// `text` as a MID; `None` if empty or longer than [`MID_MAX`].
    pub fn new(text: &str) -> Option<Self> {
        let raw = text.as_bytes();
        if raw.is_empty() || raw.len() > MID_MAX {
            return None;
        }
        let mut bytes = [0; MID_MAX];
        bytes[..raw.len()].copy_from_slice(raw);
        Some(Self {
            bytes,
            len: raw.len() as u8,
        })
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Mid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mid({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// One stream's place in a bundle: the stream whose transport it shares
/// (itself for the stream that owns it), its MID, and the RTP header
/// extension id the party was told carries MIDs (RFC 8843 §15.1), if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleTag {
    /// The stream owning the transport (the lowest index in the bundle).
    pub primary: StreamIndex,
    /// This stream's MID.
    pub mid: Mid,
    /// The negotiated id of `urn:ietf:params:rtp-hdrext:sdes:mid` (1–255).
    pub mid_extension: Option<u8>,
}

/// SSRCs remembered per bundle: a few per stream (media, repair, a
/// restart), far more than a device sends at once.
const LEARNED_SSRCS: usize = 16;

/// The streams of one party's leg that share a transport.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// (stream, its leg, its MID); the first owns the transport.
    members: Vec<(StreamIndex, LegId, Mid)>,
    mid_extension: Option<u8>,
    /// SSRCs tied to a member stream, oldest first overwritten.
    learned: [(u32, StreamIndex); LEARNED_SSRCS],
    learned_count: usize,
    learned_next: usize,
    /// SSRCs the relay sends on the transport, by member stream: one
    /// SSRC, one stream (RFC 8843 §9.1), whatever the other party does.
    sending: [(u32, StreamIndex); LEARNED_SSRCS],
    sending_count: usize,
}

/// Why a set of bundle tags cannot form a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// A member names a primary that is not the bundle's first stream.
    #[error(
        "stream {stream} is bundled with stream {primary}, which is not the first stream of its bundle"
    )]
    BadPrimary {
        /// The member.
        stream: StreamIndex,
        /// The primary it named.
        primary: StreamIndex,
    },
    /// Two members share a MID.
    #[error("two bundled streams share a MID")]
    DuplicateMid,
}

/// Where a datagram on a bundle's transport goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// The member stream and its leg.
    pub stream: StreamIndex,
    /// Its leg.
    pub leg: LegId,
    /// An SSRC to tie to that stream once its leg accepts the packet.
    pub learn: Option<u32>,
}

impl Bundle {
    /// The bundles formed by `tags` (per stream, the leg and its tag):
    /// members grouped by primary, which must be the group's first stream.
    pub fn from_tags(
        tags: &[(StreamIndex, LegId, Option<BundleTag>)],
    ) -> Result<Vec<Bundle>, BundleError> {
        let mut bundles: Vec<Bundle> = Vec::new();
        for &(stream, leg, tag) in tags {
            let Some(tag) = tag else { continue };
            match bundles.iter_mut().find(|b| b.members[0].0 == tag.primary) {
                Some(bundle) => {
                    if bundle.members.iter().any(|m| m.2 == tag.mid) {
                        return Err(BundleError::DuplicateMid);
                    }
                    bundle.members.push((stream, leg, tag.mid));
                }
                None if tag.primary == stream => bundles.push(Bundle {
                    members: vec![(stream, leg, tag.mid)],
                    mid_extension: tag.mid_extension.filter(|&id| id != 0),
                    learned: [(0, StreamIndex(0)); LEARNED_SSRCS],
                    learned_count: 0,
                    learned_next: 0,
                    sending: [(0, StreamIndex(0)); LEARNED_SSRCS],
                    sending_count: 0,
                }),
                None => {
                    return Err(BundleError::BadPrimary {
                        stream,
                        primary: tag.primary,
                    });
                }
            }
        }
        Ok(bundles)
    }

    /// The stream and leg owning the transport.
    pub fn primary(&self) -> (StreamIndex, LegId) {
        (self.members[0].0, self.members[0].1)
    }

    /// Every member but the first.
    pub fn followers(&self) -> impl Iterator<Item = (StreamIndex, LegId)> + '_ {
        self.members[1..].iter().map(|m| (m.0, m.1))
    }

    /// Whether `stream`'s `leg` is a member.
    pub fn contains(&self, stream: StreamIndex, leg: LegId) -> bool {
        self.members.iter().any(|m| (m.0, m.1) == (stream, leg))
    }

    /// Drops a follower whose leg closed.
    pub fn forget(&mut self, stream: StreamIndex, leg: LegId) {
        if self.primary() != (stream, leg) {
            self.members.retain(|m| (m.0, m.1) != (stream, leg));
        }
    }

    /// Whether the bundle holds more than its owner.
    pub fn has_followers(&self) -> bool {
        self.members.len() > 1
    }

    /// Routes the first `len` bytes of `buf` (RFC 8843 §9.2).
    /// `takes_payload(stream, leg, pt)` says whether a member negotiated a
    /// payload type.
    pub fn route(
        &self,
        buf: &[u8],
        len: usize,
        takes_payload: impl Fn(StreamIndex, LegId, u8) -> bool,
    ) -> Routed {
        let owner = Routed {
            stream: self.members[0].0,
            leg: self.members[0].1,
            learn: None,
        };
        let packet = &buf[..len.min(buf.len())];
        // RFC 7983: RTP and RTCP begin with 128..=191.
        if packet.len() < 8 || !(128..=191).contains(&packet[0]) {
            return owner;
        }
        let member = |index: usize, learn: Option<u32>| Routed {
            stream: self.members[index].0,
            leg: self.members[index].1,
            learn,
        };
        // RFC 5761 §4: packet types 192–223 are RTCP; its sender's SSRC
        // follows the header.
        if (192..=223).contains(&packet[1]) {
            let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
            return self
                .learned(ssrc)
                .map_or(owner, |index| member(index, None));
        }
        if packet.len() < 12 {
            return owner;
        }
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        if let Some(id) = self.mid_extension
            && let Some(mid) = header_extension(packet, id)
        {
            // A MID names its stream, and rebinds the SSRC if it moved.
            if let Some(index) = self.members.iter().position(|m| m.2.as_bytes() == mid) {
                return member(index, Some(ssrc));
            }
            return owner;
        }
        if let Some(index) = self.learned(ssrc) {
            return member(index, None);
        }
        let pt = packet[1] & 0x7f;
        match self
            .members
            .iter()
            .position(|&(stream, leg, _)| takes_payload(stream, leg, pt))
        {
            Some(index) => member(index, Some(ssrc)),
            None => owner,
        }
    }

    /// Whether `stream` may send `ssrc` on the transport: no other member
    /// sends it (the first to send an SSRC keeps it).
    pub fn may_send(&mut self, ssrc: u32, stream: StreamIndex) -> bool {
        if let Some(&(_, owner)) = self.sending[..self.sending_count]
            .iter()
            .find(|(known, _)| *known == ssrc)
        {
            return owner == stream;
        }
        if self.sending_count < LEARNED_SSRCS {
            self.sending[self.sending_count] = (ssrc, stream);
            self.sending_count += 1;
            return true;
        }
        // Full: the claimant gives up its own oldest claim, else the
        // stream holding the most gives up its oldest — never another
        // stream's only SSRC, which a colliding stream could then take.
        let claims = |of: StreamIndex| self.sending.iter().filter(|e| e.1 == of).count();
        let giver = if claims(stream) > 0 {
            stream
        } else {
            self.sending
                .iter()
                .map(|e| e.1)
                .max_by_key(|&s| claims(s))
                .unwrap_or(stream)
        };
        if let Some(slot) = self.sending.iter().position(|e| e.1 == giver) {
            // Oldest first: the rest move down, the new claim goes last.
            self.sending.copy_within(slot + 1.., slot);
            self.sending[LEARNED_SSRCS - 1] = (ssrc, stream);
        }
        true
    }

    /// The member (its index in `members`) an SSRC is tied to.
    fn learned(&self, ssrc: u32) -> Option<usize> {
        let stream = self.learned[..self.learned_count]
            .iter()
            .find(|(known, _)| *known == ssrc)
            .map(|&(_, stream)| stream)?;
        self.members.iter().position(|m| m.0 == stream)
    }

    /// Ties `ssrc` to `stream` (after its leg accepted a packet with it).
    pub fn learn(&mut self, ssrc: u32, stream: StreamIndex) {
        if !self.members.iter().any(|m| m.0 == stream) {
            return;
        }
        if let Some(slot) = self.learned[..self.learned_count]
            .iter_mut()
            .find(|(known, _)| *known == ssrc)
        {
            slot.1 = stream;
            return;
        }
        self.learned[self.learned_next] = (ssrc, stream);
        self.learned_next = (self.learned_next + 1) % LEARNED_SSRCS;
        self.learned_count = (self.learned_count + 1).min(LEARNED_SSRCS);
    }
}

/// The value of RTP header extension `id` in `packet` (RFC 8285, one- and
/// two-byte forms), every length checked against the packet.
pub fn header_extension(packet: &[u8], id: u8) -> Option<&[u8]> {
    if packet.len() < 12 || packet[0] & 0x10 == 0 {
        return None;
    }
    let start = 12 + 4 * usize::from(packet[0] & 0x0f);
    let header = packet.get(start..start + 4)?;
    let profile = u16::from_be_bytes([header[0], header[1]]);
    let words = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let body = packet.get(start + 4..start + 4 + 4 * words)?;
    let two_byte = match profile {
        0xBEDE => false,
        p if p & 0xFFF0 == 0x1000 => true,
        _ => return None,
    };
    let mut at = 0;
    while at < body.len() {
        let (element_id, len, value_at) = if two_byte {
            let element_id = body[at];
            if element_id == 0 {
                at += 1; // padding
                continue;
            }
            let len = usize::from(*body.get(at + 1)?);
            (element_id, len, at + 2)
        } else {
            let byte = body[at];
            let element_id = byte >> 4;
            if element_id == 0 {
                at += 1; // padding
                continue;
            }
            if element_id == 15 {
                return None; // RFC 8285 §4.2: stop reading
            }
            (element_id, usize::from(byte & 0x0f) + 1, at + 1)
        };
        let value = body.get(value_at..value_at + len)?;
        if element_id == id {
            return Some(value);
        }
        at = value_at + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICE: LegId = LegId::FIRST_DEVICE;

    fn tag(primary: usize, mid: &str, ext: Option<u8>) -> Option<BundleTag> {
        Some(BundleTag {
            primary: StreamIndex(primary),
            mid: Mid::new(mid).expect("mid"),
            mid_extension: ext,
        })
    }

    fn bundle(ext: Option<u8>) -> Bundle {
        let mut bundles = Bundle::from_tags(&[
            (StreamIndex(0), DEVICE, tag(0, "0", ext)),
            (StreamIndex(1), DEVICE, tag(0, "1", ext)),
        ])
        .expect("valid");
        assert_eq!(bundles.len(), 1);
        bundles.remove(0)
    }

    /// RTP with payload type `pt`, SSRC `ssrc` and, if given, a one-byte
    /// header extension `(id, value)`.
    fn rtp(pt: u8, ssrc: u32, extension: Option<(u8, &[u8])>) -> Vec<u8> {
        let mut p = vec![0x80, pt, 0, 1, 0, 0, 0, 1];
        p.extend_from_slice(&ssrc.to_be_bytes());
        if let Some((id, value)) = extension {
            p[0] |= 0x10;
            let mut body = vec![(id << 4) | (value.len() as u8 - 1)];
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
            p.extend_from_slice(&[0xBE, 0xDE]);
            p.extend_from_slice(&((body.len() / 4) as u16).to_be_bytes());
            p.extend_from_slice(&body);
        }
        p.extend_from_slice(&[0xAB; 20]);
        p
    }

    /// Audio (stream 0) takes 111, video (stream 1) takes 96.
    fn payloads(stream: StreamIndex, _: LegId, pt: u8) -> bool {
        matches!((stream.0, pt), (0, 111) | (1, 96))
    }

    #[test]
    fn routes_by_mid_then_by_the_ssrc_the_mid_taught() {
        let mut b = bundle(Some(4));
        // The MID wins over the payload type.
        let routed = b.route(&rtp(111, 7, Some((4, b"1"))), 40, payloads);
        assert_eq!(routed.stream, StreamIndex(1));
        assert_eq!(routed.learn, Some(7));
        // Nothing is learned until the leg accepted the packet.
        let routed = b.route(&rtp(96, 7, None), 40, |_, _, _| false);
        assert_eq!(routed.stream, StreamIndex(0), "unknown: the owner");
        b.learn(7, StreamIndex(1));
        let routed = b.route(&rtp(96, 7, None), 40, |_, _, _| false);
        assert_eq!((routed.stream, routed.learn), (StreamIndex(1), None));
        // An unknown MID goes to the owner, whose leg drops what it did
        // not negotiate.
        let routed = b.route(&rtp(96, 8, Some((4, b"9"))), 40, payloads);
        assert_eq!((routed.stream, routed.learn), (StreamIndex(0), None));
    }

    #[test]
    fn routes_by_payload_type_without_a_mid() {
        let b = bundle(None);
        assert_eq!(
            b.route(&rtp(96, 1, None), 32, payloads).stream,
            StreamIndex(1)
        );
        assert_eq!(
            b.route(&rtp(111, 2, None), 32, payloads).stream,
            StreamIndex(0)
        );
        // An extension with the MID id is ignored when none was negotiated.
        let routed = b.route(&rtp(111, 3, Some((4, b"1"))), 40, payloads);
        assert_eq!(routed.stream, StreamIndex(0));
    }

    #[test]
    fn rtcp_follows_its_senders_ssrc_and_stun_and_dtls_stay_with_the_owner() {
        let mut b = bundle(Some(4));
        b.learn(0x0102_0304, StreamIndex(1));
        let rr = [0x80, 201, 0, 1, 1, 2, 3, 4];
        assert_eq!(b.route(&rr, rr.len(), payloads).stream, StreamIndex(1));
        let other = [0x80, 201, 0, 1, 9, 9, 9, 9];
        assert_eq!(
            b.route(&other, other.len(), payloads).stream,
            StreamIndex(0)
        );
        for first in [0u8, 1, 20, 22, 63, 64, 200, 255] {
            let mut p = rtp(96, 0x0102_0304, None);
            p[0] = first;
            assert_eq!(b.route(&p, p.len(), payloads).stream, StreamIndex(0));
        }
    }

    #[test]
    fn malformed_headers_never_panic_and_go_to_the_owner() {
        let b = bundle(Some(4));
        let good = rtp(96, 5, Some((4, b"1")));
        for len in 0..good.len() {
            let _ = b.route(&good, len, payloads);
        }
        // Extension length claims more than the packet holds.
        let mut p = rtp(96, 5, Some((4, b"1")));
        p[14] = 0xFF;
        p[15] = 0xFF;
        assert_eq!(
            b.route(&p, p.len(), payloads).stream,
            StreamIndex(1),
            "by payload type"
        );
        // Element length past the block.
        let mut p = rtp(96, 5, Some((4, b"1")));
        p[16] = 0x4F;
        let _ = b.route(&p, p.len(), payloads);
        // Many contributing sources pushing the extension out of reach.
        let mut p = rtp(96, 5, Some((4, b"1")));
        p[0] |= 0x0f;
        let _ = b.route(&p, p.len(), payloads);
        // A length larger than the buffer.
        let _ = b.route(&good, good.len() + 100, payloads);
    }

    #[test]
    fn two_byte_extensions_are_read() {
        let mut p = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 5];
        p.extend_from_slice(&[0x10, 0x00, 0, 2, 0, 9, 2, b'a', b'b', 0, 0, 0]);
        assert_eq!(header_extension(&p, 9), Some(&b"ab"[..]));
        assert_eq!(header_extension(&p, 3), None);
    }

    #[test]
    fn tags_must_name_the_first_stream_and_distinct_mids() {
        let bad = Bundle::from_tags(&[
            (StreamIndex(0), DEVICE, tag(1, "0", None)),
            (StreamIndex(1), DEVICE, tag(1, "1", None)),
        ]);
        assert!(matches!(bad, Err(BundleError::BadPrimary { .. })));
        let dup = Bundle::from_tags(&[
            (StreamIndex(0), DEVICE, tag(0, "0", None)),
            (StreamIndex(1), DEVICE, tag(0, "0", None)),
        ]);
        assert_eq!(dup.err(), Some(BundleError::DuplicateMid));
        assert!(Mid::new("").is_none());
        assert!(Mid::new(&"x".repeat(MID_MAX + 1)).is_none());
    }

    #[test]
    fn one_ssrc_is_sent_by_one_stream_only() {
        let mut b = bundle(None);
        assert!(b.may_send(5, StreamIndex(0)));
        assert!(b.may_send(5, StreamIndex(0)));
        assert!(
            !b.may_send(5, StreamIndex(1)),
            "the video may not reuse the audio's SSRC"
        );
        assert!(b.may_send(6, StreamIndex(1)));
        // Churn on the audio never frees the video's SSRC for the audio.
        for ssrc in 100..200 {
            assert!(b.may_send(ssrc, StreamIndex(0)));
        }
        assert!(!b.may_send(6, StreamIndex(0)), "the video's claim survived");
        assert!(b.may_send(6, StreamIndex(1)));
    }

    #[test]
    fn the_learned_table_stays_bounded() {
        let mut b = bundle(None);
        for ssrc in 0..1000 {
            b.learn(ssrc, StreamIndex(1));
        }
        assert_eq!(b.learned_count, LEARNED_SSRCS);
        assert_eq!(b.learned(999), Some(1));
        b.forget(StreamIndex(1), DEVICE);
        assert_eq!(b.learned(999), None, "a forgotten member routes nothing");
        assert!(!b.has_followers());
        b.forget(StreamIndex(0), DEVICE);
        assert!(
            b.contains(StreamIndex(0), DEVICE),
            "the owner stays until its bundle goes"
        );
        assert_eq!(b.learned(0), None);
    }
}
