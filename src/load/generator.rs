//! Generator threads: each owns some sockets, sends its flows evenly paced
//! and judges what its sockets receive. Control actions (handoffs) reach it
//! through a channel; it never blocks on anything but `epoll`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::os::fd::AsFd;

use baton_relay::rtp::RtpView;
use baton_relay::sys::{BATCH, RecvBatch};
use crossbeam_channel::Receiver;
use hdrhistogram::Histogram;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

use super::analysis::{FlowCheck, Header, PAYLOAD_HEADER, Stamp};

/// RTCP sender reports go out this often per flow.
const RTCP_INTERVAL: Duration = Duration::from_secs(5);
/// How far behind its schedule the generator may fall before it skips
/// packets instead of sending them late (well under the 50 ms at which a
/// packet counts as lost).
const SKIP_AFTER: Duration = Duration::from_millis(20);
/// After the last send, how long receivers keep listening.
const DRAIN: Duration = Duration::from_millis(300);

/// One sender of a flow (a handoff adds a new generation).
struct Sender {
    socket: usize,
    to: SocketAddr,
    generation: u8,
    ssrc: u32,
    seq: u16,
    ts: u32,
    index: u64,
    stop_at: Option<Instant>,
    next_rtcp: Instant,
}

/// A flow this thread sends.
pub struct Flow {
    /// Flow number (stamped in every packet).
    pub id: u32,
    /// Index of the sending socket in this thread's socket list.
    pub socket: usize,
    /// Where to send.
    pub to: SocketAddr,
}

/// A handoff: flow `flow` continues from a new socket to a new address;
/// the old sender stops after `overlap`.
pub struct Handoff {
    /// The flow (device → remote).
    pub flow: u32,
    /// The new device's socket.
    pub socket: std::net::UdpSocket,
    /// The relay address the new device sends to.
    pub to: SocketAddr,
    /// How long the old device keeps sending.
    pub overlap: Duration,
}

/// How a thread runs.
pub struct Plan {
    /// Sockets this thread owns (sends from and receives on).
    pub sockets: Vec<std::net::UdpSocket>,
    /// Flows it sends.
    pub flows: Vec<Flow>,
    /// Time between two packets of one flow.
    pub period: Duration,
    /// An overload at the start: for this long, packets go out this many
    /// times faster.
    pub overload: Option<(Duration, f64)>,
    /// RTP payload size (at least the stamp).
    pub payload_bytes: usize,
    /// Samples per packet at 8 kHz.
    pub samples_per_packet: u32,
    /// Later than this counts as lost.
    pub late: Duration,
    /// Clock of the stamps.
    pub base: Instant,
    /// Start sending at.
    pub start: Instant,
    /// Stop sending at.
    pub end: Instant,
}

/// Live counters for the progress line.
#[derive(Default)]
pub struct Progress {
    /// Packets sent.
    pub sent: AtomicU64,
    /// Stamped packets received.
    pub received: AtomicU64,
}

/// What a thread saw.
pub struct Report {
    /// Packets sent.
    pub sent: u64,
    /// Per flow and receiving socket: while a transfer is pending the
    /// remote's media reaches two devices, and each copy is its own stream.
    pub flows: HashMap<(u32, usize), FlowCheck>,
    /// One-way latency, nanoseconds.
    pub latency: Histogram<u64>,
    /// RTCP (unstamped) datagrams received.
    pub rtcp_received: u64,
    /// Packets not sent because the generator fell behind its schedule.
    pub skipped: u64,
}

fn register(poll: &Poll, socket: std::net::UdpSocket, token: usize) -> io::Result<UdpSocket> {
    socket.set_nonblocking(true)?;
    let mut socket = UdpSocket::from_std(socket);
    poll.registry()
        .register(&mut socket, Token(token), Interest::READABLE)?;
    Ok(socket)
}

/// Runs one generator thread to the end and reports.
pub fn run(plan: Plan, handoffs: Receiver<Handoff>, progress: Arc<Progress>) -> io::Result<Report> {
    let mut poll = Poll::new()?;
    let mut sockets = Vec::with_capacity(plan.sockets.len());
    for (token, socket) in plan.sockets.into_iter().enumerate() {
        sockets.push(Some(register(&poll, socket, token)?));
    }
    let mut senders: Vec<Vec<Sender>> = plan
        .flows
        .iter()
        .map(|f| {
            vec![Sender {
                socket: f.socket,
                to: f.to,
                generation: 0,
                ssrc: rand::random(),
                seq: rand::random(),
                ts: rand::random(),
                index: 0,
                stop_at: None,
                next_rtcp: plan.start + RTCP_INTERVAL,
            }]
        })
        .collect();
    let flow_slot: HashMap<u32, usize> = plan
        .flows
        .iter()
        .enumerate()
        .map(|(i, f)| (f.id, i))
        .collect();
    let mut report = Report {
        sent: 0,
        flows: HashMap::new(),
        latency: Histogram::new_with_bounds(1, 60_000_000_000, 3)
            .map_err(|e| io::Error::other(e.to_string()))?,
        rtcp_received: 0,
        skipped: 0,
    };
    let mut packet = vec![0u8; 12 + plan.payload_bytes.max(PAYLOAD_HEADER)];
    let mut batch = RecvBatch::new();
    let mut events = Events::with_capacity(1024);
    let flows = plan.flows.len().max(1) as u64;
    let period_ns = plan.period.as_nanos() as u64;
    let mut cursor: u64 = 0;
    // Send slot `cursor` is due at: evenly spread flows, a faster period
    // during an overload at the start, the normal one after it.
    let (overload_ns, fast_ns) = match plan.overload {
        Some((length, factor)) => (
            length.as_nanos() as u64,
            ((period_ns as f64 / factor) as u64).max(1),
        ),
        None => (0, period_ns),
    };
    let overload_slots = overload_ns / fast_ns * flows;
    let slot_time = |k: u64, period: u64| (k / flows) * period + (k % flows) * period / flows;
    let due = |cursor: u64| {
        let offset = if cursor < overload_slots {
            slot_time(cursor, fast_ns)
        } else {
            overload_ns + slot_time(cursor - overload_slots, period_ns)
        };
        plan.start + Duration::from_nanos(offset)
    };
    let recovery_from = plan
        .overload
        .map(|(length, _)| (plan.start + length).duration_since(plan.base).as_nanos() as u64);
    let late_ns = plan.late.as_nanos() as u64;
    loop {
        let now = Instant::now();
        if now >= plan.end + DRAIN {
            break;
        }
        while let Ok(handoff) = handoffs.try_recv() {
            let Some(&slot) = flow_slot.get(&handoff.flow) else {
                continue;
            };
            let token = sockets.len();
            sockets.push(Some(register(&poll, handoff.socket, token)?));
            let list = &mut senders[slot];
            let generation = list.last().map_or(0, |s| s.generation.wrapping_add(1));
            for old in list.iter_mut().filter(|s| s.stop_at.is_none()) {
                old.stop_at = Some(now + handoff.overlap);
            }
            list.push(Sender {
                socket: token,
                to: handoff.to,
                generation,
                ssrc: rand::random(),
                seq: rand::random(),
                ts: rand::random(),
                index: 0,
                stop_at: None,
                next_rtcp: now + RTCP_INTERVAL,
            });
        }
        if !plan.flows.is_empty() {
            // A sender more than SKIP_AFTER behind its schedule skips what it
            // missed, as a real RTP sender would; a backlog sent that late
            // would measure the generator, not the relay. Shorter stalls
            // are caught up.
            while now < plan.end && due(cursor) + SKIP_AFTER <= now {
                cursor += 1;
                report.skipped += 1;
            }
            while now < plan.end && due(cursor) <= now {
                let slot = (cursor % flows) as usize;
                let flow = plan.flows[slot].id;
                senders[slot].retain(|s| s.stop_at.is_none_or(|at| now < at));
                for sender in &mut senders[slot] {
                    let Some(socket) = sockets[sender.socket].as_ref() else {
                        continue;
                    };
                    packet[0] = 0x80;
                    packet[1] = 0;
                    packet[2..4].copy_from_slice(&sender.seq.to_be_bytes());
                    packet[4..8].copy_from_slice(&sender.ts.to_be_bytes());
                    packet[8..12].copy_from_slice(&sender.ssrc.to_be_bytes());
                    Stamp {
                        flow,
                        generation: sender.generation,
                        index: sender.index,
                        sent_ns: Instant::now().duration_since(plan.base).as_nanos() as u64,
                    }
                    .write(&mut packet[12..]);
                    if socket.send_to(&packet, sender.to).is_ok() {
                        report.sent += 1;
                    }
                    sender.seq = sender.seq.wrapping_add(1);
                    sender.ts = sender.ts.wrapping_add(plan.samples_per_packet);
                    sender.index += 1;
                    if now >= sender.next_rtcp {
                        sender.next_rtcp = now + RTCP_INTERVAL;
                        let _ = socket.send_to(&sender_report(sender), sender.to);
                    }
                }
                cursor += 1;
            }
            progress.sent.store(report.sent, Ordering::Relaxed);
        }
        let wait = if now < plan.end && !plan.flows.is_empty() {
            due(cursor).saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(10)
        };
        poll.poll(&mut events, Some(wait.min(Duration::from_millis(10))))?;
        for event in &events {
            let token = event.token().0;
            let Some(Some(socket)) = sockets.get(token) else {
                continue;
            };
            // Drained in batches: the generator must outrun the relay.
            while let Ok(received) = batch.recv(socket.as_fd()) {
                let arrived_ns = Instant::now().duration_since(plan.base).as_nanos() as u64;
                for i in 0..received {
                    let Ok(view) = RtpView::new_checked(batch.bytes(i)) else {
                        report.rtcp_received += 1;
                        continue;
                    };
                    let Some(stamp) = Stamp::read(view.payload()) else {
                        report.rtcp_received += 1;
                        continue;
                    };
                    let header = Header {
                        ssrc: view.ssrc(),
                        seq: view.sequence(),
                        ts: view.timestamp(),
                        marker: view.marker(),
                    };
                    let check = report.flows.entry((stamp.flow, token)).or_insert_with(|| {
                        FlowCheck::new(plan.samples_per_packet, 8000, late_ns)
                            .watch_recovery(recovery_from)
                    });
                    let latency = check.on_packet(arrived_ns, header, stamp);
                    let _ = report.latency.record(latency.max(1));
                }
                progress
                    .received
                    .fetch_add(received as u64, Ordering::Relaxed);
                if received < BATCH {
                    break;
                }
            }
        }
    }
    Ok(report)
}

/// An RTCP sender report for a sender (built with the rtcp crate; a few a
/// second, so allocating is fine here).
fn sender_report(sender: &Sender) -> Vec<u8> {
    use webrtc_util::marshal::Marshal;
    let report = rtcp::sender_report::SenderReport {
        ssrc: sender.ssrc,
        ntp_time: 0,
        rtp_time: sender.ts,
        packet_count: sender.index as u32,
        octet_count: 0,
        ..Default::default()
    };
    report.marshal().map(|b| b.to_vec()).unwrap_or_default()
}
