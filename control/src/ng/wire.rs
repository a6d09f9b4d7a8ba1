//! The ng wire format: `<cookie> <bencoded dictionary>`.
//!
//! Decoding and encoding are the `serde_bencode` crate's. Two things it does
//! not do are done here: it recurses once per nesting level (a datagram of
//! 60 000 `l` bytes would overflow the stack), and it cannot say where one
//! value ends in a byte stream (ng over TCP has no other framing). So
//! [`extent`] walks the structure first, iteratively, with a depth limit,
//! and only a complete, shallow value reaches the decoder.

use std::collections::HashMap;

use serde_bencode::value::Value;

/// Deepest nesting accepted; real messages use three levels.
pub const MAX_DEPTH: usize = 32;
/// Longest cookie accepted.
pub const MAX_COOKIE: usize = 256;

/// A decoded request: its top-level dictionary.
pub type Dict = HashMap<Vec<u8>, Value>;

/// Where the bencoded value starting at `bytes[0]` ends: `Ok(Some(len))`,
/// `Ok(None)` if `bytes` holds only its beginning, or why it is malformed.
pub fn extent(bytes: &[u8]) -> Result<Option<usize>, String> {
    let mut pos = 0;
    let mut depth = 0usize;
    loop {
        let Some(&byte) = bytes.get(pos) else {
            return Ok(None);
        };
        match byte {
            b'd' | b'l' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!("nested deeper than {MAX_DEPTH} levels"));
                }
                pos += 1;
                continue;
            }
            b'e' if depth > 0 => {
                depth -= 1;
                pos += 1;
            }
            b'i' => {
                let Some(end) = bytes[pos..].iter().position(|&b| b == b'e') else {
                    return Ok(None);
                };
                let digits = &bytes[pos + 1..pos + end];
                let valid = !digits.is_empty()
                    && digits
                        .iter()
                        .enumerate()
                        .all(|(i, &b)| b.is_ascii_digit() || (i == 0 && b == b'-'));
                if !valid || digits.len() > 20 {
                    return Err(format!("bad integer at byte {pos}"));
                }
                pos += end + 1;
            }
            b'0'..=b'9' => {
                let Some(colon) = bytes[pos..].iter().position(|&b| b == b':') else {
                    return Ok(None);
                };
                let length: usize = std::str::from_utf8(&bytes[pos..pos + colon])
                    .ok()
                    .filter(|digits| {
                        digits.len() <= 9 && digits.bytes().all(|b| b.is_ascii_digit())
                    })
                    .and_then(|digits| digits.parse().ok())
                    .ok_or_else(|| format!("bad string length at byte {pos}"))?;
                pos += colon + 1 + length;
                if pos > bytes.len() {
                    return Ok(None);
                }
            }
            other => {
                return Err(format!("unexpected byte 0x{other:02x} at {pos}"));
            }
        }
        if depth == 0 {
            return Ok(Some(pos));
        }
    }
}

/// Splits a message into its cookie and its bencoded body.
pub fn split(message: &[u8]) -> Result<(&str, &[u8]), String> {
    let space = message
        .iter()
        .take(MAX_COOKIE + 1)
        .position(|&b| b == b' ')
        .ok_or("no cookie: a message is `<cookie> <bencoded dictionary>`")?;
    let cookie = std::str::from_utf8(&message[..space])
        .ok()
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or("the cookie must be printable ASCII")?;
    Ok((cookie, &message[space + 1..]))
}

/// Decodes a complete body into its dictionary.
pub fn decode(body: &[u8]) -> Result<Dict, String> {
    match extent(body)? {
        None => return Err("truncated bencode".to_owned()),
        Some(end) if body[end..].iter().any(|b| !b.is_ascii_whitespace()) => {
            return Err(format!("{} bytes after the dictionary", body.len() - end));
        }
        Some(_) => {}
    }
    match serde_bencode::from_bytes::<Value>(body) {
        Ok(Value::Dict(dict)) => Ok(dict),
        Ok(Value::Bytes(_) | Value::Int(_) | Value::List(_)) => {
            Err("the message is not a dictionary".to_owned())
        }
        Err(e) => Err(format!("bad bencode: {e}")),
    }
}

/// `<cookie> <reply>` as bytes.
pub fn encode(cookie: &str, reply: &Value) -> Vec<u8> {
    let body = serde_bencode::to_bytes(reply).unwrap_or_else(|_| {
        // Only non-string map keys fail, and replies use string keys.
        b"d6:result5:error12:error-reason21:reply encoding failede".to_vec()
    });
    let mut out = Vec::with_capacity(cookie.len() + 1 + body.len());
    out.extend_from_slice(cookie.as_bytes());
    out.push(b' ');
    out.extend_from_slice(&body);
    out
}

/// A string value.
pub fn text(value: impl Into<String>) -> Value {
    Value::Bytes(value.into().into_bytes())
}

/// A dictionary value from pairs.
pub fn dict<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Dict(
        pairs
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect(),
    )
}

/// An error reply, as rtpengine writes them. The reason is bounded and
/// printable whatever input it quotes ([`crate::status::bounded`]).
pub fn error(reason: impl Into<String>) -> Value {
    dict([
        ("result", text("error")),
        ("error-reason", text(crate::status::bounded(reason.into()))),
    ])
}

/// A key's value as a string, if it is one.
pub fn get_str<'a>(dict: &'a Dict, key: &str) -> Option<&'a str> {
    match dict.get(key.as_bytes()) {
        Some(Value::Bytes(bytes)) => std::str::from_utf8(bytes).ok(),
        Some(Value::Int(_) | Value::List(_) | Value::Dict(_)) | None => None,
    }
}

/// A key's value as a list of strings (a single string counts as one).
pub fn get_list(dict: &Dict, key: &str) -> Vec<String> {
    match dict.get(key.as_bytes()) {
        Some(Value::List(items)) => items
            .iter()
            .filter_map(|item| match item {
                Value::Bytes(bytes) => String::from_utf8(bytes.clone()).ok(),
                Value::Int(i) => Some(i.to_string()),
                Value::List(_) | Value::Dict(_) => None,
            })
            .collect(),
        Some(Value::Bytes(bytes)) => String::from_utf8(bytes.clone()).into_iter().collect(),
        Some(Value::Int(_) | Value::Dict(_)) | None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_finds_the_end_or_asks_for_more() {
        assert_eq!(extent(b"d7:command4:pinge"), Ok(Some(17)));
        assert_eq!(extent(b"d7:command4:pinge trailing"), Ok(Some(17)));
        assert_eq!(extent(b"li-3ei0e3:abce"), Ok(Some(14)));
        for partial in [
            &b"d7:comm"[..],
            b"d7:command4:ping",
            b"li12",
            b"d3:sdp204:v=0\r\n",
        ] {
            assert_eq!(extent(partial), Ok(None), "{partial:?}");
        }
        for bad in [&b"x"[..], b"i1x2e", b"d3:abc", b"ie", b"99999999999:x"] {
            let result = extent(bad);
            assert!(result.is_err() || result == Ok(None), "{bad:?}: {result:?}");
        }
        assert!(extent(b"x").is_err());
        assert!(extent(b"i1x2e").is_err());
    }

    #[test]
    fn deep_nesting_is_refused_before_decoding() {
        let deep = "l".repeat(60_000) + &"e".repeat(60_000);
        let error = decode(deep.as_bytes()).expect_err("too deep");
        assert!(error.contains("nested"), "{error}");
        let ok = "l".repeat(MAX_DEPTH) + &"e".repeat(MAX_DEPTH);
        assert_eq!(extent(ok.as_bytes()), Ok(Some(2 * MAX_DEPTH)));
    }

    #[test]
    fn unsorted_keys_as_kamailio_sends_them_decode() {
        let dict = decode(b"d7:command5:offer7:call-id3:abc8:from-tag1:fe").expect("decodes");
        assert_eq!(get_str(&dict, "command"), Some("offer"));
        assert_eq!(get_str(&dict, "call-id"), Some("abc"));
        assert!(decode(b"l4:pinge").is_err(), "not a dictionary");
        assert!(decode(b"d7:command4:pinge xyz").is_err(), "trailing bytes");
        assert!(decode(b"d7:command4:ping").is_err(), "truncated");
    }

    #[test]
    fn messages_split_at_the_first_space_and_replies_echo_the_cookie() {
        let (cookie, body) = split(b"0_24855_0 d7:command4:pinge").expect("splits");
        assert_eq!((cookie, body), ("0_24855_0", &b"d7:command4:pinge"[..]));
        assert!(split(b"nospace").is_err());
        assert!(split(b" d7:command4:pinge").is_err());
        let reply = encode("c1", &dict([("result", text("pong"))]));
        assert_eq!(reply, b"c1 d6:result4:ponge");
        let list = Dict::from([(b"flags".to_vec(), Value::List(vec![text("a"), text("b")]))]);
        assert_eq!(get_list(&list, "flags"), ["a", "b"]);
    }
}
