//! Session handoff through the real binary: a call moves between a user's
//! devices and the remote party sees one continuous stream. What only the
//! process can show stays here (sockets, the control commands, bindings);
//! the transfer rules themselves (commit mode, DTMF across the switch,
//! rollback, chains) are tested in memory in `relay/src/core/session.rs`.

mod common;

use std::time::{Duration, Instant};

use baton_control::{Client, ClientError};
use baton_proto::v1::{self, request::Command, response::Result as Reply};
use common::Relay;
use common::calls::*;
use common::media::{Peer, rtp};
use common::native::next_event;

/// VP8 and its RTX repair format (RFC 4588).
fn video_codecs() -> Vec<v1::Codec> {
    let at_90k = |pt: u32, name: &str| v1::Codec {
        clock_rate: 90_000,
        ..codec(pt, name)
    };
    vec![at_90k(96, "VP8"), at_90k(97, "rtx")]
}

async fn refused(client: &Client, command: Command) -> v1::Error {
    match client.call(command).await {
        Err(ClientError::Status(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_keeps_one_continuous_stream_both_ways() {
    let relay = Relay::start(&[]);
    let c = call(&relay, "handoff").await;
    c.client.subscribe().await.expect("subscribe");
    let device_b = Peer::v4();
    let mut a = Talker::new(0xA0A0_A0A0, 65530, 4_294_960_000, b'A');
    let mut remote_talker = Talker::new(0x0F0F_0F0F, 100, 1000, b'R');
    let mut at_remote = a.talk(&c.device, &c.user_addr, &c.remote, 10);
    assert_eq!(
        at_remote[0].ssrc, 0xA0A0_A0A0,
        "the first source passes untouched"
    );

    let b_addr = transfer(
        &c.client,
        transfer_request(&c.session, GRUU_B, &device_b, v1::SwitchMode::FirstPacket),
    )
    .await;
    assert_eq!(
        get(&c.client, &c.session).await.pending_gruu,
        "sip:alice@example.com;gr=urn:uuid:00000000-0000-0000-0000-00000000000b"
    );
    // While pending: A still reaches the remote; the remote reaches both.
    at_remote.extend(a.talk(&c.device, &c.user_addr, &c.remote, 5));
    let heard_by_a = remote_talker.talk(&c.remote, &c.remote_addr, &c.device, 3);
    let mut heard_by_b = Vec::new();
    for _ in 0..3 {
        heard_by_b.push(seen(&device_b.recv().0));
    }
    let seqs = |heard: &[Seen]| heard.iter().map(|s| s.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(&heard_by_b),
        seqs(&heard_by_a),
        "the new device hears the remote before it talks"
    );

    // B talks: from its first packet the remote hears B, in A's stream.
    // The relay times the switch from forwarding A's last packet to
    // receiving B's first; that interval lies inside [before A's last is
    // sent, B's first arrives] and contains the 30 ms sleep.
    let before_switch = Instant::now();
    at_remote.extend(a.talk(&c.device, &c.user_addr, &c.remote, 1));
    std::thread::sleep(Duration::from_millis(30));
    let mut b = Talker::new(0xB0B0_B0B0, 12345, 777, b'B');
    let first_b = b.talk(&device_b, &b_addr, &c.remote, 1)[0];
    let switch_window = before_switch.elapsed();
    let last_a = *at_remote.last().expect("A was heard");
    let ts_step = first_b.ts.wrapping_sub(last_a.ts);
    assert!(
        ts_step >= 30 * 8,
        "at least the 30 ms that passed: {ts_step}"
    );
    assert!(
        u128::from(ts_step) <= switch_window.as_millis() * 8 + 8,
        "no more than the time that passed: {ts_step}"
    );
    at_remote.push(first_b);
    at_remote.extend(b.talk(&device_b, &b_addr, &c.remote, 10));

    // A's late packets never reach the remote; the remote reaches B only.
    c.device.send(&c.user_addr, &a.next());
    heard_by_b.extend(remote_talker.talk(&c.remote, &c.remote_addr, &device_b, 5));
    c.device.expect_silence();
    at_remote.extend(b.talk(&device_b, &b_addr, &c.remote, 5));
    assert!(at_remote.iter().all(|s| s.pt == 0));
    assert_continuous(&at_remote);
    // In the other direction each device heard the remote's own stream,
    // unbroken: A until the switch, B from the moment its leg opened.
    for heard in [&heard_by_a, &heard_by_b] {
        assert!(heard.iter().all(|s| s.ssrc == 0x0F0F_0F0F && s.tag == b'R'));
        for pair in heard.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq.wrapping_add(1), "{heard:?}");
        }
    }

    let kind = next_event(&c.client, |k| {
        matches!(k, v1::event::Kind::TransferCompleted(_))
    })
    .await;
    let v1::event::Kind::TransferCompleted(done) = kind else {
        unreachable!()
    };
    assert_eq!(done.session, c.session);
    assert!(done.media_gap_ms >= 30.0, "gap {}", done.media_gap_ms);
    assert!(done.previous_gruu.ends_with("00000000000a"));
    let info = get(&c.client, &c.session).await;
    assert!(info.gruu.ends_with("00000000000b"), "{}", info.gruu);
    assert_eq!(
        info.streams[0]
            .user
            .as_ref()
            .expect("user")
            .local
            .as_ref()
            .expect("local")
            .rtp,
        b_addr
    );
    assert_eq!(info.pending_gruu, "");
    // A's ports close after the grace period and are free for others.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::UdpSocket::bind(&c.user_addr).is_err() {
        assert!(Instant::now() < deadline, "A's port was never released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtcp_follows_the_switch() {
    use webrtc_util::marshal::{Marshal, Unmarshal};
    let relay = Relay::start(&[]);
    let c = call(&relay, "rtcp").await;
    let device_b = Peer::v4();
    let mut a = Talker::new(0xAAAA, 100, 1000, b'A');
    a.talk(&c.device, &c.user_addr, &c.remote, 5);
    let b_addr = transfer(
        &c.client,
        transfer_request(&c.session, GRUU_B, &device_b, v1::SwitchMode::FirstPacket),
    )
    .await;
    let mut b = Talker::new(0xBBBB, 5000, 50, b'B');
    b.talk(&device_b, &b_addr, &c.remote, 5);

    // B's sender report reaches the remote about the outward stream.
    let sr = rtcp::sender_report::SenderReport {
        ssrc: 0xBBBB,
        ntp_time: 42,
        rtp_time: 50 + 160 * 4,
        packet_count: 5,
        octet_count: 800,
        ..Default::default()
    };
    device_b.send(&b_addr, &sr.marshal().expect("marshal"));
    let (bytes, _) = c.remote.recv();
    let got = rtcp::sender_report::SenderReport::unmarshal(&mut &bytes[..]).expect("an SR");
    assert_eq!(got.ssrc, 0xAAAA, "the outward SSRC");
    assert_eq!(
        (got.packet_count, got.octet_count),
        (10, 1600),
        "what the remote really received"
    );
    // The remote reports on the outward stream (highest seq 109 = A's 5 and
    // B's 5 packets); B hears it about its own SSRC and numbers.
    let rr = rtcp::receiver_report::ReceiverReport {
        ssrc: 0x0F0F,
        reports: vec![rtcp::reception_report::ReceptionReport {
            ssrc: 0xAAAA,
            last_sequence_number: 109,
            ..Default::default()
        }],
        ..Default::default()
    };
    c.remote
        .send(&c.remote_addr, &rr.marshal().expect("marshal"));
    let (bytes, _) = device_b.recv();
    let got = rtcp::receiver_report::ReceiverReport::unmarshal(&mut &bytes[..]).expect("an RR");
    assert_eq!(got.reports[0].ssrc, 0xBBBB);
    assert_eq!(got.reports[0].last_sequence_number, 5004);
    // A's BYE never reaches the remote.
    let bye = rtcp::goodbye::Goodbye {
        sources: vec![0xAAAA],
        reason: Default::default(),
    };
    c.device
        .send(&c.user_addr, &bye.marshal().expect("marshal"));
    c.remote.expect_silence();
}

/// Issue 18: after a handoff of a video call, the remote's feedback
/// reaches the new device in its own terms — PLI and FIR naming its SSRC,
/// NACKs in its own numbering, a NACK only for the old device's packets
/// never (counted) — and the new device's RTX repairs reach the remote as
/// the outward repair stream, the original's outward number inside, while
/// the video stream goes on unbroken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_feedback_and_repairs_follow_the_device() {
    use rtcp::payload_feedbacks::full_intra_request::{FirEntry, FullIntraRequest};
    use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
    use webrtc_util::marshal::{Marshal, Unmarshal};
    let relay = Relay::start(&[]);
    let c = call_with(&relay, "video-feedback", "video", video_codecs()).await;
    let device_b = Peer::v4();
    let frame = |seq: u16, ts: u32, ssrc: u32, tag: u8| rtp(96, seq, ts, ssrc, &[tag; 100]);
    for i in 0..5u16 {
        c.device.send(
            &c.user_addr,
            &frame(100 + i, 3000 * u32::from(i), 0xAAAA, b'A'),
        );
        c.remote.recv();
    }
    let b_addr = transfer(
        &c.client,
        transfer_request(&c.session, GRUU_B, &device_b, v1::SwitchMode::FirstPacket),
    )
    .await;
    // B's first packet is an inter frame (VP8, P bit set): held, and B is
    // asked for a keyframe (PLI and FIR about its SSRC) instead.
    device_b.send(&b_addr, &rtp(96, 5000, 77, 0xBBBB, &[0x10, 0x01, b'B']));
    let (bytes, _) = device_b.recv();
    let request = rtcp::packet::unmarshal(&mut &bytes[..]).expect("RTCP");
    let asked = request[1]
        .as_any()
        .downcast_ref::<PictureLossIndication>()
        .expect("a PLI");
    assert_eq!(asked.media_ssrc, 0xBBBB);
    assert!(
        request[2]
            .as_any()
            .downcast_ref::<FullIntraRequest>()
            .is_some(),
        "and a FIR"
    );
    c.remote.expect_silence();
    // Its keyframe goes out next, then the rest.
    let keyframe = rtp(96, 5001, 77 + 3000, 0xBBBB, &[0x10, 0x00, b'B']);
    device_b.send(&b_addr, &keyframe);
    let first = seen(&c.remote.recv().0);
    assert_eq!((first.seq, first.ssrc, first.marker), (105, 0xAAAA, false));
    for i in 2..6u16 {
        device_b.send(
            &b_addr,
            &frame(5000 + i, 77 + 3000 * u32::from(i), 0xBBBB, b'B'),
        );
        std::thread::sleep(Duration::from_millis(2));
        c.remote.recv();
    }
    // The outward stream: A's 100..=104, then B's 5001..=5005 as 105..=109.
    let from_remote = |packet: &[u8]| c.remote.send(&c.remote_addr, packet);
    from_remote(
        &PictureLossIndication {
            sender_ssrc: 0x0F0F,
            media_ssrc: 0xAAAA,
        }
        .marshal()
        .expect("marshal"),
    );
    let (bytes, _) = device_b.recv();
    let pli = PictureLossIndication::unmarshal(&mut &bytes[..]).expect("a PLI");
    assert_eq!(pli.media_ssrc, 0xBBBB);
    let nack = |pairs: &[(u16, u16)]| {
        TransportLayerNack {
            sender_ssrc: 0x0F0F,
            media_ssrc: 0xAAAA,
            nacks: pairs
                .iter()
                .map(|&(packet_id, lost_packets)| NackPair {
                    packet_id,
                    lost_packets,
                })
                .collect(),
        }
        .marshal()
        .expect("marshal")
    };
    // 102 is A's; 106 and 108 are B's 5002 and 5004.
    from_remote(&nack(&[(102, 0), (106, 0b10)]));
    let (bytes, _) = device_b.recv();
    let got = TransportLayerNack::unmarshal(&mut &bytes[..]).expect("a NACK");
    assert_eq!(got.media_ssrc, 0xBBBB);
    let lost: Vec<u16> = got.nacks.iter().flat_map(|p| p.packet_list()).collect();
    assert_eq!(lost, vec![5002, 5004]);
    // Only A's packets: B hears nothing, and it is counted.
    from_remote(&nack(&[(101, 0b1)]));
    device_b.expect_silence();
    let info = get(&c.client, &c.session).await;
    let remote_leg = info.streams[0].remote.as_ref().expect("remote leg");
    let drops = &remote_leg.stats.as_ref().expect("stats").drops;
    assert_eq!(drops.get("stale_nack"), Some(&1), "{drops:?}");
    from_remote(
        &FullIntraRequest {
            sender_ssrc: 0x0F0F,
            media_ssrc: 0,
            fir: vec![FirEntry {
                ssrc: 0xAAAA,
                sequence_number: 7,
            }],
        }
        .marshal()
        .expect("marshal"),
    );
    let (bytes, _) = device_b.recv();
    let fir = FullIntraRequest::unmarshal(&mut &bytes[..]).expect("a FIR");
    assert_eq!(fir.fir[0].ssrc, 0xBBBB);

    // B repairs its 5002 (outward 106) on its RTX SSRC.
    let mut repair = 5002u16.to_be_bytes().to_vec();
    repair.extend_from_slice(&[b'B'; 100]);
    device_b.send(&b_addr, &rtp(97, 9, 77 + 3000, 0xB0B0, &repair));
    let (bytes, _) = c.remote.recv();
    let got = seen(&bytes);
    assert_eq!((got.pt, got.ssrc, got.seq), (97, 0xB0B0, 9));
    assert_eq!(u16::from_be_bytes([bytes[12], bytes[13]]), 106);
    // The video stream goes on: 110, no marker.
    device_b.send(&b_addr, &frame(5006, 77 + 18_000, 0xBBBB, b'B'));
    let next = seen(&c.remote.recv().0);
    assert_eq!((next.seq, next.ssrc, next.marker), (110, 0xAAAA, false));
}

/// Issue 18: with `keyframe-wait = false` the new device's first inter
/// frame goes out at once (no hold), and the device is still asked for a
/// keyframe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_keyframe_wait_video_passes_at_once_and_a_keyframe_is_asked() {
    use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    let relay = Relay::start(&["--keyframe-wait", "false"]);
    let c = call_with(&relay, "video-no-wait", "video", video_codecs()).await;
    for i in 0..3u16 {
        c.device.send(
            &c.user_addr,
            &rtp(
                96,
                100 + i,
                3000 * u32::from(i),
                0xAAAA,
                &[0x10, 0x01, b'A'],
            ),
        );
        c.remote.recv();
    }
    let device_b = Peer::v4();
    let b_addr = transfer(
        &c.client,
        transfer_request(&c.session, GRUU_B, &device_b, v1::SwitchMode::FirstPacket),
    )
    .await;
    // An inter frame: forwarded at once, as the next outward packet.
    device_b.send(&b_addr, &rtp(96, 5000, 77, 0xBBBB, &[0x10, 0x01, b'B']));
    let first = seen(&c.remote.recv().0);
    assert_eq!((first.seq, first.ssrc), (103, 0xAAAA));
    // And B is asked for a keyframe.
    let (bytes, _) = device_b.recv();
    let request = rtcp::packet::unmarshal(&mut &bytes[..]).expect("RTCP");
    let pli = request[1]
        .as_any()
        .downcast_ref::<PictureLossIndication>()
        .expect("a PLI");
    assert_eq!(pli.media_ssrc, 0xBBBB);
}

/// Issue 18: a new device whose SDP offers only `ccm fir` is asked for its
/// keyframe by FIR alone (PLI alone for `nack pli`: the request writer's
/// and the SDP reader's unit tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keyframe_request_is_the_one_the_new_device_negotiated() {
    use rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
    let relay = Relay::start(&[]);
    let c = call_with(&relay, "video-fir-only", "video", video_codecs()).await;
    c.device
        .send(&c.user_addr, &rtp(96, 100, 0, 0xAAAA, &[0x10, 0x00, b'A']));
    c.remote.recv();
    let device_b = Peer::v4();
    let offer = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=video {} RTP/AVPF 96\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 ccm fir\r\na=rtcp-mux\r\n",
        device_b.addr().port()
    );
    let request = v1::TransferRequest {
        session: by_id(&c.session),
        gruu: GRUU_B.into(),
        sdp: offer,
        mode: v1::SwitchMode::FirstPacket as i32,
        ..Default::default()
    };
    let b_addr = transfer(&c.client, request).await;
    device_b.send(&b_addr, &rtp(96, 5000, 77, 0xBBBB, &[0x10, 0x01, b'B']));
    let (bytes, _) = device_b.recv();
    let request = rtcp::packet::unmarshal(&mut &bytes[..]).expect("RTCP");
    assert_eq!(request.len(), 2, "a report and one request: {request:?}");
    let fir = request[1]
        .as_any()
        .downcast_ref::<FullIntraRequest>()
        .expect("a FIR, not a PLI");
    assert_eq!(fir.fir[0].ssrc, 0xBBBB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_transfers_change_nothing() {
    let relay = Relay::start(&["--ports", "45300-45399"]);
    let c = call(&relay, "refusals").await;
    let device_b = Peer::v4();
    let free_before = free_pairs(&c.client).await;
    let other_user = transfer_request(
        &c.session,
        "sip:mallory@example.com;gr=urn:uuid:1",
        &device_b,
        v1::SwitchMode::FirstPacket,
    );
    let error = refused(&c.client, Command::Transfer(other_user)).await;
    assert_eq!(error.code(), v1::Code::PermissionDenied);
    assert!(error.message.contains("mallory"), "{}", error.message);

    let unknown_temp = transfer_request(&c.session, TEMP_C, &device_b, v1::SwitchMode::FirstPacket);
    let error = refused(&c.client, Command::Transfer(unknown_temp.clone())).await;
    assert_eq!(error.code(), v1::Code::PermissionDenied);
    assert!(error.message.contains("not bound"), "{}", error.message);

    // A binding that has expired stops counting at once.
    register(&c.client, TEMP_C, 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let error = refused(&c.client, Command::Transfer(unknown_temp.clone())).await;
    assert_eq!(error.code(), v1::Code::PermissionDenied);

    let malformed = transfer_request(
        &c.session,
        "sip:alice@exa mple.com;gr=x",
        &device_b,
        v1::SwitchMode::FirstPacket,
    );
    let error = refused(&c.client, Command::Transfer(malformed)).await;
    assert_eq!(error.code(), v1::Code::InvalidArgument);
    assert!(error.message.contains("host name"), "{}", error.message);

    let mut no_common =
        transfer_request(&c.session, GRUU_B, &device_b, v1::SwitchMode::FirstPacket);
    no_common.streams[0].codecs = vec![v1::Codec {
        payload_type: 111,
        name: "opus".into(),
        clock_rate: 48000,
        channels: 2,
        ..Default::default()
    }];
    let error = refused(&c.client, Command::Transfer(no_common)).await;
    assert_eq!(error.code(), v1::Code::FailedPrecondition);
    assert!(
        error.message.contains("no codec in common"),
        "{}",
        error.message
    );

    let mut unknown_dialog =
        transfer_request(&c.session, GRUU_B, &device_b, v1::SwitchMode::FirstPacket);
    unknown_dialog.session = None;
    unknown_dialog.replaces = "no-such-call;to-tag=1;from-tag=2".into();
    assert_eq!(
        refused(&c.client, Command::Transfer(unknown_dialog))
            .await
            .code(),
        v1::Code::NotFound
    );

    // Nothing changed: same device, nothing pending, no port held, and A
    // still talks to the remote.
    let info = get(&c.client, &c.session).await;
    assert_eq!(info.gruu, GRUU_A);
    assert_eq!(info.pending_gruu, "");
    assert_eq!(free_pairs(&c.client).await, free_before);
    let mut a = Talker::new(1, 1, 1, b'A');
    a.talk(&c.device, &c.user_addr, &c.remote, 3);

    // Found by its Replaces value (tags as seen from either side), and a
    // second transfer while one is pending is refused.
    let mut by_replaces =
        transfer_request(&c.session, GRUU_B, &device_b, v1::SwitchMode::FirstPacket);
    by_replaces.session = None;
    by_replaces.replaces = "refusals;to-tag=a-tag;from-tag=r-tag".into();
    transfer(&c.client, by_replaces).await;
    let again = transfer_request(&c.session, GRUU_B, &device_b, v1::SwitchMode::FirstPacket);
    let error = refused(&c.client, Command::Transfer(again)).await;
    assert_eq!(error.code(), v1::Code::FailedPrecondition);
    assert!(
        error.message.contains("already pending"),
        "{}",
        error.message
    );
    // early-only refuses a confirmed dialog.
    let mut early = transfer_request(&c.session, GRUU_B, &device_b, v1::SwitchMode::FirstPacket);
    early.session = None;
    early.replaces = "refusals;to-tag=r-tag;from-tag=a-tag;early-only".into();
    assert_eq!(
        refused(&c.client, Command::Transfer(early)).await.code(),
        v1::Code::FailedPrecondition
    );
}

async fn free_pairs(client: &Client) -> u32 {
    match client.call(Command::GetStats(v1::GetStatsRequest {})).await {
        Ok(Reply::GetStats(stats)) => stats.ports[0].free_pairs,
        other => panic!("stats: {other:?}"),
    }
}

async fn register(client: &Client, gruu: &str, expires: u32) {
    let request = v1::RegisterDeviceRequest {
        aor: AOR.into(),
        gruu: gruu.into(),
        expires,
        temporary: false,
    };
    match client.call(Command::RegisterDevice(request)).await {
        Ok(Reply::RegisterDevice(_)) => {}
        other => panic!("register: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_timeout_roll_back() {
    let relay = Relay::start(&["--transfer-timeout", "0.5", "--ports", "45400-45499"]);
    let c = call(&relay, "rollback").await;
    c.client.subscribe().await.expect("subscribe");
    let device_b = Peer::v4();
    let free_before = free_pairs(&c.client).await;
    let mut a = Talker::new(0xA, 1, 1, b'A');
    let mut heard = a.talk(&c.device, &c.user_addr, &c.remote, 3);

    let b_addr = transfer(
        &c.client,
        transfer_request(&c.session, GRUU_B, &device_b, v1::SwitchMode::FirstPacket),
    )
    .await;
    let cancel = v1::CancelTransferRequest {
        session: by_id(&c.session),
        transfer_id: 0,
    };
    assert!(matches!(
        c.client.call(Command::CancelTransfer(cancel.clone())).await,
        Ok(Reply::CancelTransfer(_))
    ));
    let kind = next_event(&c.client, |k| {
        matches!(k, v1::event::Kind::TransferFailed(_))
    })
    .await;
    assert!(matches!(kind, v1::event::Kind::TransferFailed(f) if f.reason == "cancelled"));
    // B's leg is gone: its packets reach nobody; its port is free again.
    device_b.send(&b_addr, &rtp(0, 1, 1, 0xB, &[b'B'; 160]));
    heard.extend(a.talk(&c.device, &c.user_addr, &c.remote, 3));
    assert_eq!(free_pairs(&c.client).await, free_before);
    std::net::UdpSocket::bind(&b_addr).expect("B's port freed");
    assert_eq!(
        refused(&c.client, Command::CancelTransfer(cancel))
            .await
            .code(),
        v1::Code::FailedPrecondition
    );

    // No packet from B within the transfer timeout: rolled back.
    transfer(
        &c.client,
        transfer_request(&c.session, GRUU_B, &device_b, v1::SwitchMode::FirstPacket),
    )
    .await;
    let kind = next_event(&c.client, |k| {
        matches!(k, v1::event::Kind::TransferFailed(_))
    })
    .await;
    assert!(matches!(kind, v1::event::Kind::TransferFailed(f) if f.reason == "timeout"));
    heard.extend(a.talk(&c.device, &c.user_addr, &c.remote, 3));
    assert!(heard.iter().all(|s| s.tag == b'A' && !s.marker));
    assert_continuous(&heard);
    assert_eq!(get(&c.client, &c.session).await.gruu, GRUU_A);
    assert_eq!(free_pairs(&c.client).await, free_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_chained_transfers_are_one_stream() {
    let relay = Relay::start(&[]);
    let c = call(&relay, "chain").await;
    register(&c.client, TEMP_C, 600).await;
    let (device_b, device_a2, device_c) = (Peer::v4(), Peer::v4(), Peer::v4());
    let mut heard = Talker::new(0xA1, 1000, 0, b'A').talk(&c.device, &c.user_addr, &c.remote, 5);
    // A → B → A (on a new leg) → C (a temporary GRUU, bound).
    for (gruu, device, talker) in [
        (GRUU_B, &device_b, Talker::new(0xB1, 50_000, 9, b'B')),
        (GRUU_A, &device_a2, Talker::new(0xA2, 7, 123_456, b'a')),
        (
            TEMP_C,
            &device_c,
            Talker::new(0xC1, 65535, u32::MAX - 100, b'C'),
        ),
    ] {
        let addr = transfer(
            &c.client,
            transfer_request(&c.session, gruu, device, v1::SwitchMode::FirstPacket),
        )
        .await;
        let mut talker = talker;
        heard.extend(talker.talk(device, &addr, &c.remote, 5));
    }
    assert_eq!(heard.len(), 20);
    assert_eq!(heard.iter().filter(|s| s.marker).count(), 3);
    assert_continuous(&heard);
    assert!(heard.iter().all(|s| s.ssrc == 0xA1));
    assert_eq!(get(&c.client, &c.session).await.gruu, TEMP_C);
}
