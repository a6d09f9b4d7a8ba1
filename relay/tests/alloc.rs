//! The RTP path allocates nothing, plain or SRTP: counted with a global allocator, over
//! the session core's paths (the switch included) and over a real worker forwarding through real
//! sockets. One test function, so nothing else in this process allocates
//! while it counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton_relay::core::rtp::RtpRepr;
use baton_relay::core::session::{PendingLeg, Session, StreamParams, SwitchMode, Timeouts};
use baton_relay::core::srtp::{MAX_OVERHEAD, MasterKey, SrtpSender, Suite};
use baton_relay::core::stream::{
    Component, LegConfig, LegCrypto, LegKeys, PayloadMap, StreamConfig, Verdict,
};
use baton_relay::{
    Dataplane, DataplaneConfig, LegId, SessionId, StreamIndex, StreamSetup, TransferId, WorkerId,
};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The same, per thread: the session path runs on the test's thread,
    /// and the process's other threads (the test harness's) allocate when
    /// they please on a loaded machine.
    static THREAD_ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// While set, allocations are also counted per OS thread (below).
static BY_THREAD_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// (thread id, allocations) per thread that allocated while counting.
static BY_THREAD: [(AtomicU64, AtomicU64); 32] =
    [const { (AtomicU64::new(0), AtomicU64::new(0)) }; 32];

fn count_by_thread() {
    // SAFETY: gettid(2) takes nothing and cannot fail; it does not allocate
    // (`std::thread::current()` may, and this runs inside the allocator).
    #[allow(unsafe_code)]
    let tid = u64::try_from(unsafe { libc::gettid() }).unwrap_or(0);
    for (slot, count) in &BY_THREAD {
        let claimed = slot
            .compare_exchange(0, tid, Ordering::Relaxed, Ordering::Relaxed)
            .map_or_else(|current| current == tid, |_| true);
        if claimed {
            count.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
}

fn count_one() {
    if BY_THREAD_ON.load(Ordering::Relaxed) {
        count_by_thread();
    }
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    // A const-initialized Cell needs no allocation nor destructor; during
    // thread teardown it is simply not counted.
    let _ = THREAD_ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: delegates to the system allocator unchanged; only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A receive buffer as the worker has: room for the SRTP trailer.
const BUF: usize = 2048 + MAX_OVERHEAD;

fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Allocations made on this thread so far.
fn thread_allocations() -> u64 {
    THREAD_ALLOCATIONS.with(std::cell::Cell::get)
}

fn rtp(buf: &mut [u8], pt: u8, seq: u16, ts: u32, ssrc: u32) -> usize {
    RtpRepr {
        marker: false,
        payload_type: pt,
        sequence: seq,
        timestamp: ts,
        ssrc,
    }
    .emit(buf, &[0xd5; 160])
    .expect("fits")
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("address")
}

/// Every RTP path of a session: pass-through, toward the user with a fork
/// to a pending device, the first-packet switch itself, and toward the
/// remote after it (rewritten). With `srtp`, every leg is SRTP: each packet
/// is authenticated, decrypted and re-encrypted (RTCP too).
fn session_paths(srtp: bool) -> u64 {
    let t0 = Instant::now();
    let key = |n: u8| MasterKey::new(Suite::AesCm128HmacSha1_80, &[n; 30]).expect("key");
    // Per party: the key it sends with and the relay's key toward it.
    let crypto = |n: u8| {
        if srtp {
            LegCrypto::Srtp(LegKeys {
                peer: key(n),
                relay: key(n + 100),
            })
        } else {
            LegCrypto::Plain
        }
    };
    let leg = |peer: &str, n: u8| LegConfig {
        rtcp_mux: true,
        peer_rtp: Some(addr(peer)),
        peer_rtcp: None,
        peer_ip: None,
        crypto: crypto(n),
        ice: None,
        dtls: None,
    };
    let params = StreamParams {
        config: StreamConfig {
            learning_window: Duration::from_secs(3),
            relearn: false,
            asymmetric: false,
        },
        clock_rates: vec![(0, 8000)],
        telephone_event: None,
        formats: Vec::new(),
        device: leg("10.0.0.1:4000", 1),
        remote: leg("10.0.0.2:5000", 2),
    };
    let timeouts = Timeouts {
        media: Duration::from_secs(60),
        setup: Duration::from_secs(60),
        hold: Duration::from_secs(60),
    };
    let mut session = Session::new(t0, SessionId(1), &[params], timeouts);
    let s0 = StreamIndex(0);
    let mut buf = [0u8; BUF];
    let mut fork = [0u8; BUF];
    // What each sender's SRTP stack does before the packet reaches us.
    let mut senders = [1u8, 2, 3].map(|n| SrtpSender::new(&key(n)));
    let mut packet = |buf: &mut [u8], from: usize, seq: u16, ts: u32, ssrc: u32| {
        let len = rtp(buf, 0, seq, ts, ssrc);
        if srtp {
            senders[from].protect_rtp(buf, len).expect("protect")
        } else {
            len
        }
    };
    // Warm up, then open a transfer (control-plane work, may allocate).
    let len = packet(&mut buf, 0, 1, 0, 0xA);
    session.handle_packet(
        t0,
        s0,
        LegId::FIRST_DEVICE,
        Component::Rtp,
        addr("10.0.0.1:4000"),
        &mut buf,
        len,
        &mut fork,
    );
    let b = session
        .begin_transfer(
            t0,
            TransferId(1),
            &[PendingLeg {
                config: leg("10.0.0.3:6000", 3),
                payloads: PayloadMap::identity([0], None),
            }],
            SwitchMode::FirstPacket,
            Duration::from_secs(60),
        )
        .expect("transfer")[0];

    let before = thread_allocations();
    let mut forwarded = 0;
    for i in 0..10_000u32 {
        let now = t0 + Duration::from_millis(u64::from(i));
        let len = packet(&mut buf, 0, 2 + i as u16, 160 * i, 0xA);
        let verdict = session.handle_packet(
            now,
            s0,
            LegId::FIRST_DEVICE,
            Component::Rtp,
            addr("10.0.0.1:4000"),
            &mut buf,
            len,
            &mut fork,
        );
        forwarded += u32::from(matches!(verdict, Verdict::Forward { .. }));
        let len = packet(&mut buf, 1, i as u16, 160 * i, 0xF);
        let verdict = session.handle_packet(
            now,
            s0,
            LegId::REMOTE,
            Component::Rtp,
            addr("10.0.0.2:5000"),
            &mut buf,
            len,
            &mut fork,
        );
        assert!(matches!(verdict, Verdict::Forward { fork: Some(_), .. }));
    }
    // B's first packet switches; B is rewritten from then on.
    for i in 0..10_000u32 {
        let now = t0 + Duration::from_secs(11) + Duration::from_millis(u64::from(i));
        let len = packet(&mut buf, 2, 500 + i as u16, 77 + 160 * i, 0xB);
        let verdict = session.handle_packet(
            now,
            s0,
            b,
            Component::Rtp,
            addr("10.0.0.3:6000"),
            &mut buf,
            len,
            &mut fork,
        );
        forwarded += u32::from(matches!(verdict, Verdict::Forward { .. }));
        while session.poll_event().is_some() {}
    }
    assert_eq!(forwarded, 20_000);
    thread_allocations() - before
}

/// Allocations counted per thread on this thread and the media workers.
fn packet_path_allocations() -> u64 {
    // SAFETY: as in `count_by_thread`.
    #[allow(unsafe_code)]
    let me = u64::try_from(unsafe { libc::gettid() }).unwrap_or(0);
    BY_THREAD
        .iter()
        .filter(|(tid, _)| {
            let tid = tid.load(Ordering::Relaxed);
            tid != 0
                && (tid == me
                    || std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                        .is_ok_and(|name| name.starts_with("baton-worker")))
        })
        .map(|(_, count)| count.load(Ordering::Relaxed))
        .sum()
}

/// A real worker forwarding through real sockets.
fn worker_path() -> u64 {
    let config = DataplaneConfig {
        workers: 1,
        media_ips: vec!["127.0.0.1".parse().expect("ip")],
        interface_names: Vec::new(),
        ports: (47000, 47999),
        timeouts: Timeouts {
            media: Duration::from_secs(60),
            setup: Duration::from_secs(60),
            hold: Duration::from_secs(60),
        },
        command_queue: 16,
        busy_poll: false,
        dtls_identity: None,
        kernel_forwarding: false,
        user_fast_path: true,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let (events, _events_rx) = tokio::sync::mpsc::channel(64);
    let dataplane = Dataplane::start(&config, events).expect("start");
    let device = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let remote = UdpSocket::bind("127.0.0.1:0").expect("bind");
    remote
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let leg = |peer: SocketAddr| LegConfig {
        rtcp_mux: true,
        peer_rtp: Some(peer),
        peer_rtcp: None,
        peer_ip: None,
        crypto: LegCrypto::Plain,
        ice: None,
        dtls: None,
    };
    let user_sockets = dataplane.allocate(None, Some(false), true).expect("ports");
    let relay_user = user_sockets.rtp.local_addr().expect("addr");
    let remote_sockets = dataplane.allocate(None, Some(false), true).expect("ports");
    let setup = StreamSetup {
        params: StreamParams {
            config: StreamConfig {
                learning_window: Duration::from_secs(3),
                relearn: false,
                asymmetric: false,
            },
            clock_rates: vec![(0, 8000)],
            telephone_event: None,
            formats: Vec::new(),
            device: leg(device.local_addr().expect("addr")),
            remote: leg(remote.local_addr().expect("addr")),
        },
        sockets: [Some(user_sockets), Some(remote_sockets)],
        bundle: [None, None],
    };
    runtime
        .block_on(dataplane.add_session(WorkerId(0), SessionId(1), vec![setup]))
        .expect("added");

    let mut buf = [0u8; 2048];
    let mut recv = [0u8; 2048];
    let mut exchange = |count: u32, start: u32, pause: Duration| {
        for i in start..start + count {
            let len = rtp(&mut buf, 0, i as u16, 160 * i, 0xA);
            device.send_to(&buf[..len], relay_user).expect("send");
            let (n, _) = remote.recv_from(&mut recv).expect("forwarded");
            assert_eq!(&recv[..n], &buf[..len]);
            std::thread::sleep(pause);
        }
    };
    let lane_packets = || {
        runtime
            .block_on(dataplane.worker_stats(WorkerId(0)))
            .expect("stats")
            .lane_packets
    };
    // Warm up: first-time costs (the latency histogram, lazy statics).
    exchange(200, 0, Duration::ZERO);
    // Counted on the worker threads and this one: the DTLS thread's idle
    // loop allocates now and then on a loaded machine (crossbeam's blocking
    // receive), off every packet's path. Paced over more than two of the
    // worker's visits, so the direction becomes steady and a lane opens
    // and carries packets inside the counted part.
    let before = lane_packets();
    BY_THREAD_ON.store(true, Ordering::Relaxed);
    exchange(5_000, 200, Duration::from_micros(500));
    BY_THREAD_ON.store(false, Ordering::Relaxed);
    let counted = packet_path_allocations();
    let through_lane = lane_packets() - before;
    dataplane.shutdown();
    assert!(
        through_lane > 1_000,
        "the counted packets went through a lane ({through_lane} did)"
    );
    counted
}

#[test]
fn the_rtp_path_allocates_nothing() {
    // The counter works: a boxed value is one allocation.
    let probe = allocations();
    std::hint::black_box(Box::new(7u64));
    assert_eq!(
        allocations() - probe,
        1,
        "the counting allocator is in place"
    );
    assert_eq!(
        session_paths(false),
        0,
        "allocations in Session::handle_packet"
    );
    assert_eq!(
        session_paths(true),
        0,
        "allocations in Session::handle_packet with SRTP on every leg"
    );
    assert_eq!(
        worker_path(),
        0,
        "allocations while a worker forwarded 5000 packets"
    );
}
