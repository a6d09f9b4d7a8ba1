//! baton's control plane: the signalling side of calls.
//!
//! - [`sessions`]: the session registry and device bindings, and what each
//!   session command does (the media state itself lives in the data plane,
//!   `baton_relay`, and is read from its reports and events).
//! - [`sip`]: SIP text — SDP bodies, SIP URIs and GRUUs, offer/answer.
//! - [`service`]: the commands of the control protocol, and
//!   [`service::start`], which wires a data plane, the sessions and the
//!   event path together.
//! - [`server`]: the framed protobuf server on TCP and Unix sockets;
//!   [`client`]: a client library (used by `baton ctl` and `baton load`).
//! - [`ng`]: rtpengine's ng protocol, for Kamailio and OpenSIPS.
//! - [`events`]: the event bus behind `Subscribe`.
//! - [`telemetry`]: counters and the Prometheus registry;
//!   [`metrics_server`]: the `/metrics` endpoint.
//! - [`devices`]: the device commands over the AOR ↔ GRUU table
//!   ([`bindings`]).
//! - [`drain`]: taking the relay out of service without cutting calls.
//! - [`addr`], [`status`]: addresses, error codes.

#![forbid(unsafe_code)]

pub mod addr;
pub mod bindings;
pub mod client;
pub mod devices;
pub mod drain;
pub mod events;
pub mod ha;
pub mod metrics_server;
pub mod ng;
pub mod recording;
pub mod server;
pub mod service;
pub mod sessions;
pub mod sip;
pub mod status;
pub mod telemetry;

/// The relay's version, as reported by `ping`, `get_stats` and `/metrics`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use addr::ControlAddr;
pub use client::{Client, ClientError};
pub use server::{ControlServer, ServerOptions};
pub use service::Service;
pub use status::Status;
