//! rtpengine's "ng" control protocol, so that Kamailio's and OpenSIPS's
//! `rtpengine` modules drive baton unchanged: `ping`, `offer`, `answer`,
//! `delete`, `query`, `list` over UDP or TCP, a reply cache for
//! retransmissions, and baton's handoff extension (see
//! `docs/kamailio.md`).
//!
//! - [`wire`]: `<cookie> <bencoded dictionary>`.
//! - [`cache`]: replies by cookie.
//! - [`commands`]: the commands on baton's sessions.
//! - [`server`]: the listeners.

pub mod cache;
pub mod commands;
pub mod server;
pub mod vocabulary;
pub mod wire;

pub use commands::NgService;
pub use server::{NgAccess, NgAddr, NgListeners, serve};
