//! baton's data plane: media worker threads that forward and rewrite RTP and
//! RTCP between the legs of each session.
//!
//! The crate is in two parts, kept apart on purpose:
//!
//! - [`core`], sans-IO: what a call's media state is and every rule about
//!   it. A [`core::session::Session`] owns a call's streams, the transfer
//!   lifecycle, hold and timeouts; a [`core::stream::Stream`] one media
//!   line's legs, source policy and rewriting; [`core::continuity`] the
//!   outward RTP timeline; [`core::rtcp_translate`] RTCP that agrees with
//!   it. Nothing there reads a clock or touches a socket: time is an input,
//!   decisions and events are outputs, so it is all tested in memory on
//!   simulated time.
//! - [`io`], the shell: [`io::worker`] threads (a mio loop each) that map
//!   sockets to sessions, move batches and drive time; [`io::ports`] relay
//!   port pairs; [`io::sys`] batched syscalls (the only `unsafe` code).
//!
//! [`Dataplane`] is the handle the control plane holds: a typed API over the
//! workers' command queues; [`messages`] what goes in and comes out.

pub mod core;
pub mod dataplane;
pub mod io;
pub mod messages;

pub use crate::core::ids::{LegId, Party, SessionId, StreamIndex, TransferId, WorkerId};
pub use dataplane::{
    AllocError, Dataplane, DataplaneConfig, DataplaneError, KernelStatus, KernelWorkerStats,
    Resume, StreamSetup, TransferLeg, TransferSetup, WorkerEvent, WorkerStats,
};
pub use io::kernel::KernelCounters;
