//! The control server: listeners on TCP and Unix sockets, one task per
//! connection, framed protobuf requests answered by id, event subscriptions.
//!
//! Isolation between clients is the point of most of this file: every
//! connection has its own bounded outbound queue, a cap on requests in
//! flight, and a writer that gives up on a peer that stops reading, so a slow,
//! broken or hostile client only ever hurts itself.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baton_proto::frame::{FrameCodec, FrameError};
use baton_proto::v1::{self, Code, request::Command, server_message::Kind};
use bytes::BytesMut;
use futures_util::StreamExt;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::addr::ControlAddr;
use crate::events::{Subscription, lagged};
use crate::service::Service;

/// Responses and events queued for one connection before the request reader
/// waits for the writer (back-pressure on that client alone).
const OUTBOUND_QUEUE: usize = 256;
/// Requests of one connection executing at once; more wait, unread, in the
/// socket buffer.
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 128;
/// Bytes of queued messages written with one syscall.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// How long to wait for connections to flush and close on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// A client of a listener with a token that has not authenticated by then
/// is closed, so unauthenticated connections cannot hold slots.
pub const AUTH_DEADLINE: Duration = Duration::from_secs(5);
/// The largest frame a client may send before it has authenticated: an
/// Authenticate request with a token of a few hundred bytes fits easily.
pub const PRE_AUTH_MAX_FRAME_LEN: usize = 4096;
/// Connections only Unix-socket clients may use, beyond the shared limit:
/// TCP clients filling every slot cannot lock the local proxy out.
pub const UNIX_RESERVED_CONNECTIONS: usize = 64;

/// How the control server is set up.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Addresses to listen on.
    pub listen: Vec<ControlAddr>,
    /// Shared token; when set, every TCP client must present it first.
    pub token: Option<String>,
    /// Permission bits of Unix sockets (e.g. 0o600).
    pub socket_mode: u32,
    /// Largest frame accepted or sent.
    pub max_frame_len: usize,
    /// Control connections open at once; more are refused.
    pub max_connections: usize,
    /// A client that has not read a pending response for this long is
    /// disconnected.
    pub write_stall_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            token: None,
            socket_mode: 0o600,
            max_frame_len: baton_proto::frame::DEFAULT_MAX_FRAME_LEN,
            max_connections: 1024,
            write_stall_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the control server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A TCP address that is not loopback, with no token configured.
    #[error(
        "control address {0} is not loopback: set a control token (--control-token) to expose it"
    )]
    NotLoopbackWithoutToken(ControlAddr),
    /// The host name did not resolve.
    #[error("cannot resolve control address {addr}")]
    Resolve {
        /// The address.
        addr: ControlAddr,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// Another process is serving on the Unix socket.
    #[error("{0} is in use by a running process (another baton?); not taking it over")]
    SocketInUse(PathBuf),
    /// The Unix socket path exists and is something else.
    #[error("{0} exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    /// Binding failed (the OS error is the source: printed once, after
    /// this, by whoever prints the chain).
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: ControlAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// No address to listen on.
    #[error("no control address configured")]
    NoAddress,
}

enum Listener {
    Tcp {
        listener: TcpListener,
        needs_token: bool,
    },
    Unix {
        listener: UnixListener,
        path: PathBuf,
        /// (device, inode) of the socket file we created, so shutdown only
        /// removes our own file, never one a later process put there.
        identity: (u64, u64),
    },
}

struct Shared {
    service: Arc<Service>,
    options: ServerOptions,
    /// Every client's (`max_connections`).
    connection_slots: Arc<Semaphore>,
    /// Unix-socket clients' only, taken when the shared ones are gone.
    unix_slots: Arc<Semaphore>,
    /// SHA-256 of the token, compared instead of the token itself (see
    /// [`token_matches`]).
    token_digest: Option<[u8; 32]>,
}

/// A bound control server, ready to run.
pub struct ControlServer {
    listeners: Vec<Listener>,
    shared: Arc<Shared>,
}

impl ControlServer {
    /// Binds every configured address, or fails without leaving any bound.
    pub async fn bind(options: ServerOptions, service: Arc<Service>) -> Result<Self, BindError> {
        if options.listen.is_empty() {
            return Err(BindError::NoAddress);
        }
        let mut listeners = Vec::new();
        for addr in &options.listen {
            match addr {
                ControlAddr::Tcp { .. } => {
                    for listener in bind_tcp(addr, options.token.is_some()).await? {
                        listeners.push(Listener::Tcp {
                            listener,
                            needs_token: options.token.is_some(),
                        });
                    }
                }
                ControlAddr::Unix(path) => {
                    listeners.push(bind_unix(addr, path, options.socket_mode)?);
                }
            }
        }
        let connection_slots = Arc::new(Semaphore::new(options.max_connections));
        let unix_slots = Arc::new(Semaphore::new(UNIX_RESERVED_CONNECTIONS));
        let token_digest = options.token.as_deref().map(digest);
        Ok(Self {
            listeners,
            shared: Arc::new(Shared {
                service,
                options,
                connection_slots,
                unix_slots,
                token_digest,
            }),
        })
    }

    /// The addresses actually bound (with the real port when 0 was asked).
    pub fn local_addrs(&self) -> Vec<ControlAddr> {
        self.listeners
            .iter()
            .filter_map(|l| match l {
                Listener::Tcp { listener, .. } => {
                    listener.local_addr().ok().map(|a| ControlAddr::Tcp {
                        host: a.ip().to_string(),
                        port: a.port(),
                    })
                }
                Listener::Unix { path, .. } => Some(ControlAddr::Unix(path.clone())),
            })
            .collect()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets open
    /// connections flush (bounded by a grace period) and removes its Unix
    /// socket files.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let mut socket_files = Vec::new();
        let mut accept_loops = Vec::new();
        for listener in self.listeners {
            if let Listener::Unix { path, identity, .. } = &listener {
                socket_files.push((path.clone(), *identity));
            }
            let shared = Arc::clone(&self.shared);
            let shutdown = shutdown.clone();
            let tracker = tracker.clone();
            accept_loops.push(tokio::spawn(accept_loop(
                listener, shared, shutdown, tracker,
            )));
        }
        for accept in accept_loops {
            let _ = accept.await;
        }
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            warn!("control connections still open after the shutdown grace period; closing them");
        }
        for (path, identity) in socket_files {
            remove_own_socket(&path, identity);
        }
    }
}

async fn bind_tcp(addr: &ControlAddr, has_token: bool) -> Result<Vec<TcpListener>, BindError> {
    let resolved = match addr.resolve().await {
        Some(Ok(list)) if !list.is_empty() => list,
        Some(Ok(_)) => {
            return Err(BindError::Resolve {
                addr: addr.clone(),
                source: std::io::Error::other("no addresses"),
            });
        }
        Some(Err(source)) => {
            return Err(BindError::Resolve {
                addr: addr.clone(),
                source,
            });
        }
        None => return Ok(Vec::new()),
    };
    if !has_token && resolved.iter().any(|a| !a.ip().is_loopback()) {
        return Err(BindError::NotLoopbackWithoutToken(addr.clone()));
    }
    let mut listeners = Vec::new();
    for socket_addr in resolved {
        let listener = TcpListener::bind(socket_addr)
            .await
            .map_err(|source| BindError::Bind {
                addr: addr.clone(),
                source,
            })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

fn bind_unix(addr: &ControlAddr, path: &Path, mode: u32) -> Result<Listener, BindError> {
    let bind_error = |source| BindError::Bind {
        addr: addr.clone(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(BindError::NotASocket(path.to_owned()));
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(BindError::SocketInUse(path.to_owned())),
            // Nobody accepts on it: a leftover of a crashed run.
            Err(_) => {
                info!(path = %path.display(), "replacing stale control socket");
                std::fs::remove_file(path).map_err(bind_error)?;
            }
        },
        Err(_) => {}
    }
    // Create the socket with the wanted mode from the start, so there is no
    // moment where it is open wider; the umask is process-wide, and this runs
    // at start-up before anything else creates files.
    let wanted = nix::sys::stat::Mode::from_bits_truncate(mode & 0o777);
    let old_umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o777) - wanted);
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old_umask);
    let listener = bound.map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o777))
        .map_err(bind_error)?;
    let meta = std::fs::metadata(path).map_err(bind_error)?;
    Ok(Listener::Unix {
        listener,
        path: path.to_owned(),
        identity: (meta.dev(), meta.ino()),
    })
}

fn remove_own_socket(path: &Path, identity: (u64, u64)) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if (meta.dev(), meta.ino()) == identity => {
            if let Err(e) = std::fs::remove_file(path) {
                warn!(path = %path.display(), "cannot remove control socket: {e}");
            }
        }
        _ => debug!(path = %path.display(), "control socket already gone or replaced"),
    }
}

async fn accept_loop(
    listener: Listener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = accept(&listener) => accepted,
        };
        let (stream, needs_token) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the
                // connections already open keep being served.
                warn!("control accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = match &stream {
            Accepted::Tcp(..) => Arc::clone(&shared.connection_slots).try_acquire_owned(),
            Accepted::Unix(_) => Arc::clone(&shared.connection_slots)
                .try_acquire_owned()
                .or_else(|_| Arc::clone(&shared.unix_slots).try_acquire_owned()),
        };
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        match (stream, slot) {
            (Accepted::Tcp(stream, peer), Ok(slot)) => {
                tracker.spawn(serve(
                    stream,
                    peer.to_string(),
                    needs_token,
                    shared,
                    shutdown,
                    slot,
                ));
            }
            (Accepted::Unix(stream), Ok(slot)) => {
                tracker.spawn(serve(
                    stream,
                    "unix".to_owned(),
                    false,
                    shared,
                    shutdown,
                    slot,
                ));
            }
            (Accepted::Tcp(stream, _), Err(_)) => {
                tracker.spawn(refuse_over_limit(stream, shared));
            }
            (Accepted::Unix(stream), Err(_)) => {
                tracker.spawn(refuse_over_limit(stream, shared));
            }
        }
    }
}

enum Accepted {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<(Accepted, bool)> {
    match listener {
        Listener::Tcp {
            listener,
            needs_token,
        } => {
            let (stream, peer) = listener.accept().await?;
            // Requests are small and latency matters more than packing.
            stream.set_nodelay(true)?;
            Ok((Accepted::Tcp(stream, peer), *needs_token))
        }
        Listener::Unix { listener, .. } => {
            let (stream, _) = listener.accept().await?;
            Ok((Accepted::Unix(stream), false))
        }
    }
}

/// Tells a client over the connection limit why it is being closed.
async fn refuse_over_limit<S: AsyncWrite + Unpin>(mut stream: S, shared: Arc<Shared>) {
    let limit = shared.options.max_connections;
    shared
        .service
        .sessions()
        .telemetry()
        .refused("control_connection_limit");
    warn!(limit, "control connection refused: limit reached");
    let message = response_message(v1::Response::error(
        0,
        Code::ResourceExhausted,
        format!("too many control connections (limit {limit})"),
    ));
    let frame = baton_proto::frame::encode_frame(&message);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&frame)).await;
}

fn response_message(response: v1::Response) -> v1::ServerMessage {
    v1::ServerMessage {
        kind: Some(Kind::Response(response)),
    }
}

/// Counts the connection as open for as long as it lives.
struct ConnectionGauge(Arc<Service>);

impl ConnectionGauge {
    fn new(service: &Arc<Service>) -> Self {
        service.connection_opened();
        Self(Arc::clone(service))
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

async fn serve<S>(
    stream: S,
    peer: String,
    needs_token: bool,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let _gauge = ConnectionGauge::new(&shared.service);
    debug!(%peer, "control connection opened");
    let codec = FrameCodec::new(shared.options.max_frame_len);
    let (reader, writer) = tokio::io::split(stream);
    let (out, out_queue) = mpsc::channel(OUTBOUND_QUEUE);
    // Cancelled when the connection must end: shutdown, a protocol error, or
    // a writer that gave up on the peer.
    let closing = shutdown.child_token();
    let writer_task = tokio::spawn(write_loop(
        writer,
        out_queue,
        codec,
        shared.options.write_stall_timeout,
        closing.clone(),
    ));

    let mut frames = FramedRead::new(reader, codec);
    if needs_token {
        // Before the token is checked a client may send only small frames: an
        // unauthenticated peer must not make the relay buffer a megabyte.
        frames
            .decoder_mut()
            .set_max_frame_len(PRE_AUTH_MAX_FRAME_LEN.min(shared.options.max_frame_len));
    }
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
    let mut authenticated = !needs_token;
    let auth_deadline = tokio::time::sleep(AUTH_DEADLINE);
    tokio::pin!(auth_deadline);
    let mut subscribed = false;
    loop {
        let next = tokio::select! {
            () = closing.cancelled() => break,
            () = &mut auth_deadline, if !authenticated => {
                shared.service.sessions().telemetry().refused("control_auth_timeout");
                warn!(%peer, "control client did not authenticate in time; closing");
                let message = format!(
                    "this control address requires a token: authenticate within {} s",
                    AUTH_DEADLINE.as_secs()
                );
                let _ = out
                    .send(response_message(v1::Response::error(
                        0,
                        Code::Unauthenticated,
                        message,
                    )))
                    .await;
                break;
            }
            next = frames.next() => next,
        };
        let frame = match next {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(FrameError::Io(e))) => {
                debug!(%peer, "control connection read error: {e}");
                break;
            }
            Some(Err(e)) => {
                warn!(%peer, "control protocol error, closing connection: {e}");
                let code = match e {
                    FrameError::TooLarge { .. } => Code::ResourceExhausted,
                    FrameError::BadFlag(_) | FrameError::Truncated(_) | FrameError::Io(_) => {
                        Code::InvalidArgument
                    }
                };
                let _ = out
                    .send(response_message(v1::Response::error(
                        0,
                        code,
                        e.to_string(),
                    )))
                    .await;
                break;
            }
        };
        let request = match v1::Request::decode(frame) {
            Ok(request) => request,
            Err(e) => {
                // The framing is intact, so the connection can go on.
                let message = format!("undecodable request: {e}");
                let _ = out
                    .send(response_message(v1::Response::error(
                        0,
                        Code::InvalidArgument,
                        message,
                    )))
                    .await;
                continue;
            }
        };
        let id = request.id;
        let reply = |response| out.send(response_message(response));
        let Some(command) = request.command else {
            let message = format!(
                "request {id} carries no command this relay knows (baton {})",
                crate::VERSION
            );
            let _ = reply(v1::Response::error(id, Code::Unimplemented, message)).await;
            continue;
        };
        if let Command::Authenticate(auth) = &command {
            let accepted = shared
                .token_digest
                .as_ref()
                .is_none_or(|expected| token_matches(expected, &auth.token));
            if accepted {
                authenticated = true;
                frames
                    .decoder_mut()
                    .set_max_frame_len(shared.options.max_frame_len);
                let ok = v1::response::Result::Authenticate(v1::AuthenticateResponse {});
                let _ = reply(v1::Response::ok(id, ok)).await;
                continue;
            }
            shared
                .service
                .sessions()
                .telemetry()
                .refused("control_wrong_token");
            warn!(%peer, "control client presented a wrong token");
            let _ = reply(v1::Response::error(
                id,
                Code::Unauthenticated,
                "wrong control token",
            ))
            .await;
            break;
        }
        if !authenticated {
            shared
                .service
                .sessions()
                .telemetry()
                .refused("control_unauthenticated");
            warn!(%peer, "control client did not authenticate");
            let message = "this control address requires a token: authenticate first";
            let _ = reply(v1::Response::error(id, Code::Unauthenticated, message)).await;
            break;
        }
        if let Command::Subscribe(subscribe) = command {
            let ok = v1::response::Result::Subscribe(v1::SubscribeResponse {});
            if subscribed {
                let _ = reply(v1::Response::ok(id, ok)).await;
                continue;
            }
            subscribed = true;
            // Subscribe before answering, so no event raised after the
            // answer can be missed; events to replay go out after it.
            let events = shared.service.events().subscribe(subscribe.resume_after);
            let _ = reply(v1::Response::ok(id, ok)).await;
            tokio::spawn(forward_events(events, out.clone(), closing.clone()));
            continue;
        }
        let permit = tokio::select! {
            () = closing.cancelled() => break,
            permit = Arc::clone(&in_flight).acquire_owned() => permit,
        };
        let Ok(permit) = permit else { break };
        let service = Arc::clone(&shared.service);
        let out = out.clone();
        // Detached on purpose: a command that has started (say, creating a
        // session) runs to completion even if its client goes away.
        tokio::spawn(async move {
            let response = match service.handle(command).await {
                Ok(result) => v1::Response::ok(id, result),
                Err(status) => v1::Response::error(id, status.code, status.message),
            };
            service.request_answered();
            let _ = out.send(response_message(response)).await;
            drop(permit);
        });
    }
    // Stop the event forwarder (after it queued what was already raised) and
    // let the writer flush responses still coming from requests in flight.
    closing.cancel();
    drop(out);
    let _ = writer_task.await;
    debug!(%peer, "control connection closed");
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Whether `presented` is the token whose digest is `expected`. Digests of
/// a fixed length are compared without an early exit, so the time taken
/// reveals neither a prefix of the secret nor its length.
fn token_matches(expected: &[u8; 32], presented: &str) -> bool {
    let presented = digest(presented);
    expected
        .iter()
        .zip(&presented)
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn forward_events(
    subscription: Subscription,
    out: mpsc::Sender<v1::ServerMessage>,
    closing: CancellationToken,
) {
    use broadcast::error::{RecvError, TryRecvError};
    let wrap = |event| v1::ServerMessage {
        kind: Some(Kind::Event(event)),
    };
    let Subscription {
        replay,
        live: mut events,
    } = subscription;
    for event in replay {
        if out.send(wrap(event)).await.is_err() {
            return;
        }
    }
    loop {
        let received = tokio::select! {
            biased;
            received = events.recv() => received,
            () = closing.cancelled() => {
                // Deliver what was raised before the close (the shutdown
                // notice in particular), then stop.
                loop {
                    let event = match events.try_recv() {
                        Ok(event) => event,
                        Err(TryRecvError::Lagged(missed)) => lagged(missed),
                        Err(TryRecvError::Empty | TryRecvError::Closed) => return,
                    };
                    if out.try_send(wrap(event)).is_err() {
                        return;
                    }
                }
            }
        };
        let event = match received {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => lagged(missed),
            Err(RecvError::Closed) => return,
        };
        if out.send(wrap(event)).await.is_err() {
            return;
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::Receiver<v1::ServerMessage>,
    mut codec: FrameCodec,
    stall_timeout: Duration,
    closing: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(4096);
    while let Some(first) = queue.recv().await {
        encode_message(&mut codec, first, &mut buf);
        while buf.len() < WRITE_BATCH_BYTES {
            match queue.try_recv() {
                Ok(message) => encode_message(&mut codec, message, &mut buf),
                Err(_) => break,
            }
        }
        match tokio::time::timeout(stall_timeout, writer.write_all(&buf)).await {
            Ok(Ok(())) => buf.clear(),
            Ok(Err(e)) => {
                debug!("control write failed: {e}");
                break;
            }
            Err(_) => {
                warn!(
                    "control client read nothing for {:?}; disconnecting it",
                    stall_timeout
                );
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
    closing.cancel();
}

/// Encodes a message; one too large for a frame becomes an error response
/// with the same id, so the client is never left waiting.
fn encode_message(codec: &mut FrameCodec, message: v1::ServerMessage, buf: &mut BytesMut) {
    let mark = buf.len();
    if let Err(e) = codec.encode(&message, buf) {
        buf.truncate(mark);
        let id = match &message.kind {
            Some(Kind::Response(response)) => response.id,
            Some(Kind::Event(_)) | None => return,
        };
        let error = response_message(v1::Response::error(
            id,
            Code::ResourceExhausted,
            format!("response not sent: {e}"),
        ));
        // An error response is tiny; it always fits.
        let _ = codec.encode(&error, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::{digest, token_matches};

    #[test]
    fn token_comparison() {
        let expected = digest("s3cret-s3cret-s3cret");
        assert!(token_matches(&expected, "s3cret-s3cret-s3cret"));
        assert!(!token_matches(&expected, "s3cret-s3cret-s3cres"));
        assert!(!token_matches(&expected, "s3cret-s3cret-s3cre"));
        assert!(!token_matches(&expected, "s3cret-s3cret-s3cret-"));
        assert!(!token_matches(&expected, ""));
    }
}
