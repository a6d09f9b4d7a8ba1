//! The SDP model: any body parses or is refused with a line number in
//! range; a parsed body rewritten to point at the relay parses again and
//! keeps its m= lines. Every a=crypto line is read (refused or declined,
//! never a panic), and an SRTP line given the relay's own key carries that
//! one line and no other.
#![no_main]

use baton_control::sip::codec_rules::CodecRules;
use baton_control::sip::crypto::{self, SdesPolicy};
use baton_control::sip::sdp::{RelayEndpoint, Sdp};
use baton_relay::core::srtp::{MasterKey, Suite};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut body = match Sdp::parse(text) {
        Ok(body) => body,
        Err(error) => {
            assert!(error.line <= text.split('\n').count(), "{error}");
            return;
        }
    };
    let relay = RelayEndpoint {
        rtp: "192.0.2.1:40000".parse().expect("addr"),
        rtcp: "192.0.2.1:40001".parse().expect("addr"),
    };
    let count = body.media_count();
    let policy = SdesPolicy::default();
    let key = MasterKey::new(Suite::AesCm128HmacSha1_80, &[7; 30]).expect("key");
    let mut srtp = Vec::new();
    for index in 0..count {
        match body.media(index) {
            Ok(m) if m.is_relayable() && !m.is_disabled() => {
                for (value, _) in &m.crypto {
                    let _ = crypto::parse(value, &policy);
                }
                body.point_at(index, relay, Some(relay.rtp.ip()));
                body.set_transport(index, Some("RTP/SAVP"), &[crypto::render(1, &key, &policy)]);
                srtp.push(index);
            }
            Ok(_) | Err(_) => body.disable(index),
        }
    }
    // rtpengine's codec manipulations leave every line some format.
    let rules = CodecRules::read(
        &["PCMU".to_owned(), "96".to_owned()],
        &[],
        &["opus/48000".to_owned()],
        &[],
    )
    .expect("rules");
    rules.apply(&mut body);
    body.finish_session(Some(relay.rtp.ip()));
    body.set_version(body.version().wrapping_add(1));
    let out = body.render();
    let again = Sdp::parse(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(again.media_count(), count);
    for index in srtp {
        if let Ok(m) = again.media(index) {
            assert_eq!(m.crypto.len(), 1, "{out}");
        }
    }
});
