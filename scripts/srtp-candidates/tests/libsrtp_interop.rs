//! Interoperability with libsrtp 2 (the system `libsrtp2`, through the `srtp` crate):
//! each side opens what the other protects, and both protect to the same bytes.

use srtp::{CryptoPolicy, Session, StreamPolicy};
use baton_relay::core::srtp::{MAX_OVERHEAD, MasterKey, SrtpError, SrtpReceiver, SrtpSender, Suite};

fn policy(suite: Suite) -> CryptoPolicy {
    match suite {
        Suite::AesCm128HmacSha1_80 => CryptoPolicy::aes_cm_128_hmac_sha1_80(),
        Suite::AesCm128HmacSha1_32 => CryptoPolicy::aes_cm_128_hmac_sha1_32(),
        Suite::AesCm256HmacSha1_80 => CryptoPolicy::aes_cm_256_hmac_sha1_80(),
        Suite::AesCm256HmacSha1_32 => CryptoPolicy::aes_cm_256_hmac_sha1_32(),
        Suite::AeadAes128Gcm => CryptoPolicy::aes_gcm_128_16_auth(),
        Suite::AeadAes256Gcm => CryptoPolicy::aes_gcm_256_16_auth(),
    }
}

/// libsrtp sessions for `key`; `rtcp` overrides the SRTCP policy.
fn libsrtp(key: &MasterKey, rtcp: Option<CryptoPolicy>) -> (Session, Session) {
    let rtp = policy(key.suite());
    // libsrtp uses the RTP policy's 80-bit tag for SRTCP also in the _32 suites.
    let rtcp = rtcp.unwrap_or(match key.suite() {
        Suite::AesCm128HmacSha1_32 => CryptoPolicy::aes_cm_128_hmac_sha1_80(),
        Suite::AesCm256HmacSha1_32 => CryptoPolicy::aes_cm_256_hmac_sha1_80(),
        suite => policy(suite),
    });
    let stream = StreamPolicy {
        rtp,
        rtcp,
        key: key.key_and_salt(),
        ..StreamPolicy::default()
    };
    (
        Session::with_outbound_template(stream).expect("libsrtp outbound"),
        Session::with_inbound_template(stream).expect("libsrtp inbound"),
    )
}

fn rtp(seq: u16, ssrc: u32, csrcs: u8, ext_words: u16, payload: usize, padding: u8) -> Vec<u8> {
    let mut p = vec![0x80 | csrcs | if ext_words > 0 { 0x10 } else { 0 }, 111];
    if padding > 0 {
        p[0] |= 0x20;
    }
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    for c in 0..u32::from(csrcs) {
        p.extend_from_slice(&(0x2000 + c).to_be_bytes());
    }
    if ext_words > 0 {
        p.extend_from_slice(&[0xbe, 0xde]);
        p.extend_from_slice(&ext_words.to_be_bytes());
        p.extend((0..ext_words * 4).map(|i| if i % 4 == 0 { 0x12 } else { i as u8 }));
    }
    p.extend((0..payload).map(|i| (i as u8) ^ (seq as u8)));
    if padding > 0 {
        p.extend(std::iter::repeat_n(0, usize::from(padding) - 1));
        p.push(padding);
    }
    p
}

fn rtcp(ssrc: u32, n: u8) -> Vec<u8> {
    let mut p = vec![0x80, 200, 0, 6];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..20).map(|i| n.wrapping_mul(31).wrapping_add(i)));
    p
}

fn ours_protect(sender: &mut SrtpSender, plain: &[u8], rtcp: bool) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + MAX_OVERHEAD, 0);
    let len = if rtcp {
        sender.protect_rtcp(&mut buf, plain.len())
    } else {
        sender.protect_rtp(&mut buf, plain.len())
    }
    .expect("protect");
    buf.truncate(len);
    buf
}

fn ours_accept(receiver: &mut SrtpReceiver, wire: &[u8], rtcp: bool) -> Result<Vec<u8>, SrtpError> {
    let mut buf = wire.to_vec();
    let token = if rtcp {
        receiver.unprotect_rtcp(&mut buf, wire.len())
    } else {
        receiver.unprotect_rtp(&mut buf, wire.len())
    }?;
    receiver.commit(&token);
    buf.truncate(token.len());
    Ok(buf)
}

#[test]
fn rtp_both_ways_with_libsrtp() {
    for suite in Suite::ALL {
        let key = MasterKey::random(suite);
        let (mut lib_tx, mut lib_rx) = libsrtp(&key, None);
        let mut ours_tx = SrtpSender::new(&key);
        let mut ours_rx = SrtpReceiver::new(&key);
        let mut packets = vec![
            rtp(300, 0x51, 0, 0, 160, 0),
            rtp(301, 0x51, 4, 0, 160, 0),
            rtp(302, 0x51, 0, 3, 160, 0),
            rtp(303, 0x51, 1, 1, 155, 5),
        ];
        // 20 packets across a sequence wrap: the ROC becomes 1 on both sides.
        packets.extend((0..20u16).map(|n| rtp(65530u16.wrapping_add(n), 0x52, 0, 1, 80, 0)));
        for plain in &packets {
            let ours = ours_protect(&mut ours_tx, plain, false);
            let mut theirs = plain.clone();
            lib_tx.protect(&mut theirs).expect("libsrtp protect");
            assert_eq!(ours, theirs, "{suite}: protected bytes differ");
            let mut opened = ours.clone();
            lib_rx.unprotect(&mut opened).expect("libsrtp unprotect");
            assert_eq!(&opened, plain, "{suite}");
            assert_eq!(
                ours_accept(&mut ours_rx, &theirs, false).as_ref(),
                Ok(plain),
                "{suite}"
            );
        }
        assert_eq!(lib_tx.get_stream_roc(0x52).expect("roc"), 1);
        assert_eq!(lib_rx.get_stream_roc(0x52).expect("roc"), 1);
    }
}

#[test]
fn rtcp_both_ways_with_libsrtp() {
    for suite in Suite::ALL {
        let key = MasterKey::random(suite);
        let (mut lib_tx, mut lib_rx) = libsrtp(&key, None);
        let mut ours_tx = SrtpSender::new(&key);
        let mut ours_rx = SrtpReceiver::new(&key);
        // libsrtp's first SRTCP index is 1, ours 0: spend index 0 to stay in step.
        let mut first = ours_protect(&mut ours_tx, &rtcp(0x61, 0), true);
        lib_rx
            .unprotect_rtcp(&mut first)
            .expect("libsrtp unprotect_rtcp index 0");
        for n in 1..5 {
            let plain = rtcp(0x61, n);
            let ours = ours_protect(&mut ours_tx, &plain, true);
            let mut theirs = plain.clone();
            lib_tx
                .protect_rtcp(&mut theirs)
                .expect("libsrtp protect_rtcp");
            assert_eq!(ours, theirs, "{suite}: protected SRTCP differs");
            let mut opened = ours.clone();
            lib_rx
                .unprotect_rtcp(&mut opened)
                .expect("libsrtp unprotect_rtcp");
            assert_eq!(opened, plain);
            assert_eq!(ours_accept(&mut ours_rx, &theirs, true), Ok(plain));
        }
    }
}

/// A GCM policy that authenticates only: the crate exposes it for 8-byte tags alone.
fn gcm_auth_only(full: CryptoPolicy) -> CryptoPolicy {
    let mut raw = full.into_raw();
    raw.sec_serv = srtp::sys::srtp_sec_serv_t_sec_serv_auth;
    // SAFETY: a policy libsrtp initialised, with only the service set narrowed to one
    // libsrtp itself uses for GCM (as in its `_8_only_auth` policies).
    unsafe { CryptoPolicy::from_raw(raw) }
}

/// libsrtp sends SRTCP with E = 0 when its RTCP policy authenticates only.
#[test]
fn unencrypted_srtcp_from_libsrtp() {
    let cases = [
        (
            Suite::AesCm128HmacSha1_80,
            CryptoPolicy::null_cipher_hmac_sha1_80(),
        ),
        (
            Suite::AesCm128HmacSha1_32,
            CryptoPolicy::null_cipher_hmac_sha1_80(),
        ),
        (
            Suite::AeadAes128Gcm,
            gcm_auth_only(CryptoPolicy::aes_gcm_128_16_auth()),
        ),
        (
            Suite::AeadAes256Gcm,
            gcm_auth_only(CryptoPolicy::aes_gcm_256_16_auth()),
        ),
    ];
    for (suite, rtcp_policy) in cases {
        let key = MasterKey::random(suite);
        let (mut lib_tx, _) = libsrtp(&key, Some(rtcp_policy));
        let mut ours_rx = SrtpReceiver::new(&key);
        for n in 0..4 {
            let plain = rtcp(0x71, n);
            let mut wire = plain.clone();
            lib_tx
                .protect_rtcp(&mut wire)
                .expect("libsrtp protect_rtcp");
            let word_at = match suite {
                Suite::AeadAes128Gcm | Suite::AeadAes256Gcm => wire.len() - 4,
                _ => wire.len() - 14,
            };
            let word = &wire[word_at..];
            assert_eq!(word[0] & 0x80, 0, "{suite}: E flag clear");
            assert_eq!(&wire[..plain.len()], &plain[..], "{suite}: sent in clear");
            let mut forged = wire.clone();
            forged[12] ^= 1;
            assert_eq!(
                ours_accept(&mut ours_rx, &forged, true),
                Err(SrtpError::AuthFailed)
            );
            assert_eq!(
                ours_accept(&mut ours_rx, &wire, true),
                Ok(plain.clone()),
                "{suite}"
            );
            assert_eq!(
                ours_accept(&mut ours_rx, &wire, true),
                Err(SrtpError::Replayed)
            );
        }
    }
}
