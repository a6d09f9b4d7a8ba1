//! The bounded queue from the media workers to the control plane, full:
//! informational events (a leg latched) are dropped and counted; events the
//! control plane must get (a session ended, freeing its ports) are held by
//! the worker and delivered once there is room.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use baton_relay::core::session::{EndReason, StreamParams, Timeouts};
use baton_relay::core::stream::{LegConfig, StreamConfig};
use baton_relay::{
    Dataplane, DataplaneConfig, DataplaneError, SessionId, StreamSetup, WorkerEvent, WorkerId,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
    baton_relay::core::rtp::RtpRepr {
        sequence: seq,
        timestamp: u32::from(seq) * 160,
        ssrc,
        ..Default::default()
    }
    .to_vec(&[0xD5; 160])
}

#[test]
fn a_full_event_queue_drops_only_what_may_be_lost() {
    let config = DataplaneConfig {
        workers: 1,
        media_ips: vec!["127.0.0.1".parse().expect("ip")],
        interface_names: Vec::new(),
        ports: (46000, 46099),
        timeouts: Timeouts {
            media: Duration::from_millis(300),
            setup: Duration::from_secs(60),
            hold: Duration::from_secs(60),
        },
        command_queue: 16,
        busy_poll: false,
        dtls_identity: None,
        kernel_forwarding: false,
        user_fast_path: true,
    };
    // Room for one event, and nobody reading yet.
    let (events, mut events_rx) = tokio::sync::mpsc::channel(1);
    let dataplane = Dataplane::start(&config, events).expect("start");
    let runtime = runtime();
    let leg = LegConfig {
        rtcp_mux: true,
        peer_rtp: None,
        peer_rtcp: None,
        peer_ip: None,
        crypto: baton_relay::core::stream::LegCrypto::Plain,
        ice: None,
        dtls: None,
    };
    let mut relay_addrs = Vec::new();
    for id in 1..=3u64 {
        let user = dataplane.allocate(None, Some(false), true).expect("ports");
        let remote = dataplane.allocate(None, Some(false), true).expect("ports");
        relay_addrs.push(user.rtp.local_addr().expect("addr"));
        let setup = StreamSetup {
            params: StreamParams {
                config: StreamConfig {
                    learning_window: Duration::from_secs(5),
                    relearn: false,
                    asymmetric: false,
                },
                clock_rates: vec![(0, 8000)],
                telephone_event: None,
                formats: Vec::new(),
                device: leg,
                remote: leg,
            },
            sockets: [Some(user), Some(remote)],
            bundle: [None, None],
        };
        runtime
            .block_on(dataplane.add_session(WorkerId(0), SessionId(id), vec![setup]))
            .expect("added");
    }
    // Three legs latch: three `SourceLatched` events for a queue of one.
    let device = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for to in &relay_addrs {
        device.send_to(&rtp(1, 7), to).expect("send");
    }
    let stats = || {
        runtime
            .block_on(dataplane.worker_stats(WorkerId(0)))
            .expect("stats")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats().events_lost < 2 {
        assert!(Instant::now() < deadline, "latch events were not dropped");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(stats().events_lost, 2, "one queued, two lost and counted");
    // The media stops: three sessions end by the media timeout while the
    // queue is still full. Those events are held, not lost.
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats().sessions > 0 {
        assert!(Instant::now() < deadline, "the sessions did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stats().events_lost, 2, "no end of session was dropped");
    let mut ended = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ended.len() < 3 {
        assert!(Instant::now() < deadline, "ends delivered: {ended:?}");
        match events_rx.try_recv() {
            Ok(WorkerEvent::SessionEnded { id, reason, .. }) => {
                assert_eq!(reason, EndReason::MediaTimeout);
                ended.push(id.0);
            }
            Ok(WorkerEvent::SourceLatched { .. }) => {}
            Ok(other) => panic!("unexpected event {other:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    ended.sort_unstable();
    assert_eq!(ended, [1, 2, 3]);
    dataplane.shutdown();
}

#[test]
fn a_full_command_queue_refuses_at_once_instead_of_blocking() {
    let config = DataplaneConfig {
        workers: 1,
        media_ips: vec!["127.0.0.1".parse().expect("ip")],
        interface_names: Vec::new(),
        ports: (46100, 46199),
        timeouts: Timeouts {
            media: Duration::from_secs(60),
            setup: Duration::from_secs(60),
            hold: Duration::from_secs(60),
        },
        command_queue: 1,
        busy_poll: false,
        dtls_identity: None,
        kernel_forwarding: false,
        user_fast_path: true,
    };
    let (events, _events_rx) = tokio::sync::mpsc::channel(16);
    let dataplane = std::sync::Arc::new(Dataplane::start(&config, events).expect("start"));
    // Bursts faster than a worker wakes up: with room for one command, most
    // of a burst find the queue full and are refused there and then (the
    // control plane answers UNAVAILABLE); every accepted one is answered.
    let (accepted, refused) = runtime().block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..2000 {
            let dataplane = std::sync::Arc::clone(&dataplane);
            tasks.spawn(async move { dataplane.worker_stats(WorkerId(0)).await });
        }
        let (mut accepted, mut refused) = (0, 0);
        while let Some(result) = tasks.join_next().await {
            match result.expect("task") {
                Ok(_) => accepted += 1,
                Err(DataplaneError::Busy(WorkerId(0))) => refused += 1,
                Err(other) => panic!("unexpected {other}"),
            }
        }
        (accepted, refused)
    });
    assert!(refused > 0, "the queue never filled");
    assert_eq!(accepted + refused, 2000, "every command answered once");
    dataplane.shutdown();
}
