//! ng helpers: a relay with ng listeners, a proxy's ng socket, bodies and
//! requests.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

pub use baton_control::ng::wire::Dict;
use baton_control::ng::wire::{self, get_str};
use baton_control::sip::sdp::Sdp;
use serde_bencode::value::Value;

use super::Relay;
use super::media::Peer;

/// A bencoded string.
pub fn text(value: impl Into<String>) -> Value {
    wire::text(value)
}

/// A relay with ng on UDP and TCP.
pub fn relay_with_ng() -> (Relay, SocketAddr, SocketAddr) {
    let udp_port = super::free_udp_port();
    let tcp_port = super::free_tcp_port();
    let udp = format!("udp:127.0.0.1:{udp_port}");
    let tcp = format!("tcp:127.0.0.1:{tcp_port}");
    let relay = Relay::start(&["--listen-ng", &udp, "--listen-ng", &tcp]);
    (
        relay,
        format!("127.0.0.1:{udp_port}").parse().expect("addr"),
        format!("127.0.0.1:{tcp_port}").parse().expect("addr"),
    )
}

/// A proxy's ng socket.
pub struct Proxy {
    pub socket: UdpSocket,
    pub relay: SocketAddr,
    pub next: u32,
}

impl Proxy {
    pub fn new(relay: SocketAddr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Self {
            socket,
            relay,
            next: 0,
        }
    }

    /// Sends raw bytes and returns the raw reply.
    pub fn exchange(&self, message: &[u8]) -> Vec<u8> {
        self.socket.send_to(message, self.relay).expect("send");
        let mut buf = vec![0u8; 65_536];
        let (n, _) = self.socket.recv_from(&mut buf).expect("a reply");
        buf.truncate(n);
        buf
    }

    /// Sends a request with a fresh cookie; returns the reply dictionary.
    /// Sends a request with a cookie no other proxy of this process uses
    /// (an ephemeral port can come back to a later proxy, and the relay
    /// answers a known (address, cookie) from its cache, as it should).
    pub fn call(&mut self, request: &Value) -> Dict {
        static COOKIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        self.next += 1;
        let serial = COOKIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cookie = format!("t{}_{}", std::process::id(), serial);
        let reply = self.exchange(&wire::encode(&cookie, request));
        decode_reply(&cookie, &reply)
    }
}

pub fn decode_reply(cookie: &str, reply: &[u8]) -> Dict {
    let (echoed, body) = wire::split(reply).expect("cookie and body");
    assert_eq!(echoed, cookie, "the reply echoes the cookie");
    wire::decode(body).expect("a bencoded dictionary")
}

pub fn result(reply: &Dict) -> &str {
    get_str(reply, "result").expect("a result")
}

pub fn reason(reply: &Dict) -> String {
    assert_eq!(result(reply), "error", "{reply:?}");
    get_str(reply, "error-reason")
        .expect("an error-reason")
        .to_owned()
}

/// The warning of an `ok` reply (rtpengine's way of saying a delete found
/// nothing).
pub fn warning(reply: &Dict) -> String {
    assert_eq!(result(reply), "ok", "{reply:?}");
    get_str(reply, "warning").expect("a warning").to_owned()
}

pub fn sdp_of(reply: &Dict) -> Sdp {
    assert_eq!(result(reply), "ok", "{reply:?}");
    let text = get_str(reply, "sdp").expect("an sdp");
    Sdp::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The relay address a body tells its receiver to send to.
pub fn media_addr(sdp: &Sdp) -> SocketAddr {
    sdp.media(0).expect("audio").rtp.expect("an address")
}

pub fn body(origin: &str, media: SocketAddr, extra: &str) -> String {
    format!(
        "v=0\r\no={origin} 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n{extra}a=sendrecv\r\n",
        ip = media.ip(),
        port = media.port()
    )
}

pub fn request(pairs: Vec<(&str, Value)>) -> Value {
    Value::Dict(
        pairs
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect(),
    )
}

pub fn flags(items: &[&str]) -> Value {
    Value::List(items.iter().map(|f| text(*f)).collect())
}

/// A call set up over ng: A (the user) calls bob (the remote).
pub struct NgCall {
    pub proxy: Proxy,
    pub call_id: String,
    pub a: Peer,
    pub bob: Peer,
    /// Where A and bob send.
    pub a_to_relay: SocketAddr,
    pub bob_to_relay: SocketAddr,
}

/// A calls bob through the relay over ng, as Kamailio would drive it.
pub fn ng_call(ng: SocketAddr, call_id: &str, extra: Vec<(&'static str, Value)>) -> NgCall {
    let mut proxy = Proxy::new(ng);
    let (a, bob) = (Peer::v4(), Peer::v4());
    let mut offer = vec![
        ("command", text("offer")),
        ("call-id", text(call_id)),
        ("from-tag", text("a-tag")),
        ("sdp", text(body("alice-a", a.addr(), ""))),
        ("ICE", text("remove")),
        ("replace", flags(&["origin", "session-connection"])),
        ("received-from", flags(&["IP4", "127.0.0.1"])),
        ("supports", flags(&["load limit"])),
        ("transport-protocol", text("RTP/AVP")),
    ];
    offer.extend(extra);
    let to_bob = sdp_of(&proxy.call(&request(offer)));
    let answer = request(vec![
        ("command", text("answer")),
        ("call-id", text(call_id)),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(body("bob", bob.addr(), ""))),
    ]);
    let to_a = sdp_of(&proxy.call(&answer));
    NgCall {
        proxy,
        call_id: call_id.to_owned(),
        a_to_relay: media_addr(&to_a),
        bob_to_relay: media_addr(&to_bob),
        a,
        bob,
    }
}
