//! The error type of control commands: a gRPC-style code and a message.

use baton_proto::v1::{self, Code};

/// A failed control command, as it goes back to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str_name())]
pub struct Status {
    /// The gRPC-style code.
    pub code: Code,
    /// What went wrong, for a human.
    pub message: String,
}

macro_rules! constructors {
    ($($name:ident => $code:ident),* $(,)?) => {
        impl Status {
            $(
                #[doc = concat!("A `", stringify!($code), "` status.")]
                pub fn $name(message: impl Into<String>) -> Self {
                    Self { code: Code::$code, message: message.into() }
                }
            )*
        }
    };
}

constructors! {
    invalid_argument => InvalidArgument,
    not_found => NotFound,
    already_exists => AlreadyExists,
    permission_denied => PermissionDenied,
    resource_exhausted => ResourceExhausted,
    failed_precondition => FailedPrecondition,
    unimplemented => Unimplemented,
    internal => Internal,
    unavailable => Unavailable,
    unauthenticated => Unauthenticated,
}

impl From<Status> for v1::Error {
    fn from(status: Status) -> Self {
        Self {
            code: status.code as i32,
            message: status.message,
        }
    }
}
