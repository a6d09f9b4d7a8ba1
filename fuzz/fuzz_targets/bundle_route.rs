//! Datagrams on a BUNDLE transport: routing reads only headers a sender
//! controls (first byte, payload type, SSRC, the MID header extension) and
//! must never panic, never read past the datagram, and always name a
//! member of the bundle; the header-extension reader agrees with itself
//! on any length it is given.
#![no_main]

use baton_relay::core::bundle::{Bundle, BundleTag, Mid, header_extension};
use baton_relay::{LegId, StreamIndex};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(&id) = data.first() else { return };
    let tag = |mid: &str| {
        Some(BundleTag {
            primary: StreamIndex(0),
            mid: Mid::new(mid).expect("mid"),
            mid_extension: Some(id.max(1)),
        })
    };
    let device = LegId::FIRST_DEVICE;
    let Ok(mut bundles) = Bundle::from_tags(&[
        (StreamIndex(0), device, tag("0")),
        (StreamIndex(1), device, tag("1")),
        (StreamIndex(2), device, tag("video")),
    ]) else {
        return;
    };
    let mut bundle = bundles.remove(0);
    let packet = &data[1..];
    for len in [packet.len(), packet.len() / 2, packet.len() + 64] {
        let routed = bundle.route(packet, len, |stream, _, pt| usize::from(pt % 3) == stream.0);
        assert!(routed.stream.0 < 3);
        assert_eq!(routed.leg, device);
        if let Some(ssrc) = routed.learn {
            bundle.learn(ssrc, routed.stream);
        }
    }
    if let Some(value) = header_extension(packet, id) {
        // A value is a slice of the packet, after the fixed header.
        let start = value.as_ptr() as usize - packet.as_ptr() as usize;
        assert!(start >= 12 && start + value.len() <= packet.len());
    }
});
