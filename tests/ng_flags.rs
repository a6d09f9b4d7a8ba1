//! Issue 19, honest flags: through the real binary, every ng key and flag
//! baton does not implement is refused by name and leaves nothing behind;
//! the ones it implements (codec manipulations, `media-address`,
//! `loop-protect`, `replace`, `rtpp-flags`, `delete` with `fast`) change
//! what goes out as rtpengine defines them.

mod common;

use baton_control::ng::wire::{dict, get_str, text};
use baton_control::sip::sdp::Sdp;
use common::media::{Peer, rtp};
use common::ng::{Proxy, flags, media_addr, reason, relay_with_ng, request, result, sdp_of};
use serde_bencode::value::Value;

/// A body with PCMU, PCMA and telephone-event from `media`.
fn three_codecs(origin: &str, ip: &str, port: u16) -> String {
    format!(
        "v=0\r\no={origin} 1 1 IN IP4 {ip}\r\ns=talk\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n"
    )
}

fn offer(call_id: &str, sdp: &str, extra: Vec<(&'static str, Value)>) -> Value {
    let mut pairs = vec![
        ("command", text("offer")),
        ("call-id", text(call_id)),
        ("from-tag", text("a-tag")),
        ("sdp", text(sdp)),
    ];
    pairs.extend(extra);
    request(pairs)
}

fn calls(proxy: &mut Proxy) -> usize {
    match proxy
        .call(&dict([("command", text("list"))]))
        .get(b"calls".as_slice())
    {
        Some(Value::List(calls)) => calls.len(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_word_baton_does_not_implement_is_refused_by_name_and_leaves_no_call() {
    let (_relay, ng, _) = relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let sdp = three_codecs("a", "127.0.0.1", 6000);
    let cases: Vec<(Vec<(&'static str, Value)>, &str)> = vec![
        (vec![("flags", flags(&["siprec"]))], "\"siprec\""),
        (
            vec![("flags", flags(&["no-such-flag"]))],
            "\"no-such-flag\"",
        ),
        (vec![("flags", flags(&["T.38-force"]))], "\"T.38-force\""),
        (vec![("T.38", flags(&["decode"]))], "\"T.38\""),
        (
            vec![("direction", flags(&["inside", "outside"]))],
            "unknown interface \"inside\"",
        ),
        (
            vec![("call-id", text("twice")), ("call id", text("again"))],
            "given twice",
        ),
        (
            vec![("record call", text("maybe"))],
            "record-call=\"maybe\"",
        ),
        (
            vec![("delete-delay", Value::Int(30))],
            "delete-delay=\"30\"",
        ),
        (
            vec![("rtpp-flags", text("trust-address transcode-G722"))],
            "codec \"transcode\"",
        ),
        (
            vec![("codec", request(vec![("transcode", flags(&["G722"]))]))],
            "\"transcode\"",
        ),
        (
            vec![("replace", flags(&["zero-address"]))],
            "\"zero-address\"",
        ),
        (vec![("frobnicate", text("yes"))], "\"frobnicate\""),
        (
            vec![("media address", text("not-an-address"))],
            "\"not-an-address\"",
        ),
        (
            vec![("flags", flags(&["codec-strip-PCMU/x"]))],
            "\"PCMU/x\"",
        ),
    ];
    for (extra, named) in cases {
        let reply = proxy.call(&offer("refused", &sdp, extra));
        assert_eq!(result(&reply), "error", "{named}: {reply:?}");
        let why = reason(&reply);
        assert!(why.contains(named), "{named}: {why}");
    }
    assert_eq!(calls(&mut proxy), 0, "no refused offer left a call");
    // Advisory words are accepted and change nothing.
    let reply = proxy.call(&offer(
        "advisory",
        &sdp,
        vec![
            ("via-branch", text("z9hG4bK-1")),
            ("sip-message-type", text("sip_request")),
            ("label", text("caller")),
            (
                "flags",
                flags(&["reorder-codecs", "allow-transcoding", "debug"]),
            ),
            // rtpengine's legacy words, on a relay without such interfaces.
            ("direction", flags(&["internal", "external"])),
        ],
    ));
    assert_eq!(
        sdp_of(&reply).media(0).expect("m").formats,
        ["0", "8", "101"]
    );
}

#[test]
fn codec_manipulations_shape_the_body_that_goes_out_and_media_flows() {
    let (_relay, ng, _) = relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let (a, bob) = (Peer::v4(), Peer::v4());
    let sdp = three_codecs("a", "127.0.0.1", a.addr().port());
    // As flags, as the `codec` dictionary, and in a Kamailio flag string.
    for (call, extra, formats) in [
        (
            "strip-flag",
            vec![("flags", flags(&["codec-strip-PCMU", "codec-mask-8"]))],
            vec!["101"],
        ),
        (
            "offer-dict",
            vec![(
                "codec",
                request(vec![
                    ("strip", flags(&["all"])),
                    ("offer", flags(&["PCMA", "PCMU/8000"])),
                ]),
            )],
            vec!["8", "0"],
        ),
        (
            "except-string",
            vec![(
                "rtpp-flags",
                text("codec-strip-all codec-except-telephone-event codec-except-PCMA/8000"),
            )],
            vec!["8", "101"],
        ),
        (
            "all-stripped",
            vec![("flags", flags(&["codec-strip-all"]))],
            vec!["0", "8", "101"],
        ),
    ] {
        let to_bob = sdp_of(&proxy.call(&offer(call, &sdp, extra)));
        assert_eq!(to_bob.media(0).expect("m").formats, formats, "{call}");
        let text = to_bob.render();
        if !formats.contains(&"0") {
            assert!(!text.contains("a=rtpmap:0 "), "{call}: {text}");
        }
    }
    // The call whose offer kept PCMA and PCMU carries PCMA both ways.
    let to_bob = Sdp::parse(&{
        let reply = proxy.call(&offer(
            "offer-dict",
            &sdp,
            vec![(
                "codec",
                request(vec![
                    ("strip", flags(&["all"])),
                    ("offer", flags(&["PCMA"])),
                ]),
            )],
        ));
        get_str(&reply, "sdp").expect("sdp").to_owned()
    })
    .expect("sdp");
    let answer = format!(
        "v=0\r\no=bob 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n",
        bob.addr().port()
    );
    let to_a = sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text("offer-dict")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(answer)),
    ])));
    a.send(
        &media_addr(&to_a).to_string(),
        &rtp(8, 1, 160, 0xA, &[0xD5; 160]),
    );
    assert_eq!(bob.recv().0[1] & 0x7F, 8);
    bob.send(
        &media_addr(&to_bob).to_string(),
        &rtp(8, 1, 160, 0xB, &[0xD5; 160]),
    );
    assert_eq!(a.recv().0[1] & 0x7F, 8);
}

#[test]
fn media_address_overrides_the_address_in_the_body() {
    let (_relay, ng, _) = relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let (a, bob) = (Peer::v4(), Peer::v4());
    // The body names 127.0.0.2 (loopback, where nobody listens); the
    // proxy knows A's media is at 127.0.0.1.
    let to_bob = sdp_of(&proxy.call(&offer(
        "media-address",
        &three_codecs("a", "127.0.0.2", a.addr().port()),
        vec![("media address", text("127.0.0.1"))],
    )));
    let to_a = sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text("media-address")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        (
            "sdp",
            text(three_codecs("bob", "127.0.0.1", bob.addr().port())),
        ),
    ])));
    bob.send(
        &media_addr(&to_bob).to_string(),
        &rtp(0, 1, 160, 0xB, &[0xFF; 160]),
    );
    let (packet, _) = a.recv();
    assert_eq!(packet[8..12], 0xBu32.to_be_bytes(), "A hears bob");
    let _ = to_a;
}

#[test]
fn loop_protect_leaves_a_body_this_relay_wrote_untouched() {
    let (_relay, ng, _) = relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let sdp = three_codecs("a", "127.0.0.1", 6000);
    let once = proxy.call(&offer(
        "loop-1",
        &sdp,
        vec![("flags", flags(&["loop-protect"]))],
    ));
    let once = get_str(&once, "sdp").expect("sdp").to_owned();
    assert!(once.contains("\r\na=baton:"), "{once}");
    // The proxy loops the INVITE back through the relay (another Call-ID
    // after a B2BUA, say): the body comes back as it is, and no call is
    // made for it.
    let again = proxy.call(&offer(
        "loop-2",
        &once,
        vec![("flags", flags(&["loop-protect"]))],
    ));
    assert_eq!(get_str(&again, "sdp"), Some(once.as_str()));
    assert_eq!(calls(&mut proxy), 1);
    // Without the flag, the body is a body like any other.
    let plain = sdp_of(&proxy.call(&offer("loop-3", &once, vec![])));
    assert_ne!(plain.render(), once);
    assert_eq!(calls(&mut proxy), 2);
    // On a known call the mark changes nothing by itself: a re-offer
    // carrying it is a re-offer.
    let reoffer = proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text("loop-3")),
        ("from-tag", text("a-tag")),
        ("sdp", text(once.as_str())),
        ("flags", flags(&["loop-protect"])),
    ]));
    assert_ne!(get_str(&reoffer, "sdp"), Some(once.as_str()), "{reoffer:?}");
}

#[test]
fn replace_values_and_rtpp_flags_act_as_rtpengine_defines_them() {
    let (_relay, ng, _) = relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let sdp = three_codecs("a", "127.0.0.1", 6000);
    for (call, extra) in [
        (
            "origin-full",
            vec![(
                "replace",
                flags(&["origin-full", "session-name", "SDP version"]),
            )],
        ),
        (
            "flag-string",
            vec![(
                "rtpp-flags",
                text("replace-origin replace-session-connection ICE=remove trust-address"),
            )],
        ),
    ] {
        let out = sdp_of(&proxy.call(&offer(call, &sdp, extra)));
        let text = out.render();
        let relay_ip = media_addr(&out).ip();
        assert!(
            text.contains(&format!("o=a 1 1 IN IP4 {relay_ip}\r\n")),
            "{call}: {text}"
        );
        assert!(text.contains("s=talk\r\n"), "{call}: {text}");
    }
}

#[test]
fn the_flag_string_overrides_keys_and_values_are_checked_on_every_command() {
    let (_relay, ng, _) = relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let _ = sdp_of(&proxy.call(&offer(
        "string",
        &three_codecs("a", "127.0.0.1", 6000),
        vec![],
    )));
    // rtpengine reads `rtpp-flags` after the keys: its call-id wins.
    let reply = proxy.call(&request(vec![
        ("command", text("delete")),
        ("call-id", text("some-other-call")),
        ("rtpp-flags", text("call-id=string fatal")),
    ]));
    assert_eq!(result(&reply), "ok", "{reply:?}");
    assert_eq!(calls(&mut proxy), 0);
    // `delete delay` other than 0 is refused on the command it is for.
    let _ = sdp_of(&proxy.call(&offer(
        "delayed",
        &three_codecs("a", "127.0.0.1", 6000),
        vec![],
    )));
    let refused = proxy.call(&request(vec![
        ("command", text("delete")),
        ("call-id", text("delayed")),
        ("delete delay", Value::Int(30)),
    ]));
    assert!(
        reason(&refused).contains("delete-delay=\"30\""),
        "{refused:?}"
    );
    assert_eq!(calls(&mut proxy), 1, "nothing deleted");
}

#[test]
fn delete_fast_leaves_the_statistics_out() {
    let (_relay, ng, _) = relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let _ = sdp_of(&proxy.call(&offer(
        "fast",
        &three_codecs("a", "127.0.0.1", 6000),
        vec![],
    )));
    let reply = proxy.call(&request(vec![
        ("command", text("delete")),
        ("call-id", text("fast")),
        ("flags", flags(&["fast"])),
    ]));
    assert_eq!(result(&reply), "ok");
    assert!(!reply.contains_key(b"totals".as_slice()), "{reply:?}");
    assert_eq!(calls(&mut proxy), 0);
}
