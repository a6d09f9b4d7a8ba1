//! The fast paths through the real binary on loopback: the kernel's
//! (`--kernel-forwarding`) and the worker's lanes (on by default). Each
//! forwards established legs, a handoff through it stays one stream,
//! strangers and unusual packets are left to the session, a session's end
//! removes its routes, and the counts reach `get`, `stats` and `/metrics`.
//! The scenarios run once per fast path.
//!
//! Loading BPF needs root (or CAP_BPF and CAP_NET_ADMIN) and a build with
//! clang. CI has both and sets `BATON_REQUIRE_BPF=1`, so there the kernel
//! tests cannot skip; elsewhere they skip with a note.

mod common;

use std::time::{Duration, Instant};

use baton_control::Client;
use baton_proto::v1::{self, request::Command, response::Result as Reply};
use common::Relay;
use common::calls::*;
use common::media::{Peer, rtp};

async fn stats(client: &Client) -> v1::GetStatsResponse {
    match client.call(Command::GetStats(v1::GetStatsRequest {})).await {
        Ok(Reply::GetStats(stats)) => stats,
        other => panic!("stats failed: {other:?}"),
    }
}

fn kernel(stats: &v1::GetStatsResponse) -> v1::KernelForwarding {
    stats
        .kernel
        .clone()
        .expect("stats carry the kernel fast path")
}

fn lanes(stats: &v1::GetStatsResponse) -> v1::UserFastPath {
    stats
        .user_fast_path
        .expect("stats carry the user-space fast path")
}

/// Which fast path a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Kernel,
    Lanes,
}

impl Kind {
    /// A relay with this fast path, or `None` (skip) for the kernel's
    /// where it cannot load.
    async fn relay(self, extra: &[&str]) -> Option<Relay> {
        match self {
            Kind::Kernel => kernel_relay(extra).await,
            Kind::Lanes => {
                // Lanes are on by default.
                let relay = Relay::start(extra);
                let figures = lanes(&stats(&relay.client().await).await);
                assert!(figures.on, "{figures:?}");
                Some(relay)
            }
        }
    }

    /// Stream directions it forwards now.
    fn routes(self, stats: &v1::GetStatsResponse) -> u32 {
        match self {
            Kind::Kernel => kernel(stats).routes,
            Kind::Lanes => lanes(stats).lanes,
        }
    }

    /// Packets it forwarded since start (the kernel's as read back).
    fn packets(self, stats: &v1::GetStatsResponse) -> u64 {
        match self {
            Kind::Kernel => kernel(stats).packets,
            Kind::Lanes => lanes(stats).packets,
        }
    }
}

/// A relay with the kernel fast path on, or `None` (skip) where this
/// machine cannot load BPF and CI did not ask for it.
async fn kernel_relay(extra: &[&str]) -> Option<Relay> {
    let mut args = vec!["--kernel-forwarding"];
    args.extend_from_slice(extra);
    let relay = Relay::start(&args);
    let figures = kernel(&stats(&relay.client().await).await);
    if figures.status == "on" {
        assert_eq!(figures.interfaces, ["lo"], "{figures:?}");
        return Some(relay);
    }
    assert!(
        std::env::var_os("BATON_REQUIRE_BPF").is_none(),
        "BATON_REQUIRE_BPF is set but the kernel fast path is {}: {}",
        figures.status,
        figures.reason
    );
    eprintln!(
        "skipping: kernel fast path {} ({})",
        figures.status, figures.reason
    );
    None
}

/// A device and the remote (each: its talker, its socket, the relay
/// address it sends to) talk to each other until the fast path carries
/// both ways; what each side hears is added to `at_remote` and `at_device`.
async fn until_both_ways(
    kind: Kind,
    client: &Client,
    (device, device_peer, to_remote): (&mut Talker, &Peer, &str),
    (remote, remote_peer, to_device): (&mut Talker, &Peer, &str),
    at_remote: &mut Vec<Seen>,
    at_device: &mut Vec<Seen>,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        at_remote.extend(device.talk(device_peer, to_remote, remote_peer, 5));
        at_device.extend(remote.talk(remote_peer, to_device, device_peer, 5));
        let figures = stats(client).await;
        if kind.routes(&figures) == 2 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the {kind:?} fast path never carried both ways: {figures:?}"
        );
    }
}

fn leg_stats(leg: Option<&v1::LegInfo>) -> v1::LegStats {
    leg.and_then(|l| l.stats.clone()).expect("leg stats")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_forwards_established_legs_and_a_handoff_through_it_stays_one_stream() {
    handoff_through(Kind::Kernel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_forward_established_legs_and_a_handoff_through_them_stays_one_stream() {
    handoff_through(Kind::Lanes).await;
}

async fn handoff_through(kind: Kind) {
    let metrics_port = common::free_tcp_port();
    let Some(relay) = kind
        .relay(&["--metrics", &format!("127.0.0.1:{metrics_port}")])
        .await
    else {
        return;
    };
    let c = call(&relay, "fast-handoff").await;
    let mut a = Talker::new(0xA0A0_A0A0, 65_400, 4_294_950_000, b'A');
    let mut r = Talker::new(0x0F0F_0F0F, 100, 1000, b'R');
    let mut at_remote = Vec::new();
    let mut at_a = Vec::new();
    // Established: a second of each, then the kernel takes both ways.
    until_both_ways(
        kind,
        &c.client,
        (&mut a, &c.device, &c.user_addr),
        (&mut r, &c.remote, &c.remote_addr),
        &mut at_remote,
        &mut at_a,
    )
    .await;
    // Jitter goes on from the relay's own figure: a kernel that started
    // it from another clock would add the clocks' difference (over 16).
    at_remote.extend(a.talk(&c.device, &c.user_addr, &c.remote, 5));
    let early = get(&c.client, &c.session).await;
    let jitter = leg_stats(early.streams[0].user.as_ref()).jitter_ms;
    assert!(jitter > 0.0 && jitter < 200.0, "jitter {jitter} ms");
    let before = get(&c.client, &c.session).await;
    let before_device = leg_stats(before.streams[0].user.as_ref());
    let before_remote = leg_stats(before.streams[0].remote.as_ref());
    let carried_before = kind.packets(&stats(&c.client).await);
    // A's sequence numbers wrap while the kernel carries them.
    at_remote.extend(a.talk(&c.device, &c.user_addr, &c.remote, 200));
    at_a.extend(r.talk(&c.remote, &c.remote_addr, &c.device, 200));
    // The kernel wrote the relay's addresses: each side hears the relay.
    c.device.send(&c.user_addr, &a.next());
    let (bytes, from) = c.remote.recv();
    assert_eq!(
        from.to_string(),
        c.remote_addr,
        "from the relay's remote side"
    );
    at_remote.push(seen(&bytes));
    c.remote.send(&c.remote_addr, &r.next());
    let (bytes, from) = c.device.recv();
    assert_eq!(from.to_string(), c.user_addr, "from the relay's user side");
    at_a.push(seen(&bytes));

    let after = get(&c.client, &c.session).await;
    let device = leg_stats(after.streams[0].user.as_ref());
    let remote = leg_stats(after.streams[0].remote.as_ref());
    let carried = kind.packets(&stats(&c.client).await) - carried_before;
    assert!(
        carried >= 400,
        "the fast path carried both ways' packets: {carried}"
    );
    let (device_kernel, remote_kernel) = (
        device.kernel_rtp_packets_in - before_device.kernel_rtp_packets_in,
        remote.kernel_rtp_packets_in - before_remote.kernel_rtp_packets_in,
    );
    if kind == Kind::Kernel {
        assert!(device_kernel >= 200, "the kernel carried A's: {device:?}");
        assert!(remote_kernel >= 200, "and the remote's: {remote:?}");
    } else {
        assert_eq!(
            (device_kernel, remote_kernel),
            (0, 0),
            "lanes are not the kernel"
        );
    }
    assert_eq!(
        device.rtp_packets_in - before_device.rtp_packets_in,
        201,
        "get counts every packet once, the kernel's included"
    );
    assert_eq!(remote.packets_out - before_remote.packets_out, 201);
    assert_eq!(
        device.lost, 0,
        "no loss counted across the kernel: {device:?}"
    );

    // A stranger with A's SSRC and next number on A's relay port: never
    // forwarded, by the kernel nor the relay, and no number is used up.
    let stranger = Peer::v4();
    let mut forged = Talker::new(0xA0A0_A0A0, a.seq, a.ts, b'X');
    stranger.send(&c.user_addr, &forged.next());
    c.remote.expect_silence();
    at_remote.extend(a.talk(&c.device, &c.user_addr, &c.remote, 5));

    // The handoff: the routes end while the transfer is open.
    let device_b = Peer::v4();
    let b_addr = transfer(
        &c.client,
        transfer_request(&c.session, GRUU_B, &device_b, v1::SwitchMode::FirstPacket),
    )
    .await;
    assert_eq!(kind.routes(&stats(&c.client).await), 0);
    at_remote.extend(a.talk(&c.device, &c.user_addr, &c.remote, 5));
    let before_switch = Instant::now();
    at_remote.extend(a.talk(&c.device, &c.user_addr, &c.remote, 1));
    std::thread::sleep(Duration::from_millis(30));
    let mut b = Talker::new(0xB0B0_B0B0, 12_345, 777, b'B');
    let first_b = b.talk(&device_b, &b_addr, &c.remote, 1)[0];
    let window = before_switch.elapsed();
    let last_a = *at_remote.last().expect("A was heard");
    let step = first_b.ts.wrapping_sub(last_a.ts);
    assert!(step >= 30 * 8, "at least the 30 ms that passed: {step}");
    assert!(
        u128::from(step) <= window.as_millis() * 8 + 8,
        "no more than the time that passed: {step}"
    );
    at_remote.push(first_b);
    // B settles, then the kernel takes B's leg (and the remote's, toward B).
    let mut at_b = Vec::new();
    until_both_ways(
        kind,
        &c.client,
        (&mut b, &device_b, &b_addr),
        (&mut r, &c.remote, &c.remote_addr),
        &mut at_remote,
        &mut at_b,
    )
    .await;
    at_remote.extend(b.talk(&device_b, &b_addr, &c.remote, 100));
    // A, retired, is heard by nobody.
    c.device.send(&c.user_addr, &a.next());
    c.remote.expect_silence();
    at_remote.extend(b.talk(&device_b, &b_addr, &c.remote, 5));
    assert!(at_remote.len() > 400);
    assert_continuous(&at_remote);
    for heard in [&at_a, &at_b] {
        for pair in heard.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq.wrapping_add(1), "{pair:?}");
            assert_eq!(pair[1].ssrc, 0x0F0F_0F0F);
        }
    }

    // The counts reach stats and /metrics (the kernel's read back about
    // once a second per call, and at each get).
    get(&c.client, &c.session).await;
    let figures = stats(&c.client).await;
    assert!(kind.packets(&figures) >= 500, "{figures:?}");
    let scraped = common::metrics::scrape(metrics_port);
    let (routes, packets) = match kind {
        Kind::Kernel => {
            assert!(kernel(&figures).routes_installed >= 4, "{figures:?}");
            assert_eq!(scraped.get("baton_kernel_forwarding"), Some(&1.0));
            (
                "baton_kernel_routes",
                "baton_kernel_forwarded_packets_total",
            )
        }
        Kind::Lanes => (
            "baton_user_fast_path_lanes",
            "baton_user_fast_path_packets_total",
        ),
    };
    assert_eq!(scraped.get(routes), Some(&2.0), "{scraped:?}");
    assert!(
        scraped.get(packets).is_some_and(|&n| n >= 500.0),
        "{scraped:?}"
    );

    // The session's end removes its routes.
    let deleted = c
        .client
        .call(Command::DeleteSession(v1::DeleteSessionRequest {
            session: by_id(&c.session),
        }))
        .await;
    assert!(
        matches!(deleted, Ok(Reply::DeleteSession(_))),
        "{deleted:?}"
    );
    let figures = stats(&c.client).await;
    assert_eq!(kind.routes(&figures), 0, "{figures:?}");
    if kind == Kind::Kernel {
        let figures = kernel(&figures);
        assert_eq!(figures.routes_ended, figures.routes_installed);
    }
    device_b.send(&b_addr, &b.next());
    c.remote.expect_silence();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_packets_go_up_to_the_relay_and_the_numbering_stays_exact() {
    unusual_packets(Kind::Kernel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_packets_leave_a_lane_for_the_session_and_the_numbering_stays_exact() {
    unusual_packets(Kind::Lanes).await;
}

async fn unusual_packets(kind: Kind) {
    let Some(relay) = kind.relay(&[]).await else {
        return;
    };
    let c = call(&relay, "fast-unusual").await;
    let mut a = Talker::new(0x0A0A_0A0A, 1000, 160_000, b'A');
    let mut r = Talker::new(0x0F0F_0F0F, 100, 1000, b'R');
    let (mut at_remote, mut at_a) = (Vec::new(), Vec::new());
    until_both_ways(
        kind,
        &c.client,
        (&mut a, &c.device, &c.user_addr),
        (&mut r, &c.remote, &c.remote_addr),
        &mut at_remote,
        &mut at_a,
    )
    .await;
    let ended = kernel(&stats(&c.client).await).routes_ended;
    // A lane's source packets that it will not take end it the same way
    // (the session takes it back first); the numbers below show it.
    // Reordered: the later packet first. Both go out, each with its own
    // number, through the relay.
    let (early, late) = (a.next(), a.next());
    c.device.send(&c.user_addr, &late);
    let first = seen(&c.remote.recv().0);
    c.device.send(&c.user_addr, &early);
    let second = seen(&c.remote.recv().0);
    assert_eq!(
        first.seq,
        second.seq.wrapping_add(1),
        "{first:?} {second:?}"
    );
    // A duplicate is dropped.
    c.device.send(&c.user_addr, &early);
    c.remote.expect_silence();
    // An RFC 4733 event goes through the relay with the next number.
    let event = rtp(101, a.seq, a.ts, a.ssrc, &[5, 0x0a, 0, 160]);
    a.seq = a.seq.wrapping_add(1);
    c.device.send(&c.user_addr, &event);
    let heard_event = seen(&c.remote.recv().0);
    assert_eq!(heard_event.pt, 101);
    assert_eq!(heard_event.seq, first.seq.wrapping_add(1));
    if kind == Kind::Kernel {
        assert!(
            kernel(&stats(&c.client).await).routes_ended > ended,
            "the route ended when its source's packets came up"
        );
    }
    // The fast path takes A again, and the numbers go on from there (the
    // remote keeps talking: a silent leg's route ends after a second).
    let carried = kind.packets(&stats(&c.client).await);
    let mut after = Vec::new();
    until_both_ways(
        kind,
        &c.client,
        (&mut a, &c.device, &c.user_addr),
        (&mut r, &c.remote, &c.remote_addr),
        &mut after,
        &mut at_a,
    )
    .await;
    after.extend(a.talk(&c.device, &c.user_addr, &c.remote, 50));
    assert_eq!(after[0].seq, heard_event.seq.wrapping_add(1));
    assert_continuous(&after);
    get(&c.client, &c.session).await;
    let figures = stats(&c.client).await;
    assert!(kind.packets(&figures) - carried >= 50, "{figures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_legs_are_forwarded_by_the_kernel_too() {
    ipv6_legs(Kind::Kernel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_legs_go_on_lanes_too() {
    ipv6_legs(Kind::Lanes).await;
}

async fn ipv6_legs(kind: Kind) {
    let Some(relay) = kind
        .relay(&["--media-ip", "127.0.0.1", "--media-ip", "::1"])
        .await
    else {
        return;
    };
    let c = call_between(
        &relay,
        "kernel-ipv6",
        "audio",
        session_codecs(),
        Peer::bind("::1"),
        Peer::bind("::1"),
    )
    .await;
    assert!(c.user_addr.starts_with("[::1]"), "{}", c.user_addr);
    let mut a = Talker::new(0x6A6A_6A6A, 10, 1600, b'A');
    let mut r = Talker::new(0x6B6B_6B6B, 20, 3200, b'R');
    let (mut at_remote, mut at_a) = (Vec::new(), Vec::new());
    until_both_ways(
        kind,
        &c.client,
        (&mut a, &c.device, &c.user_addr),
        (&mut r, &c.remote, &c.remote_addr),
        &mut at_remote,
        &mut at_a,
    )
    .await;
    at_remote.extend(a.talk(&c.device, &c.user_addr, &c.remote, 100));
    at_a.extend(r.talk(&c.remote, &c.remote_addr, &c.device, 100));
    assert_continuous(&at_remote);
    for pair in at_a.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq.wrapping_add(1), "{pair:?}");
    }
    // The fast path carried them, rewritten for IPv6 (on loopback the
    // kernel's checksums stay partial and are not verified, so this shows
    // the addressing and the RTP rewrite, not the checksum arithmetic).
    let info = get(&c.client, &c.session).await;
    let device = leg_stats(info.streams[0].user.as_ref());
    let remote = leg_stats(info.streams[0].remote.as_ref());
    if kind == Kind::Kernel {
        assert!(device.kernel_rtp_packets_in >= 100, "{device:?}");
        assert!(remote.kernel_rtp_packets_in >= 100, "{remote:?}");
    } else {
        let carried = kind.packets(&stats(&c.client).await);
        assert!(carried >= 200, "{carried}");
    }
    assert!(
        at_remote
            .iter()
            .chain(&at_a)
            .all(|s| s.tag == b'A' || s.tag == b'R')
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_capabilities_baton_says_so_and_forwards_in_user_space() {
    if !common::tool_answers("setpriv", "--version") {
        assert!(
            std::env::var_os("BATON_REQUIRE_BPF").is_none(),
            "setpriv missing"
        );
        return;
    }
    // Root without CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN.
    let relay = Relay::start_under(
        &[
            "setpriv",
            "--bounding-set",
            "-bpf,-net_admin,-sys_admin,-perfmon",
            "--inh-caps",
            "-bpf,-net_admin,-sys_admin,-perfmon",
        ],
        &["--kernel-forwarding"],
        None,
    );
    let figures = kernel(&stats(&relay.client().await).await);
    assert_eq!(figures.status, "unavailable", "{figures:?}");
    assert!(
        figures.reason.contains("CAP_BPF") || figures.reason.contains("clang"),
        "{figures:?}"
    );
    assert!(
        relay.stderr().contains("kernel forwarding unavailable"),
        "{}",
        relay.stderr()
    );
    // Media still flows, in user space.
    let c = call(&relay, "no-caps").await;
    let mut a = Talker::new(7, 1, 160, b'A');
    let heard = a.talk(&c.device, &c.user_addr, &c.remote, 60);
    assert_continuous(&heard);
    assert_eq!(kernel(&stats(&c.client).await).routes, 0);
}
