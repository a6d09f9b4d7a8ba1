//! RTCP translation both ways, before and after a change of source, on any
//! compound up to 1 500 bytes: nothing may panic, toward the device the
//! length never changes, and whatever is forwarded is a well-formed compound
//! (so the far end's parser meets nothing we made worse).
#![no_main]

use std::time::{Duration, Instant};

use baton_relay::core::continuity::Continuity;
use baton_relay::core::rtcp_translate::{self, RtcpState};
use baton_relay::core::rtp::{self, RtpRepr, RtpView};
use libfuzzer_sys::fuzz_target;

const BUF_LEN: usize = 2048;

fn send(c: &mut Continuity, now: Instant, leg: usize, seq: u16, ssrc: u32) {
    let mut p = RtpRepr {
        sequence: seq,
        timestamp: u32::from(seq) * 160,
        ssrc,
        ..Default::default()
    }
    .to_vec(&[0; 160]);
    if let Ok(mut view) = RtpView::new_checked(&mut p[..]) {
        let _ = c.rewrite(now, leg, &mut view, 8000);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, compound)) = data.split_first() else {
        return;
    };
    let compound = &compound[..compound.len().min(1500)];
    let t0 = Instant::now();
    let mut continuity = Continuity::default();
    // The device's SSRCs come from the input too, so reports name them.
    let ssrc = |i: usize| {
        compound
            .get(4 * i..4 * i + 4)
            .map_or(0xA, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    if flags & 1 != 0 {
        send(&mut continuity, t0, 0, 100, ssrc(1));
    }
    if flags & 2 != 0 {
        // A second source: from here on everything is rewritten.
        send(&mut continuity, t0 + Duration::from_millis(40), 1, 9000, ssrc(2));
    }
    let mut state = RtcpState::default();
    // The remote's numbers toward the device restarted once: its reports
    // about them are shifted back.
    let mut shift = baton_relay::core::continuity::SequenceShift::default();
    shift.rewrite(0xF, 5000);
    shift.rewrite(0xF, 5);
    if flags & 4 != 0 {
        // Learn a first CNAME from the input itself.
        let mut buf = [0u8; BUF_LEN];
        buf[..compound.len()].copy_from_slice(compound);
        let _ = rtcp_translate::toward_remote(&mut buf, compound.len(), &continuity, &shift, &mut state);
    }

    let mut buf = [0u8; BUF_LEN];
    buf[..compound.len()].copy_from_slice(compound);
    if let Ok(len) = rtcp_translate::toward_remote(&mut buf, compound.len(), &continuity, &shift, &mut state)
    {
        assert!(len <= BUF_LEN);
        assert!(rtp::check_rtcp(&buf[..len]).is_ok(), "forwarded a malformed compound");
    }

    let mut buf = [0u8; BUF_LEN];
    buf[..compound.len()].copy_from_slice(compound);
    if let Ok((len, _)) = rtcp_translate::toward_user(&mut buf, compound.len(), &continuity, &mut state)
    {
        // Feedback may shrink (stale NACKs, dropped padding), never grow.
        assert!(len <= compound.len());
        assert!(rtp::check_rtcp(&buf[..len]).is_ok(), "forwarded a malformed compound");
    }
});
