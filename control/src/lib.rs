//! baton's control plane.
//!
//! - [`server`]: the framed protobuf server on TCP and Unix sockets.
//! - [`service`]: what each command does.
//! - [`client`]: a client library (used by `baton ctl` and `baton load`).
//! - [`events`]: the event bus behind `Subscribe`.
//! - [`addr`]: `tcp:HOST:PORT` / `unix:PATH` addresses.
//! - [`status`]: errors with gRPC-style codes.
//! - [`sdp`]: reading and rewriting SDP bodies.
//! - [`ng`]: rtpengine's ng protocol, for Kamailio and OpenSIPS.
//! - [`metrics`]: Prometheus metrics.

#![forbid(unsafe_code)]

pub mod addr;
pub mod bindings;
pub mod client;
pub mod events;
pub mod metrics;
pub mod ng;
pub mod sdp;
pub mod server;
pub mod service;
pub mod sessions;
pub mod sip_uri;
pub mod status;

pub use addr::ControlAddr;
pub use client::{Client, ClientError};
pub use server::{ControlServer, ServerOptions};
pub use service::Service;
pub use status::Status;
