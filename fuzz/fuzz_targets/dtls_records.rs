//! DTLS records from the ICE-selected peer: whatever arrives, the
//! handshake engine the relay uses (as its DTLS thread drives it: records
//! in, output drained) never panics, and never reports keys for a peer
//! that did not complete a handshake.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use baton_relay::io::dtls::DtlsIdentity;
use libfuzzer_sys::fuzz_target;

fn identity() -> &'static DtlsIdentity {
    static IDENTITY: OnceLock<DtlsIdentity> = OnceLock::new();
    IDENTITY.get_or_init(|| DtlsIdentity::generate().expect("a certificate"))
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let config = Arc::new(dimpl::Config::default());
    let mut dtls = dimpl::Dtls::new_auto(config, identity().engine_certificate(), now);
    let mut out = vec![0u8; 4096];
    // Records separated by 0xFF 0xFF, as if they came one datagram each.
    for (i, record) in data.split(|b| *b == 0xff).take(16).enumerate() {
        let at = now + Duration::from_millis(10 * i as u64);
        if dtls.handle_timeout(at).is_err() || dtls.handle_packet(record).is_err() {
            return;
        }
        loop {
            match dtls.poll_output(&mut out) {
                dimpl::Output::Timeout(_) => break,
                dimpl::Output::KeyingMaterial(..) | dimpl::Output::Connected => {
                    panic!("keys from a peer that never completed a handshake")
                }
                dimpl::Output::BufferTooSmall { needed } => out.resize(needed.min(65_536), 0),
                _ => {}
            }
        }
    }
});
