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
    /// The relay's capacity refused the request: another relay may take
    /// it. The ng front end answers these in rtpengine's words, on which
    /// Kamailio's rtpengine module tries the next relay of its set.
    pub capacity: Option<Capacity>,
}

/// Which capacity of the relay a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    /// `max-sessions` sessions are open.
    Sessions,
    /// Every port of the range is in use.
    Ports,
    /// The relay is draining.
    Draining,
}

impl Status {
    /// The same status, marked as a capacity refusal.
    pub fn capacity(mut self, capacity: Capacity) -> Self {
        self.capacity = Some(capacity);
        self
    }
}

macro_rules! constructors {
    ($($name:ident => $code:ident),* $(,)?) => {
        impl Status {
            $(
                #[doc = concat!("A `", stringify!($code), "` status.")]
                pub fn $name(message: impl Into<String>) -> Self {
                    Self { code: Code::$code, message: bounded(message.into()), capacity: None }
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

/// Every refusal of the data plane, as a status code, in one place.
impl From<baton_relay::DataplaneError> for Status {
    fn from(error: baton_relay::DataplaneError) -> Self {
        use baton_relay::DataplaneError as E;
        use baton_relay::core::session::TransferError as T;
        let message = error.to_string();
        match error {
            // A busy, failed (being replaced) or slow worker: worth a retry.
            E::Busy(_) | E::Stopped(_) | E::NoAnswer(_) => Self::unavailable(message),
            E::NoSession(_) => Self::not_found(message),
            E::Exists(_) => Self::already_exists(message),
            E::Sockets(_) | E::Transfer(T::NoLegSlot(_)) => Self::resource_exhausted(message),
            E::Transfer(T::StreamCount { .. }) => Self::invalid_argument(message),
            E::Transfer(
                T::AlreadyPending(_)
                | T::NonePending
                | T::AlreadySwitched(_)
                | T::NotThisTransfer { .. },
            ) => Self::failed_precondition(message),
        }
    }
}

impl From<Status> for v1::Error {
    fn from(status: Status) -> Self {
        Self {
            code: status.code as i32,
            message: status.message,
        }
    }
}

/// Longest Call-ID or tag accepted, in bytes (real ones are tens).
pub const MAX_ID_LEN: usize = 256;
/// Longest URI or header value accepted (AOR, GRUU, Contact, Replaces), in
/// bytes.
pub const MAX_URI_LEN: usize = 2048;

/// Refuses an identifier longer than `max` bytes, naming the field: it
/// would be kept in the registry and written into every log line of its
/// session.
pub fn check_len(what: &str, text: &str, max: usize) -> Result<(), Status> {
    if text.len() > max {
        return Err(Status::invalid_argument(format!(
            "{what} has {} bytes, more than {max}",
            text.len()
        )));
    }
    Ok(())
}

/// Longest error message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 400;

/// An error message as it may leave the relay: control characters replaced
/// and at most [`MAX_MESSAGE_CHARS`], whatever input it was built from. The
/// net under [`excerpt`], for messages that quote more than they should.
pub fn bounded(message: String) -> String {
    if message.len() <= MAX_MESSAGE_CHARS && !message.chars().any(char::is_control) {
        return message;
    }
    let mut out: String = message
        .chars()
        .take(MAX_MESSAGE_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if message.chars().nth(MAX_MESSAGE_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Characters of untrusted input an error message may quote.
const EXCERPT_CHARS: usize = 32;

/// A short, printable excerpt of untrusted input for an error message or a
/// log line, quoted: at most 32 characters, anything outside printable ASCII
/// shown as `?`, an ellipsis when cut. Messages never echo more than this,
/// so a hostile request cannot make its reply or the log grow with it.
pub fn excerpt(input: &str) -> String {
    let mut out = String::with_capacity(EXCERPT_CHARS + 4);
    out.push('"');
    for (i, c) in input.chars().enumerate() {
        if i == EXCERPT_CHARS {
            out.push('…');
            break;
        }
        out.push(if c == ' ' || c.is_ascii_graphic() {
            c
        } else {
            '?'
        });
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::{MAX_MESSAGE_CHARS, Status, excerpt};

    #[test]
    fn excerpts_are_short_and_printable() {
        assert_eq!(excerpt("RTP/SAVP"), "\"RTP/SAVP\"");
        assert_eq!(excerpt("a\u{0}b\nc\u{1b}[2J"), "\"a?b?c?[2J\"");
        let long = excerpt(&"x".repeat(60_000));
        assert_eq!(long.chars().count(), 32 + 3);
        assert!(long.ends_with("…\""));
    }

    #[test]
    fn every_status_message_is_bounded() {
        let status = Status::invalid_argument(format!("bad {:?}", "\u{1}".repeat(10_000)));
        assert!(status.message.chars().count() <= MAX_MESSAGE_CHARS + 1);
        assert!(!status.message.chars().any(char::is_control));
        let fine = Status::not_found("no session 0000000000000001 → gone");
        assert_eq!(fine.message, "no session 0000000000000001 → gone");
    }
}
