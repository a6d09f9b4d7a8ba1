//! `baton run` settings: command-line flags over an optional TOML file over
//! built-in defaults. Every flag `--some-name` is the key `some-name` in the
//! file, so one reference describes both.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use std::net::IpAddr;

use baton_control::ng::{NgAccess, NgAddr};
use baton_control::sessions::SessionOptions;
use baton_control::sip::sdp::SdpLimits;
use baton_control::{ControlAddr, ServerOptions};
use baton_relay::DataplaneConfig;
use baton_relay::core::session::Timeouts;
use baton_relay::io::dtls::DtlsIdentity;
use clap::{Args, ValueEnum};
use serde::Deserialize;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Flags of `baton run`; the same names are the keys of the config file.
/// Every field is optional so that file and flags can be layered.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RunOptions {
    /// TOML config file; flags given on the command line override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Control address, tcp:HOST:PORT or unix:PATH; repeat for several.
    /// [default: tcp:127.0.0.1:7120]
    #[arg(long, value_name = "ADDR")]
    #[serde(default)]
    pub control: Vec<String>,

    /// Shared secret that TCP control clients must present first; required
    /// for a control address that is not loopback.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "BATON_CONTROL_TOKEN",
        hide_env_values = true
    )]
    pub control_token: Option<String>,

    /// rtpengine ng protocol listener (Kamailio's and OpenSIPS's rtpengine
    /// module), udp:HOST:PORT or tcp:HOST:PORT; repeat for several. The
    /// protocol has no authentication: an address that is not loopback
    /// needs --ng-allow. [default: off]
    #[arg(long, value_name = "ADDR")]
    #[serde(default)]
    pub listen_ng: Vec<String>,

    /// Client network allowed to send ng requests, as CIDR (10.0.0.0/24) or
    /// one IP; repeat for several. Requests from elsewhere are dropped and
    /// counted. Required for an ng address that is not loopback.
    /// [default: loopback only]
    #[arg(long, value_name = "CIDR")]
    #[serde(default)]
    pub ng_allow: Vec<String>,

    /// Serve Prometheus metrics at http://HOST:PORT/metrics (loopback is
    /// typical). [default: off]
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<String>,

    /// Permission bits of control Unix sockets, in octal. [default: 0600]
    #[arg(long, value_name = "MODE")]
    pub control_socket_mode: Option<String>,

    /// Largest control frame accepted, in bytes. [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    pub max_frame_bytes: Option<usize>,

    /// Control connections open at once; more are refused. [default: 1024]
    #[arg(long, value_name = "N")]
    pub max_control_connections: Option<usize>,

    /// Log format on stderr. [default: text]
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Which log lines are written: error, warn, info, debug or trace, or
    /// directives such as info,baton_control=debug; rtpengine's syslog
    /// levels 0-7 are read too. RUST_LOG, when set, overrides it. SIGHUP
    /// applies a changed value. [default: info]
    #[arg(long, value_name = "FILTER")]
    #[serde(default, deserialize_with = "level_or_filter")]
    pub log_level: Option<String>,

    /// Seconds a drain (SIGUSR1, or baton ctl drain without a deadline of
    /// its own) waits for the calls to end before it ends the rest and the relay
    /// exits; 0 waits for every call. [default: 3600]
    #[arg(long, value_name = "SECONDS")]
    pub drain_timeout: Option<f64>,

    /// Local IP to bind media ports on; repeat for one IPv4 and one IPv6.
    /// [default: 127.0.0.1]
    #[arg(long, value_name = "IP")]
    #[serde(default)]
    pub media_ip: Vec<String>,

    /// A named interface, NAME/IP[!ADVERTISED] (rtpengine's form; IP alone
    /// is the interface `default`); repeat for more names, and for a
    /// name's IPv4 and IPv6 (one each). Calls pick them per leg with ng
    /// `direction` / `from-interface` / `to-interface`; a leg without one
    /// is on `default`, else on the first listed. Instead of media-ip.
    #[arg(long, value_name = "NAME/IP[!ADVERTISED]")]
    #[serde(default, deserialize_with = "one_or_many")]
    pub interface: Vec<String>,

    /// IP to announce for the media IP in the same position, when the relay
    /// is behind NAT. [default: the media IP]
    #[arg(long, value_name = "IP")]
    #[serde(default)]
    pub advertise_ip: Vec<String>,

    /// Relay port range, LO-HI. [default: 30000-39999]
    #[arg(long, value_name = "LO-HI")]
    pub ports: Option<String>,

    /// Media worker threads. [default: the number of cores]
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Seconds without RTP on any leg before a session is torn down; 0
    /// turns it off. [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub media_timeout: Option<f64>,

    /// Seconds a session that never saw RTP lives; 0 turns it off.
    /// [default: 180]
    #[arg(long, value_name = "SECONDS")]
    pub setup_timeout: Option<f64>,

    /// Seconds without RTP before a session whose streams are all on hold
    /// (SDP sendonly, recvonly, inactive) is torn down; replaces the media
    /// and setup timeouts while on hold; 0 turns it off. [default: 3600]
    #[arg(long, value_name = "SECONDS")]
    pub hold_timeout: Option<f64>,

    /// Seconds after a leg opens (or is updated) during which it learns its
    /// peer from the first packet, when no peer address was signalled.
    /// [default: 3]
    #[arg(long, value_name = "SECONDS")]
    pub learning_window: Option<f64>,

    /// Most sessions at once. [default: 20000]
    #[arg(long, value_name = "N")]
    pub max_sessions: Option<usize>,

    /// Seconds a transfer may stay open without a packet from the new
    /// device (or a commit) before it is rolled back. [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub transfer_timeout: Option<f64>,

    /// Media workers spin instead of sleeping: lower latency at the cost of
    /// one busy core per worker, whatever the load. [default: off]
    #[arg(long)]
    #[serde(default)]
    pub busy_poll: bool,

    /// Forward the RTP of established plain legs in the kernel (an eBPF
    /// program at TC ingress of the interfaces holding the relay
    /// addresses): far less CPU per packet. Needs CAP_BPF and
    /// CAP_NET_ADMIN; without them baton says so and forwards in user
    /// space. [default: off]
    #[arg(long)]
    #[serde(default)]
    pub kernel_forwarding: bool,

    /// Forward the RTP of steady plain stream directions the kernel does
    /// not take through lanes: a compact record beside the input socket
    /// that leaves the session's state untouched until something other
    /// than the source's next packet comes (less CPU per packet, so a
    /// shorter queue behind each stall; see BENCHMARKS.md). `false` sends
    /// every packet through its session. [default: true]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub user_fast_path: Option<bool>,

    /// PEM certificate the relay shows in DTLS-SRTP handshakes with WebRTC
    /// peers (ECDSA P-256 or P-384; its sha-256 fingerprint goes into the
    /// SDP). Needs --dtls-key. [default: a fresh self-signed certificate
    /// at each start, as browsers make their own]
    #[arg(long, value_name = "FILE")]
    pub dtls_certificate: Option<PathBuf>,

    /// PKCS#8 PEM private key of --dtls-certificate.
    #[arg(long, value_name = "FILE")]
    pub dtls_key: Option<PathBuf>,

    /// UNSAFE: accept transfers whose new device has neither a signalled
    /// media address nor a source IP; its leg then takes whoever sends
    /// first, so anyone who can reach the relay's ports can take the call.
    /// For lab set-ups only. [default: off]
    #[arg(long)]
    #[serde(default)]
    pub allow_unverified_transfer_source: bool,

    /// At a video handoff, hold the new device's VP8, VP9 and H.264 video
    /// until its first keyframe (at most 1 s), so the remote never decodes
    /// its frames against the old device's pictures; false passes it at
    /// once (the device is asked for a keyframe either way). [default: true]
    #[arg(long, value_name = "BOOL")]
    pub keyframe_wait: Option<bool>,

    /// Directory for call recordings (a pcap and a JSON file per recorded
    /// call); created if missing, and it must be writable. Without it,
    /// recording is off and requests to record are refused.
    #[arg(long, value_name = "DIR")]
    pub recording_dir: Option<PathBuf>,

    /// Record every call from its start (needs recording-dir).
    #[arg(long)]
    #[serde(default)]
    pub record_calls: bool,

    /// Also write each recorded G.711 stream as a WAV file per direction.
    #[arg(long)]
    #[serde(default)]
    pub recording_wav: bool,

    /// Largest SDP body accepted, in bytes. [default: 65536]
    #[arg(long, value_name = "BYTES")]
    pub sdp_max_bytes: Option<usize>,

    /// Most m= lines in an SDP body. [default: 32]
    #[arg(long, value_name = "N")]
    pub sdp_max_media: Option<usize>,

    /// Most formats (payload types) on one m= line. [default: 128]
    #[arg(long, value_name = "N")]
    pub sdp_max_formats: Option<usize>,

    /// Most a= lines in an SDP body. [default: 1000]
    #[arg(long, value_name = "N")]
    pub sdp_max_attributes: Option<usize>,

    /// High availability: the Redis the calls are written to, so that a
    /// standby (or this relay, restarted) goes on with them.
    /// redis://[USER:PASSWORD@]HOST[:PORT][/DB], rediss:// for TLS;
    /// rtpengine's [PASSWORD@]IP:PORT/DB is read too. [default: off]
    #[arg(long, value_name = "URL", env = "BATON_REDIS", hide_env_values = true)]
    pub redis: Option<String>,

    /// CA certificate (PEM) that verifies a rediss:// server, instead of
    /// the system's.
    #[arg(long, value_name = "FILE")]
    pub redis_tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS with Redis; needs
    /// --redis-tls-key.
    #[arg(long, value_name = "FILE")]
    pub redis_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --redis-tls-cert.
    #[arg(long, value_name = "FILE")]
    pub redis_tls_key: Option<PathBuf>,

    /// Prefix of the relay's keys in Redis: the same for an active and its
    /// standby, another for each further pair sharing the Redis.
    /// [default: baton]
    #[arg(long, value_name = "PREFIX")]
    pub redis_key_prefix: Option<String>,

    /// This relay's name in the heartbeat key. [default: the host name]
    #[arg(long, value_name = "NAME")]
    pub redis_instance: Option<String>,

    /// Start as the standby: hold the active's calls in memory without
    /// binding their ports, and take them over when its heartbeat expires
    /// (or on baton ctl takeover). [default: off]
    #[arg(long)]
    #[serde(default)]
    pub redis_standby: bool,

    /// Seconds between heartbeats (the active's refresh, the standby's
    /// look). [default: 0.2]
    #[arg(long, value_name = "SECONDS")]
    pub heartbeat_interval: Option<f64>,

    /// Seconds the heartbeat key lives without a refresh: how long a dead
    /// active goes unnoticed. At least twice the interval. [default: 1]
    #[arg(long, value_name = "SECONDS")]
    pub heartbeat_timeout: Option<f64>,

    /// Seconds between media snapshots of flowing calls. [default: 1]
    #[arg(long, value_name = "SECONDS")]
    pub snapshot_interval: Option<f64>,

    /// Seconds a call's keys live in Redis after their last write; live
    /// calls are refreshed, so this only bounds how long the calls of a
    /// relay nobody takes over stay. [default: the media timeout + 60]
    #[arg(long, value_name = "SECONDS")]
    pub redis_key_ttl: Option<f64>,
}

/// Everything `baton run` needs, defaults applied and values checked.
#[derive(Debug)]
pub struct Config {
    /// The control server's settings.
    pub control: ServerOptions,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log filter directives (RUST_LOG's syntax), from `log-level`.
    pub log_filter: String,
    /// The data plane's settings.
    pub dataplane: DataplaneConfig,
    /// Session settings.
    pub sessions: SessionOptions,
    /// rtpengine ng protocol listeners.
    pub listen_ng: Vec<NgAddr>,
    /// Who may send ng requests.
    pub ng_access: NgAccess,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// Where call recordings go; `None`: recording is off.
    pub recording_dir: Option<PathBuf>,
    /// Recorded G.711 streams are written as WAV files too.
    pub recording_wav: bool,
    /// High availability on Redis; `None`: off.
    pub ha: Option<baton_control::ha::HaOptions>,
}

impl RunOptions {
    /// Reads the config file (if any) and lays the flags over it; again
    /// at each reload.
    pub fn load(&self) -> anyhow::Result<Config> {
        let merged = match &self.config {
            Some(path) => Self::from_file(path)?.overlaid_with(self.clone()),
            None => self.clone(),
        };
        merged.resolve()
    }

    fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            // toml's message spans several lines with a caret; keep one.
            let message = e.message().to_owned();
            let at = e
                .span()
                .map(|span| {
                    let line = text[..span.start].lines().count().max(1);
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            // An rtpengine option: say what baton calls it.
            let hint = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
                .and_then(|key| {
                    RTPENGINE_OPTIONS
                        .iter()
                        .find(|(option, _)| *option == key)
                        .map(|(option, ours)| format!(" (rtpengine's {option}: {ours})"))
                })
                .unwrap_or_default();
            anyhow::anyhow!("config file {}{at}: {message}{hint}", path.display())
        })
    }

    /// `self` (from the file) with every value given in `flags` replaced.
    fn overlaid_with(self, flags: Self) -> Self {
        Self {
            config: flags.config,
            control: if flags.control.is_empty() {
                self.control
            } else {
                flags.control
            },
            control_token: flags.control_token.or(self.control_token),
            metrics: flags.metrics.or(self.metrics),
            listen_ng: if flags.listen_ng.is_empty() {
                self.listen_ng
            } else {
                flags.listen_ng
            },
            ng_allow: if flags.ng_allow.is_empty() {
                self.ng_allow
            } else {
                flags.ng_allow
            },
            allow_unverified_transfer_source: flags.allow_unverified_transfer_source
                || self.allow_unverified_transfer_source,
            keyframe_wait: flags.keyframe_wait.or(self.keyframe_wait),
            recording_dir: flags.recording_dir.or(self.recording_dir),
            record_calls: flags.record_calls || self.record_calls,
            recording_wav: flags.recording_wav || self.recording_wav,
            sdp_max_bytes: flags.sdp_max_bytes.or(self.sdp_max_bytes),
            sdp_max_media: flags.sdp_max_media.or(self.sdp_max_media),
            sdp_max_formats: flags.sdp_max_formats.or(self.sdp_max_formats),
            sdp_max_attributes: flags.sdp_max_attributes.or(self.sdp_max_attributes),
            redis: flags.redis.or(self.redis),
            redis_tls_ca: flags.redis_tls_ca.or(self.redis_tls_ca),
            redis_tls_cert: flags.redis_tls_cert.or(self.redis_tls_cert),
            redis_tls_key: flags.redis_tls_key.or(self.redis_tls_key),
            redis_key_prefix: flags.redis_key_prefix.or(self.redis_key_prefix),
            redis_instance: flags.redis_instance.or(self.redis_instance),
            redis_standby: flags.redis_standby || self.redis_standby,
            heartbeat_interval: flags.heartbeat_interval.or(self.heartbeat_interval),
            heartbeat_timeout: flags.heartbeat_timeout.or(self.heartbeat_timeout),
            snapshot_interval: flags.snapshot_interval.or(self.snapshot_interval),
            redis_key_ttl: flags.redis_key_ttl.or(self.redis_key_ttl),
            control_socket_mode: flags.control_socket_mode.or(self.control_socket_mode),
            max_frame_bytes: flags.max_frame_bytes.or(self.max_frame_bytes),
            max_control_connections: flags
                .max_control_connections
                .or(self.max_control_connections),
            log_format: flags.log_format.or(self.log_format),
            log_level: flags.log_level.or(self.log_level),
            drain_timeout: flags.drain_timeout.or(self.drain_timeout),
            media_ip: if flags.media_ip.is_empty() {
                self.media_ip
            } else {
                flags.media_ip
            },
            interface: if flags.interface.is_empty() {
                self.interface
            } else {
                flags.interface
            },
            advertise_ip: if flags.advertise_ip.is_empty() {
                self.advertise_ip
            } else {
                flags.advertise_ip
            },
            ports: flags.ports.or(self.ports),
            workers: flags.workers.or(self.workers),
            media_timeout: flags.media_timeout.or(self.media_timeout),
            setup_timeout: flags.setup_timeout.or(self.setup_timeout),
            hold_timeout: flags.hold_timeout.or(self.hold_timeout),
            learning_window: flags.learning_window.or(self.learning_window),
            max_sessions: flags.max_sessions.or(self.max_sessions),
            transfer_timeout: flags.transfer_timeout.or(self.transfer_timeout),
            busy_poll: flags.busy_poll || self.busy_poll,
            kernel_forwarding: flags.kernel_forwarding || self.kernel_forwarding,
            user_fast_path: flags.user_fast_path.or(self.user_fast_path),
            dtls_certificate: flags.dtls_certificate.or(self.dtls_certificate),
            dtls_key: flags.dtls_key.or(self.dtls_key),
        }
    }

    fn resolve(self) -> anyhow::Result<Config> {
        let (dataplane, sessions) = self.media()?;
        let ha = self.ha()?;
        let listen = if self.control.is_empty() {
            vec![baton_control::addr::DEFAULT_CONTROL_ADDR.to_owned()]
        } else {
            self.control
        };
        let listen = listen
            .iter()
            .map(|text| text.parse::<ControlAddr>())
            .collect::<Result<Vec<_>, _>>()?;
        let listen_ng = self
            .listen_ng
            .iter()
            .map(|text| text.parse::<NgAddr>().map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>, _>>()?;
        let ng_allow = self
            .ng_allow
            .iter()
            .map(|text| {
                text.parse::<ipnet::IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .with_context(|| {
                        format!("ng-allow {text:?} is not a CIDR (10.0.0.0/24) or an IP")
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if ng_allow.is_empty()
            && let Some(open) = listen_ng.iter().find(|addr| {
                let ip = match addr {
                    NgAddr::Udp(a) | NgAddr::Tcp(a) => a.ip(),
                };
                !ip.is_loopback()
            })
        {
            bail!(
                "ng address {open} is not loopback and the ng protocol has no authentication: \
                 give the proxies' networks with ng-allow (and firewall the port)"
            );
        }
        let metrics = self
            .metrics
            .as_deref()
            .map(|text| {
                text.parse::<std::net::SocketAddr>()
                    .with_context(|| format!("metrics address {text:?} is not HOST:PORT (an IP)"))
            })
            .transpose()?;
        let token = self.control_token.filter(|t| !t.is_empty());
        if let Some(token) = &token
            && token.len() < 16
        {
            bail!("control token is too short: use at least 16 characters");
        }
        let mode_text = self.control_socket_mode.as_deref().unwrap_or("0600");
        let socket_mode = u32::from_str_radix(mode_text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .with_context(|| {
                format!("control socket mode {mode_text:?} is not an octal mode like 0600")
            })?;
        let max_frame_len = self
            .max_frame_bytes
            .unwrap_or(baton_proto::frame::DEFAULT_MAX_FRAME_LEN);
        if !(1024..=64 << 20).contains(&max_frame_len) {
            bail!("max frame size {max_frame_len} is outside 1024..=67108864 bytes");
        }
        let max_connections = self.max_control_connections.unwrap_or(1024);
        if max_connections == 0 {
            bail!("max control connections must be at least 1");
        }
        Ok(Config {
            dataplane,
            sessions,
            control: ServerOptions {
                listen,
                token,
                socket_mode,
                max_frame_len,
                max_connections,
                write_stall_timeout: Duration::from_secs(10),
            },
            log_format: self.log_format.unwrap_or(LogFormat::Text),
            log_filter: log_filter(self.log_level.as_deref())?,
            listen_ng,
            ng_access: NgAccess::new(ng_allow),
            metrics,
            recording_dir: self.recording_dir.clone(),
            recording_wav: self.recording_wav,
            ha,
        })
    }

    /// `redis` and its companions, checked.
    fn ha(&self) -> anyhow::Result<Option<baton_control::ha::HaOptions>> {
        let Some(url) = self
            .redis
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        else {
            if self.redis_standby {
                bail!("redis-standby needs redis: the Redis the active writes its calls to");
            }
            return Ok(None);
        };
        let url = redis_url(url)?;
        let heartbeat = seconds(self.heartbeat_interval, 0.2, "heartbeat-interval")?;
        let heartbeat_timeout = seconds(self.heartbeat_timeout, 1.0, "heartbeat-timeout")?;
        if heartbeat_timeout < heartbeat * 2 {
            bail!(
                "heartbeat-timeout ({:.3} s) must be at least twice heartbeat-interval ({:.3} s): one late refresh must not look like a dead relay",
                heartbeat_timeout.as_secs_f64(),
                heartbeat.as_secs_f64()
            );
        }
        let snapshot_interval = seconds(self.snapshot_interval, 1.0, "snapshot-interval")?;
        if snapshot_interval > Duration::from_secs(60) {
            bail!(
                "snapshot-interval is at most 60 seconds (a takeover skips what may have been sent since)"
            );
        }
        let media = timeout(self.media_timeout, 60.0, "media-timeout")?;
        let default_ttl = if media == TIMEOUT_OFF {
            3600.0
        } else {
            media.as_secs_f64() + 60.0
        };
        let key_ttl = seconds(self.redis_key_ttl, default_ttl, "redis-key-ttl")?;
        if key_ttl < Duration::from_secs(10) {
            bail!("redis-key-ttl is at least 10 seconds");
        }
        let key_prefix = self
            .redis_key_prefix
            .clone()
            .unwrap_or_else(|| "baton".to_owned());
        if key_prefix.is_empty()
            || key_prefix.len() > 64
            || !key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.{}".contains(&b))
        {
            // No `:` (nor a glob character): one pair's keys must never
            // match another's pattern.
            bail!("redis-key-prefix {key_prefix:?}: 1 to 64 letters, digits, - _ . {{ }}");
        }
        let instance = match &self.redis_instance {
            Some(name) => name.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "baton".to_owned()),
        };
        if instance.is_empty() || instance.len() > 64 || instance.chars().any(char::is_whitespace) {
            bail!("redis-instance {instance:?}: 1 to 64 characters, no spaces");
        }
        let tls_client = match (&self.redis_tls_cert, &self.redis_tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                bail!("redis-tls-cert and redis-tls-key go together")
            }
        };
        Ok(Some(baton_control::ha::HaOptions {
            url,
            tls_ca: self.redis_tls_ca.clone(),
            tls_client,
            key_prefix,
            instance,
            standby: self.redis_standby,
            heartbeat,
            heartbeat_timeout,
            snapshot_interval,
            key_ttl,
        }))
    }
}

/// A Redis URL; rtpengine's `[PASSWORD@]IP:PORT/DB` becomes one.
fn redis_url(text: &str) -> anyhow::Result<String> {
    if text.len() > 1024 {
        bail!("redis URL longer than 1024 bytes");
    }
    let url = if text.contains("://") {
        text.to_owned()
    } else {
        match text.rsplit_once('@') {
            Some((password, rest)) => format!("redis://:{password}@{rest}"),
            None => format!("redis://{text}"),
        }
    };
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        bail!(
            "redis {}: give redis://HOST[:PORT][/DB] (rediss:// for TLS)",
            baton_control::ha::redacted(&url)
        );
    }
    Ok(url)
}

impl RunOptions {
    fn media(&self) -> anyhow::Result<(DataplaneConfig, SessionOptions)> {
        let (media_ips, interface_names, advertise) = self.interfaces()?;
        let ports_text = self.ports.as_deref().unwrap_or("30000-39999");
        let ports = ports_text
            .split_once('-')
            .and_then(|(lo, hi)| {
                Some((
                    lo.trim().parse::<u16>().ok()?,
                    hi.trim().parse::<u16>().ok()?,
                ))
            })
            .filter(|(lo, hi)| *lo >= 1024 && hi > lo && hi - lo >= 3)
            .with_context(|| {
                format!(
                    "port range {ports_text:?} is not LO-HI with 1024 <= LO < HI (at least 4 ports)"
                )
            })?;
        let workers = match self.workers {
            Some(0) => bail!("workers must be at least 1"),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        let media = timeout(self.media_timeout, 60.0, "media-timeout")?;
        let setup = timeout(self.setup_timeout, 180.0, "setup-timeout")?;
        let hold = timeout(self.hold_timeout, 3600.0, "hold-timeout")?;
        let learning_window = seconds(self.learning_window, 3.0, "learning-window")?;
        let transfer_timeout = seconds(self.transfer_timeout, 30.0, "transfer-timeout")?;
        let drain_timeout = match timeout(self.drain_timeout, 3600.0, "drain-timeout")? {
            TIMEOUT_OFF => None,
            deadline => Some(deadline),
        };
        let max_sessions = self.max_sessions.unwrap_or(20_000);
        if max_sessions == 0 {
            bail!("max sessions must be at least 1");
        }
        let dtls_identity = match (&self.dtls_certificate, &self.dtls_key) {
            (None, None) => None,
            (Some(certificate), Some(key)) => {
                let read = |path: &std::path::Path| {
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))
                };
                let identity = DtlsIdentity::from_pem(&read(certificate)?, &read(key)?)
                    .map_err(|e| anyhow::anyhow!("{e} ({})", certificate.display()))?;
                Some(std::sync::Arc::new(identity))
            }
            (Some(_), None) | (None, Some(_)) => {
                bail!("dtls-certificate and dtls-key go together")
            }
        };
        let defaults = SdpLimits::default();
        let sdp_limits = SdpLimits {
            max_bytes: self.sdp_max_bytes.unwrap_or(defaults.max_bytes),
            max_media: self.sdp_max_media.unwrap_or(defaults.max_media),
            max_formats: self.sdp_max_formats.unwrap_or(defaults.max_formats),
            max_attributes: self.sdp_max_attributes.unwrap_or(defaults.max_attributes),
        };
        if sdp_limits.max_bytes < 256 || sdp_limits.max_media == 0 || sdp_limits.max_formats == 0 {
            bail!(
                "SDP limits too small: sdp-max-bytes at least 256, sdp-max-media and sdp-max-formats at least 1"
            );
        }
        Ok((
            DataplaneConfig {
                workers,
                media_ips,
                interface_names,
                ports,
                timeouts: Timeouts { media, setup, hold },
                command_queue: 1024,
                busy_poll: self.busy_poll,
                dtls_identity,
                kernel_forwarding: self.kernel_forwarding,
                user_fast_path: self.user_fast_path.unwrap_or(true),
            },
            SessionOptions {
                learning_window,
                max_sessions,
                advertise,
                transfer_timeout,
                allow_unverified_transfer_source: self.allow_unverified_transfer_source,
                sdp_limits,
                drain_timeout,
                keyframe_wait: self.keyframe_wait.unwrap_or(true),
                record_calls: self.record_calls,
            },
        ))
    }
}

/// Most `interface` entries.
const MAX_INTERFACES: usize = 32;

/// Media IPs with their interface names and announced addresses.
type Interfaces = (Vec<IpAddr>, Vec<String>, Vec<(IpAddr, IpAddr)>);

impl RunOptions {
    /// The media IPs, their interface names and the addresses to announce
    /// for them: from `interface` (NAME/IP[!ADVERTISED], rtpengine's form,
    /// `;`-separated entries in one string as rtpengine's config file has
    /// them), or from `media-ip` and `advertise-ip` (the interface
    /// `default`).
    fn interfaces(&self) -> anyhow::Result<Interfaces> {
        let mut media_ips: Vec<IpAddr> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let mut advertise: Vec<(IpAddr, IpAddr)> = Vec::new();
        if self.interface.is_empty() {
            let media_texts = if self.media_ip.is_empty() {
                vec!["127.0.0.1".to_owned()]
            } else {
                self.media_ip.clone()
            };
            media_ips = parse_ips(&media_texts, "media IP")?;
            let advertise_ips = parse_ips(&self.advertise_ip, "advertise IP")?;
            if advertise_ips.len() > media_ips.len() {
                bail!("more advertise IPs than media IPs (they pair up by position)");
            }
            advertise = media_ips
                .iter()
                .copied()
                .zip(advertise_ips.iter().copied())
                .collect();
            names = vec![baton_relay::dataplane::DEFAULT_INTERFACE.to_owned(); media_ips.len()];
        } else {
            if !self.media_ip.is_empty() || !self.advertise_ip.is_empty() {
                bail!("give interface, or media-ip and advertise-ip, not both");
            }
            let entries: Vec<&str> = self
                .interface
                .iter()
                .flat_map(|entry| entry.split(';'))
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .collect();
            if entries.len() > MAX_INTERFACES {
                bail!("more than {MAX_INTERFACES} interface entries");
            }
            for entry in entries {
                let (name, address) = match entry.split_once('/') {
                    Some((name, address)) => (name, address),
                    None => (baton_relay::dataplane::DEFAULT_INTERFACE, entry),
                };
                let token = |t: &str| {
                    !t.is_empty()
                        && t.len() <= 32
                        && t.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                };
                if !token(name) {
                    bail!(
                        "interface {entry:?}: the name must be 1 to 32 letters, digits, '-', '_' or '.'"
                    );
                }
                let (ip, announced) = match address.split_once('!') {
                    Some((ip, announced)) => (ip, Some(announced)),
                    None => (address, None),
                };
                let ip: IpAddr = ip.parse().with_context(|| {
                    format!(
                        "interface {entry:?}: {ip:?} is not an IP address (NAME/IP[!ADVERTISED])"
                    )
                })?;
                if media_ips.contains(&ip) {
                    bail!("interface {entry:?}: {ip} is in more than one interface entry");
                }
                let same_family = media_ips
                    .iter()
                    .zip(&names)
                    .any(|(other, n)| n == name && other.is_ipv6() == ip.is_ipv6());
                if same_family {
                    bail!(
                        "interface {name} has more than one {} address (one IPv4 and one IPv6 per name)",
                        if ip.is_ipv6() { "IPv6" } else { "IPv4" }
                    );
                }
                if let Some(announced) = announced {
                    let announced: IpAddr = announced.parse().with_context(|| {
                        format!("interface {entry:?}: {announced:?} is not an IP address")
                    })?;
                    advertise.push((ip, announced));
                }
                media_ips.push(ip);
                names.push(name.to_owned());
            }
        }
        if media_ips
            .iter()
            .zip(&names)
            .enumerate()
            .any(|(i, (ip, name))| {
                media_ips[..i]
                    .iter()
                    .zip(&names[..i])
                    .any(|(other, n)| n == name && other.is_ipv6() == ip.is_ipv6())
            })
        {
            bail!("give at most one IPv4 and one IPv6 media IP");
        }
        let wildcard_beside_specific = media_ips.iter().any(|ip| {
            ip.is_unspecified()
                && media_ips
                    .iter()
                    .any(|other| !other.is_unspecified() && other.is_ipv6() == ip.is_ipv6())
        });
        if wildcard_beside_specific {
            bail!(
                "a wildcard media IP (0.0.0.0 or ::) beside a specific one of the same family: both would bind the same ports"
            );
        }
        for ip in &media_ips {
            if ip.is_unspecified() && !advertise.iter().any(|(bound, _)| bound == ip) {
                bail!(
                    "media IP {ip} is a wildcard: give the address to announce (--advertise-ip, or NAME/IP!ADVERTISED)"
                );
            }
        }
        Ok((media_ips, names, advertise))
    }
}

fn parse_ips(texts: &[String], what: &str) -> anyhow::Result<Vec<IpAddr>> {
    texts
        .iter()
        .map(|t| {
            t.parse::<IpAddr>()
                .with_context(|| format!("{what} {t:?} is not an IP address"))
        })
        .collect()
}

/// rtpengine's configuration options and what baton calls them (or why
/// it has none), for the error a config file copied from rtpengine gets.
/// docs/kamailio.md has the same table.
pub const RTPENGINE_OPTIONS: &[(&str, &str)] = &[
    ("port-min", "use ports = \"MIN-MAX\""),
    ("port-max", "use ports = \"MIN-MAX\""),
    ("num-threads", "use workers"),
    ("timeout", "use media-timeout (0: off)"),
    (
        "silent-timeout",
        "use hold-timeout (while every stream is on hold; 0: off)",
    ),
    (
        "final-timeout",
        "no equivalent: a call ends by delete or a timeout",
    ),
    (
        "delete-delay",
        "no equivalent: a deleted call's ports are freed at once",
    ),
    ("listen-cli", "use control (and baton ctl)"),
    (
        "listen-tcp",
        "no equivalent: use listen-ng with udp: or tcp:",
    ),
    (
        "redis-write",
        "no equivalent: the active writes to redis, a standby (redis-standby) reads it",
    ),
    (
        "redis-num-threads",
        "no equivalent: one writer batches into pipelines",
    ),
    ("tos", "no equivalent"),
];

/// `log-level` as a filter: a filter as given, or rtpengine's syslog level
/// (0-7) as the nearest one.
fn log_filter(value: Option<&str>) -> anyhow::Result<String> {
    let text = value.map_or("info", str::trim);
    let filter = match text.parse::<u8>() {
        Ok(0..=3) => "error",
        Ok(4) => "warn",
        Ok(5 | 6) => "info",
        Ok(7) => "debug",
        Ok(_) => bail!("log-level {text}: a syslog level is 0 to 7"),
        Err(_) => text,
    };
    // A bare word that is not a level reads as a target and would silently
    // turn every other line off ("warning", "notice" from other programs).
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    if let Some(word) = filter.split(',').map(str::trim).find(|d| {
        !d.is_empty() && !d.contains('=') && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d))
    }) {
        bail!(
            "log-level {text:?}: {word:?} is not a level; give off, error, warn, info, debug or trace, or TARGET=LEVEL"
        );
    }
    tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| {
        anyhow::anyhow!(
            "log-level {text:?} is not a log filter ({e}): give error, warn, info, debug or trace, or directives like info,baton_control=debug"
        )
    })?;
    Ok(filter.to_owned())
}

/// Reads `log-level` as a string or, as rtpengine writes it, a number.
fn level_or_filter<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    struct Level;
    impl serde::de::Visitor<'_> for Level {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a log filter such as \"info\", or a syslog level 0-7")
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            Ok(Some(text.to_owned()))
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
            Ok(Some(n.to_string()))
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Some(n.to_string()))
        }
    }
    deserializer.deserialize_any(Level)
}

/// A list of strings, or one string (rtpengine's config writes
/// `interface = internal/10.0.0.1;external/203.0.113.1`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct OneOrMany;
    impl<'de> serde::de::Visitor<'de> for OneOrMany {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            Ok(vec![text.to_owned()])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                out.push(item);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_any(OneOrMany)
}

/// A duration that must be there: more than 0 s, at most a day.
fn seconds(value: Option<f64>, default: f64, what: &str) -> anyhow::Result<Duration> {
    let value = value.unwrap_or(default);
    if !(value.is_finite() && value > 0.0 && value <= 86_400.0) {
        bail!("{what} = {value}: give a number of seconds more than 0 and at most 86400");
    }
    Ok(Duration::from_secs_f64(value))
}

/// How long "off" lasts for a session timeout: longer than any call, short
/// enough that adding it to a clock reading cannot overflow.
pub const TIMEOUT_OFF: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A session timeout: seconds up to a day, or 0 for off (as rtpengine's
/// timeouts and operators' habits have it).
fn timeout(value: Option<f64>, default: f64, what: &str) -> anyhow::Result<Duration> {
    match value {
        Some(0.0) => Ok(TIMEOUT_OFF),
        Some(value) if !(value.is_finite() && value > 0.0 && value <= 86_400.0) => {
            bail!("{what} = {value}: give a number of seconds from 1 to 86400, or 0 to turn it off")
        }
        value => seconds(value, default, what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> anyhow::Result<RunOptions> {
        toml::from_str(toml_text).map_err(Into::into)
    }

    #[test]
    fn a_session_timeout_of_0_is_off_and_other_durations_must_be_positive() -> anyhow::Result<()> {
        let config = parse("media-timeout = 0\nsetup-timeout = 0\nhold-timeout = 0\n")?.load()?;
        assert_eq!(config.dataplane.timeouts.media, TIMEOUT_OFF);
        assert_eq!(config.dataplane.timeouts.setup, TIMEOUT_OFF);
        assert_eq!(config.dataplane.timeouts.hold, TIMEOUT_OFF);
        let config = parse("media-timeout = 30\n")?.load()?;
        assert_eq!(config.dataplane.timeouts.media, Duration::from_secs(30));
        for (text, named) in [
            ("media-timeout = -1\n", "media-timeout = -1"),
            ("media-timeout = 90000\n", "or 0 to turn it off"),
            (
                "learning-window = 0\n",
                "learning-window = 0: give a number of seconds more than 0",
            ),
            ("transfer-timeout = 0\n", "transfer-timeout = 0"),
        ] {
            let refused = parse(text)?.load().expect_err(text).to_string();
            assert!(refused.contains(named), "{text}: {refused}");
        }
        Ok(())
    }

    /// Issue 24: `log-level` takes a filter, or rtpengine's syslog number;
    /// a bad one is refused naming the key; `drain-timeout = 0` means no
    /// deadline.
    #[test]
    fn log_level_reads_filters_and_syslog_levels() -> anyhow::Result<()> {
        assert_eq!(parse("")?.load()?.log_filter, "info");
        assert_eq!(parse("log-level = 7\n")?.load()?.log_filter, "debug");
        assert_eq!(parse("log-level = 3\n")?.load()?.log_filter, "error");
        assert_eq!(
            parse("log-level = \"warn,baton_control=debug\"\n")?
                .load()?
                .log_filter,
            "warn,baton_control=debug"
        );
        for bad in [
            "log-level = 9\n",
            "log-level = \"info,=[\"\n",
            "log-level = \"warning\"\n",
            "log-level = \"info,baton_control\"\n",
        ] {
            let refused = parse(bad)?.load().expect_err(bad).to_string();
            assert!(refused.contains("log-level"), "{bad}: {refused}");
        }
        assert_eq!(
            parse("drain-timeout = 0\n")?.load()?.sessions.drain_timeout,
            None
        );
        assert_eq!(
            parse("")?.load()?.sessions.drain_timeout,
            Some(Duration::from_secs(3600))
        );
        Ok(())
    }

    #[test]
    fn an_rtpengine_option_in_the_config_file_names_batons_key() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("baton.toml");
        for (line, expected) in [
            ("port-min = 30000\n", "ports = \"MIN-MAX\""),
            ("num-threads = 4\n", "use workers"),
            ("timeout = 60\n", "use media-timeout"),
        ] {
            std::fs::write(&path, line)?;
            let refused = RunOptions::from_file(&path).expect_err(line).to_string();
            assert!(refused.contains(expected), "{line}: {refused}");
        }
        Ok(())
    }

    #[test]
    fn interfaces_are_read_as_rtpengine_writes_them() -> anyhow::Result<()> {
        let config = parse(
            "interface = \"inside/10.0.0.1; outside/203.0.113.1!198.51.100.1;outside/2001:db8::1\"\n",
        )?
        .load()?;
        let ips: Vec<String> = config
            .dataplane
            .media_ips
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(ips, ["10.0.0.1", "203.0.113.1", "2001:db8::1"]);
        assert_eq!(
            config.dataplane.interface_names,
            ["inside", "outside", "outside"]
        );
        assert_eq!(
            config.sessions.advertise,
            [("203.0.113.1".parse()?, "198.51.100.1".parse()?)]
        );
        // A list works too, and an IP alone is the interface `default`.
        let config = parse("interface = [\"127.0.0.1\", \"lab/127.0.0.2\"]\n")?.load()?;
        assert_eq!(config.dataplane.interface_names, ["default", "lab"]);
        for (bad, why) in [
            (
                "interface = \"a/10.0.0.1;a/10.0.0.2\"",
                "more than one IPv4",
            ),
            (
                "interface = \"a/10.0.0.1;b/10.0.0.1\"",
                "more than one interface entry",
            ),
            ("interface = \"a b/10.0.0.1\"", "the name must be"),
            ("interface = \"a/ten\"", "not an IP address"),
            ("interface = \"a/10.0.0.1!x\"", "not an IP address"),
            ("interface = \"a/0.0.0.0\"", "wildcard"),
            (
                "interface = \"a/0.0.0.0!192.0.2.1;b/10.0.0.1\"",
                "beside a specific one",
            ),
            (
                "interface = \"a/10.0.0.1\"\nmedia-ip = [\"10.0.0.2\"]",
                "not both",
            ),
        ] {
            let error = parse(&format!("{bad}\n"))?
                .load()
                .expect_err(bad)
                .to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
        let many = (0..=MAX_INTERFACES)
            .map(|i| format!("n{i}/10.0.{}.{}", i / 250, i % 250 + 1))
            .collect::<Vec<_>>()
            .join(";");
        assert!(parse(&format!("interface = \"{many}\"\n"))?.load().is_err());
        Ok(())
    }

    #[test]
    fn defaults_are_local_only() -> anyhow::Result<()> {
        let config = RunOptions::default().load()?;
        assert_eq!(
            config.control.listen,
            vec![ControlAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 7120
            }]
        );
        assert_eq!(config.control.socket_mode, 0o600);
        assert!(config.control.token.is_none());
        Ok(())
    }

    #[test]
    fn flags_override_the_file() -> anyhow::Result<()> {
        let file = parse(
            r#"
            control = ["unix:/tmp/a.sock"]
            control-socket-mode = "0660"
            max-frame-bytes = 4096
            log-format = "json"
            "#,
        )?;
        let flags = RunOptions {
            control: vec!["tcp:127.0.0.1:1".into()],
            max_frame_bytes: Some(2048),
            ..RunOptions::default()
        };
        let config = file.overlaid_with(flags).resolve()?;
        assert_eq!(config.control.listen.len(), 1);
        assert_eq!(config.control.listen[0].to_string(), "tcp:127.0.0.1:1");
        assert_eq!(config.control.max_frame_len, 2048);
        assert_eq!(config.control.socket_mode, 0o660);
        assert_eq!(config.log_format, LogFormat::Json);
        Ok(())
    }

    #[test]
    fn lanes_are_on_unless_the_file_or_a_flag_turns_them_off() -> anyhow::Result<()> {
        let on = |file: &str, flag: Option<bool>| -> anyhow::Result<bool> {
            let flags = RunOptions {
                user_fast_path: flag,
                ..RunOptions::default()
            };
            Ok(parse(file)?
                .overlaid_with(flags)
                .resolve()?
                .dataplane
                .user_fast_path)
        };
        assert!(on("", None)?);
        assert!(!on("user-fast-path = false", None)?);
        assert!(on("user-fast-path = false", Some(true))?);
        assert!(!on("user-fast-path = true", Some(false))?);
        // On the command line: bare is true, as before it was the default.
        #[derive(clap::Parser)]
        struct Line {
            #[command(flatten)]
            options: RunOptions,
        }
        for (args, expected) in [
            (&["baton"][..], None),
            (&["baton", "--user-fast-path"], Some(true)),
            (&["baton", "--user-fast-path", "false"], Some(false)),
            (&["baton", "--user-fast-path=true"], Some(true)),
        ] {
            let line = <Line as clap::Parser>::try_parse_from(args)?;
            assert_eq!(line.options.user_fast_path, expected, "{args:?}");
        }
        assert!(
            <Line as clap::Parser>::try_parse_from(["baton", "--user-fast-path", "no"]).is_err()
        );
        Ok(())
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(parse("contrl = []").is_err());
        for bad in [
            RunOptions {
                control_socket_mode: Some("rw-------".into()),
                ..RunOptions::default()
            },
            RunOptions {
                control: vec!["tcp:nowhere".into()],
                ..RunOptions::default()
            },
            RunOptions {
                control_token: Some("short".into()),
                ..RunOptions::default()
            },
            RunOptions {
                max_frame_bytes: Some(10),
                ..RunOptions::default()
            },
        ] {
            assert!(bad.resolve().is_err());
        }
    }
}
