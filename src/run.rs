//! `baton run`: start the relay, serve until SIGINT or SIGTERM (or the end
//! of a drain), shut down cleanly; SIGHUP reloads the configuration,
//! SIGUSR1 starts a drain.

use std::process::ExitCode;
use std::sync::Arc;

use baton_control::ControlServer;
use baton_control::drain::DrainPlan;
use baton_control::ng::{NgAddr, NgListeners, NgService};
use baton_control::service::Service;
use baton_control::sessions::SessionOptions;
use baton_proto::v1;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat, RunOptions};

/// The log filter, replaced by a reload.
type LogFilter = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Exit status for configuration errors (as for usage errors).
const EXIT_CONFIG: u8 = 2;
/// Exit status for failures at start-up or while running.
const EXIT_FAILURE: u8 = 1;

/// Runs the daemon; returns its exit status.
pub fn main(options: RunOptions) -> ExitCode {
    let config = match options.load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("baton: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(message) = check_media_ips(&config)
        .and_then(|()| check_control_sockets(&config))
        .and_then(|()| check_recording_dir(&config))
    {
        eprintln!("baton: {message}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let log_filter = init_logging(config.log_format, &config.log_filter);
    if config.control.socket_mode & 0o002 != 0 {
        warn!(
            mode = %format!("{:04o}", config.control.socket_mode),
            "control-socket-mode lets every local user drive the relay (world-writable); use 0600, or 0660 with a group"
        );
    }
    raise_open_files_limit(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        // The control plane is light; the media workers have their own threads.
        .worker_threads(2)
        .thread_name("baton-control")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("baton: cannot start the control runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(serve(config, &options, &log_filter)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<ListenError>().is_some() => {
            error!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// A listener of the configuration that cannot listen: the configuration
/// can fix it (another address, another port), so it exits 2 like bad
/// configuration, naming the key, the address and the fix.
#[derive(Debug)]
struct ListenError(String);

impl ListenError {
    fn new(key: &str, addr: impl std::fmt::Display, error: &std::io::Error) -> Self {
        Self(format!(
            "{key} {addr}: cannot listen: {}",
            Self::hint(error, false)
        ))
    }

    /// The OS error and what usually fixes it (`unix`: for a Unix socket).
    fn hint(error: &std::io::Error, unix: bool) -> String {
        use std::io::ErrorKind;
        let kind = error.kind();
        let fix = if unix && kind == ErrorKind::PermissionDenied {
            "the relay's user may not create files in that directory; fix its owner or mode, or choose another path"
        } else if kind == ErrorKind::AddrInUse {
            "another program (or another baton) listens there; stop it or choose another port"
        } else if kind == ErrorKind::PermissionDenied {
            "ports below 1024 need CAP_NET_BIND_SERVICE; choose a port from 1024 up"
        } else if kind == ErrorKind::AddrNotAvailable {
            "not an address of this host (`ip -br addr` lists them)"
        } else {
            return error.to_string();
        };
        format!("{error}: {fix}")
    }
}

impl std::fmt::Display for ListenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ListenError {}

/// A Unix control socket's directory must exist (the relay does not make
/// it): refused as configuration, with the fix, instead of failing to bind.
fn check_control_sockets(config: &Config) -> Result<(), String> {
    for addr in &config.control.listen {
        let baton_control::addr::ControlAddr::Unix(path) = addr else {
            continue;
        };
        let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
            continue;
        };
        if !dir.is_dir() {
            return Err(format!(
                "control {addr}: the directory {} does not exist; create it, or choose another \
                 path (under systemd the unit's RuntimeDirectory=baton creates /run/baton)",
                dir.display()
            ));
        }
    }
    Ok(())
}

/// The recording directory exists (or is made) and takes a file.
fn check_recording_dir(config: &Config) -> Result<(), String> {
    let Some(dir) = &config.recording_dir else {
        if config.sessions.record_calls {
            return Err(
                "record-calls needs recording-dir: where to write the recordings".to_owned(),
            );
        }
        return Ok(());
    };
    baton_control::recording::check_dir(dir).map_err(|e| {
            format!(
                "recording-dir {} cannot be written ({e}): give a directory the relay's user may create files in",
                dir.display()
            )
        })
}

/// Every media IP must be an address of this host: a test bind now, before
/// the relay says it is ready, instead of every call failing later.
fn check_media_ips(config: &Config) -> Result<(), String> {
    for (index, ip) in config.dataplane.media_ips.iter().enumerate() {
        if let Err(e) = std::net::UdpSocket::bind(std::net::SocketAddr::new(*ip, 0)) {
            let named = config
                .dataplane
                .interface_names
                .get(index)
                .filter(|name| *name != baton_relay::dataplane::DEFAULT_INTERFACE);
            return Err(match named {
                Some(name) => format!(
                    "interface {name}/{ip}: {ip} cannot be bound on this host ({e}): give one of \
                     this host's addresses (`ip -br addr` lists them), and the address callers \
                     reach as NAME/IP!ADVERTISED when the relay is behind NAT"
                ),
                None => format!(
                    "media-ip {ip} cannot be bound on this host ({e}): give one of this host's \
                     addresses (`ip -br addr` lists them), and the address callers reach with \
                     advertise-ip when the relay is behind NAT"
                ),
            });
        }
    }
    Ok(())
}

/// The filter from `log-level`, unless RUST_LOG is set (it wins, at start
/// and at reloads).
fn log_filter(configured: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(configured))
}

fn init_logging(format: LogFormat, configured: &str) -> LogFilter {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(log_filter(configured));
    // Colour only on a terminal: escapes in a file or the journal are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(lines).init(),
        LogFormat::Json => registry.with(lines.json().flatten_event(true)).init(),
    }
    handle
}

/// Every media leg holds one or two sockets, so a busy relay needs far more
/// file descriptors than the usual soft limit of 1024. Raise the soft limit
/// to what the port range can use; as root (CAP_SYS_RESOURCE) raise the
/// hard limit too when it is lower; and say so when neither suffices.
fn raise_open_files_limit(config: &Config) {
    let (lo, hi) = config.dataplane.ports;
    let sockets = u64::from(hi - lo + 1) * config.dataplane.media_ips.len() as u64;
    // A lane (the worker's fast path for a steady direction) holds a
    // duplicate of its output RTP socket: at most one per port pair.
    let lanes = sockets / 2;
    // Control connections and the process's own files on top.
    let needed = sockets + lanes + config.control.max_connections as u64 + 64;
    let hard = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(_, hard)| hard);
    if hard < needed && rlimit::setrlimit(rlimit::Resource::NOFILE, needed, needed).is_ok() {
        info!(limit = needed, "open files limit (hard limit raised)");
        return;
    }
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < needed => warn!(
            limit,
            needed,
            "open files limit is below what the port range can use; sessions will fail with RESOURCE_EXHAUSTED before the ports run out"
        ),
        Ok(limit) => info!(limit, "open files limit"),
        Err(e) => warn!("cannot raise the open files limit: {e}"),
    }
}

async fn serve(config: Config, options: &RunOptions, log: &LogFilter) -> anyhow::Result<()> {
    // Signals first: once a client can connect, a SIGTERM must mean a
    // clean shutdown, not the default death.
    let mut signals = ShutdownSignals::install()?;
    let service = baton_control::service::start(&config.dataplane, config.sessions.clone())
        .map_err(|e| anyhow::anyhow!("cannot start the media workers: {e}"))?;
    if let Some(dir) = &config.recording_dir {
        let recordings = baton_control::recording::Recordings::start(dir, config.recording_wav)
            .map_err(|e| anyhow::anyhow!("cannot start recording into {}: {e}", dir.display()))?;
        service.sessions().set_recordings(Arc::new(recordings));
    }
    if let Some(options) = &config.ha {
        let ha = baton_control::ha::Ha::new(options.clone(), Arc::clone(&service))?;
        service.set_ha(Arc::clone(&ha));
        ha.start();
        info!(
            redis = %baton_control::ha::redacted(&options.url),
            instance = %options.instance,
            standby = options.standby,
            "high availability: calls are kept in Redis"
        );
    }
    let metrics = match config.metrics {
        Some(addr) => Some(
            baton_control::metrics_server::serve(addr, Arc::clone(&service))
                .await
                .map_err(|e| ListenError::new("metrics", addr, &e))?,
        ),
        None => None,
    };
    if let Some(addr) = metrics
        && !addr.ip().is_loopback()
    {
        warn!(listen = %addr, "the metrics endpoint has no authentication: firewall this address");
    }
    let ng = NgListeners::new(
        NgService::new(Arc::clone(&service)),
        config.ng_access.clone(),
    );
    let mut ng_addrs = Vec::new();
    // A standby opens its ng listeners once it serves: until then a proxy
    // finds nothing there (its relay set skips it), and on a shared
    // (floating) ng address the active holds them.
    let standby = service
        .ha()
        .filter(|_| config.ha.as_ref().is_some_and(|o| o.standby))
        .cloned();
    let deferred = standby.is_some() && !config.listen_ng.is_empty();
    if let Some(ha) = standby.filter(|_| deferred) {
        let (ng, addrs) = (ng.clone(), config.listen_ng.clone());
        tokio::spawn(async move {
            while !ha.serves() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            for addr in addrs {
                match ng.serve(addr).await {
                    Ok(bound) => info!(listen = %bound, "ng listener open: this relay serves now"),
                    Err(e) => {
                        error!(listen = %addr, "ng listener cannot open after the takeover: {e}")
                    }
                }
            }
        });
        ng_addrs.push("(once active)".to_owned());
    }
    for addr in config.listen_ng.iter().filter(|_| !deferred) {
        let bound = ng
            .serve(*addr)
            .await
            .map_err(|e| ListenError::new("listen-ng", addr, &e))?;
        let shown = match addr {
            NgAddr::Udp(_) => NgAddr::Udp(bound),
            NgAddr::Tcp(_) => NgAddr::Tcp(bound),
        };
        if !bound.ip().is_loopback() {
            warn!(listen = %shown, "the ng protocol has no authentication: requests only from ng-allow are served; firewall this address too");
        }
        ng_addrs.push(shown.to_string());
    }
    // The control listener last: a client that reaches it (tests, scripts
    // waiting for the socket) finds every other listener bound already.
    let server = ControlServer::bind(config.control.clone(), Arc::clone(&service))
        .await
        .map_err(|e| {
            let unix = matches!(
                &e,
                baton_control::server::BindError::Bind {
                    addr: baton_control::ControlAddr::Unix(_),
                    ..
                }
            );
            let cause = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .map(|io| format!(": {}", ListenError::hint(io, unix)))
                .unwrap_or_default();
            ListenError(format!("control: {e}{cause}"))
        })?;
    let addrs: Vec<String> = server
        .local_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    let media: Vec<String> = config
        .dataplane
        .media_ips
        .iter()
        .enumerate()
        .map(|(i, ip)| match config.dataplane.interface_names.get(i) {
            Some(name) if name != baton_relay::dataplane::DEFAULT_INTERFACE => {
                format!("{name}/{ip}")
            }
            Some(_) | None => ip.to_string(),
        })
        .collect();
    // Values printed as values (an operator greps for them), not as Rust
    // debug forms.
    let (lo, hi) = config.dataplane.ports;
    info!(
        version = baton_control::VERSION,
        control = %addrs.join(","),
        ng = %if ng_addrs.is_empty() { "off".to_owned() } else { ng_addrs.join(",") },
        metrics = %metrics.map_or_else(|| "off".to_owned(), |addr| addr.to_string()),
        media = %media.join(","),
        ports = %format!("{lo}-{hi}"),
        workers = config.dataplane.workers,
        "baton ready"
    );
    // systemd (Type=notify): ready once every listener accepts. Without
    // NOTIFY_SOCKET this does nothing.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        warn!("cannot notify systemd: {e}");
    }

    let shutdown = CancellationToken::new();
    let server_task = tokio::spawn(server.run(shutdown.clone()));

    let mut running = config;
    let (reason, end_reason) =
        serve_until_stopped(&mut signals, &service, &ng, options, &mut running, log).await;
    info!(reason = %reason, "shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    service
        .events()
        .publish(v1::event::Kind::ShuttingDown(v1::ShuttingDown {
            reason: reason.to_owned(),
        }));
    match service.ha() {
        // The calls stay in Redis for the relay that goes on with them (a
        // standby, or this one restarted): they are not ended, only let go.
        Some(ha) if ha.serves() && end_reason == "shutdown" => {
            ha.stop().await;
            info!(
                sessions = service.sessions().session_count(),
                "calls left in Redis for the next relay"
            );
        }
        // Every call's end, with its final statistics, is logged and
        // published before the subscribers' connections close.
        Some(_) | None => {
            service.sessions().end_all(end_reason).await;
            // Their deletion reaches Redis before the heartbeat key goes:
            // a standby must not take over calls a drain ended.
            if let Some(ha) = service.ha() {
                ha.stop().await;
            }
        }
    }
    if let Some(recordings) = service.sessions().recordings() {
        // Their last copies and metadata reach the disk before the exit.
        let recordings = Arc::clone(recordings);
        let _ = tokio::task::spawn_blocking(move || recordings.shutdown()).await;
    }
    shutdown.cancel();
    server_task.await?;
    // Ends every session and joins the worker threads.
    tokio::task::block_in_place(|| service.sessions().dataplane().shutdown());
    info!("stopped");
    Ok(())
}

/// Serves until a signal stops the relay or a drain ends; reloads and
/// drains on their signals on the way. Returns why the relay stops and the
/// end reason of the sessions still open.
async fn serve_until_stopped(
    signals: &mut ShutdownSignals,
    service: &Service,
    ng: &NgListeners,
    options: &RunOptions,
    running: &mut Config,
    log: &LogFilter,
) -> (&'static str, &'static str) {
    let sessions = service.sessions();
    let mut drain_changes = sessions.drain().watch();
    // How soon a drain notices its last call ended or its deadline came.
    let mut check = tokio::time::interval(std::time::Duration::from_millis(250));
    let mut last_status = None;
    loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Signal::Stop(name) => {
                    // New sessions are refused from here on (ng: `load
                    // limit`, so the proxy goes to another relay) while
                    // the open ones are ended.
                    sessions.drain().set(Some(DrainPlan::new(None, false)));
                    return (name, "shutdown");
                }
                Signal::Reload => reload(options, running, service, ng, log).await,
                // A drain under way keeps its own plan (its deadline, its
                // pings).
                Signal::Drain if sessions.drain().is_draining() => {
                    info!("SIGUSR1: already draining");
                }
                Signal::Drain => {
                    sessions.set_drain(Some(DrainPlan::new(
                        sessions.options().drain_timeout,
                        false,
                    )));
                }
            },
            _ = drain_changes.changed() => {}
            _ = check.tick() => {}
        }
        let Some(plan) = sessions.drain().plan() else {
            if last_status.take().is_some() {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Status("serving")]);
            }
            continue;
        };
        let left = sessions.session_count();
        if left == 0 {
            return ("drained", "shutdown");
        }
        if plan
            .deadline
            .is_some_and(|at| std::time::Instant::now() >= at)
        {
            warn!(
                sessions = left,
                "drain deadline: the calls still open are ended"
            );
            return ("drain deadline", "drain_deadline");
        }
        if last_status != Some(left) {
            last_status = Some(left);
            let status = format!("draining: {left} sessions left");
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
        }
    }
}

/// Reads the configuration again and applies what can change while calls
/// run: `log-level`; the session timeouts (`media-timeout`,
/// `setup-timeout`, `hold-timeout`, live sessions included);
/// `max-sessions`, `learning-window`, `transfer-timeout`,
/// `allow-unverified-transfer-source`, the SDP limits and `drain-timeout`
/// (for what comes next); `ng-allow`. Anything else that changed is named
/// in a warning: it needs a restart. A file that does not load changes
/// nothing.
async fn reload(
    options: &RunOptions,
    running: &mut Config,
    service: &Service,
    ng: &NgListeners,
    log: &LogFilter,
) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
    let new = match options.load() {
        Ok(new) => new,
        Err(e) => {
            error!("SIGHUP: configuration not reloaded, the running one is kept: {e:#}");
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            return;
        }
    };
    let mut applied: Vec<&str> = Vec::new();
    if new.log_filter != running.log_filter {
        if std::env::var_os("RUST_LOG").is_some() {
            warn!("log-level changed, but RUST_LOG is set and wins; unset it to use log-level");
        } else if let Err(e) = log.reload(log_filter(&new.log_filter)) {
            warn!("cannot apply log-level: {e}");
        } else {
            applied.push("log-level");
        }
    }
    let sessions = service.sessions();
    if new.dataplane.timeouts != running.dataplane.timeouts {
        match sessions
            .dataplane()
            .set_timeouts(new.dataplane.timeouts)
            .await
        {
            Ok(()) => {
                applied.push("timeouts");
                running.dataplane.timeouts = new.dataplane.timeouts;
            }
            // Not recorded as in force: the next reload tries again.
            Err(e) => warn!("session timeouts not applied on every worker (reload again): {e}"),
        }
    }
    let (old, next) = (&running.sessions, &new.sessions);
    for (key, changed) in [
        ("max-sessions", old.max_sessions != next.max_sessions),
        (
            "learning-window",
            old.learning_window != next.learning_window,
        ),
        (
            "transfer-timeout",
            old.transfer_timeout != next.transfer_timeout,
        ),
        (
            "allow-unverified-transfer-source",
            old.allow_unverified_transfer_source != next.allow_unverified_transfer_source,
        ),
        ("sdp limits", old.sdp_limits != next.sdp_limits),
        ("drain-timeout", old.drain_timeout != next.drain_timeout),
        ("keyframe-wait", old.keyframe_wait != next.keyframe_wait),
    ] {
        if changed {
            applied.push(key);
        }
    }
    if old.record_calls != next.record_calls {
        // Recordings are written by the recorder that recording-dir starts
        // with the relay; without one, record-calls would do nothing.
        if next.record_calls && running.recording_dir.is_none() {
            warn!(
                key = %"record-calls",
                "record-calls needs recording-dir, which takes effect at the next restart: no call is recorded until then"
            );
        } else {
            applied.push("record-calls");
        }
    }
    sessions.reload_options(new.sessions.clone());
    if new.ng_access != running.ng_access {
        ng.set_access(new.ng_access.clone());
        applied.push("ng-allow");
    }
    for key in needs_restart(running, &new) {
        warn!(
            key = %key,
            "changed in the configuration: it takes effect at the next restart (the calls on the relay end then)"
        );
    }
    info!(
        applied = %if applied.is_empty() { "nothing changed".to_owned() } else { applied.join(",") },
        "configuration reloaded"
    );
    // What needs a restart keeps its running value, so that the next
    // reload compares against what is in force.
    running.log_filter = new.log_filter;
    let advertise = std::mem::take(&mut running.sessions.advertise);
    running.sessions = SessionOptions {
        advertise,
        ..new.sessions
    };
    running.ng_access = new.ng_access;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
}

/// The keys whose change only a restart applies.
fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&running.dataplane, &new.dataplane);
    let fingerprint = |d: &baton_relay::DataplaneConfig| {
        d.dtls_identity
            .as_ref()
            .map(|identity| identity.fingerprint().to_string())
    };
    [
        ("control", running.control.listen != new.control.listen),
        ("control-token", running.control.token != new.control.token),
        (
            "control-socket-mode",
            running.control.socket_mode != new.control.socket_mode,
        ),
        (
            "max-frame-bytes",
            running.control.max_frame_len != new.control.max_frame_len,
        ),
        (
            "max-control-connections",
            running.control.max_connections != new.control.max_connections,
        ),
        ("log-format", running.log_format != new.log_format),
        ("listen-ng", running.listen_ng != new.listen_ng),
        ("metrics", running.metrics != new.metrics),
        ("media-ip", a.media_ips != b.media_ips),
        ("recording-dir", running.recording_dir != new.recording_dir),
        ("recording-wav", running.recording_wav != new.recording_wav),
        ("interface", a.interface_names != b.interface_names),
        (
            "advertise-ip",
            running.sessions.advertise != new.sessions.advertise,
        ),
        ("ports", a.ports != b.ports),
        ("workers", a.workers != b.workers),
        ("busy-poll", a.busy_poll != b.busy_poll),
        (
            "kernel-forwarding",
            a.kernel_forwarding != b.kernel_forwarding,
        ),
        ("user-fast-path", a.user_fast_path != b.user_fast_path),
        ("dtls-certificate", fingerprint(a) != fingerprint(b)),
        (
            "redis",
            format!("{:?}", running.ha) != format!("{:?}", new.ha),
        ),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// What a caught signal asks for.
enum Signal {
    /// Stop now (SIGTERM, SIGINT).
    Stop(&'static str),
    /// Reload the configuration (SIGHUP).
    Reload,
    /// Start a drain with the configured deadline (SIGUSR1).
    Drain,
}

/// SIGTERM and SIGINT, caught from the start of `serve`, and SIGHUP and
/// SIGUSR1, caught so that their default action (death) never ends the
/// relay's calls.
struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    drain: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
            drain: signal(SignalKind::user_defined1())?,
        })
    }

    /// The next signal.
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.terminate.recv() => Signal::Stop("SIGTERM"),
            _ = self.interrupt.recv() => Signal::Stop("SIGINT"),
            _ = self.hangup.recv() => Signal::Reload,
            _ = self.drain.recv() => Signal::Drain,
        }
    }
}
