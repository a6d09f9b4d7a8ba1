//! The SIP URI parser, name-addr parsing, GRUU classification and RFC 3261
//! §19.1.4 equivalence: no panic, and a URI is equivalent to itself and to
//! its own printed form.
#![no_main]

use baton_control::sip::uri::{SipUri, classify, parse_name_addr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(uri) = text.parse::<SipUri>() {
        assert!(uri.equivalent(&uri));
        let _ = classify(&uri);
        if let Ok(again) = uri.to_string().parse::<SipUri>() {
            assert!(uri.equivalent(&again), "{uri} vs {again}");
        }
    }
    let _ = parse_name_addr(text);
});
