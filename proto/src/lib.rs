//! baton's control protocol.
//!
//! - [`v1`]: the message types generated from `proto/baton.proto` (package
//!   `baton.v1`), with serde implementations that follow the proto3 JSON
//!   mapping (snake_case names, every field printed).
//! - [`frame`]: the gRPC-like frame codec (flag byte, big-endian length,
//!   message) shared by the relay and its clients.
//!
//! The schema file is the reference for the protocol; [`SCHEMA`] embeds it so
//! the binary can print it for client authors.

#![forbid(unsafe_code)]

pub mod frame;

/// Types generated from `baton.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/baton.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/baton.v1.serde.rs"));
}

/// The text of `baton.proto`, the protocol's schema.
pub const SCHEMA: &str = include_str!("../baton.proto");

impl v1::Response {
    /// A response carrying an error.
    pub fn error(id: u64, code: v1::Code, message: impl Into<String>) -> Self {
        Self {
            id,
            result: Some(v1::response::Result::Error(v1::Error {
                code: code as i32,
                message: message.into(),
            })),
        }
    }

    /// A successful response.
    pub fn ok(id: u64, result: v1::response::Result) -> Self {
        Self {
            id,
            result: Some(result),
        }
    }
}

impl std::fmt::Display for v1::Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not prost's `code()`: it maps numbers unknown to this build to OK.
        match v1::Code::try_from(self.code) {
            Ok(code) => write!(f, "{}: {}", code.as_str_name(), self.message),
            Err(_) => write!(f, "code {}: {}", self.code, self.message),
        }
    }
}

impl std::error::Error for v1::Error {}
