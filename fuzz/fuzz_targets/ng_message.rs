//! ng messages: cookie splitting, the bencode structure walk and decoding.
//! No panic (deep nesting included), and a decoded dictionary re-encodes.
#![no_main]

use baton_control::ng::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire::extent(data);
    let Ok((cookie, body)) = wire::split(data) else {
        return;
    };
    if let Ok(dict) = wire::decode(body) {
        let value = serde_bencode::value::Value::Dict(dict);
        let encoded = wire::encode(cookie, &value);
        assert!(encoded.starts_with(cookie.as_bytes()));
    }
});
