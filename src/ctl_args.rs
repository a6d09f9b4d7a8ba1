//! Parsing of `baton ctl`'s shorthand arguments into protocol messages.

use baton_proto::v1;

/// Parses `KIND:PT/NAME/CLOCK[/CHANNELS][,PT/NAME/CLOCK…]`; a static
/// payload type may be given as just its number (`audio:0,8`).
pub fn parse_stream(text: &str) -> Result<(String, Vec<v1::Codec>), String> {
    let (kind, codecs) = text
        .split_once(':')
        .ok_or_else(|| format!("stream {text:?}: expected KIND:PT/NAME/CLOCK[,…]"))?;
    if kind.is_empty() {
        return Err(format!(
            "stream {text:?}: missing media kind (audio, video…)"
        ));
    }
    let codecs = codecs
        .split(',')
        .map(|codec| parse_codec(codec).map_err(|e| format!("stream {text:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((kind.to_owned(), codecs))
}

fn parse_codec(text: &str) -> Result<v1::Codec, String> {
    let parts: Vec<&str> = text.split('/').collect();
    let payload_type: u32 = parts[0]
        .parse()
        .ok()
        .filter(|pt| *pt <= 127)
        .ok_or_else(|| format!("payload type {:?} is not 0-127", parts[0]))?;
    match parts.as_slice() {
        [_] => baton_control::sip::sdp::static_codec(payload_type)
            .ok_or_else(|| format!("payload type {payload_type} is dynamic: give PT/NAME/CLOCK")),
        [_, name, clock, rest @ ..] if rest.len() <= 1 => {
            let clock_rate = clock
                .parse()
                .ok()
                .filter(|c| *c > 0)
                .ok_or_else(|| format!("clock rate {clock:?} is not a positive number"))?;
            let channels = match rest {
                [c] => c
                    .parse()
                    .map_err(|_| format!("channels {c:?} is not a number"))?,
                _ => 0,
            };
            Ok(v1::Codec {
                payload_type,
                name: (*name).to_owned(),
                clock_rate,
                channels,
                fmtp: String::new(),
            })
        }
        _ => Err(format!("codec {text:?}: expected PT/NAME/CLOCK[/CHANNELS]")),
    }
}

/// Parses `RTP[,RTCP]` addresses into an endpoint (checked by the relay).
pub fn parse_peer(text: &str) -> v1::Endpoint {
    let (rtp, rtcp) = text.split_once(',').unwrap_or((text, ""));
    v1::Endpoint {
        rtp: rtp.to_owned(),
        rtcp: rtcp.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_static_codecs() {
        let (kind, codecs) =
            parse_stream("audio:0,101/telephone-event/8000,111/opus/48000/2").expect("valid");
        assert_eq!(kind, "audio");
        assert_eq!(codecs[0].name, "PCMU");
        assert_eq!(codecs[0].clock_rate, 8000);
        assert_eq!(
            (codecs[1].payload_type, codecs[1].name.as_str()),
            (101, "telephone-event")
        );
        assert_eq!((codecs[2].clock_rate, codecs[2].channels), (48000, 2));
    }

    #[test]
    fn refuses_malformed_streams() {
        for bad in [
            "audio",
            ":0",
            "audio:96",
            "audio:200/X/8000",
            "audio:96/X/0",
            "audio:96/X",
            "audio:96/X/8000/2/9",
        ] {
            assert!(parse_stream(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn peer_with_and_without_rtcp() {
        assert_eq!(parse_peer("127.0.0.1:4000").rtcp, "");
        assert_eq!(
            parse_peer("127.0.0.1:4000,127.0.0.1:4009").rtcp,
            "127.0.0.1:4009"
        );
    }
}
