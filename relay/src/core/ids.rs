//! Ids that say what they name, and the two parties of a call.
//!
//! A session is named by the relay ([`SessionId`]); its streams by their
//! position ([`StreamIndex`]); a stream's legs by a slot that never changes
//! for the leg's life ([`LegId`]), so sockets map to legs without re-keying;
//! a transfer by the control plane ([`TransferId`]), so every report about
//! it names it; a media worker by its slot ([`WorkerId`]).

use std::fmt;
use std::str::FromStr;

/// A session's relay-assigned id, shown as 16 hex digits.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for SessionId {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(text, 16).map(Self)
    }
}

/// A transfer's id, unique for the life of the relay, shown as a number.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TransferId(pub u64);

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A stream's position in its session (its m= line among those relayed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamIndex(pub usize);

impl fmt::Display for StreamIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A leg's slot in its stream, below [`LegId::COUNT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(u8);

impl LegId {
    /// Legs a stream can hold at once: remote, device, pending and retired.
    pub const COUNT: usize = 4;
    /// The first device's leg of a new stream.
    pub const FIRST_DEVICE: Self = Self(0);
    /// The remote party's leg (never changes).
    pub const REMOTE: Self = Self(1);

    /// The leg in slot `index`, if there is such a slot.
    pub fn new(index: usize) -> Option<Self> {
        u8::try_from(index)
            .ok()
            .filter(|&i| usize::from(i) < Self::COUNT)
            .map(Self)
    }

    /// The slot, for indexing per-leg arrays.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// Every slot, in order.
    pub fn all() -> impl Iterator<Item = Self> {
        (0..Self::COUNT).filter_map(Self::new)
    }
}

impl fmt::Display for LegId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A media worker's slot.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct WorkerId(pub usize);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The two parties of a call: the user (whose current device may change)
/// and the remote party (fixed for the call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Party {
    /// The user, on their current device.
    User,
    /// The remote party.
    Remote,
}

impl Party {
    /// Both parties, user first (the order of per-party arrays).
    pub const BOTH: [Self; 2] = [Self::User, Self::Remote];

    /// The index of per-party arrays: user 0, remote 1.
    pub fn index(self) -> usize {
        match self {
            Self::User => 0,
            Self::Remote => 1,
        }
    }

    /// The other party.
    pub fn other(self) -> Self {
        match self {
            Self::User => Self::Remote,
            Self::Remote => Self::User,
        }
    }

    /// Lower-case name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Remote => "remote",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse() {
        let id = SessionId(0xdead_beef);
        assert_eq!(id.to_string(), "00000000deadbeef");
        assert_eq!("00000000deadbeef".parse::<SessionId>(), Ok(id));
        assert_eq!(LegId::new(4), None);
        assert_eq!(LegId::all().count(), LegId::COUNT);
        assert_eq!(Party::User.other(), Party::Remote);
        assert_eq!(Party::BOTH.map(Party::index), [0, 1]);
    }
}
