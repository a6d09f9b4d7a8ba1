//! DTLS-SRTP as plain data (RFC 5763/5764): a leg's role and the peer's
//! certificate fingerprint from its SDP, the check of the certificate the
//! handshake showed, and the SRTP keys made from the exported keying
//! material. The handshake itself runs off the media path
//! ([`io::dtls`](crate::io::dtls)).

use std::fmt;

use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};
use subtle::ConstantTimeEq;

use crate::core::srtp::{MasterKey, Suite};
use crate::core::stream::LegKeys;

/// Which end of the DTLS handshake the relay is on a leg (`a=setup`, RFC
/// 4145/8842: `active` connects, `passive` waits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DtlsRole {
    /// The relay is the DTLS client: it sends the ClientHello once ICE has
    /// selected the peer.
    Client,
    /// The relay is the DTLS server: the peer connects.
    Server,
}

/// A hash function of `a=fingerprint` (RFC 8122) that the relay checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashFunction {
    /// `sha-1`.
    Sha1,
    /// `sha-256`, what browsers send.
    Sha256,
    /// `sha-384`.
    Sha384,
    /// `sha-512`.
    Sha512,
}

impl HashFunction {
    /// Reads the SDP name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "sha-1" => Some(Self::Sha1),
            "sha-256" => Some(Self::Sha256),
            "sha-384" => Some(Self::Sha384),
            "sha-512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// The SDP name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "sha-1",
            Self::Sha256 => "sha-256",
            Self::Sha384 => "sha-384",
            Self::Sha512 => "sha-512",
        }
    }

    fn len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    fn digest(self, data: &[u8]) -> Fingerprint {
        let mut bytes = [0; 64];
        let len = self.len();
        match self {
            Self::Sha1 => bytes[..len].copy_from_slice(&Sha1::digest(data)),
            Self::Sha256 => bytes[..len].copy_from_slice(&Sha256::digest(data)),
            Self::Sha384 => bytes[..len].copy_from_slice(&Sha384::digest(data)),
            Self::Sha512 => bytes[..len].copy_from_slice(&Sha512::digest(data)),
        }
        Fingerprint { hash: self, bytes }
    }
}

/// A certificate fingerprint: `a=fingerprint:sha-256 AB:CD:…`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    hash: HashFunction,
    bytes: [u8; 64],
}

/// Stored as its SDP value (high availability).
impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Fingerprint {
    /// The SDP value: `sha-256 AB:CD:…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.hash.name())?;
        for (i, byte) in self.digest_bytes().iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of_certificate(hash: HashFunction, der: &[u8]) -> Self {
        hash.digest(der)
    }

    /// Reads an `a=fingerprint` value: a known hash function, then its
    /// digest as colon-separated hex pairs of exactly its length.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut parts = value.split_ascii_whitespace();
        let (Some(name), Some(hex), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err("a=fingerprint is not `HASH XX:XX:…`".to_owned());
        };
        let hash = HashFunction::from_name(name).ok_or_else(|| {
            format!(
                "a=fingerprint hash {} is not sha-1, sha-256, sha-384 or sha-512",
                name.chars().take(16).collect::<String>()
            )
        })?;
        let mut bytes = [0; 64];
        let mut count = 0;
        for pair in hex.split(':') {
            if count == hash.len() || pair.len() != 2 {
                return Err(format!("a=fingerprint is not a {} digest", hash.name()));
            }
            bytes[count] = u8::from_str_radix(pair, 16)
                .map_err(|_| format!("a=fingerprint is not a {} digest", hash.name()))?;
            count += 1;
        }
        if count != hash.len() {
            return Err(format!("a=fingerprint is not a {} digest", hash.name()));
        }
        Ok(Self { hash, bytes })
    }

    /// The hash function.
    pub fn hash(&self) -> HashFunction {
        self.hash
    }

    /// The digest.
    pub fn digest_bytes(&self) -> &[u8] {
        &self.bytes[..self.hash.len()]
    }

    /// Whether `der` is the certificate this fingerprint names (compared
    /// in constant time).
    pub fn matches(&self, der: &[u8]) -> bool {
        let actual = self.hash.digest(der);
        bool::from(actual.digest_bytes().ct_eq(self.digest_bytes()))
    }
}

/// A DTLS-SRTP leg's settings: the relay's role and the certificate the
/// peer must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtlsParams {
    /// Client or server.
    pub role: DtlsRole,
    /// The peer's `a=fingerprint`.
    pub peer: Fingerprint,
}

/// The SRTP protection profiles of RFC 5764/7714 the relay negotiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpProfile {
    /// `SRTP_AES128_CM_HMAC_SHA1_80`.
    Aes128CmSha1_80,
    /// `SRTP_AEAD_AES_128_GCM`.
    AeadAes128Gcm,
    /// `SRTP_AEAD_AES_256_GCM`.
    AeadAes256Gcm,
}

impl SrtpProfile {
    /// The SRTP suite it keys.
    pub fn suite(self) -> Suite {
        match self {
            Self::Aes128CmSha1_80 => Suite::AesCm128HmacSha1_80,
            Self::AeadAes128Gcm => Suite::AeadAes128Gcm,
            Self::AeadAes256Gcm => Suite::AeadAes256Gcm,
        }
    }

    /// (master key, master salt) lengths.
    fn lengths(self) -> (usize, usize) {
        match self {
            Self::Aes128CmSha1_80 => (16, 14),
            Self::AeadAes128Gcm => (16, 12),
            Self::AeadAes256Gcm => (32, 12),
        }
    }
}

/// The leg's keys from the exported keying material (RFC 5764 §4.2:
/// client key, server key, client salt, server salt): the relay decrypts
/// with what the peer writes and encrypts with its own side's.
pub fn keys_from_material(
    material: &[u8],
    profile: SrtpProfile,
    role: DtlsRole,
) -> Result<LegKeys, String> {
    let (key_len, salt_len) = profile.lengths();
    if material.len() != 2 * (key_len + salt_len) {
        return Err(format!(
            "DTLS exported {} bytes of keying material, {profile:?} needs {}",
            material.len(),
            2 * (key_len + salt_len)
        ));
    }
    let (client_key, rest) = material.split_at(key_len);
    let (server_key, rest) = rest.split_at(key_len);
    let (client_salt, server_salt) = rest.split_at(salt_len);
    let master = |key: &[u8], salt: &[u8]| {
        let mut joined = [0u8; 48];
        joined[..key.len()].copy_from_slice(key);
        joined[key.len()..key.len() + salt.len()].copy_from_slice(salt);
        MasterKey::new(profile.suite(), &joined[..key.len() + salt.len()])
            .map_err(|e| format!("DTLS-SRTP key: {e}"))
    };
    let client = master(client_key, client_salt)?;
    let server = master(server_key, server_salt)?;
    Ok(match role {
        DtlsRole::Client => LegKeys {
            peer: server,
            relay: client,
        },
        DtlsRole::Server => LegKeys {
            peer: client,
            relay: server,
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn fingerprints_round_trip_and_check_the_certificate() {
        let der = b"not really a certificate, but bytes to hash";
        for hash in [
            HashFunction::Sha1,
            HashFunction::Sha256,
            HashFunction::Sha384,
            HashFunction::Sha512,
        ] {
            let fingerprint = Fingerprint::of_certificate(hash, der);
            let text = fingerprint.to_string();
            let read = Fingerprint::parse(&text).unwrap();
            assert_eq!(read, fingerprint);
            assert!(read.matches(der));
            assert!(!read.matches(b"another certificate"));
            // Lower-case hex and upper-case names are the same.
            assert_eq!(
                Fingerprint::parse(&text.to_ascii_lowercase()).unwrap(),
                fingerprint
            );
        }
    }

    #[test]
    fn malformed_fingerprints_are_refused() {
        let good = Fingerprint::of_certificate(HashFunction::Sha256, b"x").to_string();
        let short = good.rsplit_once(':').unwrap().0.to_owned();
        for bad in [
            "",
            "sha-256",
            "md5 AB:CD",
            &short,
            &format!("{good}:00"),
            &good.replace(':', ""),
            &good.replacen("sha-256 ", "sha-256 ZZ", 1),
            &format!("{good} extra"),
        ] {
            assert!(Fingerprint::parse(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_read_or_refused_without_a_panic(text in ".{0,300}") {
            if let Ok(fingerprint) = Fingerprint::parse(&text) {
                // What is accepted prints back to the same fingerprint.
                proptest::prop_assert_eq!(Fingerprint::parse(&fingerprint.to_string()), Ok(fingerprint));
            }
        }
    }

    #[test]
    fn keys_are_split_as_rfc_5764_says() {
        let material: Vec<u8> = (0..60u8).collect();
        let server =
            keys_from_material(&material, SrtpProfile::Aes128CmSha1_80, DtlsRole::Server).unwrap();
        let client =
            keys_from_material(&material, SrtpProfile::Aes128CmSha1_80, DtlsRole::Client).unwrap();
        // client key 0..16, server key 16..32, client salt 32..46, server
        // salt 46..60.
        let client_side: Vec<u8> = (0..16).chain(32..46).collect();
        let server_side: Vec<u8> = (16..32).chain(46..60).collect();
        assert_eq!(server.peer.key_and_salt(), &client_side[..]);
        assert_eq!(server.relay.key_and_salt(), &server_side[..]);
        assert_eq!(client.peer, server.relay);
        assert_eq!(client.relay, server.peer);
        let gcm: Vec<u8> = (0..88u8).collect();
        let keys = keys_from_material(&gcm, SrtpProfile::AeadAes256Gcm, DtlsRole::Server).unwrap();
        assert_eq!(keys.peer.suite(), Suite::AeadAes256Gcm);
        assert!(
            keys_from_material(
                &material[..59],
                SrtpProfile::Aes128CmSha1_80,
                DtlsRole::Server
            )
            .is_err()
        );
    }
}
