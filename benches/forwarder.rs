//! The syscall floor: a minimal UDP forwarder to measure baton against.
//!
//! Fixed port pairs (2i, 2i+1) from a base port on 127.0.0.1 with fixed
//! peers: a datagram on port 2i goes out of port 2i+1 to B_BASE + i, one on
//! port 2i+1 out of port 2i to A_BASE + i. No learning, no parsing, no
//! checks, no statistics: `recvmmsg` in, `sendmmsg` out, one thread, epoll.
//! What baton's per-packet work costs is the difference.
//!
//! With SHARED > 0 the peers are SHARED addresses per side, pair i going to
//! A_BASE + i * SHARED / PAIRS (and likewise B): the layout of a generator
//! whose calls share sockets (`baton load --share-sockets`).
//!
//! Usage: forwarder PAIRS BASE_PORT SECONDS A_BASE B_BASE [SHARED]

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use baton_relay::io::sys::{BATCH, RecvBatch, SendBatch};
use mio::net::UdpSocket as MioSocket;
use mio::{Events, Interest, Poll, Token};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let number =
        |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let pairs = number(1, 100) as usize;
    let base = number(2, 50_000) as u16;
    let seconds = number(3, 30);
    let a_base = number(4, 10_000) as u16;
    let b_base = number(5, 15_000) as u16;
    let shared = number(6, 0) as usize;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let mut poll = Poll::new()?;
    let mut sockets = Vec::with_capacity(2 * pairs);
    for i in 0..2 * pairs {
        let socket = UdpSocket::bind(("127.0.0.1", base + i as u16))?;
        socket.set_nonblocking(true)?;
        let mut socket = MioSocket::from_std(socket);
        poll.registry()
            .register(&mut socket, Token(i), Interest::READABLE)?;
        sockets.push(socket);
    }
    // Where each socket sends: the A side's peers out of even sockets, the B
    // side's out of odd ones.
    let peers: Vec<SocketAddr> = (0..2 * pairs)
        .map(|i| {
            let base = if i % 2 == 0 { a_base } else { b_base };
            let pair = i / 2;
            let peer = if shared == 0 {
                pair
            } else {
                pair * shared / pairs
            };
            SocketAddr::from(([127, 0, 0, 1], base + peer as u16))
        })
        .collect();
    let mut recv = RecvBatch::new();
    let mut send = SendBatch::new();
    let mut events = Events::with_capacity(1024);
    let end = Instant::now() + Duration::from_secs(seconds);
    let (mut forwarded, mut dropped) = (0u64, 0u64);
    eprintln!("forwarder: {pairs} pairs on 127.0.0.1:{base}.., {seconds} s");
    while Instant::now() < end {
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for event in &events {
            let i = event.token().0;
            let other = i ^ 1;
            while let Ok(n) = recv.recv(sockets[i].as_fd()) {
                let mut batch: [(SocketAddr, &[u8]); BATCH] =
                    [(SocketAddr::from(([0, 0, 0, 0], 0)), &[]); BATCH];
                let to = peers[other];
                for (k, slot) in batch.iter_mut().enumerate().take(n) {
                    *slot = (to, recv.bytes(k));
                }
                let outcome = send.send(sockets[other].as_fd(), batch[..n].iter().copied());
                forwarded += outcome.sent as u64;
                dropped += outcome.failed as u64;
                if n < BATCH {
                    break;
                }
            }
        }
    }
    eprintln!("forwarder: forwarded {forwarded}, dropped {dropped}");
    Ok(())
}
