//! Issue 20: calls survive the relay. The active relay writes its calls to
//! a real Redis (Debian's redis-server, started per test on a free port);
//! a standby with the same Redis takes them over when the active is killed
//! with SIGKILL, on the same (floating) media address, and the remote and
//! the device each go on hearing one stream: one SSRC, sequence numbers
//! that skip only what was lost, timestamps that follow.
//!
//! On loopback the floating address is 127.0.0.2: both relays are told to
//! bind media there, and only the one serving does.
//!
//! CI installs redis-server and sets `BATON_REQUIRE_REDIS=1`, so there these
//! tests run or fail; elsewhere they skip with a note when it is missing.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Relay;
use common::media::{Peer, rtp};
use common::ng::{Proxy, body, flags, media_addr, request, sdp_of, text};

/// A redis-server of its own, on a free loopback port, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one, or `None` (a skip) when redis-server is not installed
    /// and `BATON_REQUIRE_REDIS` is not set.
    fn start() -> Option<Self> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            installed || std::env::var_os("BATON_REQUIRE_REDIS").is_none(),
            "BATON_REQUIRE_REDIS is set but redis-server is missing (apt-get install redis-server)"
        );
        if !installed {
            eprintln!("skipped: redis-server is not installed");
            return None;
        }
        Some(Self::start_on(common::free_tcp_port()))
    }

    fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let redis = Self {
            child,
            port,
            _dir: dir,
        };
        wait_until("redis-server answers", || redis.cli(&["PING"]) == "PONG");
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` on this server; its output, trimmed.
    fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }

    fn keys(&self, pattern: &str) -> Vec<String> {
        let listed = self.cli(&["--scan", "--pattern", pattern]);
        let mut keys: Vec<String> = listed.lines().map(str::to_owned).collect();
        keys.sort();
        keys
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (at most 15 s) until `done`; fails the test naming `what`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting until {what}");
}

/// An active relay (its role checked) and its standby, sharing `redis`,
/// `ports` and `prefix`; with their ng ports.
fn pair(redis: &Redis, names: [&str; 2], ports: &str, prefix: &str) -> (Relay, Relay, u16, u16) {
    let (ng_a, ng_b) = (common::free_udp_port(), common::free_udp_port());
    let active = ha_relay(&redis.url(), names[0], false, ng_a, ports, prefix);
    wait_until("the first relay is active", || role(&active) == "active");
    let standby = ha_relay(&redis.url(), names[1], true, ng_b, ports, prefix);
    wait_until("the second relay is the standby", || {
        role(&standby) == "standby"
    });
    (active, standby, ng_a, ng_b)
}

/// One relay of an HA pair: ng on `ng`, media on the floating 127.0.0.2
/// in `ports`, fast heartbeats and snapshots.
fn ha_relay(
    redis: &str,
    instance: &str,
    standby: bool,
    ng: u16,
    ports: &str,
    prefix: &str,
) -> Relay {
    ha_relay_with(redis, instance, standby, ng, ports, prefix, &[])
}

/// [`ha_relay`] with more flags.
fn ha_relay_with(
    redis: &str,
    instance: &str,
    standby: bool,
    ng: u16,
    ports: &str,
    prefix: &str,
    extra: &[&str],
) -> Relay {
    let ng = format!("udp:127.0.0.1:{ng}");
    let mut args = vec![
        "--listen-ng",
        &ng,
        "--redis",
        redis,
        "--redis-instance",
        instance,
        "--redis-key-prefix",
        prefix,
        "--media-ip",
        "127.0.0.2",
        "--ports",
        ports,
        "--heartbeat-interval",
        "0.05",
        "--heartbeat-timeout",
        "0.3",
        "--snapshot-interval",
        "0.1",
        "--workers",
        "1",
    ];
    if standby {
        args.push("--redis-standby");
    }
    args.extend_from_slice(extra);
    Relay::start(&args)
}

fn ha(relay: &Relay) -> serde_json::Value {
    common::stdout_json(&relay.ctl(&["stats"]))["ha"].clone()
}

fn role(relay: &Relay) -> String {
    ha(relay)["role"].as_str().unwrap_or_default().to_owned()
}

const GRUU_A: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-4000-8000-0000000000a1";
const GRUU_B: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-4000-8000-0000000000b2";

/// A call from alice's device A to bob over ng, handed off to device B (so
/// the relay rewrites B's numbering into A's); returns the relay addresses
/// toward B and toward bob.
fn call_handed_off(
    proxy: &mut Proxy,
    call_id: &str,
    a: &Peer,
    b: &Peer,
    bob: &Peer,
) -> (String, String) {
    let to_bob = sdp_of(&proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text(call_id)),
        ("from-tag", text("a-tag")),
        ("sdp", text(body("alice", a.addr(), ""))),
        ("aor", text("sip:alice@example.com")),
        ("gruu", text(GRUU_A)),
    ])));
    let to_a = sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text(call_id)),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(body("bob", bob.addr(), ""))),
    ])));
    let bob_to_relay = media_addr(&to_bob).to_string();
    // A talks for a while: its SSRC becomes the stream's.
    for i in 0..5u16 {
        a.send(
            &media_addr(&to_a).to_string(),
            &rtp(
                8,
                100 + i,
                16_000 + 160 * u32::from(i),
                0xA1A1,
                &[0xD5; 160],
            ),
        );
        let _ = bob.recv();
    }
    let _ = sdp_of(&proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text(call_id)),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(body("alice-b", b.addr(), ""))),
        ("gruu", text(GRUU_B)),
        ("new-call-id", text(format!("{call_id}-b"))),
        ("new-from-tag", text("b-tag")),
        ("flags", flags(&["baton-handoff"])),
    ])));
    let to_b = sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text(call_id)),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(body("bob", bob.addr(), ""))),
    ])));
    (media_addr(&to_b).to_string(), bob_to_relay)
}

/// A call from alice's device `a` to `bob` over ng, without AOR or GRUU;
/// the body bob got.
fn plain_call(
    proxy: &mut Proxy,
    call_id: &str,
    a: &Peer,
    bob: &Peer,
) -> baton_control::sip::sdp::Sdp {
    let to_bob = sdp_of(&proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text(call_id)),
        ("from-tag", text("a-tag")),
        ("sdp", text(body("alice", a.addr(), ""))),
    ])));
    let _ = sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text(call_id)),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(body("bob", bob.addr(), ""))),
    ])));
    to_bob
}

/// Waits until `standby` holds the one call in memory and its media
/// snapshot is stored under `prefix`.
fn wait_standby_holds_the_call(standby: &Relay, redis: &Redis, prefix: &str) {
    wait_until(
        "the standby holds the call, its media snapshot stored",
        || {
            ha(standby)["standby_sessions"] == "1"
                && !redis.keys(&format!("{prefix}:media:*")).is_empty()
        },
    );
}

/// (sequence number, timestamp, SSRC) of an RTP packet.
fn header(packet: &[u8]) -> (u16, u32, u32) {
    (
        u16::from_be_bytes([packet[2], packet[3]]),
        u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
    )
}

/// What one side heard, and how many packets the other side sent.
struct Heard {
    packets: Vec<(u16, u32, u32)>,
    sent: usize,
}

impl Heard {
    /// Nothing heard yet, by bob and by the device.
    fn both() -> [Self; 2] {
        [
            Self {
                packets: Vec::new(),
                sent: 0,
            },
            Self {
                packets: Vec::new(),
                sent: 0,
            },
        ]
    }
}

/// Device B and bob talk, 20 ms apart, `steps` times (or until `until`
/// says stop), from B's and bob's sequence numbers `from`; `at_step` runs
/// before the step of its number.
fn talk(
    (b, b_to_relay): (&Peer, &str),
    (bob, bob_to_relay): (&Peer, &str),
    steps: std::ops::Range<u16>,
    heard: &mut [Heard; 2],
    mut at_step: impl FnMut(u16),
    until: impl Fn(&[Heard; 2]) -> bool,
) {
    for i in steps {
        at_step(i);
        b.send(
            b_to_relay,
            &rtp(
                8,
                40_000 + i,
                500_000 + 160 * u32::from(i),
                0xB2B2,
                &[0xD5; 160],
            ),
        );
        bob.send(
            bob_to_relay,
            &rtp(
                8,
                9_000 + i,
                900_000 + 160 * u32::from(i),
                0xB0B0,
                &[0xD5; 160],
            ),
        );
        heard[0].sent += 1;
        heard[1].sent += 1;
        std::thread::sleep(Duration::from_millis(20));
        for (peer, index) in [(bob, 0), (b, 1)] {
            while let Some((packet, _)) = peer.recv_within(Duration::from_millis(1)) {
                heard[index].packets.push(header(&packet));
            }
        }
        if until(heard) {
            return;
        }
    }
}

/// One stream: one SSRC, numbers always ahead, at most `max_gaps` gaps,
/// each gap's timestamps following its numbers (20 ms a packet), and
/// nothing heard twice; returns the packets lost in the gaps.
fn assert_one_stream(what: &str, heard: &Heard, max_gaps: usize) -> usize {
    let packets = &heard.packets;
    assert!(
        packets.len() > 20,
        "{what}: too little heard: {}",
        packets.len()
    );
    let ssrc = packets[0].2;
    let mut gaps = 0;
    let mut lost = 0usize;
    for pair in packets.windows(2) {
        let ((seq0, ts0, _), (seq1, ts1, ssrc1)) = (pair[0], pair[1]);
        assert_eq!(ssrc1, ssrc, "{what}: one SSRC throughout");
        let step = seq1.wrapping_sub(seq0);
        assert!(
            (1..1000).contains(&step),
            "{what}: sequence {seq0} then {seq1}: backwards or repeated"
        );
        assert_eq!(
            ts1.wrapping_sub(ts0),
            160 * u32::from(step),
            "{what}: timestamps follow the numbers ({seq0} → {seq1})"
        );
        if step > 1 {
            gaps += 1;
            lost += usize::from(step - 1);
        }
    }
    assert!(gaps <= max_gaps, "{what}: {gaps} gaps");
    assert_eq!(
        packets.len() + lost,
        heard.sent,
        "{what}: every number skipped is a packet lost, no more"
    );
    lost
}

#[test]
fn a_standby_takes_a_handed_off_call_over_and_both_sides_hear_one_stream() {
    let Some(redis) = Redis::start() else { return };
    let prefix = "pair1";
    let (mut active, standby, ng_a, ng_b) =
        pair(&redis, ["relay-a", "relay-b"], "42000-42099", prefix);
    // The standby takes no calls of its own, and its ng listener opens
    // only once it serves (a proxy's relay set skips it meanwhile).
    let refused = standby.ctl(&[
        "create",
        "--call-id",
        "to-the-standby",
        "--from-tag",
        "x",
        "--stream",
        "audio:0",
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("standby"),
        "{refused:?}"
    );
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    probe
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    probe
        .send_to(b"1 d7:command4:pinge", ("127.0.0.1", ng_b))
        .expect("send");
    let mut buf = [0u8; 256];
    assert!(
        probe.recv_from(&mut buf).is_err(),
        "no ng answer from a standby"
    );

    let mut proxy = Proxy::new(format!("127.0.0.1:{ng_a}").parse().expect("addr"));
    let (a, b, bob) = (Peer::v4(), Peer::v4(), Peer::v4());
    let (b_to_relay, bob_to_relay) = call_handed_off(&mut proxy, "ha-call", &a, &b, &bob);
    let mut heard = Heard::both();
    // B's first packets switch the stream to it; both sides talk a while.
    talk(
        (&b, &b_to_relay),
        (&bob, &bob_to_relay),
        0..40,
        &mut heard,
        |_| {},
        |_| false,
    );
    wait_standby_holds_the_call(&standby, &redis, prefix);

    // The active dies; the standby sees its heartbeat expire and takes over.
    talk(
        (&b, &b_to_relay),
        (&bob, &bob_to_relay),
        40..160,
        &mut heard,
        |i| {
            if i == 45 {
                active.child.kill().expect("SIGKILL the active");
            }
        },
        |_| false,
    );
    let stats = ha(&standby);
    assert_eq!(stats["role"], "active", "{stats}");
    assert_eq!(stats["sessions_resumed"], "1", "{stats}");
    assert_eq!(stats["takeovers"], "1", "{stats}");

    // bob hears A's stream (B renumbered into it), then the same across the
    // failover; B hears bob's.
    assert_eq!(
        heard[0].packets[0].2, 0xA1A1,
        "bob hears the stream A started"
    );
    let lost_to_bob = assert_one_stream("bob", &heard[0], 1);
    let lost_to_b = assert_one_stream("device B", &heard[1], 1);
    assert!(
        lost_to_bob > 0 && lost_to_b > 0,
        "the failover lost packets: the test saw it"
    );

    // The call goes on under the new active: its state, and its end.
    let session =
        common::stdout_json(&standby.ctl(&["get", "--call-id", "ha-call", "--from-tag", "a-tag"]));
    assert_eq!(session["session"]["handoffs"], 1, "{session}");
    assert_eq!(session["session"]["gruu"], GRUU_B, "{session}");
    assert_eq!(redis.keys(&format!("{prefix}:session:*")).len(), 1);
    let mut proxy_b = Proxy::new(format!("127.0.0.1:{ng_b}").parse().expect("addr"));
    let deleted = proxy_b.call(&request(vec![
        ("command", text("delete")),
        ("call-id", text("ha-call")),
        ("from-tag", text("a-tag")),
    ]));
    assert_eq!(common::ng::result(&deleted), "ok", "{deleted:?}");
    wait_until("the ended call's keys are gone", || {
        redis.keys(&format!("{prefix}:session:*")).is_empty()
            && redis.keys(&format!("{prefix}:media:*")).is_empty()
    });
}

#[test]
fn a_relay_restarted_alone_goes_on_with_its_calls_and_bindings() {
    let Some(redis) = Redis::start() else { return };
    let ng = common::free_udp_port();
    let ports = "42200-42299";
    let prefix = "single";
    let mut relay = ha_relay(&redis.url(), "only", false, ng, ports, prefix);
    wait_until("the relay is active", || role(&relay) == "active");
    let registered = relay.ctl(&[
        "register",
        "--aor",
        "sip:carol@example.com",
        "--gruu",
        "sip:carol@example.com;gr=urn:uuid:00000000-0000-4000-8000-0000000000c3",
        "--expires",
        "600",
    ]);
    assert!(registered.status.success(), "{registered:?}");
    let mut proxy = Proxy::new(format!("127.0.0.1:{ng}").parse().expect("addr"));
    let (a, b, bob) = (Peer::v4(), Peer::v4(), Peer::v4());
    let (b_to_relay, bob_to_relay) = call_handed_off(&mut proxy, "restart-call", &a, &b, &bob);
    let mut heard = Heard::both();
    talk(
        (&b, &b_to_relay),
        (&bob, &bob_to_relay),
        0..30,
        &mut heard,
        |_| {},
        |_| false,
    );
    wait_until("the call and its media are stored", || {
        !redis.keys(&format!("{prefix}:media:*")).is_empty()
            && !redis.keys(&format!("{prefix}:binding:*")).is_empty()
    });
    relay.child.kill().expect("SIGKILL");
    let _ = relay.child.wait();
    // The same relay comes back (an upgrade, a crash and systemd's restart).
    let restarted = ha_relay(&redis.url(), "only", false, ng, ports, prefix);
    talk(
        (&b, &b_to_relay),
        (&bob, &bob_to_relay),
        30..300,
        &mut heard,
        |_| {},
        |heard| heard[0].packets.len() >= 60 && heard[1].packets.len() >= 60,
    );
    let stats = ha(&restarted);
    assert_eq!(stats["role"], "active", "{stats}");
    assert_eq!(stats["sessions_resumed"], "1", "{stats}");
    assert_one_stream("bob", &heard[0], 1);
    assert_one_stream("device B", &heard[1], 1);
    let bindings = String::from_utf8_lossy(&restarted.ctl(&["bindings"]).stdout).into_owned();
    assert!(bindings.contains("carol@example.com"), "{bindings}");
}

#[test]
fn an_operator_takeover_fences_the_old_active() {
    let Some(redis) = Redis::start() else { return };
    let (ng_a, ng_b) = (common::free_udp_port(), common::free_udp_port());
    let ports = "42400-42499";
    let prefix = "pair3";
    let active = ha_relay(&redis.url(), "old", false, ng_a, ports, prefix);
    wait_until("old is active", || role(&active) == "active");
    let metrics = common::free_tcp_port();
    let metrics_addr = format!("127.0.0.1:{metrics}");
    let standby = ha_relay_with(
        &redis.url(),
        "new",
        true,
        ng_b,
        ports,
        prefix,
        &["--metrics", &metrics_addr],
    );
    wait_until("new is the standby", || role(&standby) == "standby");
    // A relay without redis, and an active, have nothing to take over.
    let refused = active.ctl(&["takeover"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("active already"),
        "{refused:?}"
    );
    let took = standby.ctl(&["takeover"]);
    assert!(took.status.success(), "{took:?}");
    wait_until("new is active", || role(&standby) == "active");
    wait_until("old knows it is no longer the active one", || {
        role(&active) == "fenced"
    });
    // /metrics says the same.
    let scraped = {
        use std::io::{Read, Write};
        let mut http = std::net::TcpStream::connect(&metrics_addr).expect("metrics");
        http.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut text = String::new();
        http.read_to_string(&mut text).expect("response");
        text
    };
    for line in [
        "baton_ha_role 2",
        "baton_ha_takeovers_total 1",
        "baton_redis_write_drops_total 0",
    ] {
        assert!(scraped.lines().any(|l| l == line), "{line} in:\n{scraped}");
    }
    assert_eq!(ha(&active)["role"], "fenced");
}

#[test]
fn calls_go_on_while_redis_is_down_and_are_written_once_it_is_back() {
    let port = common::free_tcp_port();
    let installed = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        installed || std::env::var_os("BATON_REQUIRE_REDIS").is_none(),
        "BATON_REQUIRE_REDIS is set but redis-server is missing"
    );
    if !installed {
        eprintln!("skipped: redis-server is not installed");
        return;
    }
    let ng = common::free_udp_port();
    let url = format!("redis://127.0.0.1:{port}");
    // No Redis at start: the relay serves anyway, and says Redis is away.
    let relay = ha_relay(&url, "lonely", false, ng, "42600-42699", "down");
    wait_until("the relay serves without Redis", || {
        role(&relay) == "active"
    });
    let mut proxy = Proxy::new(format!("127.0.0.1:{ng}").parse().expect("addr"));
    let (a, bob) = (Peer::v4(), Peer::v4());
    let to_bob = plain_call(&mut proxy, "redis-outage", &a, &bob);
    // Redis comes: the relay takes the heartbeat key and writes its call.
    let redis = Redis::start_on(port);
    wait_until("the call is stored", || {
        redis.keys("down:session:*").len() == 1
    });
    assert_eq!(redis.cli(&["GET", "down:active"]), "lonely");
    // Redis goes away: the call goes on, the writes fail and are counted.
    drop(redis);
    let bob_to_relay: SocketAddr = media_addr(&to_bob);
    for i in 0..20u16 {
        bob.send(
            &bob_to_relay.to_string(),
            &rtp(8, i, 160 * u32::from(i), 0xB0B0, &[0xD5; 160]),
        );
        let (packet, _) = a.recv();
        assert_eq!(header(&packet).0, i, "media flows without Redis");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_until("the failed writes are counted", || {
        let stats = ha(&relay);
        stats["redis_connected"] == false && stats["redis_errors"] != "0"
    });
    // Redis is back (empty: it lost everything): the relay writes its call
    // again.
    let redis = Redis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    while redis.keys("down:session:*").len() != 1 {
        assert!(
            Instant::now() < deadline,
            "the call is not written again: {}\n{}",
            ha(&relay),
            relay
                .stderr()
                .lines()
                .filter(|l| !l.contains("DEBUG"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(role(&relay), "active");
}

/// An SRTP call (SDES keys on both legs) whose device's sequence numbers
/// wrap before the failover: after the takeover, the remote's and the
/// device's own SRTP stacks (webrtc-rs, replay protection on) accept every
/// packet: the relay's outward indexes, rollover counters included, went on
/// where the dead relay left them, and never came twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_goes_on_across_a_failover_and_the_peers_replay_windows_accept_it() {
    use baton_proto::v1::{self, request::Command, response::Result as Reply};
    use bytes::Bytes;
    use webrtc_srtp::context::Context;
    use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
    use webrtc_srtp::protection_profile::ProtectionProfile;

    let Some(redis) = Redis::start() else { return };
    let prefix = "pair4";
    let (mut active, standby, _, _) = pair(&redis, ["srtp-a", "srtp-b"], "42800-42899", prefix);

    let key = |suite: &str, profile: ProtectionProfile, byte: u8| v1::SrtpKey {
        suite: suite.into(),
        key: vec![byte; profile.key_len() + profile.salt_len()],
    };
    let context = |key: &v1::SrtpKey, profile: ProtectionProfile| {
        let (master, salt) = key.key.split_at(profile.key_len());
        Context::new(
            master,
            salt,
            profile,
            Some(srtp_replay_protection(64)),
            Some(srtcp_replay_protection(64)),
        )
        .expect("context")
    };
    let (cm, gcm) = (
        ProtectionProfile::Aes128CmHmacSha1_80,
        ProtectionProfile::AeadAes128Gcm,
    );
    let device_key = key("AES_CM_128_HMAC_SHA1_80", cm, 0x11);
    let remote_key = key("AEAD_AES_128_GCM", gcm, 0x22);
    let (device, remote) = (Peer::v4(), Peer::v4());
    let client = active.client().await;
    let created = match client
        .call(Command::CreateSession(v1::CreateSessionRequest {
            call_id: "srtp-ha".into(),
            from_tag: "a".into(),
            to_tag: "r".into(),
            streams: vec![v1::StreamSpec {
                kind: "audio".into(),
                codecs: vec![common::native::pcmu()],
                rtcp_mux: true,
                user_peer: Some(common::native::endpoint(device.addr())),
                remote_peer: Some(common::native::endpoint(remote.addr())),
                user_srtp: Some(v1::LegSrtp {
                    suite: device_key.suite.clone(),
                    peer_key: Some(device_key.clone()),
                }),
                remote_srtp: Some(v1::LegSrtp {
                    suite: remote_key.suite.clone(),
                    peer_key: Some(remote_key.clone()),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }))
        .await
    {
        Ok(Reply::CreateSession(created)) => created,
        other => panic!("create: {other:?}"),
    };
    drop(client);
    let stream = &created.streams[0];
    let device_to_relay = stream.user.as_ref().expect("user").rtp.clone();
    let remote_to_relay = stream.remote.as_ref().expect("remote").rtp.clone();
    let mut device_out = context(&device_key, cm);
    let mut device_in = context(
        stream
            .user_key
            .as_ref()
            .expect("the relay's key toward the device"),
        cm,
    );
    let mut remote_out = context(&remote_key, gcm);
    let mut remote_in = context(
        stream
            .remote_key
            .as_ref()
            .expect("the relay's key toward the remote"),
        gcm,
    );

    // The device starts 30 packets before its sequence numbers wrap.
    let mut heard: [Vec<u16>; 2] = [Vec::new(), Vec::new()];
    let mut refused = [0usize; 2];
    let step = |i: u16,
                heard: &mut [Vec<u16>; 2],
                refused: &mut [usize; 2],
                device_out: &mut Context,
                remote_out: &mut Context,
                device_in: &mut Context,
                remote_in: &mut Context| {
        let plain = rtp(
            0,
            65_506u16.wrapping_add(i),
            160 * u32::from(i),
            0xD1D1,
            &[0xD5; 160],
        );
        device.send(
            &device_to_relay,
            &device_out.encrypt_rtp(&plain).expect("encrypt"),
        );
        let plain = rtp(0, 300 + i, 160 * u32::from(i), 0xE2E2, &[0x55; 160]);
        remote.send(
            &remote_to_relay,
            &remote_out.encrypt_rtp(&plain).expect("encrypt"),
        );
        std::thread::sleep(Duration::from_millis(20));
        for (peer, context, index) in [(&remote, remote_in, 0), (&device, device_in, 1)] {
            while let Some((packet, _)) = peer.recv_within(Duration::from_millis(1)) {
                match context.decrypt_rtp(&Bytes::from(packet)) {
                    Ok(plain) => heard[index].push(header(&plain).0),
                    Err(_) => refused[index] += 1,
                }
            }
        }
    };
    for i in 0..50 {
        step(
            i,
            &mut heard,
            &mut refused,
            &mut device_out,
            &mut remote_out,
            &mut device_in,
            &mut remote_in,
        );
    }
    wait_standby_holds_the_call(&standby, &redis, prefix);
    active.child.kill().expect("SIGKILL the active");
    let before = [heard[0].len(), heard[1].len()];
    for i in 50..170 {
        step(
            i,
            &mut heard,
            &mut refused,
            &mut device_out,
            &mut remote_out,
            &mut device_in,
            &mut remote_in,
        );
    }
    assert_eq!(ha(&standby)["role"], "active");
    assert_eq!(
        refused,
        [0, 0],
        "every packet authenticated and fresh at both peers"
    );
    for (side, heard) in ["remote", "device"].iter().zip(&heard) {
        for pair in heard.windows(2) {
            let step = pair[1].wrapping_sub(pair[0]);
            assert!(
                (1..1000).contains(&step),
                "{side}: {} then {}",
                pair[0],
                pair[1]
            );
        }
    }
    assert!(
        heard[0].len() > before[0] + 60,
        "the remote hears the device again: {} then {}",
        before[0],
        heard[0].len()
    );
    assert!(
        heard[1].len() > before[1] + 60,
        "the device hears the remote again"
    );
    assert!(
        heard[0].iter().any(|&s| s < 100) && heard[0].iter().any(|&s| s > 65_000),
        "the remote saw the wrap"
    );
}

/// A handoff offered but not switched when the active dies is rolled back
/// on the standby: the old device keeps the call (the remote still hears
/// one stream), nothing of the new device's leg is left, and a handoff
/// offered after the takeover works on the new active.
#[test]
fn a_handoff_open_at_the_failover_is_rolled_back_and_a_new_one_works() {
    let Some(redis) = Redis::start() else { return };
    let prefix = "pair5";
    let (mut active, standby, ng_a, ng_b) =
        pair(&redis, ["open-a", "open-b"], "43000-43099", prefix);

    let mut proxy = Proxy::new(format!("127.0.0.1:{ng_a}").parse().expect("addr"));
    let (a, b, bob) = (Peer::v4(), Peer::v4(), Peer::v4());
    let to_bob = sdp_of(&proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text("open-call")),
        ("from-tag", text("a-tag")),
        ("sdp", text(body("alice", a.addr(), ""))),
        ("aor", text("sip:alice@example.com")),
        ("gruu", text(GRUU_A)),
    ])));
    let to_a = sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text("open-call")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(body("bob", bob.addr(), ""))),
    ])));
    let (a_to_relay, bob_to_relay) = (
        media_addr(&to_a).to_string(),
        media_addr(&to_bob).to_string(),
    );
    // B's handoff is offered; B never answers or sends before the failover.
    let _ = sdp_of(&proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text("open-call")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(body("alice-b", b.addr(), ""))),
        ("gruu", text(GRUU_B)),
        ("new-call-id", text("open-call-b")),
        ("new-from-tag", text("b-tag")),
        ("flags", flags(&["baton-handoff"])),
    ])));
    let mut heard = Heard::both();
    talk(
        (&a, &a_to_relay),
        (&bob, &bob_to_relay),
        0..30,
        &mut heard,
        |_| {},
        |_| false,
    );
    wait_standby_holds_the_call(&standby, &redis, prefix);
    talk(
        (&a, &a_to_relay),
        (&bob, &bob_to_relay),
        30..130,
        &mut heard,
        |i| {
            if i == 32 {
                active.child.kill().expect("SIGKILL the active");
            }
        },
        |_| false,
    );
    assert_eq!(ha(&standby)["role"], "active");
    assert_one_stream("bob", &heard[0], 1);
    assert_one_stream("device A", &heard[1], 1);
    let session = common::stdout_json(&standby.ctl(&[
        "get",
        "--call-id",
        "open-call",
        "--from-tag",
        "a-tag",
    ]));
    assert_eq!(
        session["session"]["gruu"], GRUU_A,
        "A keeps the call: {session}"
    );
    assert_eq!(
        session["session"]["pending_gruu"], "",
        "no transfer is left open: {session}"
    );

    // The proxy offers the handoff again, to the new active.
    let mut proxy_b = Proxy::new(format!("127.0.0.1:{ng_b}").parse().expect("addr"));
    let _ = sdp_of(&proxy_b.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text("open-call")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(body("alice-b", b.addr(), ""))),
        ("gruu", text(GRUU_B)),
        ("new-call-id", text("open-call-b2")),
        ("new-from-tag", text("b2-tag")),
        ("flags", flags(&["baton-handoff"])),
    ])));
    let to_b = sdp_of(&proxy_b.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text("open-call")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(body("bob", bob.addr(), ""))),
    ])));
    let b_to_relay = media_addr(&to_b).to_string();
    let (ssrc_before, last_before) = {
        let last = heard[0].packets.last().expect("bob heard A");
        (last.2, last.0)
    };
    heard[0].packets.clear();
    heard[0].sent = 0;
    heard[1].packets.clear();
    heard[1].sent = 0;
    talk(
        (&b, &b_to_relay),
        (&bob, &bob_to_relay),
        200..240,
        &mut heard,
        |_| {},
        |_| false,
    );
    assert!(
        heard[0].packets.len() > 30,
        "bob hears B after the new handoff"
    );
    let first_after = heard[0].packets[0];
    assert_eq!(first_after.2, ssrc_before, "still one SSRC at bob");
    assert!(
        (1..1000).contains(&first_after.0.wrapping_sub(last_before)),
        "B's numbers go on from A's: {last_before} then {}",
        first_after.0
    );
    assert_one_stream("bob after the new handoff", &heard[0], 1);
    let session = common::stdout_json(&standby.ctl(&[
        "get",
        "--call-id",
        "open-call",
        "--from-tag",
        "a-tag",
    ]));
    assert_eq!(
        session["session"]["gruu"], GRUU_B,
        "B holds the call: {session}"
    );
}

/// What a standby reads from Redis is not trusted: values that are not
/// JSON, too large, of another version, naming ports outside the relay's
/// range or too many streams are each skipped and counted; the relay
/// stays up and the real call is taken over.
#[test]
fn unreadable_or_hostile_stored_calls_are_skipped_and_counted() {
    let Some(redis) = Redis::start() else { return };
    let prefix = "pair6";
    let (mut active, standby, ng_a, _) = pair(&redis, ["bad-a", "bad-b"], "43200-43299", prefix);
    let mut proxy = Proxy::new(format!("127.0.0.1:{ng_a}").parse().expect("addr"));
    let (a, bob) = (Peer::v4(), Peer::v4());
    let to_bob = plain_call(&mut proxy, "real-call", &a, &bob);
    wait_until("the call is stored", || {
        redis.keys(&format!("{prefix}:session:*")).len() == 1
    });
    // Reading a call writes nothing again.
    let writes = |relay: &Relay| ha(relay)["redis_writes"].clone();
    std::thread::sleep(Duration::from_millis(300));
    let before = writes(&active);
    for _ in 0..5 {
        let got = active.ctl(&["get", "--call-id", "real-call", "--from-tag", "a-tag"]);
        assert!(got.status.success(), "{got:?}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(writes(&active), before, "a get is no change");
    let key = redis.keys(&format!("{prefix}:session:*")).remove(0);
    let real = redis.cli(&["GET", &key]);
    let relay_port = media_addr(&to_bob).port();
    let forged = |id: &str, value: &str| {
        let key = format!("{prefix}:session:{id}");
        let written = Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "-x", "SET", &key])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(value.as_bytes())?;
                child.wait()
            })
            .expect("redis-cli");
        assert!(written.success());
    };
    let real_id = key.rsplit(':').next().expect("id").to_owned();
    let other_ids = |json: &str, id: &str| {
        json.replace(
            &format!("\"id\":{}", u64::from_str_radix(&real_id, 16).expect("hex")),
            &format!("\"id\":{}", u64::from_str_radix(id, 16).expect("hex")),
        )
        .replace(
            "\"call_id\":\"real-call\"",
            &format!("\"call_id\":\"forged-{id}\""),
        )
    };
    forged("00000000000000a1", "not json at all");
    forged("00000000000000a2", &"x".repeat(2 << 20));
    forged(
        "00000000000000a3",
        &other_ids(&real, "00000000000000a3").replace("\"version\":1", "\"version\":99"),
    );
    forged(
        "00000000000000a4",
        &other_ids(&real, "00000000000000a4").replace(&format!(":{relay_port}\""), ":9\""),
    );
    forged(
        "00000000000000a5",
        "{\"version\":1,\"id\":165,\"streams\":[]}",
    );
    forged(
        "00000000000000a6",
        "[1, 2, {\"deep\": [[[[[[[[[[[[[]]]]]]]]]]]]]}]",
    );
    // The real call's value under another key.
    forged("00000000000000a7", &real);
    // An SDP layout naming a stream the session does not have (its next
    // offer would index past its streams).
    let layout = "\"layout\":[[0],[0]]";
    assert!(real.contains(layout), "{real}");
    forged(
        "00000000000000a8",
        &other_ids(&real, "00000000000000a8").replace(layout, "\"layout\":[[7],[0]]"),
    );

    active.child.kill().expect("SIGKILL the active");
    wait_until("bad-b is active", || role(&standby) == "active");
    let stats = ha(&standby);
    assert_eq!(
        stats["sessions_resumed"], "1",
        "only the real call: {stats}"
    );
    let failures: u64 = stats["resume_failures"]
        .as_str()
        .expect("a count")
        .parse()
        .expect("number");
    assert!(failures >= 8, "each forged value counted: {stats}");
    let listed = common::stdout_json(&standby.ctl(&["list"]));
    let sessions = listed["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{listed}");
    assert_eq!(sessions[0]["call_id"], "real-call", "{listed}");
    // And the real call flows on the standby.
    bob.send(
        &media_addr(&to_bob).to_string(),
        &rtp(8, 1, 160, 0xB0B0, &[0xD5; 160]),
    );
    assert_eq!(header(&a.recv().0).2, 0xB0B0, "the real call goes on");
}

/// `rediss://` with mutual TLS: a CA, a server and a client certificate
/// made with openssl; redis-server requires the client's. The relay with
/// `--redis-tls-ca/-cert/-key` holds the heartbeat key and writes its
/// calls; without its client certificate it serves but never connects.
#[test]
fn redis_over_mutual_tls() {
    let Some(_plain) = Redis::start() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl (apt-get install openssl)");
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=baton test CA",
        "-keyout",
        &path("ca.key"),
        "-out",
        &path("ca.crt"),
    ]);
    // X.509 v3 (with extensions) for both: rustls takes no v1 certificate.
    std::fs::write(
        path("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    std::fs::write(path("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for who in ["server", "client"] {
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN=baton test {who}"),
            "-keyout",
            &path(&format!("{who}.key")),
            "-out",
            &path(&format!("{who}.csr")),
        ]);
        let mut sign = vec![
            "x509",
            "-req",
            "-days",
            "2",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
        ];
        let (csr, crt, ext) = (
            path(&format!("{who}.csr")),
            path(&format!("{who}.crt")),
            path(&format!("{who}.ext")),
        );
        sign.extend(["-in", &csr, "-out", &crt, "-extfile", &ext]);
        let sign: Vec<String> = sign
            .iter()
            .map(|a| match *a {
                "ca.crt" => path("ca.crt"),
                "ca.key" => path("ca.key"),
                other => other.to_owned(),
            })
            .collect();
        openssl(&sign.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let port = common::free_tcp_port();
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            &path("server.crt"),
            "--tls-key-file",
            &path("server.key"),
        ])
        .args([
            "--tls-ca-cert-file",
            &path("ca.crt"),
            "--tls-auth-clients",
            "yes",
        ])
        .args(["--save", "", "--appendonly", "no", "--dir", &path("")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server with TLS");
    let url = format!("rediss://127.0.0.1:{port}");
    let (ca, cert, key) = (path("ca.crt"), path("client.crt"), path("client.key"));
    let with_cert = ha_relay_with(
        &url,
        "tls",
        false,
        common::free_udp_port(),
        "43400-43499",
        "tls",
        &[
            "--redis-tls-ca",
            &ca,
            "--redis-tls-cert",
            &cert,
            "--redis-tls-key",
            &key,
        ],
    );
    let tls_cli = |args: &[&str]| {
        Command::new("redis-cli")
            .args([
                "-p",
                &port.to_string(),
                "--tls",
                "--cacert",
                &ca,
                "--cert",
                &cert,
                "--key",
                &key,
            ])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    wait_until("the relay holds the key over TLS", || {
        role(&with_cert) == "active" && tls_cli(&["GET", "tls:active"]) == "tls"
    });
    let without_cert = ha_relay_with(
        &url,
        "no-cert",
        false,
        common::free_udp_port(),
        "43500-43599",
        "tls2",
        &["--redis-tls-ca", &ca],
    );
    wait_until(
        "the relay without a client certificate serves anyway",
        || role(&without_cert) == "active",
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        tls_cli(&["GET", "tls2:active"]),
        "",
        "no key without a client certificate"
    );
    let stats = ha(&without_cert);
    assert_eq!(stats["redis_writes"], "0", "{stats}");
    let _ = server.kill();
    let _ = server.wait();
}

/// Redis dies with the active (the same host): the standby, told to take
/// over, goes on from its own copy of the calls; it takes the heartbeat
/// key and writes them once a Redis answers again.
#[test]
fn a_standby_told_to_take_over_without_redis_goes_on_from_its_copy() {
    let Some(redis) = Redis::start() else { return };
    let prefix = "pair7";
    let (mut active, standby, ng_a, _) = pair(&redis, ["gone-a", "gone-b"], "43600-43699", prefix);
    let mut proxy = Proxy::new(format!("127.0.0.1:{ng_a}").parse().expect("addr"));
    let (a, bob) = (Peer::v4(), Peer::v4());
    let to_bob = plain_call(&mut proxy, "redis-gone", &a, &bob);
    let bob_to_relay = media_addr(&to_bob).to_string();
    bob.send(&bob_to_relay, &rtp(8, 1, 160, 0xB0B0, &[0xD5; 160]));
    assert_eq!(header(&a.recv().0).0, 1);
    wait_until("the standby holds the call", || {
        ha(&standby)["standby_sessions"] == "1"
    });
    let port = redis.port;
    drop(redis);
    active.child.kill().expect("SIGKILL the active");
    let took = standby.ctl(&["takeover"]);
    assert!(took.status.success(), "{took:?}");
    wait_until("the standby serves from its copy", || {
        role(&standby) == "active"
    });
    assert_eq!(ha(&standby)["sessions_resumed"], "1");
    bob.send(&bob_to_relay, &rtp(8, 2, 320, 0xB0B0, &[0xD5; 160]));
    assert_eq!(header(&a.recv().0).0, 2, "the call goes on without Redis");
    // A Redis again (empty): the key and the call are written.
    let redis = Redis::start_on(port);
    wait_until("the call is written again", || {
        redis.keys(&format!("{prefix}:session:*")).len() == 1
    });
    assert_eq!(redis.cli(&["GET", &format!("{prefix}:active")]), "gone-b");
}
