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
//! RTCP runs at a few packets a second per stream, so this path uses the
//! `rtcp` crate (which allocates) instead of hand-written views.

use bytes::Bytes;
use rtcp::goodbye::Goodbye;
use rtcp::packet::Packet;
use rtcp::receiver_report::ReceiverReport;
use rtcp::reception_report::ReceptionReport;
use rtcp::sender_report::SenderReport;
use rtcp::source_description::{SdesType, SourceDescription};

use crate::continuity::Continuity;

/// RTCP packet type of BYE.
const RTCP_BYE: u8 = 203;
/// RTCP packet type of SDES.
const RTCP_SDES: u8 = 202;

type Boxed = Box<dyn Packet + Send + Sync>;

/// What the translator remembers about a stream.
#[derive(Debug, Clone, Default)]
pub struct RtcpState {
    first_cname: Option<Bytes>,
}

/// Why RTCP could not be translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TranslateError {
    /// The `rtcp` crate could not parse or rebuild it.
    Malformed,
    /// Nothing is left to send (it was only a BYE).
    Empty,
}

/// Packet types of the sub-packets of a structurally checked compound.
fn sub_packet_types(datagram: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut offset = 0;
    std::iter::from_fn(move || {
        let header = datagram.get(offset..offset + 4)?;
        let words = usize::from(u16::from_be_bytes([header[2], header[3]]));
        offset += 4 * (words + 1);
        Some(header[1])
    })
}

fn parse(datagram: &[u8]) -> Result<Vec<Boxed>, TranslateError> {
    let mut bytes = Bytes::copy_from_slice(datagram);
    rtcp::packet::unmarshal(&mut bytes).map_err(|_| TranslateError::Malformed)
}

fn emit(packets: &[Boxed], buf: &mut [u8]) -> Result<usize, TranslateError> {
    if packets.is_empty() {
        return Err(TranslateError::Empty);
    }
    let bytes = rtcp::packet::marshal(packets).map_err(|_| TranslateError::Malformed)?;
    let out = buf
        .get_mut(..bytes.len())
        .ok_or(TranslateError::Malformed)?;
    out.copy_from_slice(&bytes);
    Ok(bytes.len())
}

/// Translates RTCP from the user's current device toward the remote, in
/// place in `buf` (whose first `len` bytes are the datagram). Returns the new
/// length.
pub fn toward_remote(
    buf: &mut [u8],
    len: usize,
    continuity: &Continuity,
    state: &mut RtcpState,
) -> Result<usize, TranslateError> {
    let datagram = buf.get(..len).ok_or(TranslateError::Malformed)?;
    let has_bye = sub_packet_types(datagram).any(|t| t == RTCP_BYE);
    let learns_cname =
        state.first_cname.is_none() && sub_packet_types(datagram).any(|t| t == RTCP_SDES);
    if continuity.is_identity() && !has_bye && !learns_cname {
        return Ok(len);
    }
    let packets = parse(datagram)?;
    let (outward, device, ts_offset) = match (continuity.outward_ssrc(), continuity.current()) {
        (Some(outward), Some((device, _, ts_offset))) => (outward, device, ts_offset),
        // No RTP sent yet: nothing to map to.
        _ => (0, 0, 0),
    };
    let mapped = |ssrc: u32| {
        if outward != 0 && ssrc == device {
            outward
        } else {
            ssrc
        }
    };
    let mut out: Vec<Boxed> = Vec::with_capacity(packets.len());
    for packet in packets {
        let any = packet.as_any();
        if let Some(sr) = any.downcast_ref::<SenderReport>() {
            let mut sr = sr.clone();
            if outward != 0 && sr.ssrc == device {
                sr.ssrc = outward;
                sr.rtp_time = sr.rtp_time.wrapping_add(ts_offset);
                (sr.packet_count, sr.octet_count) = continuity.sent_counts();
            }
            out.push(Box::new(sr));
        } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
            let mut rr = rr.clone();
            rr.ssrc = mapped(rr.ssrc);
            out.push(Box::new(rr));
        } else if let Some(sdes) = any.downcast_ref::<SourceDescription>() {
            let mut sdes = sdes.clone();
            for chunk in &mut sdes.chunks {
                chunk.source = mapped(chunk.source);
                for item in &mut chunk.items {
                    if item.sdes_type == SdesType::SdesCname {
                        match &state.first_cname {
                            Some(first) => item.text = first.clone(),
                            None => state.first_cname = Some(item.text.clone()),
                        }
                    }
                }
            }
            out.push(Box::new(sdes));
        } else if any.downcast_ref::<Goodbye>().is_some() {
            // The outward stream goes on with the next device.
        } else {
            out.push(packet);
        }
    }
    emit(&out, buf)
}

/// Translates RTCP from the remote toward the user's current device, in
/// place: report blocks about the outward SSRC are mapped back to the
/// device's SSRC and sequence space (RFC 3550 §7.2).
pub fn toward_user(
    buf: &mut [u8],
    len: usize,
    continuity: &Continuity,
) -> Result<usize, TranslateError> {
    if continuity.is_identity() {
        return Ok(len);
    }
    let (Some(outward), Some((device, _, _))) = (continuity.outward_ssrc(), continuity.current())
    else {
        return Ok(len);
    };
    let datagram = buf.get(..len).ok_or(TranslateError::Malformed)?;
    let packets = parse(datagram)?;
    let map_blocks = |reports: &mut Vec<ReceptionReport>| {
        for block in reports.iter_mut().filter(|b| b.ssrc == outward) {
            block.ssrc = device;
            if let Some(own) = continuity.to_source_extended(block.last_sequence_number) {
                block.last_sequence_number = own;
            }
        }
    };
    let mut out: Vec<Boxed> = Vec::with_capacity(packets.len());
    for packet in packets {
        let any = packet.as_any();
        if let Some(sr) = any.downcast_ref::<SenderReport>() {
            let mut sr = sr.clone();
            map_blocks(&mut sr.reports);
            out.push(Box::new(sr));
        } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
            let mut rr = rr.clone();
            map_blocks(&mut rr.reports);
            out.push(Box::new(rr));
        } else {
            out.push(packet);
        }
    }
    emit(&out, buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::RtpView;
    use rtcp::source_description::{SourceDescriptionChunk, SourceDescriptionItem};
    use std::time::{Duration, Instant};

    fn rtp(seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 0];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0; 160]);
        p
    }

    fn send(c: &mut Continuity, now: Instant, leg: usize, seq: u16, ts: u32, ssrc: u32) {
        let mut bytes = rtp(seq, ts, ssrc);
        let mut view = RtpView::new_checked(&mut bytes[..]).expect("valid");
        c.rewrite(now, leg, &mut view, 8000).expect("sent");
    }

    fn compound(packets: Vec<Boxed>) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let bytes = rtcp::packet::marshal(&packets).expect("marshal");
        buf[..bytes.len()].copy_from_slice(&bytes);
        buf.truncate(bytes.len());
        buf
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
        first.resize(2048, 0);
        toward_remote(&mut first, len, &c, &mut state).expect("learned");
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
        buf.resize(2048, 0);
        let new_len = toward_remote(&mut buf, len, c, state)?;
        parse(&buf[..new_len])
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
        buf.resize(2048, 0);
        let len =
            toward_remote(&mut buf, original.len(), &c, &mut RtcpState::default()).expect("ok");
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
            reports: vec![block, other],
            ..Default::default()
        };
        let mut buf = compound(vec![Box::new(rr)]);
        let len = buf.len();
        buf.resize(2048, 0);
        let new_len = toward_user(&mut buf, len, &c).expect("translated");
        let out = parse(&buf[..new_len]).expect("parse");
        let rr = out[0]
            .as_any()
            .downcast_ref::<ReceiverReport>()
            .expect("RR");
        assert_eq!(rr.ssrc, 0xFACE);
        assert_eq!(rr.reports[0].ssrc, 0xB, "B's own SSRC");
        assert_eq!(
            rr.reports[0].last_sequence_number, 5004,
            "B's own sequence space"
        );
        assert_eq!(rr.reports[1].ssrc, 0x77, "blocks about others untouched");
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
        junk.resize(2048, 0);
        assert_eq!(
            toward_remote(&mut junk, 8, &c, &mut state),
            Err(TranslateError::Malformed)
        );
    }
}
