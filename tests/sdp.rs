//! SDP offer/answer through the real binary: sessions created and updated
//! from bodies, media flowing between the addresses the rewritten bodies
//! name, hold, and a transfer answered with the new device's SDP.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use baton_control::sip::sdp::{Direction, Sdp};
use baton_control::{Client, ClientError};
use baton_proto::v1::{self, request::Command, response::Result as Reply};
use common::Relay;
use common::media::{Peer, rtp};

const AOR: &str = "sip:alice@example.com";
const GRUU_A: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-0000-0000-00000000000a";
const GRUU_B: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-0000-0000-00000000000b";

/// Device A's offer: PCMU, PCMA, telephone-event, ICE attributes that the
/// relay must strip, and an attribute it must keep.
fn offer_from(device: SocketAddr) -> String {
    format!(
        "v=0\r\no=alice-a 4000 4000 IN IP4 {ip}\r\ns=call\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-16\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef01234567\r\n\
         a=candidate:1 1 UDP 2130706431 {ip} {port} typ host\r\na=ptime:20\r\n\
         a=x-device-label:desk\r\na=sendrecv\r\n",
        ip = device.ip(),
        port = device.port()
    )
}

/// The remote party's answer (or re-offer with another direction).
fn answer_from(remote: SocketAddr, version: u32, direction: &str) -> String {
    format!(
        "v=0\r\no=carrier 77 {version} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-15\r\na=ptime:20\r\na={direction}\r\n",
        ip = remote.ip(),
        port = remote.port()
    )
}

/// The single audio stream's RTP address in a body the relay wrote.
fn relay_address(body: &str) -> SocketAddr {
    let sdp = Sdp::parse(body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    sdp.media(0).expect("audio").rtp.expect("an address")
}

struct Call {
    client: Client,
    session: String,
    device: Peer,
    remote: Peer,
    /// What the relay told each side to send to.
    to_relay_from_device: SocketAddr,
    to_relay_from_remote: SocketAddr,
    offer_out: String,
    answer_out: String,
}

async fn offer_answer(relay: &Relay) -> Call {
    let client = relay.client().await;
    let (device, remote) = (Peer::v4(), Peer::v4());
    let offer = offer_from(device.addr());
    let created = match client
        .call(Command::CreateSession(v1::CreateSessionRequest {
            call_id: "sdp-call".into(),
            from_tag: "a-tag".into(),
            aor: AOR.into(),
            gruu: GRUU_A.into(),
            sdp: offer.clone(),
            ..Default::default()
        }))
        .await
    {
        Ok(Reply::CreateSession(created)) => created,
        other => panic!("create failed: {other:?}"),
    };
    let offer_out = created.sdp.clone();
    let answer = answer_from(remote.addr(), 1, "sendrecv");
    let updated = match client
        .call(Command::UpdateSession(v1::UpdateSessionRequest {
            session: Some(by_id(&created.session)),
            to_tag: "r-tag".into(),
            sdp: answer,
            ..Default::default()
        }))
        .await
    {
        Ok(Reply::UpdateSession(updated)) => updated,
        other => panic!("update failed: {other:?}"),
    };
    Call {
        client,
        session: created.session.clone(),
        to_relay_from_remote: relay_address(&offer_out),
        to_relay_from_device: relay_address(&updated.sdp),
        device,
        remote,
        offer_out,
        answer_out: updated.sdp,
    }
}

fn by_id(session: &str) -> v1::SessionRef {
    v1::SessionRef {
        by: Some(v1::session_ref::By::Id(session.into())),
    }
}

async fn get(client: &Client, session: &str) -> v1::SessionInfo {
    match client
        .call(Command::GetSession(v1::GetSessionRequest {
            session: Some(by_id(session)),
        }))
        .await
    {
        Ok(Reply::GetSession(v1::GetSessionResponse {
            session: Some(info),
        })) => info,
        other => panic!("get failed: {other:?}"),
    }
}

#[tokio::test]
async fn offer_and_answer_are_rewritten_and_media_flows_between_the_named_addresses() {
    let relay = Relay::start(&[]);
    let call = offer_answer(&relay).await;

    // The offer as the remote gets it: the relay's remote leg, the device's
    // codecs and attributes, no ICE, the device's origin.
    let info = get(&call.client, &call.session).await;
    let stream = &info.streams[0];
    let remote_leg = stream
        .remote
        .as_ref()
        .and_then(|l| l.local.as_ref())
        .expect("leg");
    assert_eq!(call.to_relay_from_remote.to_string(), remote_leg.rtp);
    assert!(
        call.offer_out
            .starts_with("v=0\r\no=alice-a 4000 4000 IN IP4 127.0.0.1\r\n")
    );
    assert!(call.offer_out.contains("a=x-device-label:desk\r\n"));
    assert!(call.offer_out.contains("m=audio "));
    assert!(call.offer_out.contains(" RTP/AVP 0 8 101\r\n"));
    assert!(!call.offer_out.contains("a=ice-") && !call.offer_out.contains("a=candidate"));
    // The answer as the device gets it: the relay's user leg.
    let user_leg = stream
        .user
        .as_ref()
        .and_then(|l| l.local.as_ref())
        .expect("leg");
    assert_eq!(call.to_relay_from_device.to_string(), user_leg.rtp);
    assert!(
        call.answer_out
            .contains("o=carrier 77 1 IN IP4 127.0.0.1\r\n")
    );
    // The negotiated codecs are the answer's; peers are signalled.
    let names: Vec<&str> = stream.codecs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["PCMU", "telephone-event"]);
    assert_eq!(stream.codecs[1].fmtp, "0-15");
    assert_eq!(stream.ptime_ms, 20);
    assert!(!info.on_hold);
    assert_eq!(info.to_tag, "r-tag");

    // Media both ways, between exactly the addresses the bodies name.
    for seq in 0..5u16 {
        let packet = rtp(0, seq, u32::from(seq) * 160, 0xA1, &[1; 160]);
        call.device
            .send(&call.to_relay_from_device.to_string(), &packet);
        let (got, from) = call.remote.recv();
        assert_eq!(got, packet);
        assert_eq!(from, call.to_relay_from_remote);
        let back = rtp(0, seq, u32::from(seq) * 160, 0xB2, &[2; 160]);
        call.remote
            .send(&call.to_relay_from_remote.to_string(), &back);
        let (got, from) = call.device.recv();
        assert_eq!(got, back);
        assert_eq!(from, call.to_relay_from_device);
    }
}

#[tokio::test]
async fn a_held_session_outlives_the_media_timeout_and_versions_count_up() {
    let relay = Relay::start(&["--media-timeout", "1", "--hold-timeout", "60"]);
    let call = offer_answer(&relay).await;
    call.device.send(
        &call.to_relay_from_device.to_string(),
        &rtp(0, 1, 160, 0xA1, &[1; 160]),
    );
    call.remote.recv();

    // The remote puts the call on hold (re-INVITE with sendonly).
    let hold = answer_from(call.remote.addr(), 2, "sendonly");
    let Ok(Reply::UpdateSession(held)) = call
        .client
        .call(Command::UpdateSession(v1::UpdateSessionRequest {
            session: Some(by_id(&call.session)),
            sdp: hold,
            ..Default::default()
        }))
        .await
    else {
        panic!("hold update failed");
    };
    let info = held.session.expect("session");
    assert!(info.on_hold && info.streams[0].held);
    let to_device = Sdp::parse(&held.sdp).expect("sdp");
    assert_eq!(
        to_device.media(0).expect("audio").direction,
        Direction::SendOnly
    );
    assert_eq!(to_device.version(), 2, "a changed body counts up from 1");

    // Longer than the media timeout, silent: still there.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let info = get(&call.client, &call.session).await;
    assert!(info.on_hold);

    // The same body again keeps its version; resuming counts up.
    let again = answer_from(call.remote.addr(), 3, "sendonly");
    let Ok(Reply::UpdateSession(same)) = call
        .client
        .call(Command::UpdateSession(v1::UpdateSessionRequest {
            session: Some(by_id(&call.session)),
            sdp: again,
            ..Default::default()
        }))
        .await
    else {
        panic!("update failed");
    };
    assert_eq!(Sdp::parse(&same.sdp).expect("sdp").version(), 2);
    let resume = answer_from(call.remote.addr(), 4, "sendrecv");
    let Ok(Reply::UpdateSession(resumed)) = call
        .client
        .call(Command::UpdateSession(v1::UpdateSessionRequest {
            session: Some(by_id(&call.session)),
            sdp: resume,
            ..Default::default()
        }))
        .await
    else {
        panic!("resume failed");
    };
    assert!(!resumed.session.expect("session").on_hold);
    assert_eq!(Sdp::parse(&resumed.sdp).expect("sdp").version(), 3);
}

#[tokio::test]
async fn a_transfer_with_the_new_devices_sdp_gets_its_answer_and_one_stream_reaches_the_remote() {
    let relay = Relay::start(&[]);
    let call = offer_answer(&relay).await;
    for seq in 1000..1005u16 {
        call.device.send(
            &call.to_relay_from_device.to_string(),
            &rtp(0, seq, u32::from(seq) * 160, 0xA1, &[0xA; 160]),
        );
    }
    let before: Vec<Vec<u8>> = call.remote.recv_n(5).into_iter().map(|(b, _)| b).collect();

    // Device B: a registrar's Contact with pub-gruu, and an INVITE with
    // Replaces whose SDP numbers telephone-event 96 and multiplexes RTCP.
    let device_b = Peer::v4();
    let contact = format!(
        "<sip:alice@127.0.0.1:5070;transport=udp>;expires=3600;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-00000000000b>\";pub-gruu=\"{GRUU_B}\""
    );
    let registered = call
        .client
        .call(Command::RegisterDevice(v1::RegisterDeviceRequest {
            aor: format!("\"Alice\" <{AOR}>;tag=reg"),
            gruu: contact,
            expires: 600,
            temporary: false,
        }))
        .await;
    assert!(registered.is_ok(), "{registered:?}");
    let b_offer = format!(
        "v=0\r\no=alice-b 9 9 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 8 0 96\r\na=rtpmap:96 telephone-event/8000\r\na=rtcp-mux\r\n\
         a=sendrecv\r\n",
        device_b.addr().port()
    );
    let transfer = call
        .client
        .call(Command::Transfer(v1::TransferRequest {
            replaces: "sdp-call;to-tag=a-tag;from-tag=r-tag".into(),
            gruu: format!("\"Alice's phone\" <{GRUU_B}>;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-00000000000b>\""),
            sdp: b_offer,
            ..Default::default()
        }))
        .await;
    let Ok(Reply::Transfer(transfer)) = transfer else {
        panic!("transfer failed: {transfer:?}");
    };
    // B's answer: the relay's new leg, the codecs B shares with the remote
    // in B's numbering, the remote's origin and format parameters.
    let answer = Sdp::parse(&transfer.sdp).unwrap_or_else(|e| panic!("{e}\n{}", transfer.sdp));
    let audio = answer.media(0).expect("audio");
    assert_eq!(
        audio.rtp.map(|a| a.to_string()),
        transfer.streams[0].user.as_ref().map(|e| e.rtp.clone())
    );
    assert_eq!(audio.formats, ["0", "96"]);
    assert_eq!(audio.codecs[1].fmtp, "0-15");
    assert!(audio.rtcp_mux);
    assert!(transfer.sdp.contains("o=carrier 77 1 IN IP4 127.0.0.1\r\n"));
    let to_relay_from_b = audio.rtp.expect("address");
    // Until the switch, a body from "the user" is ambiguous: refused.
    let early = call
        .client
        .call(Command::UpdateSession(v1::UpdateSessionRequest {
            session: Some(by_id(&call.session)),
            sdp: offer_from(device_b.addr()),
            sdp_from: v1::Party::User as i32,
            ..Default::default()
        }))
        .await;
    match early {
        Err(ClientError::Status(e)) => assert_eq!(e.code, v1::Code::FailedPrecondition as i32),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // B talks with its own SSRC, sequence and timestamps; the remote hears
    // one stream.
    for i in 0..5u16 {
        device_b.send(
            &to_relay_from_b.to_string(),
            &rtp(
                0,
                40000 + i,
                999_000 + u32::from(i) * 160,
                0xB0B,
                &[0xB; 160],
            ),
        );
    }
    let after: Vec<Vec<u8>> = call.remote.recv_n(5).into_iter().map(|(b, _)| b).collect();
    let ssrc = |p: &[u8]| u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
    let seq_of = |p: &[u8]| u16::from_be_bytes([p[2], p[3]]);
    assert!(
        after.iter().all(|p| ssrc(p) == ssrc(&before[0])),
        "one SSRC"
    );
    assert_eq!(
        seq_of(&after[0]),
        seq_of(&before[4]).wrapping_add(1),
        "no gap"
    );
    assert!(after.iter().all(|p| p[12] == 0xB), "B's media");
    // The remote's media now reaches B at the address B's SDP named.
    call.remote.send(
        &call.to_relay_from_remote.to_string(),
        &rtp(0, 7, 7 * 160, 0xB2, &[2; 160]),
    );
    let (_, from) = device_b.recv();
    assert_eq!(from, to_relay_from_b);
    // The control plane learns of the switch from the worker's event.
    let mut gruu = String::new();
    for _ in 0..250 {
        gruu = get(&call.client, &call.session).await.gruu;
        if gruu == GRUU_B {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gruu, GRUU_B);

    // B puts the call on hold with a re-INVITE in its own numbering: the
    // remote gets telephone-event as 101, the number it negotiated, as in
    // the media; and the remote's answer reaches B as 96.
    let b_hold = format!(
        "v=0\r\no=alice-b 9 10 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 8 0 96\r\na=rtpmap:96 telephone-event/8000\r\na=rtcp-mux\r\n\
         a=sendonly\r\n",
        device_b.addr().port()
    );
    let Ok(Reply::UpdateSession(held)) = call
        .client
        .call(Command::UpdateSession(v1::UpdateSessionRequest {
            session: Some(by_id(&call.session)),
            sdp: b_hold,
            sdp_from: v1::Party::User as i32,
            ..Default::default()
        }))
        .await
    else {
        panic!("B's re-INVITE failed");
    };
    let to_remote = Sdp::parse(&held.sdp).expect("sdp");
    let m = to_remote.media(0).expect("audio");
    assert_eq!(m.formats, ["8", "0", "101"], "{}", held.sdp);
    assert_eq!(m.codecs[2].name, "telephone-event");
    assert!(
        held.sdp.contains("o=alice-a 4000 4001 "),
        "the remote keeps A's origin: {}",
        held.sdp
    );
    let Ok(Reply::UpdateSession(answered)) = call
        .client
        .call(Command::UpdateSession(v1::UpdateSessionRequest {
            session: Some(by_id(&call.session)),
            sdp: answer_from(call.remote.addr(), 2, "recvonly"),
            ..Default::default()
        }))
        .await
    else {
        panic!("the remote's answer failed");
    };
    let to_b = Sdp::parse(&answered.sdp).expect("sdp");
    assert_eq!(
        to_b.media(0).expect("audio").formats,
        ["0", "96"],
        "{}",
        answered.sdp
    );
}

#[tokio::test]
async fn bodies_the_relay_cannot_take_are_refused_with_the_line() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let create = |sdp: &str| {
        Command::CreateSession(v1::CreateSessionRequest {
            call_id: "bad".into(),
            from_tag: "f".into(),
            aor: AOR.into(),
            gruu: GRUU_A.into(),
            sdp: sdp.into(),
            ..Default::default()
        })
    };
    let refused = |result: Result<Reply, ClientError>| match result {
        Err(ClientError::Status(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let malformed = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                     m=audio 4000 RTP/AVP 96\r\na=rtpmap:96\r\n";
    let error = refused(client.call(create(malformed)).await);
    assert_eq!(error.code, v1::Code::InvalidArgument as i32);
    assert!(error.message.contains("SDP line 7"), "{}", error.message);
    let dtls = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
    let error = refused(client.call(create(dtls)).await);
    assert_eq!(error.code, v1::Code::Unimplemented as i32);
    assert!(error.message.contains("line 6"), "{}", error.message);
    // Nothing was left behind.
    let Ok(Reply::ListSessions(list)) = client
        .call(Command::ListSessions(v1::ListSessionsRequest {}))
        .await
    else {
        panic!("list failed");
    };
    assert!(list.sessions.is_empty());
}

#[test]
fn ctl_reads_sdp_from_a_file_and_writes_it_raw() {
    let relay = Relay::start(&[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let offer_path = dir.path().join("offer.sdp");
    let out_path = dir.path().join("to-remote.sdp");
    std::fs::write(
        &offer_path,
        offer_from("127.0.0.1:5004".parse().expect("addr")),
    )
    .expect("write offer");
    let output = relay.ctl(&[
        "create",
        "--call-id",
        "ctl-sdp",
        "--from-tag",
        "f",
        "--aor",
        AOR,
        "--gruu",
        GRUU_A,
        "--sdp",
        offer_path.to_str().expect("path"),
        "--sdp-out",
        out_path.to_str().expect("path"),
    ]);
    assert!(output.status.success(), "{output:?}");
    let json = common::stdout_json(&output);
    let raw = std::fs::read_to_string(&out_path).expect("sdp-out written");
    assert_eq!(json["sdp"].as_str(), Some(raw.as_str()));
    let remote_leg = json["streams"][0]["remote"]["rtp"].as_str().expect("leg");
    assert_eq!(relay_address(&raw).to_string(), remote_leg);

    // A malformed body: exit 1, INVALID_ARGUMENT naming the line.
    std::fs::write(
        &offer_path,
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4\r\n",
    )
    .expect("write");
    let output = relay.ctl(&[
        "create",
        "--call-id",
        "ctl-bad",
        "--from-tag",
        "f",
        "--aor",
        AOR,
        "--gruu",
        GRUU_A,
        "--sdp",
        offer_path.to_str().expect("path"),
    ]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("INVALID_ARGUMENT") && stderr.contains("SDP line 4"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_incoming_call_whose_answer_declines_rtcp_mux_falls_back_to_rtcp_ports() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    // The remote calls the user: its offer multiplexes RTCP and names a
    // separate RTCP port to fall back to.
    let (remote, remote_rtcp) = (Peer::v4(), Peer::v4());
    let offer = format!(
        "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0\r\na=rtcp-mux\r\na=rtcp:{}\r\n",
        remote.addr().port(),
        remote_rtcp.addr().port()
    );
    let Ok(Reply::CreateSession(created)) = client
        .call(Command::CreateSession(v1::CreateSessionRequest {
            call_id: "incoming".into(),
            from_tag: "r-tag".into(),
            aor: AOR.into(),
            gruu: GRUU_A.into(),
            sdp: offer,
            sdp_from: v1::Party::Remote as i32,
            ..Default::default()
        }))
        .await
    else {
        panic!("create failed");
    };
    let to_device = Sdp::parse(&created.sdp).expect("sdp");
    let offered = to_device.media(0).expect("audio");
    assert!(offered.rtcp_mux, "the offer to the device keeps rtcp-mux");
    let device_rtcp_target = offered.rtcp.expect("a=rtcp names the relay's RTCP port");

    // The device answers without rtcp-mux, with its own RTCP port.
    let (device, device_rtcp) = (Peer::v4(), Peer::v4());
    let answer = format!(
        "v=0\r\no=alice-a 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0\r\na=rtcp:{}\r\n",
        device.addr().port(),
        device_rtcp.addr().port()
    );
    let Ok(Reply::UpdateSession(updated)) = client
        .call(Command::UpdateSession(v1::UpdateSessionRequest {
            session: Some(by_id(&created.session)),
            to_tag: "a-tag".into(),
            sdp: answer,
            sdp_from: v1::Party::User as i32,
            ..Default::default()
        }))
        .await
    else {
        panic!("update failed");
    };
    let to_remote = Sdp::parse(&updated.sdp).expect("sdp");
    let answered = to_remote.media(0).expect("audio");
    assert!(
        !answered.rtcp_mux,
        "the answer to the remote declines rtcp-mux"
    );
    let remote_rtcp_target = answered.rtcp.expect("a=rtcp names the relay's RTCP port");
    let info = updated.session.expect("session");
    assert!(!info.streams[0].rtcp_mux);

    // RTCP travels between the separate ports, both ways.
    let report = common::media::rtcp_rr(0xD1);
    device_rtcp.send(&device_rtcp_target.to_string(), &report);
    let (got, from) = remote_rtcp.recv();
    assert_eq!(got, report);
    assert_eq!(from, remote_rtcp_target);
    let back = common::media::rtcp_rr(0xE2);
    remote_rtcp.send(&remote_rtcp_target.to_string(), &back);
    let (got, _) = device_rtcp.recv();
    assert_eq!(got, back);
    // And RTP still flows on the RTP ports.
    let packet = rtp(0, 1, 160, 0xD1, &[1; 160]);
    device.send(&offered.rtp.expect("relay address").to_string(), &packet);
    assert_eq!(remote.recv().0, packet);
}
