//! `baton ctl`: one control command from a shell, JSON out.
//!
//! Exit status: 0 with the response as one JSON object on stdout; 1 when the
//! relay answered with an error (`{"code":…,"message":…}` on stderr); 2 when
//! the relay cannot be reached or the command line is wrong.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use baton_control::{Client, ClientError, ControlAddr};
use baton_proto::v1::{self, request::Command, response::Result as Reply};
use clap::{Args, Subcommand};

use crate::ctl_args::{parse_peer, parse_stream};

/// Exit status when the relay answered with an error.
const EXIT_RELAY_ERROR: u8 = 1;
/// Exit status when the relay cannot be reached or the usage is wrong.
const EXIT_UNREACHABLE: u8 = 2;

/// Options shared by every `baton ctl` command.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The relay's control address: tcp:HOST:PORT or unix:PATH.
    #[arg(long, global = true, env = "BATON_CONTROL", default_value = baton_control::addr::DEFAULT_CONTROL_ADDR)]
    control: String,

    /// Control token, when the relay requires one.
    #[arg(
        long,
        global = true,
        env = "BATON_CONTROL_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,

    /// Seconds to wait for an answer.
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,

    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Check that the relay answers; prints its version.
    Ping,
    /// Relay-wide counters.
    Stats,
    /// Print events as they happen, one JSON object per line, until
    /// interrupted or the relay goes away.
    Events(EventsArgs),
    /// Check the session registry against the media workers (sessions
    /// only in one of them would be lost track of).
    Audit,
    /// Anchor a call on the relay; prints the relay addresses per stream.
    Create(CreateArgs),
    /// Apply signalling changes (peer addresses, to-tag, codecs).
    Update(UpdateArgs),
    /// End a session; prints its final statistics.
    Delete(SessionArgs),
    /// A session's state and statistics.
    Get(SessionArgs),
    /// All sessions, briefly.
    List,
    /// Bind a device GRUU to a user's AOR (what the registrar knows).
    Register(RegisterArgs),
    /// Remove a device binding.
    Unregister(UnregisterArgs),
    /// Live device bindings.
    Bindings(BindingsArgs),
    /// Move a session to another device of the same user; prints the new
    /// device's relay addresses.
    Transfer(TransferArgs),
    /// Switch a transfer opened with --mode commit.
    Commit(OpenTransferArgs),
    /// Roll back an open transfer.
    Cancel(OpenTransferArgs),
    /// Record a session into the relay's recording-dir (a pcap of what it
    /// sends each party, and a JSON file of its devices when it stops), or
    /// pause or stop its recording; prints the file.
    Record(RecordArgs),
    /// A live view: sessions, packet and drop rates per worker, latency,
    /// transfers, ports, the newest sessions; refreshed every second until
    /// interrupted.
    Top(TopArgs),
    /// Take the relay out of service without cutting calls: new sessions
    /// are refused (a new call's ng offer gets "load limit", on which
    /// Kamailio tries its next relay), live ones go on, and the relay exits
    /// once the last one ends or at the deadline.
    Drain(DrainArgs),
    /// On a standby relay (redis-standby): take the active's calls over
    /// now, without waiting for its heartbeat to expire. Move the floating
    /// media address first (keepalived does it on a failover).
    Takeover,
}

#[derive(Debug, Args)]
struct DrainArgs {
    /// Seconds until the calls still open are ended and the relay exits;
    /// 0 waits for every call. [default: the relay's drain-timeout]
    #[arg(long, value_name = "SECONDS")]
    deadline: Option<u32>,
    /// Answer ng pings with an error while draining, so that a proxy that
    /// pings its relays marks this one disabled. Only with a proxy that
    /// still sends a disabled relay's live calls to it (Kamailio:
    /// rtpengine_allow_op=1).
    #[arg(long)]
    refuse_ng_ping: bool,
    /// Take the relay back into service instead.
    #[arg(long, conflicts_with_all = ["deadline", "refuse_ng_ping", "wait"])]
    cancel: bool,
    /// Stay until the relay has shut down (its last call ended, or the
    /// deadline came), then exit 0: `baton ctl drain --wait && apt install
    /// …` upgrades without cutting calls.
    #[arg(long)]
    wait: bool,
}

#[derive(Debug, Args)]
struct EventsArgs {
    /// Resume after this event sequence number (the last one seen): the
    /// relay replays the events after it that it still holds.
    #[arg(long, value_name = "SEQUENCE")]
    resume_after: Option<u64>,
}

/// Names an open transfer: its session, and optionally its id.
#[derive(Debug, Args)]
struct OpenTransferArgs {
    #[command(flatten)]
    session: SessionArgs,
    /// The transfer's id (from `transfer`'s answer); refused if another
    /// transfer is open. [default: whichever is open]
    #[arg(long, value_name = "ID")]
    transfer_id: Option<u64>,
}

#[derive(Debug, Args)]
struct RecordArgs {
    #[command(flatten)]
    session: SessionArgs,
    /// Pause: stop copying; a later `record` appends to the same file.
    #[arg(long, conflicts_with = "stop")]
    pause: bool,
    /// Stop, and write the call's metadata beside its pcap.
    #[arg(long)]
    stop: bool,
}

#[derive(Debug, Args)]
struct TopArgs {
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print one screen and exit (for scripts); its rates are over one
    /// interval.
    #[arg(long)]
    once: bool,
}

#[derive(Debug, Args)]
struct RegisterArgs {
    /// The user's AOR.
    #[arg(long)]
    aor: String,
    /// The device's GRUU (a URI, or a Contact value with pub-gruu/temp-gruu).
    #[arg(long)]
    gruu: String,
    /// Seconds the binding lives (0 removes it).
    #[arg(long, default_value_t = 3600)]
    expires: u32,
    /// From a Contact value, take temp-gruu rather than pub-gruu.
    #[arg(long)]
    temporary: bool,
}

#[derive(Debug, Args)]
struct UnregisterArgs {
    /// The device's GRUU.
    #[arg(long)]
    gruu: String,
}

#[derive(Debug, Args)]
struct BindingsArgs {
    /// Only this AOR's bindings.
    #[arg(long, default_value = "")]
    aor: String,
}

/// An SDP body in and out.
#[derive(Debug, Args)]
struct SdpArgs {
    /// Read an SDP body from FILE (`-`: standard input); the answer then
    /// carries it rewritten, as "sdp".
    #[arg(long, value_name = "FILE")]
    sdp: Option<String>,
    /// Write the rewritten SDP body, raw, to FILE (`-`: standard output,
    /// instead of the JSON answer).
    #[arg(long, value_name = "FILE", requires = "sdp")]
    sdp_out: Option<String>,
}

impl SdpArgs {
    fn read(&self) -> Result<String, String> {
        match self.sdp.as_deref() {
            None => Ok(String::new()),
            Some("-") => {
                let mut body = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut body)
                    .map_err(|e| format!("cannot read SDP from standard input: {e}"))?;
                Ok(body)
            }
            Some(path) => {
                std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Party {
    /// The user's device.
    User,
    /// The remote party.
    Remote,
}

impl Party {
    fn proto(party: Option<Self>) -> i32 {
        match party {
            None => v1::Party::Default as i32,
            Some(Self::User) => v1::Party::User as i32,
            Some(Self::Remote) => v1::Party::Remote as i32,
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Mode {
    /// Switch on the new device's first packet.
    FirstPacket,
    /// Switch on `baton ctl commit`.
    Commit,
}

#[derive(Debug, Args)]
struct TransferArgs {
    /// The session's id.
    #[arg(
        long,
        conflicts_with = "replaces",
        required_unless_present = "replaces"
    )]
    session: Option<String>,
    /// The Replaces header value of the new device's INVITE.
    #[arg(long)]
    replaces: Option<String>,
    /// The new device's GRUU (a URI or its Contact header value).
    #[arg(long)]
    gruu: String,
    /// The new device's codecs per stream, in order (same syntax as
    /// create); omitted: the session's codecs.
    #[arg(long = "stream", value_name = "SPEC")]
    streams: Vec<String>,
    /// The new device's media address per stream, RTP[,RTCP].
    #[arg(long = "user-peer", value_name = "IP:PORT")]
    user_peers: Vec<String>,
    /// The IP the new device's request came from: a stream without a
    /// --user-peer accepts the device only from this IP.
    #[arg(long, value_name = "IP")]
    source_ip: Option<String>,
    /// The named interface the new device's legs open on. [default: the
    /// user's legs' interface]
    #[arg(long, value_name = "NAME")]
    interface: Option<String>,
    /// When to switch.
    #[arg(long, value_enum, default_value = "first-packet")]
    mode: Mode,
    /// SRTP on the new device's leg per stream, in order: SUITE[:KEY] (KEY
    /// in base64, or @FILE holding it), KEY
    /// being the device's key and salt in base64; the relay's key comes
    /// back in `user_key`.
    #[arg(long = "srtp", value_name = "SUITE[:KEY]")]
    srtp: Vec<String>,
    /// With --sdp: SDES suites the relay may accept (repeat).
    #[arg(long = "sdes-only", value_name = "SUITE", requires = "sdp")]
    sdes_only: Vec<String>,
    /// With --sdp: SDES suites the relay refuses (repeat).
    #[arg(long = "sdes-exclude", value_name = "SUITE", requires = "sdp")]
    sdes_exclude: Vec<String>,
    #[command(flatten)]
    sdp: SdpArgs,
}

/// SRTP toward the other party for a body (create and update with --sdp).
#[derive(Debug, Args)]
struct BodySrtpArgs {
    /// The transport toward the other party: RTP/AVP, RTP/AVPF, RTP/SAVP,
    /// RTP/SAVPF (bridges plain RTP and SDES-SRTP), UDP/TLS/RTP/SAVP or
    /// UDP/TLS/RTP/SAVPF (WebRTC: ICE-lite and DTLS-SRTP); default: the
    /// body's.
    #[arg(long, value_name = "PROTO", requires = "sdp")]
    other_transport: Option<String>,
    /// SDES suites the relay may accept and offer (repeat).
    #[arg(long = "sdes-only", value_name = "SUITE", requires = "sdp")]
    sdes_only: Vec<String>,
    /// SDES suites the relay refuses and never offers (repeat).
    #[arg(long = "sdes-exclude", value_name = "SUITE", requires = "sdp")]
    sdes_exclude: Vec<String>,
    /// ICE-lite toward the other party even on a non-WebRTC transport.
    #[arg(long, requires = "sdp")]
    force_ice: bool,
    /// The relay's DTLS role in its offer to a WebRTC party: actpass
    /// (default), active or passive.
    #[arg(long, value_name = "ROLE", requires = "sdp")]
    dtls_setup: Option<String>,
}

impl BodySrtpArgs {
    fn sdes(&self) -> Option<v1::SdesOptions> {
        sdes_options(&self.sdes_only, &self.sdes_exclude)
    }

    fn webrtc(&self) -> Option<v1::WebRtcOptions> {
        (self.force_ice || self.dtls_setup.is_some()).then(|| v1::WebRtcOptions {
            force_ice: self.force_ice,
            dtls_setup: self.dtls_setup.clone().unwrap_or_default(),
        })
    }
}

fn sdes_options(only: &[String], exclude: &[String]) -> Option<v1::SdesOptions> {
    (!only.is_empty() || !exclude.is_empty()).then(|| v1::SdesOptions {
        only: only.to_vec(),
        exclude: exclude.to_vec(),
        ..Default::default()
    })
}

/// `SUITE[:KEY]`: a leg's SRTP for an explicit stream.
fn parse_leg_srtp(text: &str) -> Result<v1::LegSrtp, String> {
    let (suite, key) = match text.split_once(':') {
        Some((suite, key)) => (suite, Some(key)),
        None => (text, None),
    };
    Ok(v1::LegSrtp {
        suite: suite.to_owned(),
        peer_key: key
            .map(|k| baton_control::sip::crypto::key_message_from_text(suite, k))
            .transpose()?,
    })
}

/// `SUITE:KEY`: an SRTP key, KEY in base64 or `@FILE`.
fn parse_srtp_key(text: &str) -> Result<v1::SrtpKey, String> {
    let (suite, key) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not SUITE:BASE64KEY"))?;
    baton_control::sip::crypto::key_message_from_text(suite, key)
}

/// Names a session: by id, or by its dialog.
#[derive(Debug, Args)]
struct SessionArgs {
    /// The relay's session id.
    #[arg(long, conflicts_with = "call_id", required_unless_present = "call_id")]
    session: Option<String>,
    /// SIP Call-ID (with --from-tag, and --to-tag when several match).
    #[arg(long, requires = "from_tag")]
    call_id: Option<String>,
    /// From tag.
    #[arg(long)]
    from_tag: Option<String>,
    /// To tag.
    #[arg(long)]
    to_tag: Option<String>,
}

impl SessionArgs {
    fn reference(&self) -> v1::SessionRef {
        use v1::session_ref::By;
        let by = match &self.session {
            Some(id) => By::Id(id.clone()),
            None => By::Dialog(v1::Dialog {
                call_id: self.call_id.clone().unwrap_or_default(),
                from_tag: self.from_tag.clone().unwrap_or_default(),
                to_tag: self.to_tag.clone().unwrap_or_default(),
            }),
        };
        v1::SessionRef { by: Some(by) }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    fn proto(family: Option<Self>) -> i32 {
        match family {
            None => v1::AddressFamily::Unspecified as i32,
            Some(Self::Ipv4) => v1::AddressFamily::Ipv4 as i32,
            Some(Self::Ipv6) => v1::AddressFamily::Ipv6 as i32,
        }
    }
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// SIP Call-ID.
    #[arg(long)]
    call_id: String,
    /// From tag.
    #[arg(long)]
    from_tag: String,
    /// To tag, if the dialog is established.
    #[arg(long, default_value = "")]
    to_tag: String,
    /// The user's address of record (sip:user@domain); without it (and
    /// without a public GRUU) the call relays media but cannot be handed
    /// off until a transfer names the user's device.
    #[arg(long, default_value = "")]
    aor: String,
    /// The GRUU of the user's current device.
    #[arg(long, default_value = "")]
    gruu: String,
    /// A media line: KIND:PT/NAME/CLOCK[/CHANNELS][,…], e.g.
    /// audio:0/PCMU/8000,101/telephone-event/8000; static payload types may
    /// be given by number (audio:0). Repeat for several media lines.
    #[arg(long = "stream", required_unless_present = "sdp", value_name = "SPEC")]
    streams: Vec<String>,
    /// Multiplex RTP and RTCP on one port (every stream).
    #[arg(long)]
    rtcp_mux: bool,
    /// The device's media address, RTP[,RTCP]; repeat per stream, in order.
    #[arg(long = "user-peer", value_name = "IP:PORT")]
    user_peers: Vec<String>,
    /// The remote party's media address, RTP[,RTCP]; repeat per stream.
    #[arg(long = "remote-peer", value_name = "IP:PORT")]
    remote_peers: Vec<String>,
    /// IP version of the user leg's relay ports.
    #[arg(long, value_enum)]
    user_family: Option<Family>,
    /// IP version of the remote leg's relay ports.
    #[arg(long, value_enum)]
    remote_family: Option<Family>,
    /// Follow a device to a new address after a NAT rebinding.
    #[arg(long)]
    nat_relearn: bool,
    /// Accept a signalled peer's media from any source address (endpoints
    /// that send from another port than they receive on; weakens the
    /// protection against injected media).
    #[arg(long)]
    asymmetric: bool,
    /// The named interface the user's legs open on. [default: the default
    /// interface]
    #[arg(long, value_name = "NAME")]
    user_interface: Option<String>,
    /// The named interface the remote party's legs open on. [default: the
    /// default interface]
    #[arg(long, value_name = "NAME")]
    remote_interface: Option<String>,
    /// SRTP on the user leg per stream, in order: SUITE[:KEY] (or
    /// SUITE:@FILE, which keeps the key off the command line), KEY being the
    /// device's key and salt in base64 (or later with update --user-key);
    /// the relay's own key comes back in `user_key`.
    #[arg(long = "user-srtp", value_name = "SUITE[:KEY]")]
    user_srtp: Vec<String>,
    /// SRTP on the remote leg per stream, in order (as --user-srtp).
    #[arg(long = "remote-srtp", value_name = "SUITE[:KEY]")]
    remote_srtp: Vec<String>,
    #[command(flatten)]
    srtp: BodySrtpArgs,
    #[command(flatten)]
    sdp: SdpArgs,
    /// Who sent the --sdp body. [default: user]
    #[arg(long, value_enum, requires = "sdp")]
    sdp_from: Option<Party>,
}

#[derive(Debug, Args)]
struct UpdateArgs {
    #[command(flatten)]
    session: SessionArgs,
    /// Set the dialog's to tag.
    #[arg(long, value_name = "TAG")]
    set_to_tag: Option<String>,
    /// New device address, RTP[,RTCP]; repeat per stream, in order.
    #[arg(long = "user-peer", value_name = "IP:PORT")]
    user_peers: Vec<String>,
    /// New remote address, RTP[,RTCP]; repeat per stream, in order.
    #[arg(long = "remote-peer", value_name = "IP:PORT")]
    remote_peers: Vec<String>,
    /// Negotiated codecs per stream, in order (same syntax as create).
    #[arg(long = "stream", value_name = "SPEC")]
    streams: Vec<String>,
    /// Put every stream on hold, or take it off.
    #[arg(long, value_enum)]
    hold: Option<OnOff>,
    /// The device's SRTP key per stream, in order: SUITE:KEY (base64) or
    /// SUITE:@FILE.
    #[arg(long = "user-key", value_name = "SUITE:KEY")]
    user_keys: Vec<String>,
    /// The remote party's SRTP key per stream, in order: SUITE:KEY.
    #[arg(long = "remote-key", value_name = "SUITE:KEY")]
    remote_keys: Vec<String>,
    #[command(flatten)]
    srtp: BodySrtpArgs,
    #[command(flatten)]
    sdp: SdpArgs,
    /// Who sent the --sdp body. [default: remote]
    #[arg(long, value_enum, requires = "sdp")]
    sdp_from: Option<Party>,
}

/// Runs one `baton ctl` command; returns its exit status.
pub fn main(args: CtlArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start: {e}")),
    };
    runtime.block_on(run(args))
}

fn fail(message: &str) -> ExitCode {
    eprintln!("baton ctl: {message}");
    ExitCode::from(EXIT_UNREACHABLE)
}

async fn run(args: CtlArgs) -> ExitCode {
    let addr: ControlAddr = match args.control.parse() {
        Ok(addr) => addr,
        Err(e) => return fail(&e.to_string()),
    };
    let client = match Client::connect(&addr, args.token.as_deref()).await {
        Ok(client) => client.with_timeout(Duration::from_secs(args.timeout)),
        Err(e) => return report(e),
    };
    let sdp_out = match &args.command {
        CtlCommand::Create(CreateArgs { sdp, .. })
        | CtlCommand::Update(UpdateArgs { sdp, .. })
        | CtlCommand::Transfer(TransferArgs { sdp, .. }) => sdp.sdp_out.clone(),
        other @ (CtlCommand::Ping
        | CtlCommand::Stats
        | CtlCommand::Events(_)
        | CtlCommand::Audit
        | CtlCommand::Delete(_)
        | CtlCommand::Get(_)
        | CtlCommand::List
        | CtlCommand::Register(_)
        | CtlCommand::Unregister(_)
        | CtlCommand::Bindings(_)
        | CtlCommand::Commit(_)
        | CtlCommand::Cancel(_)
        | CtlCommand::Record(_)
        | CtlCommand::Top(_)
        | CtlCommand::Drain(_)
        | CtlCommand::Takeover) => {
            let _ = other;
            None
        }
    };
    if let CtlCommand::Top(top) = &args.command {
        if !(top.interval.is_finite() && top.interval >= 0.1) {
            return fail("--interval must be at least 0.1 seconds");
        }
        return match crate::ctl_top::run(&client, Duration::from_secs_f64(top.interval), top.once)
            .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => report(e),
        };
    }
    if let CtlCommand::Events(events) = &args.command {
        return print_events(&client, events.resume_after).await;
    }
    if let CtlCommand::Drain(drain) = &args.command
        && drain.wait
    {
        return drain_and_wait(&client, drain).await;
    }
    let command = match build_command(args.command) {
        Ok(Some(command)) => command,
        Ok(None) => return fail("events are handled before"),
        Err(message) => return fail(&message),
    };
    match client.call(command).await {
        Ok(reply) => {
            let json = reply_json(reply);
            let body = json.get("sdp").and_then(|v| v.as_str()).unwrap_or_default();
            match sdp_out.as_deref() {
                Some("-") => {
                    print!("{body}");
                    return ExitCode::SUCCESS;
                }
                Some(path) => {
                    if let Err(e) = std::fs::write(path, body) {
                        return fail(&format!("cannot write {path}: {e}"));
                    }
                }
                None => {}
            }
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => report(e),
    }
}

/// The request for a command; `None` for `events`, which subscribes.
fn build_command(command: CtlCommand) -> Result<Option<Command>, String> {
    Ok(Some(match command {
        CtlCommand::Ping => Command::Ping(v1::PingRequest {}),
        CtlCommand::Stats => Command::GetStats(v1::GetStatsRequest {}),
        CtlCommand::Audit => Command::Audit(v1::AuditRequest {}),
        CtlCommand::Events(_) => return Ok(None),
        CtlCommand::Create(create) => {
            if create.user_peers.len() > create.streams.len()
                || create.remote_peers.len() > create.streams.len()
            {
                return Err("more --user-peer/--remote-peer than --stream".to_owned());
            }
            let mut streams = Vec::new();
            for (index, text) in create.streams.iter().enumerate() {
                let (kind, codecs) = parse_stream(text)?;
                streams.push(v1::StreamSpec {
                    kind,
                    codecs,
                    rtcp_mux: create.rtcp_mux,
                    user_peer: create.user_peers.get(index).map(|p| parse_peer(p)),
                    remote_peer: create.remote_peers.get(index).map(|p| parse_peer(p)),
                    user_family: Family::proto(create.user_family),
                    remote_family: Family::proto(create.remote_family),
                    ptime_ms: 0,
                    user_srtp: create
                        .user_srtp
                        .get(index)
                        .map(|t| parse_leg_srtp(t))
                        .transpose()?,
                    remote_srtp: create
                        .remote_srtp
                        .get(index)
                        .map(|t| parse_leg_srtp(t))
                        .transpose()?,
                    udptl: false,
                });
            }
            // With a body, the family flag of the other party's legs applies.
            let other_family = match create.sdp_from {
                Some(Party::Remote) => create.user_family,
                Some(Party::User) | None => create.remote_family,
            };
            Command::CreateSession(v1::CreateSessionRequest {
                sdp: create.sdp.read()?,
                sdp_from: Party::proto(create.sdp_from),
                other_family: Family::proto(other_family),
                call_id: create.call_id,
                from_tag: create.from_tag,
                to_tag: create.to_tag,
                aor: create.aor,
                gruu: create.gruu,
                streams,
                nat_relearn: create.nat_relearn,
                asymmetric: create.asymmetric,
                other_transport: create.srtp.other_transport.clone().unwrap_or_default(),
                sdes: create.srtp.sdes(),
                webrtc: create.srtp.webrtc(),
                user_interface: create.user_interface.unwrap_or_default(),
                remote_interface: create.remote_interface.unwrap_or_default(),
            })
        }
        CtlCommand::Update(update) => {
            let hold = match update.hold {
                None => v1::Hold::Unchanged,
                Some(OnOff::On) => v1::Hold::On,
                Some(OnOff::Off) => v1::Hold::Off,
            };
            let count = update
                .user_peers
                .len()
                .max(update.remote_peers.len())
                .max(update.streams.len())
                .max(update.user_keys.len())
                .max(update.remote_keys.len())
                .max(usize::from(hold != v1::Hold::Unchanged));
            let mut streams = Vec::new();
            for index in 0..count {
                let codecs = match update.streams.get(index) {
                    Some(text) => parse_stream(text)?.1,
                    None => Vec::new(),
                };
                streams.push(v1::StreamUpdate {
                    index: index as u32,
                    user_peer: update.user_peers.get(index).map(|p| parse_peer(p)),
                    remote_peer: update.remote_peers.get(index).map(|p| parse_peer(p)),
                    codecs,
                    hold: hold as i32,
                    user_peer_key: update
                        .user_keys
                        .get(index)
                        .map(|t| parse_srtp_key(t))
                        .transpose()?,
                    remote_peer_key: update
                        .remote_keys
                        .get(index)
                        .map(|t| parse_srtp_key(t))
                        .transpose()?,
                });
            }
            Command::UpdateSession(v1::UpdateSessionRequest {
                sdp: update.sdp.read()?,
                sdp_from: Party::proto(update.sdp_from),
                session: Some(update.session.reference()),
                to_tag: update.set_to_tag.unwrap_or_default(),
                streams,
                other_transport: update.srtp.other_transport.clone().unwrap_or_default(),
                sdes: update.srtp.sdes(),
                webrtc: update.srtp.webrtc(),
            })
        }
        CtlCommand::Delete(session) => Command::DeleteSession(v1::DeleteSessionRequest {
            session: Some(session.reference()),
        }),
        CtlCommand::Get(session) => Command::GetSession(v1::GetSessionRequest {
            session: Some(session.reference()),
        }),
        CtlCommand::List => Command::ListSessions(v1::ListSessionsRequest {}),
        CtlCommand::Takeover => Command::Takeover(v1::TakeoverRequest {}),
        CtlCommand::Drain(drain) => Command::Drain(v1::DrainRequest {
            deadline_seconds: drain.deadline,
            cancel: drain.cancel,
            refuse_ng_ping: drain.refuse_ng_ping,
        }),
        CtlCommand::Register(register) => Command::RegisterDevice(v1::RegisterDeviceRequest {
            aor: register.aor,
            gruu: register.gruu,
            expires: register.expires,
            temporary: register.temporary,
        }),
        CtlCommand::Unregister(unregister) => {
            Command::UnregisterDevice(v1::UnregisterDeviceRequest {
                gruu: unregister.gruu,
            })
        }
        CtlCommand::Bindings(bindings) => {
            Command::ListBindings(v1::ListBindingsRequest { aor: bindings.aor })
        }
        CtlCommand::Transfer(transfer) => {
            let count = transfer
                .streams
                .len()
                .max(transfer.user_peers.len())
                .max(transfer.srtp.len());
            let mut streams = Vec::with_capacity(count);
            for index in 0..count {
                let codecs = match transfer.streams.get(index) {
                    Some(text) => parse_stream(text)?.1,
                    None => Vec::new(),
                };
                streams.push(v1::TransferStream {
                    codecs,
                    peer: transfer.user_peers.get(index).map(|p| parse_peer(p)),
                    family: v1::AddressFamily::Unspecified as i32,
                    rtcp_mux: None,
                    srtp: transfer
                        .srtp
                        .get(index)
                        .map(|t| parse_leg_srtp(t))
                        .transpose()?,
                });
            }
            Command::Transfer(v1::TransferRequest {
                sdp: transfer.sdp.read()?,
                session: transfer.session.map(|id| v1::SessionRef {
                    by: Some(v1::session_ref::By::Id(id)),
                }),
                replaces: transfer.replaces.unwrap_or_default(),
                source_ip: transfer.source_ip.unwrap_or_default(),
                gruu: transfer.gruu,
                streams,
                mode: match transfer.mode {
                    Mode::FirstPacket => v1::SwitchMode::FirstPacket as i32,
                    Mode::Commit => v1::SwitchMode::Commit as i32,
                },
                sdes: sdes_options(&transfer.sdes_only, &transfer.sdes_exclude),
                interface: transfer.interface.unwrap_or_default(),
            })
        }
        CtlCommand::Commit(open) => Command::CommitTransfer(v1::CommitTransferRequest {
            session: Some(open.session.reference()),
            transfer_id: open.transfer_id.unwrap_or(0),
        }),
        CtlCommand::Record(record) => Command::Record(v1::RecordRequest {
            session: Some(record.session.reference()),
            action: if record.stop {
                v1::RecordAction::RecordStop
            } else if record.pause {
                v1::RecordAction::RecordPause
            } else {
                v1::RecordAction::RecordStart
            } as i32,
        }),
        CtlCommand::Cancel(open) => Command::CancelTransfer(v1::CancelTransferRequest {
            session: Some(open.session.reference()),
            transfer_id: open.transfer_id.unwrap_or(0),
        }),
        CtlCommand::Top(_) => return Err("top is handled before".to_owned()),
    }))
}

/// The response message itself as JSON, without the envelope: serialize the
/// envelope (pbjson flattens the oneof) and keep the one field that is not
/// the id.
fn reply_json(reply: Reply) -> serde_json::Value {
    let envelope = v1::Response {
        id: 0,
        result: Some(reply),
    };
    match serde_json::to_value(&envelope) {
        Ok(serde_json::Value::Object(mut fields)) => {
            fields.remove("id");
            fields
                .into_iter()
                .next()
                .map_or(serde_json::Value::Null, |(_, value)| value)
        }
        Ok(other) => other,
        Err(e) => serde_json::json!({ "serialization_error": e.to_string() }),
    }
}

fn report(error: ClientError) -> ExitCode {
    match error {
        ClientError::Status(status) => {
            let code = v1::Code::try_from(status.code)
                .map(|c| c.as_str_name().to_owned())
                .unwrap_or_else(|_| status.code.to_string());
            eprintln!(
                "{}",
                serde_json::json!({ "code": code, "message": status.message })
            );
            ExitCode::from(EXIT_RELAY_ERROR)
        }
        ClientError::Disconnected(Some(status)) => {
            // The relay closed the connection with a reason (a wrong token,
            // the connection limit): that is the relay's answer.
            report(ClientError::Status(status))
        }
        other @ (ClientError::Connect { .. }
        | ClientError::Disconnected(None)
        | ClientError::Protocol(_)
        | ClientError::Timeout(_)) => fail(&other.to_string()),
    }
}

/// `drain --wait`: subscribes first (so the end cannot be missed), starts
/// the drain, prints its state, then waits for the relay's shutdown.
async fn drain_and_wait(client: &Client, drain: &DrainArgs) -> ExitCode {
    if let Err(e) = client.subscribe().await {
        return report(e);
    }
    let request = Command::Drain(v1::DrainRequest {
        deadline_seconds: drain.deadline,
        cancel: false,
        refuse_ng_ping: drain.refuse_ng_ping,
    });
    match client.call(request).await {
        Ok(reply) => println!("{}", reply_json(reply)),
        Err(e) => return report(e),
    }
    while let Some(event) = client.next_event().await {
        match event.kind {
            Some(v1::event::Kind::ShuttingDown(down)) => {
                println!("{}", serde_json::json!({ "shut_down": down.reason }));
                return ExitCode::SUCCESS;
            }
            Some(v1::event::Kind::Draining(state)) if !state.draining => {
                return fail("the drain was cancelled");
            }
            Some(_) | None => {}
        }
    }
    fail("the relay closed the connection before shutting down")
}

async fn print_events(client: &Client, resume_after: Option<u64>) -> ExitCode {
    let subscribed = match resume_after {
        Some(sequence) => client.resume_events(sequence).await,
        None => client.subscribe().await,
    };
    if let Err(e) = subscribed {
        return report(e);
    }
    let mut stdout = std::io::stdout().lock();
    let mut relay_shut_down = false;
    while let Some(event) = client.next_event().await {
        relay_shut_down |= matches!(event.kind, Some(v1::event::Kind::ShuttingDown(_)));
        let line = serde_json::to_string(&event).unwrap_or_default();
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // stdout closed (e.g. `| head`): a normal way to stop.
            return ExitCode::SUCCESS;
        }
    }
    if relay_shut_down {
        ExitCode::SUCCESS
    } else {
        fail("the relay closed the connection")
    }
}
