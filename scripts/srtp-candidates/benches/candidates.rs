//! Per-packet cost of the relay's work (unprotect with the inbound key, rewrite the
//! header, protect with the outbound key) for a 12 + 160 byte RTP packet, per SRTP
//! library and suite.
//!
//! `CARGO_BUILD_JOBS=1 cargo bench --bench candidates -- --warm-up-time 1 --measurement-time 3`

mod common;

use common::{Candidate, LibSrtp, Ours, Peer, SUITES, WebRtc, check, keys};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use baton_relay::core::srtp::{MasterKey, Suite};

fn bench<C: Candidate>(
    c: &mut Criterion,
    name: &str,
    suite: Suite,
    make: impl Fn(&MasterKey, &MasterKey) -> C,
) {
    let (inbound, outbound) = keys(suite);
    check(&mut make(&inbound, &outbound), suite);
    let mut candidate = make(&inbound, &outbound);
    let mut peer = Peer::new(&inbound);
    c.bench_function(&format!("relay/{}/{name}", suite.name()), |b| {
        // Fresh inbound packets come from untimed setup; only the relay step is timed.
        b.iter_batched_ref(
            || peer.next(),
            |packet| candidate.relay(packet),
            BatchSize::SmallInput,
        )
    });
}

fn candidates(c: &mut Criterion) {
    if std::arch::is_x86_feature_detected!("aes") {
        eprintln!(
            "CPU has AES-NI and PCLMULQDQ: {}",
            std::arch::is_x86_feature_detected!("pclmulqdq")
        );
    } else {
        eprintln!("CPU has no AES-NI: software AES");
    }
    for suite in SUITES {
        bench(c, "ours", suite, Ours::new);
        bench(c, "webrtc-srtp", suite, WebRtc::new);
        bench(c, "libsrtp2", suite, LibSrtp::new);
    }
}

criterion_group!(benches, candidates);
criterion_main!(benches);
