//! Heap allocations per relayed packet for each candidate, counted by a global
//! allocator. Allocations made inside C (libsrtp, NSS) bypass it and are not counted;
//! run under `valgrind` to see those (`total heap usage` grows with the packet count).
//!
//! `cargo run --release --example alloc_per_packet [candidate suite packets]`

#[path = "../benches/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Candidate, LibSrtp, Ours, Peer, SUITES, WebRtc, keys};
use baton_relay::core::srtp::{MasterKey, Suite};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System`; the caller upholds the rest.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Relays `count` packets after a warm-up; returns (allocations, bytes) per packet.
fn measure<C: Candidate>(
    suite: Suite,
    make: impl Fn(&MasterKey, &MasterKey) -> C,
    count: usize,
) -> (f64, f64) {
    let (inbound, outbound) = keys(suite);
    common::check(&mut make(&inbound, &outbound), suite);
    let mut candidate = make(&inbound, &outbound);
    let mut peer = Peer::new(&inbound);
    for _ in 0..100 {
        candidate.relay(&mut peer.next());
    }
    let mut packets: Vec<Vec<u8>> = (0..count).map(|_| peer.next()).collect();
    let (a0, b0) = (
        ALLOCATIONS.load(Ordering::SeqCst),
        BYTES.load(Ordering::SeqCst),
    );
    for packet in &mut packets {
        candidate.relay(packet);
    }
    let (a1, b1) = (
        ALLOCATIONS.load(Ordering::SeqCst),
        BYTES.load(Ordering::SeqCst),
    );
    (
        (a1 - a0) as f64 / count as f64,
        (b1 - b0) as f64 / count as f64,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only = args.first().map(String::as_str);
    let suite_filter = args.get(1).and_then(|s| Suite::from_name(s));
    let count = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(10_000);
    println!("candidate      suite                    allocs/packet  bytes/packet");
    for suite in SUITES
        .into_iter()
        .filter(|s| suite_filter.is_none_or(|f| f == *s))
    {
        let rows: [(&str, (f64, f64)); 3] = [
            (
                "ours",
                if only.is_none_or(|o| o == "ours") {
                    measure(suite, Ours::new, count)
                } else {
                    (f64::NAN, f64::NAN)
                },
            ),
            (
                "webrtc-srtp",
                if only.is_none_or(|o| o == "webrtc-srtp") {
                    measure(suite, WebRtc::new, count)
                } else {
                    (f64::NAN, f64::NAN)
                },
            ),
            (
                "libsrtp2",
                if only.is_none_or(|o| o == "libsrtp2") {
                    measure(suite, LibSrtp::new, count)
                } else {
                    (f64::NAN, f64::NAN)
                },
            ),
        ];
        for (name, (allocs, bytes)) in rows {
            if !allocs.is_nan() {
                println!(
                    "{name:<14} {:<24} {allocs:>13.2} {bytes:>13.1}",
                    suite.name()
                );
            }
        }
    }
}
