//! A control client: one connection, many requests in flight, responses
//! matched to their requests by id, events delivered on a separate queue.
//!
//! Used by `baton ctl` and `baton load`; other Rust programs can use it too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use baton_proto::frame::{FrameCodec, FrameError};
use baton_proto::v1::{self, request::Command, response::Result as Reply, server_message::Kind};
use bytes::BytesMut;
use futures_util::StreamExt;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Encoder, FramedRead};

use crate::addr::ControlAddr;

/// Events queued for the application before the connection stops reading.
const EVENT_QUEUE: usize = 1024;

/// Why a request did not get a successful answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The relay answered with an error.
    #[error("{0}")]
    Status(v1::Error),
    /// Could not connect.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Where we tried.
        addr: ControlAddr,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The connection closed before the answer arrived.
    #[error("the relay closed the connection{}", .0.as_ref().map(|e| format!(" ({e})")).unwrap_or_default())]
    Disconnected(Option<v1::Error>),
    /// The relay sent something that is not a valid frame or message.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No answer within the timeout.
    #[error("no answer from the relay within {0:?}")]
    Timeout(Duration),
}

type Pending = Arc<Mutex<PendingState>>;

#[derive(Default)]
struct PendingState {
    waiting: HashMap<u64, oneshot::Sender<v1::Response>>,
    /// Set once the connection is gone, with the relay's last word if any.
    closed: Option<Option<v1::Error>>,
}

/// A connection to a relay's control server.
pub struct Client {
    requests: mpsc::Sender<v1::Request>,
    pending: Pending,
    next_id: AtomicU64,
    events: tokio::sync::Mutex<mpsc::Receiver<v1::Event>>,
    timeout: Duration,
}

impl Client {
    /// Connects, and authenticates first when a token is given.
    pub async fn connect(addr: &ControlAddr, token: Option<&str>) -> Result<Self, ClientError> {
        let connect_error = |source| ClientError::Connect {
            addr: addr.clone(),
            source,
        };
        let client = match addr {
            ControlAddr::Tcp { host, port } => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(connect_error)?;
                stream.set_nodelay(true).map_err(connect_error)?;
                Self::over(stream)
            }
            ControlAddr::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect_error)?;
                Self::over(stream)
            }
        };
        if let Some(token) = token {
            client
                .call(Command::Authenticate(v1::AuthenticateRequest {
                    token: token.to_owned(),
                }))
                .await?;
        }
        Ok(client)
    }

    /// A client over an already connected stream.
    pub fn over<S>(stream: S) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(stream);
        let (requests, request_queue) = mpsc::channel(256);
        let (event_sink, events) = mpsc::channel(EVENT_QUEUE);
        let pending = Pending::default();
        tokio::spawn(write_requests(writer, request_queue));
        tokio::spawn(read_responses(reader, Arc::clone(&pending), event_sink));
        Self {
            requests,
            pending,
            next_id: AtomicU64::new(1),
            events: tokio::sync::Mutex::new(events),
            timeout: Duration::from_secs(30),
        }
    }

    /// Sets how long [`call`](Self::call) waits for an answer (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends a command and waits for its answer.
    pub async fn call(&self, command: Command) -> Result<Reply, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(last_word) = &pending.closed {
                return Err(ClientError::Disconnected(last_word.clone()));
            }
            pending.waiting.insert(id, answer);
        }
        let request = v1::Request {
            id,
            command: Some(command),
        };
        if self.requests.send(request).await.is_err() {
            return Err(self.disconnected());
        }
        let response = match tokio::time::timeout(self.timeout, answered).await {
            Ok(Ok(response)) => response,
            Ok(Err(_)) => return Err(self.disconnected()),
            Err(_) => {
                self.forget(id);
                return Err(ClientError::Timeout(self.timeout));
            }
        };
        match response.result {
            Some(Reply::Error(error)) => Err(ClientError::Status(error)),
            Some(reply) => Ok(reply),
            None => Err(ClientError::Protocol(format!(
                "response {id} has no result"
            ))),
        }
    }

    /// Subscribes to events; read them with [`next_event`](Self::next_event).
    pub async fn subscribe(&self) -> Result<(), ClientError> {
        self.call(Command::Subscribe(v1::SubscribeRequest {
            resume_after: None,
        }))
        .await
        .map(drop)
    }

    /// Subscribes to events after `sequence` (the last one seen before a
    /// reconnect): the relay replays those it still holds first.
    pub async fn resume_events(&self, sequence: u64) -> Result<(), ClientError> {
        self.call(Command::Subscribe(v1::SubscribeRequest {
            resume_after: Some(sequence),
        }))
        .await
        .map(drop)
    }

    /// The next event, or `None` once the connection is closed.
    pub async fn next_event(&self) -> Option<v1::Event> {
        self.events.lock().await.recv().await
    }

    fn forget(&self, id: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.waiting.remove(&id);
    }

    fn disconnected(&self) -> ClientError {
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        ClientError::Disconnected(pending.closed.clone().flatten())
    }
}

async fn write_requests<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::Receiver<v1::Request>,
) {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    while let Some(request) = queue.recv().await {
        if codec.encode(&request, &mut buf).is_err() {
            // Too large to send; the caller times out. A request this large
            // is a bug in the caller, not something to retry.
            continue;
        }
        while let Ok(more) = queue.try_recv() {
            let _ = codec.encode(&more, &mut buf);
        }
        if writer.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
    }
    // The client was dropped: half-close so the relay sees the end and
    // closes too, which also ends our reader task.
    let _ = writer.shutdown().await;
}

async fn read_responses<R: AsyncRead + Unpin>(
    reader: R,
    pending: Pending,
    events: mpsc::Sender<v1::Event>,
) {
    let mut frames = FramedRead::new(reader, FrameCodec::default());
    let mut last_word = None;
    while let Some(frame) = frames.next().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(FrameError::Io(_)) => break,
            Err(e) => {
                last_word = Some(v1::Error {
                    code: v1::Code::Internal as i32,
                    message: format!("invalid frame from the relay: {e}"),
                });
                break;
            }
        };
        let Ok(message) = v1::ServerMessage::decode(frame) else {
            continue;
        };
        match message.kind {
            Some(Kind::Response(response)) => {
                let waiter = {
                    let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
                    pending.waiting.remove(&response.id)
                };
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(response);
                    }
                    // Id 0: the relay's word on the connection itself (a
                    // protocol error, a refusal), sent just before it closes.
                    None => {
                        if let Some(Reply::Error(error)) = response.result {
                            last_word = Some(error);
                        }
                    }
                }
            }
            Some(Kind::Event(event)) => {
                // An error means nobody reads events any more; responses
                // still matter, so keep going.
                let _ = events.send(event).await;
            }
            None => {}
        }
    }
    let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
    pending.closed = Some(last_word);
    // Dropping the senders wakes every waiter with "disconnected".
    pending.waiting.clear();
}
