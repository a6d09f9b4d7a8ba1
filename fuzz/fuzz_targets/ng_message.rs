//! ng messages: cookie splitting, the bencode structure walk and decoding,
//! then the vocabulary (every key and flag in one spelling, `rtpp-flags`
//! read as Kamailio's module reads a flag string). No panic (deep nesting
//! included), a decoded dictionary re-encodes, and a request read once
//! reads the same again.
#![no_main]

use baton_control::ng::{vocabulary, wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire::extent(data);
    let Ok((cookie, body)) = wire::split(data) else {
        return;
    };
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = vocabulary::parse_flag_string(text);
    }
    if let Ok(dict) = wire::decode(body) {
        if let Ok(once) = vocabulary::canonical(&dict) {
            assert_eq!(vocabulary::canonical(&once).as_ref(), Ok(&once));
        }
        let value = serde_bencode::value::Value::Dict(dict);
        let encoded = wire::encode(cookie, &value);
        assert!(encoded.starts_with(cookie.as_bytes()));
    }
});
