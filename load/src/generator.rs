//! Generator threads: each owns some sockets, sends its flows evenly paced
//! and judges what its sockets receive. Control actions (handoffs) reach it
//! through a channel; it never blocks on anything but `epoll`.
//!
//! Sends to one socket's consecutive flows leave in one `sendmmsg` and
//! receives come in `recvmmsg` batches, so a generator whose flows share
//! sockets (`--share-sockets`) spends a fraction of a syscall per packet.
//! Arrival times are the kernel's receive timestamps where it gives them:
//! a datagram that waited in the generator's queue is not counted as
//! relay latency.
//!
//! Video flows ([`VideoShape`]) send a frame's packets together, as an
//! encoder's packetizer does, with a VP8 payload descriptor before the
//! stamp, and answer a PLI or FIR with a keyframe on the next frame, as
//! an encoder behind a real RTP stack does.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use std::os::fd::AsFd;

use baton_relay::core::rtp::{self, RtpRepr, RtpView};
use baton_relay::core::srtp::{MasterKey, SrtpReceiver, SrtpSender};
use baton_relay::io::sys::{self, BATCH, RecvBatch, SendBatch};
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
/// Waits at least this long go to epoll; shorter ones are slept precisely.
const EPOLL_WAIT_FROM: Duration = Duration::from_millis(2);

/// Longest datagram the generator builds (12-byte header, the video
/// prefix, at most 1400 bytes of payload, and room for an SRTP tag).
const MAX_PACKET: usize = 1500;

/// On video, the bytes before the stamp: the VP8 payload descriptor (one
/// byte: S set on a frame's first packet, partition 0) and on a frame's
/// first packet the first bytes of the VP8 payload header, whose lowest
/// bit is 0 on a keyframe (RFC 7741 §4.2, §4.3); other packets carry
/// zeros there. A fixed size keeps the stamp at a fixed place.
pub const VIDEO_PREFIX: usize = 4;

/// The payload type of generated video (dynamic, VP8 in the calls the
/// generator creates).
pub const VIDEO_PAYLOAD_TYPE: u8 = 96;

/// The shape of a generated video stream.
#[derive(Debug, Clone, Copy)]
pub struct VideoShape {
    /// Packets of an inter frame.
    pub frame_packets: usize,
    /// Packets of a keyframe.
    pub keyframe_packets: usize,
    /// A keyframe every this many frames (0: only the first and those
    /// asked for by PLI or FIR).
    pub keyframe_every: u32,
}

/// The stamps' clock: nanoseconds since the run's start on the wall clock,
/// because that is the clock of the kernel's receive timestamps and sent
/// and received times must compare. (A step of the wall clock during a run
/// would skew the latency of that moment; NTP slewing does not matter at
/// this scale.)
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_base: Duration,
}

impl Clock {
    /// A clock whose zero is now.
    pub fn start() -> Self {
        Self {
            wall_base: wall_now(),
        }
    }

    fn now_ns(self) -> u64 {
        self.at_ns(wall_now())
    }

    fn at_ns(self, wall: Duration) -> u64 {
        wall.saturating_sub(self.wall_base).as_nanos() as u64
    }
}

fn wall_now() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Packets built for one socket, to leave in one `sendmmsg`.
struct Outbox {
    socket: usize,
    bufs: Box<[[u8; MAX_PACKET]; BATCH]>,
    lens: [usize; BATCH],
    to: [SocketAddr; BATCH],
    count: usize,
}

impl Outbox {
    fn new() -> Self {
        Self {
            socket: 0,
            bufs: Box::new([[0; MAX_PACKET]; BATCH]),
            lens: [0; BATCH],
            to: [SocketAddr::from(([0, 0, 0, 0], 0)); BATCH],
            count: 0,
        }
    }

    /// Room for a packet from `socket`, sending what is queued first when
    /// it is for another socket or the batch is full. Returns the buffer
    /// and how many packets went out to make room.
    fn next(
        &mut self,
        socket: usize,
        sockets: &[Option<UdpSocket>],
        send: &mut SendBatch,
    ) -> (&mut [u8; MAX_PACKET], u64) {
        let mut sent = 0;
        if self.count == BATCH || (self.count > 0 && self.socket != socket) {
            sent = self.flush(sockets, send);
        }
        self.socket = socket;
        (&mut self.bufs[self.count], sent)
    }

    /// Queues the packet just built in the buffer [`Outbox::next`] gave.
    fn push(&mut self, len: usize, to: SocketAddr) {
        self.lens[self.count] = len;
        self.to[self.count] = to;
        self.count += 1;
    }

    /// Sends what is queued; returns how many the kernel took.
    fn flush(&mut self, sockets: &[Option<UdpSocket>], send: &mut SendBatch) -> u64 {
        let count = std::mem::take(&mut self.count);
        let Some(Some(socket)) = sockets.get(self.socket) else {
            return 0;
        };
        let packets = (0..count).map(|i| (self.to[i], &self.bufs[i][..self.lens[i]]));
        send.send(socket.as_fd(), packets).sent as u64
    }
}

/// One sender of a flow (a handoff adds a new generation).
struct Sender {
    /// Encrypts what it sends, on an SRTP leg.
    srtp: Option<SrtpSender>,
    socket: usize,
    to: SocketAddr,
    generation: u8,
    ssrc: u32,
    seq: u16,
    ts: u32,
    index: u64,
    /// Frames sent (packets, on audio).
    frame: u32,
    /// The next frame is a keyframe (the first, or one asked for).
    keyframe_due: bool,
    /// When the sender started, on the stamps' clock.
    started_ns: u64,
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
    /// The key it encrypts with, on an SRTP leg.
    pub srtp: Option<MasterKey>,
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
    /// The new device's key, on an SRTP leg.
    pub srtp: Option<MasterKey>,
    /// The relay's key toward the new device: what arrives from `to` is
    /// decrypted with it.
    pub srtp_in: Option<MasterKey>,
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
    /// Watch each flow's first packet sent at or after this time from the
    /// start (a failover under load); the overload's end otherwise.
    pub watch_from: Option<Duration>,
    /// The "overload" is a warmup: nothing sent in it is counted.
    pub warmup: bool,
    /// RTP payload size (at least the stamp; the video prefix comes on
    /// top).
    pub payload_bytes: usize,
    /// Timestamp ticks per frame (per packet on audio).
    pub ts_per_frame: u32,
    /// The RTP clock rate.
    pub clock_rate: u32,
    /// Video frames instead of one audio packet per period.
    pub video: Option<VideoShape>,
    /// Later than this counts as lost.
    pub late: Duration,
    /// When the run began (the zero of `clock`).
    pub base: Instant,
    /// Clock of the stamps.
    pub clock: Clock,
    /// Start sending at.
    pub start: Instant,
    /// Stop sending at.
    pub end: Instant,
    /// On SRTP legs: what arrives from these relay addresses is decrypted
    /// with these keys before it is judged.
    pub srtp_in: Vec<(SocketAddr, MasterKey)>,
    /// Keep what arrives of this flow (for `--plot`), at most this many
    /// packets.
    pub record: Option<(u32, usize)>,
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
    /// Datagrams timed by the kernel's receive timestamp.
    pub kernel_timed: u64,
    /// Datagrams timed when the generator read them (the kernel gave no
    /// timestamp).
    pub user_timed: u64,
    /// SRTP packets that did not decrypt (authentication or replay).
    pub srtp_failed: u64,
    /// Keyframe requests (PLI, FIR) the devices received.
    pub keyframe_requests: u64,
    /// What arrived of the recorded flow ([`Plan::record`]).
    pub samples: Vec<crate::plot::Sample>,
}

fn register(poll: &Poll, socket: std::net::UdpSocket, token: usize) -> io::Result<UdpSocket> {
    socket.set_nonblocking(true)?;
    // Without timestamps the datagrams are timed when read, which counts
    // the generator's own queueing as latency; the summary says which.
    let _ = sys::enable_rx_timestamps(socket.as_fd());
    let mut socket = UdpSocket::from_std(socket);
    poll.registry()
        .register(&mut socket, Token(token), Interest::READABLE)?;
    Ok(socket)
}

/// Runs one generator thread to the end and reports.
pub fn run(
    mut plan: Plan,
    handoffs: Receiver<Handoff>,
    progress: Arc<Progress>,
) -> io::Result<Report> {
    // A socket's flows side by side in the send order, so that they leave
    // in one sendmmsg; the order of flows is otherwise free.
    plan.flows.sort_by_key(|flow| flow.socket);
    // Without it sleeps overshoot by up to 50 µs and packets bunch; pacing
    // is then coarser but still measured, so a refusal is no reason to stop.
    let _ = sys::fine_timer_slack();
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
                srtp: f.srtp.as_ref().map(SrtpSender::new),
                socket: f.socket,
                to: f.to,
                generation: 0,
                ssrc: rand::random(),
                seq: rand::random(),
                ts: rand::random(),
                index: 0,
                frame: 0,
                keyframe_due: true,
                started_ns: 0,
                stop_at: None,
                // Spread over the first interval, as RFC 3550 randomises
                // report times: thousands of flows reporting in the same
                // millisecond would be a burst no real relay sees.
                next_rtcp: plan.start + RTCP_INTERVAL.mul_f64(rand::random::<f64>()),
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
        kernel_timed: 0,
        user_timed: 0,
        srtp_failed: 0,
        keyframe_requests: 0,
        samples: Vec::with_capacity(plan.record.map_or(0, |(_, most)| most)),
    };
    let mut decrypt: HashMap<SocketAddr, SrtpReceiver> = plan
        .srtp_in
        .iter()
        .map(|(from, key)| (*from, SrtpReceiver::new(key)))
        .collect();
    let video = plan.video.is_some();
    let prefix = if video { VIDEO_PREFIX } else { 0 };
    let packet_len = (12 + prefix + plan.payload_bytes.max(PAYLOAD_HEADER)).min(MAX_PACKET);
    let mut outbox = Outbox::new();
    let mut send = SendBatch::new();
    let clock = plan.clock;
    let mut batch = RecvBatch::with_timestamps();
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
        .watch_from
        .or(plan.overload.map(|(length, _)| length))
        .map(|from| (plan.start + from).duration_since(plan.base).as_nanos() as u64);
    let late_ns = plan.late.as_nanos() as u64;
    // Stamps sent before this are not judged (a warmup's).
    let mut count_from_ns = if plan.warmup { u64::MAX } else { 0 };
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
            if let Some(key) = &handoff.srtp_in {
                decrypt.insert(handoff.to, SrtpReceiver::new(key));
            }
            list.push(Sender {
                srtp: handoff.srtp.as_ref().map(SrtpSender::new),
                socket: token,
                to: handoff.to,
                generation,
                ssrc: rand::random(),
                seq: rand::random(),
                ts: rand::random(),
                index: 0,
                frame: 0,
                // A device taking over a call mid-stream: its encoder has
                // run for a while, so its next keyframe is the one the
                // relay asks for.
                keyframe_due: false,
                started_ns: clock.now_ns(),
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
                if count_from_ns == u64::MAX && cursor >= overload_slots {
                    // The warmup is over: what it sent leaves now, and the
                    // count starts from nothing.
                    outbox.flush(&sockets, &mut send);
                    report.sent = 0;
                    report.skipped = 0;
                    report.flows.clear();
                    report.latency.reset();
                    report.samples.clear();
                    count_from_ns = clock.now_ns();
                }
                let slot = (cursor % flows) as usize;
                let flow = plan.flows[slot].id;
                senders[slot].retain(|s| s.stop_at.is_none_or(|at| now < at));
                for sender in &mut senders[slot] {
                    let Some(socket) = sockets[sender.socket].as_ref() else {
                        continue;
                    };
                    if now >= sender.next_rtcp {
                        sender.next_rtcp = now + RTCP_INTERVAL;
                        // Flows come in pairs (2k, 2k+1) going opposite
                        // ways: report on the one this socket receives.
                        let reverse = report.flows.get(&(flow ^ 1, sender.socket));
                        let mut rtcp =
                            sender_report(sender, reverse.and_then(FlowCheck::reception));
                        let sealed = match &mut sender.srtp {
                            Some(srtp) => {
                                let len = rtcp.len();
                                rtcp.resize(len + baton_relay::core::srtp::MAX_OVERHEAD, 0);
                                srtp.protect_rtcp(&mut rtcp, len).ok()
                            }
                            None => Some(rtcp.len()),
                        };
                        if let Some(len) = sealed {
                            let _ = socket.send_to(&rtcp[..len], sender.to);
                        }
                    }
                    // A frame: one packet on audio; on video the frame's
                    // packets back to back, a keyframe when one is due.
                    let (packets, keyframe) = match plan.video {
                        Some(shape) => {
                            let keyframe = sender.keyframe_due
                                || (shape.keyframe_every > 0
                                    && sender.frame % shape.keyframe_every == 0);
                            let packets = if keyframe {
                                shape.keyframe_packets
                            } else {
                                shape.frame_packets
                            };
                            (packets, keyframe)
                        }
                        None => (1, false),
                    };
                    for packet_in_frame in 0..packets {
                        let (packet, sent) = outbox.next(sender.socket, &sockets, &mut send);
                        report.sent += sent;
                        let _ = RtpRepr {
                            // On video the marker ends a frame.
                            marker: video && packet_in_frame + 1 == packets,
                            payload_type: if video { VIDEO_PAYLOAD_TYPE } else { 0 },
                            sequence: sender.seq,
                            timestamp: sender.ts,
                            ssrc: sender.ssrc,
                        }
                        .emit_header(packet);
                        if video {
                            let first = packet_in_frame == 0;
                            packet[12..12 + VIDEO_PREFIX].copy_from_slice(&[
                                if first { 0x10 } else { 0 },
                                if first && !keyframe { 1 } else { 0 },
                                0,
                                0,
                            ]);
                        }
                        Stamp {
                            flow,
                            generation: sender.generation,
                            index: sender.index,
                            sent_ns: clock.now_ns(),
                            frame: sender.frame,
                            keyframe: keyframe && packet_in_frame == 0,
                            generation_start_ns: sender.started_ns,
                        }
                        .write(&mut packet[12 + prefix..packet_len]);
                        // MAX_PACKET leaves room for the trailer (the
                        // payload is at most 1400 bytes).
                        let len = match &mut sender.srtp {
                            Some(srtp) => srtp.protect_rtp(packet, packet_len).ok(),
                            None => Some(packet_len),
                        };
                        match len {
                            Some(len) => outbox.push(len, sender.to),
                            None => report.srtp_failed += 1,
                        }
                        sender.seq = sender.seq.wrapping_add(1);
                        sender.index += 1;
                    }
                    sender.ts = sender.ts.wrapping_add(plan.ts_per_frame);
                    sender.frame = sender.frame.wrapping_add(1);
                    sender.keyframe_due = false;
                }
                cursor += 1;
            }
            report.sent += outbox.flush(&sockets, &mut send);
            progress.sent.store(report.sent, Ordering::Relaxed);
        }
        let wait = if now < plan.end && !plan.flows.is_empty() {
            due(cursor).saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(10)
        };
        // epoll's timeout is whole milliseconds: waiting in it would send
        // a millisecond's packets in one burst and the relay would see
        // bursts, not a paced stream. Short waits sleep instead (with
        // fine timer slack) and then collect what arrived meanwhile; the
        // kernel's timestamps keep its arrival times exact.
        if wait >= EPOLL_WAIT_FROM {
            let rounded_down = wait - Duration::from_millis(1);
            poll.poll(
                &mut events,
                Some(rounded_down.min(Duration::from_millis(10))),
            )?;
        } else {
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            poll.poll(&mut events, Some(Duration::ZERO))?;
        }
        for event in &events {
            let token = event.token().0;
            let Some(Some(socket)) = sockets.get(token) else {
                continue;
            };
            // Drained in batches: the generator must outrun the relay.
            while let Ok(received) = batch.recv(socket.as_fd()) {
                let read_ns = clock.now_ns();
                for i in 0..received {
                    let (source, _, buf, len) = batch.datagram(i);
                    let rtcp = rtp::is_rtcp(&buf[..len]);
                    if let Some(srtp) = source.and_then(|s| decrypt.get_mut(&s)) {
                        // SRTCP is opened only where it is read: a video
                        // device's keyframe requests.
                        let opened = match (rtcp, plan.video) {
                            (false, _) => Some(srtp.unprotect_rtp(buf, len)),
                            (true, Some(_)) => Some(srtp.unprotect_rtcp(buf, len)),
                            (true, None) => None,
                        };
                        match opened {
                            Some(Ok(plain)) => {
                                srtp.commit(&plain);
                                batch.set_len(i, plain.len());
                            }
                            Some(Err(_)) => {
                                report.srtp_failed += 1;
                                continue;
                            }
                            None => {}
                        }
                    }
                    if rtcp {
                        report.rtcp_received += 1;
                        if video && asks_for_keyframe(batch.bytes(i)) {
                            report.keyframe_requests += 1;
                            // The device (or remote) on this socket answers
                            // with a keyframe on its next frame.
                            for sender in senders.iter_mut().flatten() {
                                if sender.socket == token && sender.stop_at.is_none() {
                                    sender.keyframe_due = true;
                                }
                            }
                        }
                        continue;
                    }
                    let arrived_ns = match batch.kernel_timestamp(i) {
                        Some(at) => {
                            report.kernel_timed += 1;
                            clock.at_ns(at)
                        }
                        None => {
                            report.user_timed += 1;
                            read_ns
                        }
                    };
                    let Ok(view) = RtpView::new_checked(batch.bytes(i)) else {
                        report.rtcp_received += 1;
                        continue;
                    };
                    let Some(stamp) = view.payload().get(prefix..).and_then(Stamp::read) else {
                        report.rtcp_received += 1;
                        continue;
                    };
                    if stamp.sent_ns < count_from_ns {
                        continue;
                    }
                    let header = Header {
                        ssrc: view.ssrc(),
                        seq: view.sequence(),
                        ts: view.timestamp(),
                        marker: view.marker(),
                    };
                    let check = report.flows.entry((stamp.flow, token)).or_insert_with(|| {
                        let check = FlowCheck::new(plan.ts_per_frame, plan.clock_rate, late_ns)
                            .watch_recovery(recovery_from);
                        if video { check.video() } else { check }
                    });
                    let latency = check.on_packet(arrived_ns, header, stamp);
                    if let Some((flow, most)) = plan.record
                        && flow == stamp.flow
                        && report.samples.len() < most
                    {
                        report.samples.push(crate::plot::Sample {
                            arrived_ns,
                            seq: header.seq,
                            ts: header.ts,
                            device: stamp.generation,
                        });
                    }
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

/// Whether a (compound) RTCP datagram holds a PLI or a FIR (RFC 4585
/// §6.3.1, RFC 5104 §4.3.1). Walks the packets by their length fields and
/// stops at the first that does not fit.
fn asks_for_keyframe(datagram: &[u8]) -> bool {
    let mut at = 0;
    while let Some(header) = datagram.get(at..at + 4) {
        let (format, packet_type) = (header[0] & 0x1f, header[1]);
        if header[0] >> 6 != 2 {
            return false;
        }
        if packet_type == 206 && (format == 1 || format == 4) {
            return true;
        }
        let len = (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1) * 4;
        at += len;
    }
    false
}

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// An RTCP sender report for a sender, with a reception report block about
/// the flow its socket receives when there is one, as an endpoint that
/// sends and receives would send (built with the rtcp crate; a few a
/// second, so allocating is fine here). The relay must translate both
/// SSRCs across a handoff.
fn sender_report(sender: &Sender, reception: Option<(u32, u16, u64)>) -> Vec<u8> {
    use webrtc_util::marshal::Marshal;
    let wall = wall_now();
    let ntp_time = ((wall.as_secs() + NTP_UNIX_OFFSET_SECS) << 32)
        | ((u64::from(wall.subsec_nanos()) << 32) / 1_000_000_000);
    let report = rtcp::sender_report::SenderReport {
        ssrc: sender.ssrc,
        ntp_time,
        rtp_time: sender.ts,
        packet_count: sender.index as u32,
        octet_count: 0,
        reports: reception
            .map(
                |(ssrc, seq, lost)| rtcp::reception_report::ReceptionReport {
                    ssrc,
                    total_lost: lost.min(0x7f_ffff) as u32,
                    last_sequence_number: u32::from(seq),
                    ..Default::default()
                },
            )
            .into_iter()
            .collect(),
        ..Default::default()
    };
    report.marshal().map(|b| b.to_vec()).unwrap_or_default()
}
