//! Media helpers: loopback UDP endpoints that play a device or a remote
//! party, and RTP/RTCP packet builders.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// How long a test waits for a datagram that should arrive.
pub const ARRIVAL_DEADLINE: Duration = Duration::from_secs(5);
/// How long a test waits to be sure a datagram does not arrive.
pub const SILENCE: Duration = Duration::from_millis(300);

/// A UDP socket on loopback.
pub struct Peer {
    pub socket: UdpSocket,
}

impl Peer {
    pub fn bind(ip: &str) -> Self {
        let socket = UdpSocket::bind((ip, 0)).expect("bind a test socket");
        Self { socket }
    }

    pub fn v4() -> Self {
        Self::bind("127.0.0.1")
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("local addr")
    }

    pub fn send(&self, to: &str, bytes: &[u8]) {
        let to: SocketAddr = to.parse().expect("relay address");
        self.socket.send_to(bytes, to).expect("send");
    }

    /// The next datagram within `wait`, if any.
    pub fn recv_within(&self, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        self.socket
            .set_read_timeout(Some(wait))
            .expect("read timeout");
        let mut buf = [0u8; 2048];
        match self.socket.recv_from(&mut buf) {
            Ok((n, from)) => Some((buf[..n].to_vec(), from)),
            Err(_) => None,
        }
    }

    /// The next datagram, or a test failure.
    pub fn recv(&self) -> (Vec<u8>, SocketAddr) {
        self.recv_within(ARRIVAL_DEADLINE)
            .expect("a datagram within the deadline")
    }

    /// `count` datagrams, or a test failure.
    pub fn recv_n(&self, count: usize) -> Vec<(Vec<u8>, SocketAddr)> {
        let deadline = Instant::now() + ARRIVAL_DEADLINE * 2;
        let mut got = Vec::with_capacity(count);
        while got.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "got {} of {count} datagrams", got.len());
            if let Some(datagram) = self.recv_within(left) {
                got.push(datagram);
            }
        }
        got
    }

    /// Asserts nothing arrives for a while.
    pub fn expect_silence(&self) {
        if let Some((bytes, from)) = self.recv_within(SILENCE) {
            panic!("unexpected datagram from {from}: {bytes:02x?}");
        }
    }
}

/// An RTP packet: version 2, the given fields, a payload of `payload`.
pub fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    baton_relay::core::rtp::RtpRepr {
        marker: false,
        payload_type: pt,
        sequence: seq,
        timestamp: ts,
        ssrc,
    }
    .to_vec(payload)
}

/// A minimal RTCP receiver report (no report blocks) from `ssrc`.
pub fn rtcp_rr(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 201, 0, 1];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p
}
