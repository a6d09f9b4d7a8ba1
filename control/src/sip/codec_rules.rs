//! rtpengine's codec manipulations that need no transcoding, on a body
//! going out: `strip` and `mask` leave codecs out of it, `except` keeps
//! some of them whatever is stripped, and `offer` keeps some and puts them
//! first. Without transcoding `mask` is `strip`: a masked codec could
//! only have been used by transcoding to it.
//!
//! A codec is named as rtpengine names it: `PCMU`, `opus/48000`,
//! `opus/48000/2` (name, clock rate, channels; names compared without
//! case, as RFC 4855 §3 reads them), a payload type number, or `all`
//! (and `full`) to strip every codec not kept. A line whose every format
//! would go keeps its list, as in rtpengine: a body must offer something.

use baton_proto::v1;

use super::sdp::Sdp;
use crate::status::excerpt;

/// Most codec names one request may give.
pub const MAX_CODEC_NAMES: usize = 64;
/// Longest codec name read.
const MAX_CODEC_NAME: usize = 64;

/// How one codec is named.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    PayloadType(u32),
    Codec {
        name: String,
        clock_rate: Option<u32>,
        channels: Option<u32>,
    },
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "codec {} is not NAME[/RATE[/CHANNELS]] or a payload type number",
                excerpt(text)
            )
        };
        if text.is_empty() || text.len() > MAX_CODEC_NAME {
            return Err(bad());
        }
        if let Ok(pt) = text.parse::<u32>() {
            return if pt <= 127 {
                Ok(Self::PayloadType(pt))
            } else {
                Err(bad())
            };
        }
        let mut parts = text.split('/');
        let name = parts.next().unwrap_or_default();
        let number = |part: Option<&str>| -> Result<Option<u32>, String> {
            part.map(|p| p.parse::<u32>().map_err(|_| bad()))
                .transpose()
        };
        let clock_rate = number(parts.next())?;
        let channels = number(parts.next())?;
        if parts.next().is_some()
            || name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(bad());
        }
        Ok(Self::Codec {
            name: name.to_owned(),
            clock_rate,
            channels,
        })
    }

    fn matches(&self, codec: &v1::Codec) -> bool {
        match self {
            Self::PayloadType(pt) => codec.payload_type == *pt,
            Self::Codec {
                name,
                clock_rate,
                channels,
            } => {
                codec.name.eq_ignore_ascii_case(name)
                    && clock_rate.is_none_or(|rate| rate == codec.clock_rate)
                    && channels.is_none_or(|n| n == codec.channels.max(1))
            }
        }
    }
}

/// The codec manipulations of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodecRules {
    strip_all: bool,
    strip: Vec<Pattern>,
    except: Vec<Pattern>,
    offer: Vec<Pattern>,
}

impl CodecRules {
    /// Reads the names given to `strip`, `mask`, `offer` and `except`.
    pub fn read(
        strip: &[String],
        mask: &[String],
        offer: &[String],
        except: &[String],
    ) -> Result<Self, String> {
        if strip.len() + mask.len() + offer.len() + except.len() > MAX_CODEC_NAMES {
            return Err(format!(
                "more than {MAX_CODEC_NAMES} codec names in one request"
            ));
        }
        let mut rules = Self::default();
        for name in strip.iter().chain(mask) {
            if name == "all" || name == "full" {
                rules.strip_all = true;
            } else {
                rules.strip.push(Pattern::parse(name)?);
            }
        }
        rules.offer = offer
            .iter()
            .map(|n| Pattern::parse(n))
            .collect::<Result<_, _>>()?;
        rules.except = except
            .iter()
            .map(|n| Pattern::parse(n))
            .collect::<Result<_, _>>()?;
        Ok(rules)
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Applies the rules to every RTP line of `body` that carries media.
    pub fn apply(&self, body: &mut Sdp) {
        if self.is_empty() {
            return;
        }
        for index in 0..body.media_count() {
            let Ok(media) = body.media(index) else {
                continue;
            };
            if !media.is_rtp() || media.is_disabled() || media.codecs.len() != media.formats.len() {
                continue;
            }
            let kept = self.formats(&media.codecs);
            if !kept.is_empty() {
                let formats: Vec<String> =
                    kept.iter().map(|c| c.payload_type.to_string()).collect();
                if formats != media.formats {
                    body.set_formats(index, &formats);
                }
            }
        }
    }

    /// The codecs of one line that stay, in the order they go out.
    fn formats<'a>(&self, codecs: &'a [v1::Codec]) -> Vec<&'a v1::Codec> {
        let kept_by =
            |patterns: &[Pattern], codec: &v1::Codec| patterns.iter().any(|p| p.matches(codec));
        let stays = |codec: &v1::Codec| {
            kept_by(&self.offer, codec)
                || kept_by(&self.except, codec)
                || !(self.strip_all || kept_by(&self.strip, codec))
        };
        let mut out: Vec<&v1::Codec> = Vec::with_capacity(codecs.len());
        for pattern in &self.offer {
            for codec in codecs {
                if pattern.matches(codec) && !out.iter().any(|c| std::ptr::eq(*c, codec)) {
                    out.push(codec);
                }
            }
        }
        for codec in codecs {
            if stays(codec) && !out.iter().any(|c| std::ptr::eq(*c, codec)) {
                out.push(codec);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
        m=audio 4000 RTP/AVP 96 0 8 101\r\na=rtpmap:96 opus/48000/2\r\na=fmtp:96 useinbandfec=1\r\n\
        a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n\
        a=rtcp-fb:96 nack\r\na=rtcp-fb:* ccm fir\r\na=sendrecv\r\n\
        m=video 0 RTP/AVP 97\r\n";

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn apply(strip: &[&str], mask: &[&str], offer: &[&str], except: &[&str]) -> String {
        let rules = CodecRules::read(&names(strip), &names(mask), &names(offer), &names(except))
            .expect("rules");
        let mut body = Sdp::parse(BODY).expect("parses");
        rules.apply(&mut body);
        body.render()
    }

    #[test]
    fn strip_leaves_a_codec_and_its_attribute_lines_out() {
        let out = apply(&["opus"], &[], &[], &[]);
        assert!(out.contains("m=audio 4000 RTP/AVP 0 8 101\r\n"), "{out}");
        assert!(
            !out.contains("a=rtpmap:96")
                && !out.contains("a=fmtp:96")
                && !out.contains("a=rtcp-fb:96")
        );
        assert!(
            out.contains("a=rtcp-fb:* ccm fir") && out.contains("a=fmtp:101 0-16"),
            "{out}"
        );
        // By payload type, by rate, case-blind; a wrong rate or channel count matches nothing.
        assert!(apply(&["8"], &[], &[], &[]).contains("RTP/AVP 96 0 101\r\n"));
        assert!(apply(&["pcmu/8000"], &[], &[], &[]).contains("RTP/AVP 96 8 101\r\n"));
        assert!(apply(&["opus/48000/1"], &[], &[], &[]).contains("RTP/AVP 96 0 8 101\r\n"));
        assert!(apply(&[], &["opus/48000/2"], &[], &[]).contains("RTP/AVP 0 8 101\r\n"));
    }

    #[test]
    fn strip_all_keeps_what_except_and_offer_name_and_offer_goes_first() {
        assert!(
            apply(&["all"], &[], &[], &["PCMA", "telephone-event"]).contains("RTP/AVP 8 101\r\n")
        );
        assert!(apply(&["full"], &[], &["PCMA", "PCMU"], &[]).contains("RTP/AVP 8 0\r\n"));
        // `offer` alone reorders.
        assert!(
            apply(&[], &[], &["telephone-event", "PCMU"], &[]).contains("RTP/AVP 101 0 96 8\r\n")
        );
        // A codec the body does not have is not added.
        assert!(apply(&["all"], &[], &["G722"], &["PCMU"]).contains("RTP/AVP 0\r\n"));
    }

    #[test]
    fn a_line_is_never_left_without_formats_and_rejected_lines_are_untouched() {
        let out = apply(&["all"], &[], &[], &[]);
        assert!(out.contains("m=audio 4000 RTP/AVP 96 0 8 101\r\n"), "{out}");
        assert!(out.contains("m=video 0 RTP/AVP 97\r\n"), "{out}");
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [
            "",
            "opus/x",
            "PCMU/8000/1/64000",
            "128",
            "a b",
            &"x".repeat(65),
        ] {
            let error = CodecRules::read(&names(&[bad]), &[], &[], &[]).expect_err(bad);
            assert!(error.contains("is not NAME"), "{error}");
        }
        let many = vec!["PCMU".to_owned(); MAX_CODEC_NAMES + 1];
        assert!(CodecRules::read(&many, &[], &[], &[]).is_err());
    }
}
