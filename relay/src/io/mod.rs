//! The I/O shell around the sans-IO core: worker threads and their event
//! loops, the DTLS-SRTP handshake thread, relay port pools, and the batched syscalls (the only `unsafe`
//! code in the crate).

pub mod dtls;
pub mod kernel;
pub mod ports;
pub mod sys;
pub mod worker;
