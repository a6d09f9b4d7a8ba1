//! A call between a user's device and a remote party over the native API,
//! and devices that talk RTP through it: shared by the handoff tests.
#![allow(dead_code)]

use std::time::Duration;

use baton_control::Client;
use baton_proto::v1::{self, request::Command, response::Result as Reply};

use super::Relay;
use super::media::{Peer, rtp};

pub const AOR: &str = "sip:alice@example.com";
pub const GRUU_A: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-0000-0000-00000000000a";
pub const GRUU_B: &str = "<sip:alice@example.com;gr=urn:uuid:00000000-0000-0000-0000-00000000000b>;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-00000000000b>\"";
pub const TEMP_C: &str = "sip:tgruu.7hs==jd7vnzga5w7fajsc7-ajd6fabz0f8g5@example.com;gr";

pub fn codec(pt: u32, name: &str) -> v1::Codec {
    v1::Codec {
        payload_type: pt,
        name: name.into(),
        clock_rate: 8000,
        channels: 0,
        ..Default::default()
    }
}

pub fn session_codecs() -> Vec<v1::Codec> {
    vec![codec(0, "PCMU"), codec(101, "telephone-event")]
}

pub fn by_id(session: &str) -> Option<v1::SessionRef> {
    Some(v1::SessionRef {
        by: Some(v1::session_ref::By::Id(session.into())),
    })
}

pub struct Call {
    pub client: Client,
    pub session: String,
    /// Relay addresses: (user side, remote side).
    pub user_addr: String,
    pub remote_addr: String,
    pub device: Peer,
    pub remote: Peer,
}

/// A call between device A (GRUU_A) and a remote party, both signalled,
/// rtcp-mux on both legs.
pub async fn call(relay: &Relay, call_id: &str) -> Call {
    call_with(relay, call_id, "audio", session_codecs()).await
}

/// As [`call`], with one stream of `kind` and `codecs`.
pub async fn call_with(relay: &Relay, call_id: &str, kind: &str, codecs: Vec<v1::Codec>) -> Call {
    call_between(relay, call_id, kind, codecs, Peer::v4(), Peer::v4()).await
}

/// As [`call_with`], between these two peers (their family picks the
/// relay's ports').
pub async fn call_between(
    relay: &Relay,
    call_id: &str,
    kind: &str,
    codecs: Vec<v1::Codec>,
    device: Peer,
    remote: Peer,
) -> Call {
    let client = relay.client().await;
    let request = v1::CreateSessionRequest {
        call_id: call_id.into(),
        from_tag: "a-tag".into(),
        to_tag: "r-tag".into(),
        aor: AOR.into(),
        gruu: GRUU_A.into(),
        streams: vec![v1::StreamSpec {
            kind: kind.into(),
            codecs,
            rtcp_mux: true,
            user_peer: Some(v1::Endpoint {
                rtp: device.addr().to_string(),
                rtcp: String::new(),
            }),
            remote_peer: Some(v1::Endpoint {
                rtp: remote.addr().to_string(),
                rtcp: String::new(),
            }),
            user_family: 0,
            remote_family: 0,
            ..Default::default()
        }],
        nat_relearn: false,
        ..Default::default()
    };
    let Ok(Reply::CreateSession(created)) = client.call(Command::CreateSession(request)).await
    else {
        panic!("create failed")
    };
    let stream = &created.streams[0];
    Call {
        client,
        session: created.session.clone(),
        user_addr: stream.user.as_ref().expect("user").rtp.clone(),
        remote_addr: stream.remote.as_ref().expect("remote").rtp.clone(),
        device,
        remote,
    }
}

pub fn transfer_request(
    session: &str,
    gruu: &str,
    peer: &Peer,
    mode: v1::SwitchMode,
) -> v1::TransferRequest {
    v1::TransferRequest {
        session: by_id(session),
        replaces: String::new(),
        gruu: gruu.into(),
        streams: vec![v1::TransferStream {
            codecs: Vec::new(),
            peer: Some(v1::Endpoint {
                rtp: peer.addr().to_string(),
                rtcp: String::new(),
            }),
            family: 0,
            ..Default::default()
        }],
        mode: mode as i32,
        ..Default::default()
    }
}

/// Opens a transfer; returns the new device's relay address.
pub async fn transfer(client: &Client, request: v1::TransferRequest) -> String {
    match client.call(Command::Transfer(request)).await {
        Ok(Reply::Transfer(t)) => t.streams[0].user.as_ref().expect("user").rtp.clone(),
        other => panic!("transfer failed: {other:?}"),
    }
}

pub async fn get(client: &Client, session: &str) -> v1::SessionInfo {
    match client
        .call(Command::GetSession(v1::GetSessionRequest {
            session: by_id(session),
        }))
        .await
    {
        Ok(Reply::GetSession(v1::GetSessionResponse {
            session: Some(info),
        })) => info,
        other => panic!("get failed: {other:?}"),
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub marker: bool,
    pub pt: u8,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    pub tag: u8,
}

pub fn seen(bytes: &[u8]) -> Seen {
    Seen {
        marker: bytes[1] & 0x80 != 0,
        pt: bytes[1] & 0x7f,
        seq: u16::from_be_bytes([bytes[2], bytes[3]]),
        ts: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        ssrc: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        tag: bytes[12],
    }
}

/// A device sending its own stream: SSRC, sequence and timestamp of its own,
/// the first payload byte tagging who sent it.
pub struct Talker {
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    pub tag: u8,
}

impl Talker {
    pub fn new(ssrc: u32, seq: u16, ts: u32, tag: u8) -> Self {
        Self { ssrc, seq, ts, tag }
    }

    pub fn next(&mut self) -> Vec<u8> {
        let packet = rtp(0, self.seq, self.ts, self.ssrc, &[self.tag; 160]);
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(160);
        packet
    }

    /// Sends `count` packets from `from` to `to`, each awaited at `sink`.
    pub fn talk(&mut self, from: &Peer, to: &str, sink: &Peer, count: usize) -> Vec<Seen> {
        (0..count)
            .map(|_| {
                from.send(to, &self.next());
                std::thread::sleep(Duration::from_millis(2));
                seen(&sink.recv().0)
            })
            .collect()
    }
}

/// Asserts that `stream` is one continuous outward stream: one SSRC, every
/// sequence number +1, timestamps never backwards, markers exactly where
/// the tag (sender) changes.
pub fn assert_continuous(stream: &[Seen]) {
    for pair in stream.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        assert_eq!(b.ssrc, a.ssrc, "one SSRC: {a:?} → {b:?}");
        assert_eq!(b.seq, a.seq.wrapping_add(1), "sequence +1: {a:?} → {b:?}");
        assert!(
            (b.ts.wrapping_sub(a.ts) as i32) > 0,
            "timestamps move forward: {a:?} → {b:?}"
        );
        assert_eq!(
            b.marker,
            b.tag != a.tag,
            "marker exactly at a switch: {a:?} → {b:?}"
        );
    }
}
