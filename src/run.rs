//! `baton run`: start the relay, serve until SIGINT or SIGTERM, shut down
//! cleanly.

use std::process::ExitCode;
use std::sync::Arc;

use baton_control::ControlServer;
use baton_control::ng::{NgAddr, NgListeners, NgService};
use baton_proto::v1;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, LogFormat, RunOptions};

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
    if let Err(message) = check_media_ips(&config).and_then(|()| check_control_sockets(&config)) {
        eprintln!("baton: {message}");
        return ExitCode::from(EXIT_CONFIG);
    }
    init_logging(config.log_format);
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
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

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

/// Every media IP must be an address of this host: a test bind now, before
/// the relay says it is ready, instead of every call failing later.
fn check_media_ips(config: &Config) -> Result<(), String> {
    for ip in &config.dataplane.media_ips {
        if let Err(e) = std::net::UdpSocket::bind(std::net::SocketAddr::new(*ip, 0)) {
            return Err(format!(
                "media-ip {ip} cannot be bound on this host ({e}): give one of this host's \
                 addresses (`ip -br addr` lists them), and the address callers reach with \
                 advertise-ip when the relay is behind NAT"
            ));
        }
    }
    Ok(())
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: escapes in a file or the journal are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Every media leg holds one or two sockets, so a busy relay needs far more
/// file descriptors than the usual soft limit of 1024. Raise the soft limit
/// to what the port range can use; as root (CAP_SYS_RESOURCE) raise the
/// hard limit too when it is lower; and say so when neither suffices.
fn raise_open_files_limit(config: &Config) {
    let (lo, hi) = config.dataplane.ports;
    let sockets = u64::from(hi - lo + 1) * config.dataplane.media_ips.len() as u64;
    // Control connections and the process's own files on top.
    let needed = sockets + config.control.max_connections as u64 + 64;
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

async fn serve(config: Config) -> anyhow::Result<()> {
    // Signals first: once a client can connect, a SIGTERM must mean a
    // clean shutdown, not the default death.
    let mut signals = ShutdownSignals::install()?;
    let service = baton_control::service::start(&config.dataplane, config.sessions)
        .map_err(|e| anyhow::anyhow!("cannot start the media workers: {e}"))?;
    let metrics = match config.metrics {
        Some(addr) => Some(
            baton_control::metrics_server::serve(addr, Arc::clone(&service))
                .await
                .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?,
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
    for addr in &config.listen_ng {
        let bound = ng
            .serve(*addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for ng on {addr}: {e}"))?;
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
    let server = ControlServer::bind(config.control, Arc::clone(&service)).await?;
    let addrs: Vec<String> = server
        .local_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    let media: Vec<String> = config
        .dataplane
        .media_ips
        .iter()
        .map(ToString::to_string)
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

    let reason = signals.wait().await;
    info!(signal = reason, "shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    service
        .events()
        .publish(v1::event::Kind::ShuttingDown(v1::ShuttingDown {
            reason: reason.to_owned(),
        }));
    // Every call's end, with its final statistics, is logged and
    // published before the subscribers' connections close.
    service.sessions().end_all().await;
    shutdown.cancel();
    server_task.await?;
    // Ends every session and joins the worker threads.
    tokio::task::block_in_place(|| service.sessions().dataplane().shutdown());
    info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT, caught from the start of `serve`; SIGHUP caught
/// too, so that it never kills the relay (and its calls) by its default
/// action.
struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The first signal that stops the relay; SIGHUP is logged and the
    /// relay goes on.
    async fn wait(&mut self) -> &'static str {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => return "SIGTERM",
                _ = self.interrupt.recv() => return "SIGINT",
                _ = self.hangup.recv() => warn!(
                    "SIGHUP: nothing is reloaded at run time; restart baton to apply configuration changes (the calls on it end)"
                ),
            }
        }
    }
}
