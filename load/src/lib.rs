//! `baton load`: a packet generator and analyser for relays.
//!
//! Against baton (`--control`), it creates the calls itself, sends RTP both
//! ways at the packet time, evenly paced, with RTCP sender reports now and
//! then, hands calls over to new devices under load (`--handoff-every`),
//! and judges what every receiver got (see [`analysis`]). With `--video`
//! the calls carry video-like streams instead: frames of several packets
//! sent together, keyframes when asked for, and per switch the time until
//! the new device's first keyframe was forwarded. `--plan` drives
//! any relay from a list of flows; `--direct` measures the generator alone.

pub mod analysis;
pub mod generator;
pub mod plot;
mod webrtc;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_control::sip::crypto;
use baton_control::{Client, ControlAddr};
use baton_proto::v1::{self, request::Command, response::Result as Reply};
use baton_relay::core::srtp::{MasterKey, Suite};
use clap::Args;
use hdrhistogram::Histogram;

use analysis::Violations;
use generator::{Clock, Flow, Handoff, Plan, Progress, Report, VideoShape};

/// How long the old device keeps sending after a handoff.
const HANDOFF_OVERLAP: Duration = Duration::from_millis(40);
/// Control requests in flight at once while setting up.
const SETUP_CONCURRENCY: usize = 64;

/// Quantiles of the latency distribution in the JSON summary: every
/// percent to 0.99, then the tail.
const CDF_QUANTILES: [f64; 22] = [
    0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99,
    0.995, 0.998, 0.999, 0.9995, 0.9999,
];

/// The most packets a second a `--warmup` sends, per generator thread.
const WARMUP_RATE: f64 = 100_000.0;

/// Options of `baton load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The relay's control address; the generator creates and deletes the
    /// calls there.
    #[arg(long, env = "BATON_CONTROL", conflicts_with_all = ["plan", "direct"])]
    control: Option<String>,
    /// Control token, when the relay requires one.
    #[arg(long, env = "BATON_CONTROL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Concurrent calls (two flows each: device → remote, remote → device).
    #[arg(long, default_value_t = 10)]
    calls: usize,
    /// Seconds of media.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Packet time per flow, milliseconds (fractions allowed, for rates
    /// beyond 50 packets a second per flow).
    #[arg(long, default_value_t = 20.0)]
    ptime_ms: f64,
    /// RTP payload bytes (at least 22: the generator's stamp).
    #[arg(long, default_value_t = 160)]
    payload_bytes: usize,
    /// Hand a call over to a new device every SECS seconds (across all
    /// calls, round robin), under full load.
    #[arg(long, value_name = "SECS")]
    handoff_every: Option<f64>,
    /// Generator threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Send and receive through N sockets per side and thread, shared by
    /// the calls, instead of one socket per call side. Far fewer syscalls
    /// per packet, so the generator's ceiling rises; the relay's work per
    /// packet stays the same (its ports are still one per call side).
    /// 0: one socket per call side.
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "plan")]
    share_sockets: usize,
    /// Packets later than this many milliseconds count as lost.
    #[arg(long, default_value_t = 50)]
    late_ms: u64,
    /// Drive any relay: a file of flows, one per line, `FROM TO EXPECT`
    /// (bind FROM, send to TO, expect the packets at EXPECT, which the
    /// generator binds too).
    #[arg(long, value_name = "FILE")]
    plan: Option<PathBuf>,
    /// No relay: flows go straight to their receivers (the generator's own
    /// ceiling).
    #[arg(long)]
    direct: bool,
    /// Start with an overload: packets go out this many times faster for
    /// --overload-secs, then at the normal rate; the summary says how soon
    /// every stream got through again.
    #[arg(long, value_name = "FACTOR", requires = "overload_secs")]
    overload_factor: Option<f64>,
    /// Seconds of overload at the start (see --overload-factor).
    #[arg(long, value_name = "SECS")]
    overload_secs: Option<f64>,
    /// Seconds at 50 packets a second per flow (100 000 a second at most
    /// per thread) before the measured --duration, not counted: a relay
    /// settles its calls first (the kernel fast path takes legs once they
    /// are established).
    #[arg(long, value_name = "SECS", conflicts_with = "overload_secs")]
    warmup: Option<f64>,
    /// A failover under load: SIGKILL this process (the active relay of an
    /// HA pair) --kill-at seconds into the run; the summary says how soon
    /// every stream got through again (through the standby), and what
    /// each lost.
    #[arg(long, value_name = "PID", requires = "kill_at")]
    kill_pid: Option<u32>,
    /// Seconds into the run at which --kill-pid is killed.
    #[arg(long, value_name = "SECS", requires = "kill_pid")]
    kill_at: Option<f64>,
    /// Create calls with RTP and RTCP on separate relay ports (two sockets
    /// per leg) instead of rtcp-mux.
    #[arg(long)]
    separate_rtcp: bool,
    /// SRTP on the calls' device legs, remote legs or both (with a relay
    /// under --control; a plan gives keys per line instead). The generator
    /// encrypts what it sends there and decrypts what it receives there
    /// before judging the streams, so continuity and loss are those of the
    /// decrypted media; a packet that does not decrypt counts as lost and
    /// as `srtp_failed`.
    #[arg(long, value_enum, conflicts_with_all = ["plan", "direct"])]
    srtp: Option<SrtpSides>,
    /// The suite of --srtp's keys (SDP name).
    #[arg(long, default_value = "AES_CM_128_HMAC_SHA1_80", requires = "srtp")]
    srtp_suite: String,
    /// Open this many new WebRTC legs a second while the calls run (a
    /// relay under --control): calls whose device does ICE and a DTLS
    /// handshake with the relay, deleted a second after they connect; the
    /// summary gives their setup times, and the calls' figures show what
    /// the handshakes cost the media already flowing.
    #[arg(long, value_name = "RATE", conflicts_with_all = ["plan", "direct"])]
    webrtc_legs_per_second: Option<f64>,
    /// Video-like streams instead of audio: VP8 at 90 kHz (the calls are
    /// created as video, so the relay asks a new device for a keyframe and
    /// holds its video until one starts), frames of several packets sent
    /// back to back, keyframes on PLI or FIR. --ptime-ms is ignored; see
    /// --fps, --frame-packets, --keyframe-packets, --keyframe-every.
    #[arg(long)]
    video: bool,
    /// Video frames a second.
    #[arg(long, default_value_t = 30.0, requires = "video")]
    fps: f64,
    /// Packets of a video inter frame.
    #[arg(long, default_value_t = 3, requires = "video")]
    frame_packets: usize,
    /// Packets of a video keyframe.
    #[arg(long, default_value_t = 12, requires = "video")]
    keyframe_packets: usize,
    /// A keyframe every N frames besides those asked for (0: only the
    /// first and those asked for, as WebRTC encoders do).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "video")]
    keyframe_every: u32,
    /// Print the summary as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Write an SVG of what the remote received from the first call's
    /// devices around its handoffs: sequence number and timestamp against
    /// arrival time, one colour per device.
    #[arg(long, value_name = "FILE", requires = "handoff_every")]
    plot: Option<PathBuf>,
}

/// Most packets kept for `--plot` (10 minutes at 50 packets a second).
const PLOT_SAMPLES: usize = 30_000;

/// Which legs of the generated calls speak SRTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SrtpSides {
    /// The user's device legs (SRTP ↔ RTP bridging).
    Device,
    /// The remote party's legs.
    Remote,
    /// Both (SRTP re-encrypted).
    Both,
}

impl SrtpSides {
    fn device(self) -> bool {
        matches!(self, Self::Device | Self::Both)
    }

    fn remote(self) -> bool {
        matches!(self, Self::Remote | Self::Both)
    }
}

/// A key from the protocol.
fn key_of(key: Option<&v1::SrtpKey>) -> anyhow::Result<MasterKey> {
    let key = key.context("the relay's SRTP key in the answer")?;
    crypto::key_from_message(key).map_err(|e| anyhow::anyhow!("the relay's key: {e}"))
}

fn leg_srtp(key: Option<&MasterKey>) -> Option<v1::LegSrtp> {
    key.map(|k| v1::LegSrtp {
        suite: k.suite().name().to_owned(),
        peer_key: Some(crypto::key_to_message(k)),
    })
}

/// `SUITE:BASE64` from a plan line.
fn plan_key(text: &str, line: usize) -> anyhow::Result<MasterKey> {
    let (suite, key) = text
        .split_once(':')
        .with_context(|| format!("plan line {line}: {text:?} is not SUITE:BASE64KEY"))?;
    crypto::key_message_from_text(suite, key)
        .and_then(|message| crypto::key_from_message(&message))
        .map_err(|e| anyhow::anyhow!("plan line {line}: {e}"))
}

/// Runs `baton load`.
pub fn main(args: LoadArgs) -> ExitCode {
    raise_open_files(&args);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("baton load: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("baton load: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Two sockets per call and then some: as root, lift the hard limit when it
/// is lower (10 000 calls need more than the 20 000 some systems allow).
fn raise_open_files(args: &LoadArgs) {
    let needed = 2 * args.calls as u64 + 1024;
    let hard = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(_, hard)| hard);
    if hard < needed && rlimit::setrlimit(rlimit::Resource::NOFILE, needed, needed).is_ok() {
        return;
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

/// One call set up on the relay.
struct Call {
    session: String,
    aor: String,
    device_flow: u32,
    /// The device leg's suite, when it speaks SRTP.
    device_srtp: Option<Suite>,
}

/// What the generator needs to hand a call over.
struct Control {
    client: Client,
    calls: Vec<Call>,
    create_ms: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// The relay's control address: `--control`, or the default.
fn control_addr(args: &LoadArgs) -> anyhow::Result<ControlAddr> {
    Ok(args
        .control
        .as_deref()
        .unwrap_or(baton_control::addr::DEFAULT_CONTROL_ADDR)
        .parse()?)
}

fn bind_local() -> anyhow::Result<UdpSocket> {
    UdpSocket::bind("127.0.0.1:0").context("bind a generator socket on 127.0.0.1")
}

async fn run(args: LoadArgs) -> anyhow::Result<bool> {
    if args.payload_bytes < analysis::PAYLOAD_HEADER || args.payload_bytes > 1400 {
        bail!(
            "--payload-bytes must be between {} and 1400",
            analysis::PAYLOAD_HEADER
        );
    }
    if !(args.ptime_ms > 0.0 && args.duration > 0.0 && args.threads > 0) {
        bail!("--ptime-ms, --duration and --threads must be positive");
    }
    let video = if args.video {
        if !(args.fps >= 1.0 && args.fps <= 120.0) {
            bail!("--fps must be between 1 and 120");
        }
        if !(1..=64).contains(&args.frame_packets) || !(1..=64).contains(&args.keyframe_packets) {
            bail!("--frame-packets and --keyframe-packets must be between 1 and 64");
        }
        Some(VideoShape {
            frame_packets: args.frame_packets,
            keyframe_packets: args.keyframe_packets,
            keyframe_every: args.keyframe_every,
        })
    } else {
        None
    };
    // One period per frame: a packet of audio, or a video frame's packets.
    let (period, ts_per_frame, clock_rate) = match video {
        Some(_) => (
            Duration::from_secs_f64(1.0 / args.fps),
            ((90_000.0 / args.fps).round() as u32).max(1),
            90_000,
        ),
        // Samples per packet at 8 kHz, at least 1.
        None => (
            Duration::from_secs_f64(args.ptime_ms / 1000.0),
            ((args.ptime_ms * 8.0).round() as u32).max(1),
            8000,
        ),
    };

    // Sockets (by thread), flows (by thread).
    let threads = args.threads;
    let mut sockets: Vec<Vec<UdpSocket>> = (0..threads).map(|_| Vec::new()).collect();
    let mut flows: Vec<Vec<Flow>> = (0..threads).map(|_| Vec::new()).collect();
    let mut flow_thread: HashMap<u32, usize> = HashMap::new();
    let mut srtp_in: Vec<Vec<(SocketAddr, MasterKey)>> = (0..threads).map(|_| Vec::new()).collect();
    let srtp_suite = match args.srtp {
        Some(_) => Some(
            Suite::from_name(&args.srtp_suite)
                .with_context(|| format!("unknown SRTP suite {}", args.srtp_suite))?,
        ),
        None => None,
    };
    let mut control = None;
    let pool = SocketPool::new(threads, args.calls, args.share_sockets, &mut sockets)?;
    let mode;
    if let Some(path) = &args.plan {
        mode = "plan";
        plan_flows(
            path,
            threads,
            &mut sockets,
            &mut flows,
            &mut flow_thread,
            &mut srtp_in,
        )?;
    } else if args.direct {
        mode = "direct";
        for call in 0..args.calls {
            let ends = pool.ends(call, &mut sockets)?;
            let [device_addr, remote_addr] = ends.addrs;
            add_call(
                call,
                ends,
                [remote_addr, device_addr],
                [None, None],
                &mut flows,
                &mut flow_thread,
            );
        }
    } else {
        mode = "relay";
        let addr = control_addr(&args)?;
        let client = Client::connect(&addr, args.token.as_deref()).await?;
        let mut create_ms = histogram();
        let mut calls = Vec::with_capacity(args.calls);
        let started = Instant::now();
        for chunk_start in (0..args.calls).step_by(SETUP_CONCURRENCY) {
            let chunk = chunk_start..(chunk_start + SETUP_CONCURRENCY).min(args.calls);
            let mut pending = Vec::new();
            let mut bound = Vec::new();
            for call in chunk.clone() {
                let ends = pool.ends(call, &mut sockets)?;
                let side_key = |on: bool| srtp_suite.filter(|_| on).map(MasterKey::random);
                let keys = [
                    side_key(args.srtp.is_some_and(SrtpSides::device)),
                    side_key(args.srtp.is_some_and(SrtpSides::remote)),
                ];
                let mut request = create_request(
                    call,
                    ends.addrs[0],
                    ends.addrs[1],
                    !args.separate_rtcp,
                    args.video,
                );
                if let Some(stream) = request.streams.first_mut() {
                    stream.user_srtp = leg_srtp(keys[0].as_ref());
                    stream.remote_srtp = leg_srtp(keys[1].as_ref());
                }
                bound.push((call, ends, keys));
                pending.push(async {
                    let sent = Instant::now();
                    let reply = client.call(Command::CreateSession(request)).await;
                    (reply, sent.elapsed())
                });
            }
            let replies = futures_util::future::join_all(pending).await;
            for ((call, ends, keys), (reply, took)) in bound.into_iter().zip(replies) {
                let created = match reply {
                    Ok(Reply::CreateSession(created)) => created,
                    Ok(other) => bail!("unexpected answer to create: {other:?}"),
                    Err(e) => bail!("creating call {call} failed: {e}"),
                };
                let _ = create_ms.record((took.as_micros() as u64).max(1));
                let stream = created.streams.first().context("a stream in the answer")?;
                let user: SocketAddr = stream.user.as_ref().context("user address")?.rtp.parse()?;
                let remote_relay: SocketAddr = stream
                    .remote
                    .as_ref()
                    .context("remote address")?
                    .rtp
                    .parse()?;
                if keys[0].is_some() {
                    srtp_in[ends.thread].push((user, key_of(stream.user_key.as_ref())?));
                }
                if keys[1].is_some() {
                    srtp_in[ends.thread].push((remote_relay, key_of(stream.remote_key.as_ref())?));
                }
                add_call(
                    call,
                    ends,
                    [user, remote_relay],
                    keys,
                    &mut flows,
                    &mut flow_thread,
                );
                calls.push(Call {
                    session: created.session,
                    aor: format!("sip:load-{call}@load.invalid"),
                    device_flow: 2 * call as u32,
                    device_srtp: keys[0].map(|k| k.suite()),
                });
            }
        }
        eprintln!(
            "baton load: {} calls created in {:.2} s",
            calls.len(),
            started.elapsed().as_secs_f64()
        );
        control = Some(Control {
            client,
            calls,
            create_ms,
        });
    }

    // Generator threads.
    let base = Instant::now();
    let clock = Clock::start();
    let start = base + Duration::from_millis(100);
    let warmup = args
        .warmup
        .filter(|w| w.is_finite() && *w > 0.0)
        .map(Duration::from_secs_f64);
    let end = start + warmup.unwrap_or_default() + Duration::from_secs_f64(args.duration);
    let progress = Arc::new(Progress::default());
    let mut handoff_senders = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for (t, ((thread_sockets, thread_flows), thread_srtp_in)) in
        sockets.into_iter().zip(flows).zip(srtp_in).enumerate()
    {
        let (sender, receiver) = crossbeam_channel::bounded(1024);
        handoff_senders.push(sender);
        let flow_count = thread_flows.len();
        let plan = Plan {
            sockets: thread_sockets,
            flows: thread_flows,
            period,
            overload: match (warmup, args.overload_secs, args.overload_factor) {
                // The warmup's pace: a packet every 20 ms per flow, at
                // most WARMUP_RATE packets a second in all (a relay must
                // not start the measured part behind an overload).
                (Some(warmup), _, _) => {
                    let flows = flow_count.max(1) as f64;
                    let each = (flows / WARMUP_RATE).max(0.020);
                    Some((warmup, period.as_secs_f64() / each))
                }
                (None, Some(secs), Some(factor)) if secs > 0.0 && factor > 0.0 => {
                    Some((Duration::from_secs_f64(secs), factor))
                }
                _ => None,
            },
            warmup: warmup.is_some(),
            watch_from: args
                .kill_at
                .filter(|at| at.is_finite() && *at >= 0.0)
                .map(Duration::from_secs_f64),
            payload_bytes: args.payload_bytes,
            ts_per_frame,
            clock_rate,
            video,
            late: Duration::from_millis(args.late_ms),
            base,
            clock,
            start,
            end,
            srtp_in: thread_srtp_in,
            // The first call's device flow: flow 0, handed over first.
            record: args.plot.as_ref().map(|_| (0, PLOT_SAMPLES)),
        };
        let progress = Arc::clone(&progress);
        handles.push(
            std::thread::Builder::new()
                .name(format!("baton-load-{t}"))
                .spawn(move || generator::run(plan, receiver, progress))?,
        );
    }

    // New WebRTC legs alongside, on a connection of their own.
    let churn = match args.webrtc_legs_per_second {
        Some(rate) if rate > 0.0 && control.is_some() => {
            let addr = control_addr(&args)?;
            let client = Client::connect(&addr, args.token.as_deref()).await?;
            Some((rate, tokio::spawn(webrtc::churn(client, rate, end))))
        }
        Some(_) | None => None,
    };

    // Handoffs and the progress line, until the end.
    let mut handoffs = HandoffStats::default();
    let events = match &control {
        Some(_) if args.handoff_every.is_some() => {
            let addr = control_addr(&args)?;
            let events = Client::connect(&addr, args.token.as_deref()).await?;
            events.subscribe().await?;
            Some(events)
        }
        Some(_) | None => None,
    };
    let mut next_progress = start + Duration::from_secs(1);
    let mut next_handoff = args
        .handoff_every
        .map(|every| start + Duration::from_secs_f64(every));
    let mut handoff_cursor = 0usize;
    let mut last_sent = 0;
    let mut kill = match (args.kill_pid, args.kill_at) {
        (Some(pid), Some(at)) if at.is_finite() && at >= 0.0 => {
            Some((pid, start + Duration::from_secs_f64(at)))
        }
        _ => None,
    };
    while Instant::now() < end {
        let now = Instant::now();
        if let Some((pid, at)) = kill
            && now >= at
        {
            // kill(1) rather than a signal call: no unsafe code here.
            let killed = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            eprintln!(
                "baton load: {} process {pid} at {:.3} s",
                if killed { "killed" } else { "could not kill" },
                now.duration_since(start).as_secs_f64()
            );
            kill = None;
        }
        if let (Some(at), Some(control)) = (next_handoff, control.as_mut())
            && now >= at
            && !control.calls.is_empty()
        {
            let every = Duration::from_secs_f64(args.handoff_every.unwrap_or(1.0));
            next_handoff = Some(at + every);
            let call = &control.calls[handoff_cursor % control.calls.len()];
            handoff_cursor += 1;
            match hand_over(&control.client, call, handoff_cursor, &mut handoffs).await {
                Ok((socket, to, srtp, srtp_in)) => {
                    let thread = flow_thread[&call.device_flow];
                    let _ = handoff_senders[thread].try_send(Handoff {
                        flow: call.device_flow,
                        socket,
                        to,
                        overlap: HANDOFF_OVERLAP,
                        srtp,
                        srtp_in,
                    });
                }
                Err(e) => {
                    handoffs.failed += 1;
                    eprintln!("baton load: handoff failed: {e}");
                }
            }
        }
        if now >= next_progress {
            next_progress += Duration::from_secs(1);
            let sent = progress.sent.load(std::sync::atomic::Ordering::Relaxed);
            let received = progress.received.load(std::sync::atomic::Ordering::Relaxed);
            eprintln!(
                "baton load: {:>5.1} s  sent {sent}  received {received}  {} pps  handoffs {}",
                now.duration_since(start).as_secs_f64(),
                sent.saturating_sub(last_sent),
                handoffs.started
            );
            last_sent = sent;
        }
        if let Some(events) = &events {
            drain_events(events, &mut handoffs).await;
        }
        let mut wait = next_progress
            .min(end)
            .saturating_duration_since(Instant::now());
        if let Some(at) = next_handoff {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        tokio::time::sleep(wait.min(Duration::from_millis(20))).await;
    }
    let mut reports = Vec::with_capacity(handles.len());
    for handle in handles {
        // The threads end by themselves shortly after `end`; nothing on this
        // runtime needs to run meanwhile.
        let report = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
        reports.push(report);
    }
    if let Some(path) = &args.plot {
        let samples: Vec<plot::Sample> = reports
            .iter()
            .flat_map(|r| r.samples.iter().copied())
            .collect();
        let title = format!(
            "What the remote received from call 1 around its handoffs ({} calls, {} ms packets)",
            args.calls, args.ptime_ms
        );
        match plot::svg(&samples, 200.0, clock_rate, &title) {
            Some(svg) => std::fs::write(path, svg)
                .with_context(|| format!("cannot write the plot to {}", path.display()))?,
            None => eprintln!(
                "baton load: no plot written: call 1 was not handed over during the run (raise --duration or lower --handoff-every)"
            ),
        }
    }
    if let Some(events) = &events {
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline && handoffs.completed + handoffs.failed < handoffs.started {
            drain_events(events, &mut handoffs).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Delete the calls.
    let mut delete_ms = histogram();
    if let Some(control) = &control {
        for chunk in control.calls.chunks(SETUP_CONCURRENCY) {
            let deletes = chunk.iter().map(|call| async {
                let sent = Instant::now();
                let request = v1::DeleteSessionRequest {
                    session: Some(v1::SessionRef {
                        by: Some(v1::session_ref::By::Id(call.session.clone())),
                    }),
                };
                let reply = control.client.call(Command::DeleteSession(request)).await;
                (reply.is_ok(), sent.elapsed())
            });
            for (_, took) in futures_util::future::join_all(deletes).await {
                let _ = delete_ms.record((took.as_micros() as u64).max(1));
            }
        }
    }

    if let Some((rate, churn)) = churn {
        let stats = churn.await??;
        eprintln!("baton load: {}", stats.line(rate));
        for reason in &stats.reasons {
            eprintln!("baton load: a WebRTC leg failed: {reason}");
        }
        if args.json {
            println!("{}", stats.json(rate));
        }
    }

    let summary = Summary::new(
        mode,
        &args,
        &reports,
        &handoffs,
        control.as_ref().map(|c| &c.create_ms),
        &delete_ms,
    );
    summary.print_human();
    if args.json {
        println!("{}", summary.json());
    }
    Ok(summary.clean())
}

#[derive(Clone, Copy)]
/// A call's two generator ends: the thread that owns them, their socket
/// indices in its list, and their addresses (device, remote).
struct CallEnds {
    thread: usize,
    sockets: [usize; 2],
    addrs: [SocketAddr; 2],
}

/// Where calls' device and remote ends live: a socket of their own each,
/// or one of a few per side and thread shared with other calls.
struct SocketPool {
    threads: usize,
    calls_per_thread: usize,
    /// Per thread, with sharing: the shared (device, remote) pairs.
    shared: Option<Vec<Vec<CallEnds>>>,
}

/// Receive buffer of a shared socket: it takes many calls' packets at once.
const SHARED_RECEIVE_BUFFER: usize = 4 << 20;

impl SocketPool {
    fn new(
        threads: usize,
        calls: usize,
        share: usize,
        sockets: &mut [Vec<UdpSocket>],
    ) -> anyhow::Result<Self> {
        let calls_per_thread = calls.div_ceil(threads).max(1);
        let shared = if share == 0 {
            None
        } else {
            let per_thread = share.min(calls_per_thread);
            let mut shared = Vec::with_capacity(threads);
            for (thread, thread_sockets) in sockets.iter_mut().enumerate() {
                let mut pairs = Vec::with_capacity(per_thread);
                for _ in 0..per_thread {
                    let mut pair = CallEnds {
                        thread,
                        sockets: [0; 2],
                        addrs: [SocketAddr::from(([127, 0, 0, 1], 0)); 2],
                    };
                    for side in 0..2 {
                        let socket = bind_local()?;
                        // The kernel caps this at net.core.rmem_max; what it
                        // grants is enough either way, so no error here.
                        let _ = socket2::SockRef::from(&socket)
                            .set_recv_buffer_size(SHARED_RECEIVE_BUFFER);
                        pair.addrs[side] = socket.local_addr()?;
                        pair.sockets[side] = thread_sockets.len();
                        thread_sockets.push(socket);
                    }
                    pairs.push(pair);
                }
                shared.push(pairs);
            }
            Some(shared)
        };
        Ok(Self {
            threads,
            calls_per_thread,
            shared,
        })
    }

    /// The ends of call `call`: calls go round robin over the threads and,
    /// within a thread, in blocks over its shared sockets (so that one
    /// socket's flows are neighbours in the send order).
    fn ends(&self, call: usize, sockets: &mut [Vec<UdpSocket>]) -> anyhow::Result<CallEnds> {
        let thread = call % self.threads;
        if let Some(shared) = &self.shared {
            let pairs = &shared[thread];
            let k = (call / self.threads) * pairs.len() / self.calls_per_thread;
            return Ok(pairs[k.min(pairs.len() - 1)]);
        }
        let (device, remote) = (bind_local()?, bind_local()?);
        let addrs = [device.local_addr()?, remote.local_addr()?];
        let base = sockets[thread].len();
        sockets[thread].push(device);
        sockets[thread].push(remote);
        Ok(CallEnds {
            thread,
            sockets: [base, base + 1],
            addrs,
        })
    }
}

/// Adds call `call`'s two flows: device → `to[0]`, remote → `to[1]`,
/// encrypted with `keys` (device's, remote's) on SRTP legs.
fn add_call(
    call: usize,
    ends: CallEnds,
    to: [SocketAddr; 2],
    keys: [Option<MasterKey>; 2],
    flows: &mut [Vec<Flow>],
    flow_thread: &mut HashMap<u32, usize>,
) {
    let t = ends.thread;
    let device_flow = 2 * call as u32;
    for side in 0..2 {
        flows[t].push(Flow {
            id: device_flow + side as u32,
            socket: ends.sockets[side],
            to: to[side],
            srtp: keys[side],
        });
    }
    flow_thread.insert(device_flow, t);
    flow_thread.insert(device_flow + 1, t);
}

fn plan_flows(
    path: &PathBuf,
    threads: usize,
    sockets: &mut [Vec<UdpSocket>],
    flows: &mut [Vec<Flow>],
    flow_thread: &mut HashMap<u32, usize>,
    srtp_in: &mut [Vec<(SocketAddr, MasterKey)>],
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read plan {}", path.display()))?;
    // Every address the plan names is bound once, by the thread of the
    // first flow that names it; a flow is sent by its FROM socket's thread.
    let mut owner: HashMap<SocketAddr, (usize, usize)> = HashMap::new();
    let mut next_thread = 0;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [from, to, expect, options @ ..] = fields.as_slice() else {
            bail!(
                "plan line {}: expected FROM TO EXPECT [srtp-out=SUITE:KEY] [srtp-in=SUITE:KEY]",
                number + 1
            );
        };
        // srtp-out: FROM encrypts what it sends to TO; srtp-in: what FROM
        // receives from TO is decrypted with this key.
        let (mut srtp_out, mut srtp_from_relay) = (None, None);
        for option in options {
            match option.split_once('=') {
                Some(("srtp-out", key)) => srtp_out = Some(plan_key(key, number + 1)?),
                Some(("srtp-in", key)) => srtp_from_relay = Some(plan_key(key, number + 1)?),
                _ => bail!("plan line {}: unknown option {option:?}", number + 1),
            }
        }
        let parse = |text: &str| -> anyhow::Result<SocketAddr> {
            let addr: SocketAddr = text
                .parse()
                .with_context(|| format!("plan line {}: {text:?} is not IP:PORT", number + 1))?;
            if !addr.ip().is_loopback() {
                bail!("plan line {}: {addr} is not a loopback address", number + 1);
            }
            Ok(addr)
        };
        let (from, to, expect) = (parse(from)?, parse(to)?, parse(expect)?);
        for addr in [from, expect] {
            if let std::collections::hash_map::Entry::Vacant(slot) = owner.entry(addr) {
                let t = next_thread % threads;
                next_thread += 1;
                let socket = UdpSocket::bind(addr).with_context(|| format!("bind {addr}"))?;
                slot.insert((t, sockets[t].len()));
                sockets[t].push(socket);
            }
        }
        let (t, socket) = owner[&from];
        let id = flow_thread.len() as u32;
        flows[t].push(Flow {
            id,
            socket,
            to,
            srtp: srtp_out,
        });
        if let Some(key) = srtp_from_relay {
            srtp_in[t].push((to, key));
        }
        flow_thread.insert(id, t);
    }
    if flow_thread.is_empty() {
        bail!("plan {} has no flows", path.display());
    }
    Ok(())
}

fn create_request(
    call: usize,
    device: SocketAddr,
    remote: SocketAddr,
    rtcp_mux: bool,
    video: bool,
) -> v1::CreateSessionRequest {
    let (kind, codec, ptime_ms) = if video {
        (
            "video",
            v1::Codec {
                payload_type: u32::from(generator::VIDEO_PAYLOAD_TYPE),
                name: "VP8".into(),
                clock_rate: 90_000,
                ..Default::default()
            },
            0,
        )
    } else {
        (
            "audio",
            v1::Codec {
                payload_type: 0,
                name: "PCMU".into(),
                clock_rate: 8000,
                ..Default::default()
            },
            20,
        )
    };
    v1::CreateSessionRequest {
        call_id: format!("load-{call}-{}", std::process::id()),
        from_tag: "load-a".into(),
        to_tag: "load-r".into(),
        aor: format!("sip:load-{call}@load.invalid"),
        gruu: format!(
            "sip:load-{call}@load.invalid;gr=urn:uuid:{call:08x}-0000-0000-0000-000000000000"
        ),
        streams: vec![v1::StreamSpec {
            kind: kind.into(),
            codecs: vec![codec],
            rtcp_mux,
            user_peer: Some(v1::Endpoint {
                rtp: device.to_string(),
                rtcp: String::new(),
            }),
            remote_peer: Some(v1::Endpoint {
                rtp: remote.to_string(),
                rtcp: String::new(),
            }),
            user_family: 0,
            remote_family: 0,
            ptime_ms,
            user_srtp: None,
            remote_srtp: None,
            udptl: false,
        }],
        nat_relearn: false,
        ..Default::default()
    }
}

#[derive(Default)]
struct HandoffStats {
    started: u64,
    completed: u64,
    failed: u64,
    relay_gaps_ms: Vec<f64>,
    transfer_ms: Vec<u64>,
}

/// The new device of a handoff: its socket, where it sends, and on an SRTP
/// leg its own key and the relay's key toward it.
type NewDevice = (UdpSocket, SocketAddr, Option<MasterKey>, Option<MasterKey>);

/// Registers a new device (a temporary GRUU bound to the call's AOR) and
/// transfers the call to it.
async fn hand_over(
    client: &Client,
    call: &Call,
    serial: usize,
    stats: &mut HandoffStats,
) -> anyhow::Result<NewDevice> {
    let device_key = call.device_srtp.map(MasterKey::random);
    let socket = bind_local()?;
    let gruu = format!(
        "sip:tgruu.{serial}.{}@load.invalid;gr",
        call.device_flow / 2
    );
    client
        .call(Command::RegisterDevice(v1::RegisterDeviceRequest {
            aor: call.aor.clone(),
            gruu: gruu.clone(),
            expires: 3600,
            temporary: false,
        }))
        .await?;
    let sent = Instant::now();
    let reply = client
        .call(Command::Transfer(v1::TransferRequest {
            session: Some(v1::SessionRef {
                by: Some(v1::session_ref::By::Id(call.session.clone())),
            }),
            replaces: String::new(),
            gruu,
            streams: vec![v1::TransferStream {
                codecs: Vec::new(),
                peer: Some(v1::Endpoint {
                    rtp: socket.local_addr()?.to_string(),
                    rtcp: String::new(),
                }),
                family: 0,
                rtcp_mux: None,
                srtp: leg_srtp(device_key.as_ref()),
            }],
            mode: v1::SwitchMode::FirstPacket as i32,
            sdp: String::new(),
            source_ip: String::new(),
            sdes: None,
            interface: String::new(),
        }))
        .await?;
    stats.transfer_ms.push(sent.elapsed().as_micros() as u64);
    stats.started += 1;
    let Reply::Transfer(transfer) = reply else {
        bail!("unexpected answer to transfer");
    };
    let stream = transfer.streams.first().context("a stream in the answer")?;
    let to = stream
        .user
        .as_ref()
        .context("the new device's address")?
        .rtp
        .parse()?;
    let relay_key = match device_key {
        Some(_) => Some(key_of(stream.user_key.as_ref())?),
        None => None,
    };
    Ok((socket, to, device_key, relay_key))
}

async fn drain_events(events: &Client, stats: &mut HandoffStats) {
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(1), events.next_event()).await
    {
        match event.kind {
            Some(v1::event::Kind::TransferCompleted(done)) => {
                stats.completed += 1;
                if done.media_gap_ms >= 0.0 {
                    stats.relay_gaps_ms.push(done.media_gap_ms);
                }
            }
            Some(v1::event::Kind::TransferFailed(_)) => stats.failed += 1,
            Some(_) | None => {}
        }
    }
}

/// Everything measured, merged over threads.
struct Summary {
    mode: &'static str,
    flows: usize,
    duration: f64,
    sent: u64,
    received: u64,
    lost: u64,
    late: u64,
    duplicates: u64,
    reordered: u64,
    rtcp_received: u64,
    skipped: u64,
    /// SRTP packets that did not decrypt at the generator.
    srtp_failed: u64,
    violations: Violations,
    latency_us: [f64; 5],
    /// The latency distribution: (µs, fraction at or below it) at fixed
    /// quantiles, denser in the tail, for CDF plots.
    latency_cdf: Vec<(f64, f64)>,
    handoffs: (u64, u64),
    gap_ms: [f64; 3],
    create_ms: [f64; 2],
    transfer_ms: [f64; 2],
    delete_ms: [f64; 2],
    /// With an overload or a kill: (flows, flows through again, recovery
    /// ms p50, max).
    recovery: Option<(usize, usize, f64, f64)>,
    /// The recovery is from a kill (--kill-pid), not an overload.
    killed: bool,
    /// Datagrams timed by the kernel's receive timestamp, and by reading.
    timed: (u64, u64),
    /// Video: from a new device's start to its first keyframe at the
    /// remote (p50, p99, max ms).
    switch_to_keyframe_ms: [f64; 3],
    /// Video: how many new devices' keyframes reached the remote.
    switch_keyframes: usize,
    /// Video: keyframe requests (PLI, FIR) the generated parties received.
    keyframe_requests: u64,
    video: bool,
}

fn quantiles_ms(h: Option<&Histogram<u64>>) -> [f64; 2] {
    match h {
        Some(h) if !h.is_empty() => [
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
        ],
        Some(_) | None => [0.0, 0.0],
    }
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let index = ((values.len() - 1) as f64 * q).round() as usize;
    values[index]
}

impl Summary {
    fn new(
        mode: &'static str,
        args: &LoadArgs,
        reports: &[Report],
        handoffs: &HandoffStats,
        create_ms: Option<&Histogram<u64>>,
        delete_ms: &Histogram<u64>,
    ) -> Self {
        let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
            .unwrap_or_else(|_| unreachable!());
        let mut violations = Violations::default();
        let (mut sent, mut received, mut lost, mut late, mut duplicates, mut reordered, mut rtcp) =
            (0, 0, 0, 0, 0, 0, 0);
        let mut flows = 0;
        let mut gaps_ms: Vec<f64> = Vec::new();
        let mut recoveries_ms: Vec<f64> = Vec::new();
        let mut to_keyframe_ms: Vec<f64> = Vec::new();
        let mut keyframe_requests = 0;
        let mut skipped = 0;
        let mut srtp_failed = 0;
        let mut timed = (0, 0);
        for report in reports {
            srtp_failed += report.srtp_failed;
            keyframe_requests += report.keyframe_requests;
            timed.0 += report.kernel_timed;
            timed.1 += report.user_timed;
            sent += report.sent;
            skipped += report.skipped;
            rtcp += report.rtcp_received;
            let _ = latency.add(&report.latency);
            for check in report.flows.values() {
                flows += 1;
                received += check.received;
                lost += check.lost();
                late += check.late;
                duplicates += check.duplicates;
                reordered += check.reordered;
                violations.add(&check.violations);
                gaps_ms.extend(check.switch_gaps_ns.iter().map(|ns| *ns as f64 / 1e6));
                to_keyframe_ms.extend(
                    check
                        .switch_to_keyframe_ns
                        .iter()
                        .map(|ns| *ns as f64 / 1e6),
                );
                if let Some(ns) = check.recovery_ns() {
                    recoveries_ms.push(ns as f64 / 1e6);
                }
            }
        }
        let us = |q: f64| {
            if latency.is_empty() {
                0.0
            } else {
                latency.value_at_quantile(q) as f64 / 1000.0
            }
        };
        let mut transfer: Histogram<u64> = histogram();
        for t in &handoffs.transfer_ms {
            let _ = transfer.record((*t).max(1));
        }
        Self {
            mode,
            flows,
            duration: args.duration,
            sent,
            received,
            lost,
            late,
            duplicates,
            reordered,
            rtcp_received: rtcp,
            skipped,
            srtp_failed,
            violations,
            latency_cdf: CDF_QUANTILES.iter().map(|&q| (us(q), q)).collect(),
            latency_us: [
                us(0.5),
                us(0.9),
                us(0.99),
                us(0.999),
                if latency.is_empty() {
                    0.0
                } else {
                    latency.max() as f64 / 1000.0
                },
            ],
            handoffs: (
                handoffs.completed.max(gaps_ms.len() as u64),
                handoffs.failed,
            ),
            gap_ms: [
                percentile(&mut gaps_ms, 0.5),
                percentile(&mut gaps_ms, 0.99),
                gaps_ms.iter().copied().fold(0.0, f64::max),
            ],
            create_ms: quantiles_ms(create_ms),
            transfer_ms: quantiles_ms(Some(&transfer)),
            delete_ms: quantiles_ms(Some(delete_ms)),
            recovery: (args.overload_factor.is_some() || args.kill_pid.is_some()).then(|| {
                let through = recoveries_ms.len();
                let max = recoveries_ms.iter().copied().fold(0.0, f64::max);
                (flows, through, percentile(&mut recoveries_ms, 0.5), max)
            }),
            killed: args.kill_pid.is_some(),
            timed,
            switch_keyframes: to_keyframe_ms.len(),
            switch_to_keyframe_ms: [
                percentile(&mut to_keyframe_ms, 0.5),
                percentile(&mut to_keyframe_ms, 0.99),
                to_keyframe_ms.iter().copied().fold(0.0, f64::max),
            ],
            keyframe_requests,
            video: args.video,
        }
    }

    /// What timed arrivals, as a JSON name and in words: "kernel"
    /// (receive timestamps), "user" (the generator's clock on reading,
    /// which adds its own queueing) or "mixed".
    fn latency_clock(&self) -> (&'static str, &'static str) {
        match self.timed {
            (_, 0) => ("kernel", "the kernel's receive timestamps"),
            (0, _) => (
                "user",
                "the generator on reading (no kernel timestamps: latency includes the generator's queueing)",
            ),
            (_, _) => ("mixed", "the kernel's receive timestamps, some on reading"),
        }
    }

    fn loss_pct(&self) -> f64 {
        let expected = self.received - self.late + self.lost;
        if expected == 0 {
            0.0
        } else {
            100.0 * self.lost as f64 / expected as f64
        }
    }

    /// Nothing lost, nothing broken.
    fn clean(&self) -> bool {
        self.lost == 0
            && self.violations.total() == 0
            && self.handoffs.1 == 0
            && self.received > 0
            && self.srtp_failed == 0
    }

    fn print_human(&self) {
        let v = &self.violations;
        eprintln!(
            "baton load ({}): {} flows, {:.1} s",
            self.mode, self.flows, self.duration
        );
        eprintln!(
            "  sent {}  received {}  lost {} ({:.3} %, {} of them late)  duplicated {}  reordered {}  rtcp {}",
            self.sent,
            self.received,
            self.lost,
            self.loss_pct(),
            self.late,
            self.duplicates,
            self.reordered,
            self.rtcp_received
        );
        if self.srtp_failed > 0 {
            eprintln!("  SRTP packets that did not decrypt: {}", self.srtp_failed);
        }
        eprintln!(
            "  rate {:.0} packets/s sent",
            self.sent as f64 / self.duration
        );
        let l = self.latency_us;
        eprintln!(
            "  one-way latency µs: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            l[0], l[1], l[2], l[3], l[4]
        );
        eprintln!("  arrivals timed by: {}", self.latency_clock().1);
        eprintln!(
            "  continuity violations: {} (ssrc changes {}, sequence {}, timestamp {}, missing marker {}, switch off a keyframe {})",
            v.total(),
            v.ssrc_changes,
            v.seq_errors,
            v.ts_errors,
            v.missing_markers,
            v.switches_off_keyframe
        );
        if self.mode == "relay" {
            eprintln!(
                "  handoffs: completed {}  failed {}  media gap ms p50 {:.1}  p99 {:.1}  max {:.1}",
                self.handoffs.0, self.handoffs.1, self.gap_ms[0], self.gap_ms[1], self.gap_ms[2]
            );
            eprintln!(
                "  control ms (p50/p99): create {:.2}/{:.2}  transfer {:.2}/{:.2}  delete {:.2}/{:.2}",
                self.create_ms[0],
                self.create_ms[1],
                self.transfer_ms[0],
                self.transfer_ms[1],
                self.delete_ms[0],
                self.delete_ms[1]
            );
            if self.video {
                let k = self.switch_to_keyframe_ms;
                eprintln!(
                    "  video: from a new device's start to its first keyframe at the remote ms p50 {:.1}  p99 {:.1}  max {:.1}  ({} keyframes; keyframe requests received {})",
                    k[0], k[1], k[2], self.switch_keyframes, self.keyframe_requests
                );
            }
        }
        if let Some((flows, through, p50, max)) = self.recovery {
            eprintln!(
                "  after the {}: {through} of {flows} streams through again; recovery ms p50 {p50:.1}  max {max:.1}",
                if self.killed { "kill" } else { "overload" }
            );
        }
        if self.mode == "direct" {
            eprintln!("  (direct: no relay; this is the generator's own ceiling on this machine)");
        }
    }

    fn json(&self) -> serde_json::Value {
        let l = self.latency_us;
        serde_json::json!({
            "mode": self.mode,
            "flows": self.flows,
            "duration_s": self.duration,
            "sent": self.sent,
            "received": self.received,
            "lost": self.lost,
            "late": self.late,
            "loss_pct": self.loss_pct(),
            "duplicated": self.duplicates,
            "reordered": self.reordered,
            "rtcp_received": self.rtcp_received,
            "skipped": self.skipped,
            "srtp_failed": self.srtp_failed,
            "pps": self.sent as f64 / self.duration,
            "latency_us": { "p50": l[0], "p90": l[1], "p99": l[2], "p999": l[3], "max": l[4] },
            "latency_cdf_us": self.latency_cdf,
            "latency_clock": self.latency_clock().0,
            "continuity_violations": self.violations.total(),
            "violations": {
                "ssrc_changes": self.violations.ssrc_changes,
                "seq_errors": self.violations.seq_errors,
                "ts_errors": self.violations.ts_errors,
                "missing_markers": self.violations.missing_markers,
                "switches_off_keyframe": self.violations.switches_off_keyframe,
            },
            "handoffs": {
                "completed": self.handoffs.0,
                "failed": self.handoffs.1,
                "gap_ms": { "p50": self.gap_ms[0], "p99": self.gap_ms[1], "max": self.gap_ms[2] },
            },
            "video": self.video.then(|| serde_json::json!({
                "switch_to_keyframe_ms": {
                    "p50": self.switch_to_keyframe_ms[0],
                    "p99": self.switch_to_keyframe_ms[1],
                    "max": self.switch_to_keyframe_ms[2],
                },
                "switch_keyframes": self.switch_keyframes,
                "keyframe_requests": self.keyframe_requests,
            })),
            (if self.killed { "failover" } else { "overload" }): self.recovery.map(|(flows, through, p50, max)| serde_json::json!({
                "streams": flows, "recovered": through, "recovery_ms": { "p50": p50, "max": max },
            })),
            "control_ms": {
                "create": { "p50": self.create_ms[0], "p99": self.create_ms[1] },
                "transfer": { "p50": self.transfer_ms[0], "p99": self.transfer_ms[1] },
                "delete": { "p50": self.delete_ms[0], "p99": self.delete_ms[1] },
            },
        })
    }
}
