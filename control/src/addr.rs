//! Control addresses: `tcp:HOST:PORT` and `unix:PATH`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// Where the control server listens, or where a client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAddr {
    /// A TCP address; the host may be a name (`localhost`) or an IP literal,
    /// IPv6 in brackets (`tcp:[::1]:7120`).
    Tcp {
        /// Host name or IP literal, without brackets.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A Unix stream socket at this path.
    Unix(PathBuf),
}

/// The default control address.
pub const DEFAULT_CONTROL_ADDR: &str = "tcp:127.0.0.1:7120";

/// Why a control address does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid control address {input:?}: {reason} (expected tcp:HOST:PORT or unix:PATH)")]
pub struct AddrParseError {
    input: String,
    reason: &'static str,
}

impl FromStr for ControlAddr {
    type Err = AddrParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| AddrParseError {
            input: input.to_owned(),
            reason,
        };
        if let Some(path) = input.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(fail("empty socket path"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        // A bare absolute path is unambiguous and convenient on a shell.
        if input.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(input)));
        }
        let rest = input.strip_prefix("tcp:").unwrap_or(input);
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| fail("missing :PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| fail("port is not a number 0-65535"))?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner
                .strip_suffix(']')
                .ok_or_else(|| fail("unclosed [ in IPv6 host"))?,
            None if host.contains(':') => return Err(fail("IPv6 hosts need brackets: [::1]")),
            None => host,
        };
        if host.is_empty() {
            return Err(fail("empty host"));
        }
        Ok(Self::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for ControlAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl ControlAddr {
    /// Resolves a TCP address to socket addresses (names through the system
    /// resolver). `None` for a Unix address.
    pub async fn resolve(&self) -> Option<std::io::Result<Vec<SocketAddr>>> {
        match self {
            Self::Tcp { host, port } => Some(
                tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map(Iterator::collect),
            ),
            Self::Unix(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_unix_and_ipv6() {
        assert_eq!(
            "tcp:127.0.0.1:7120".parse::<ControlAddr>().expect("tcp"),
            ControlAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 7120
            }
        );
        assert_eq!(
            "tcp:[::1]:7".parse::<ControlAddr>().expect("v6"),
            ControlAddr::Tcp {
                host: "::1".into(),
                port: 7
            }
        );
        assert_eq!(
            "localhost:1".parse::<ControlAddr>().expect("bare"),
            ControlAddr::Tcp {
                host: "localhost".into(),
                port: 1
            }
        );
        assert_eq!(
            "unix:/run/baton.sock".parse::<ControlAddr>().expect("unix"),
            ControlAddr::Unix("/run/baton.sock".into())
        );
        assert_eq!(
            "/tmp/b.sock".parse::<ControlAddr>().expect("path"),
            ControlAddr::Unix("/tmp/b.sock".into())
        );
    }

    #[test]
    fn display_round_trips() {
        for text in ["tcp:127.0.0.1:7120", "tcp:[::1]:9", "unix:/x/y.sock"] {
            let addr: ControlAddr = text.parse().expect("parse");
            assert_eq!(addr.to_string(), text);
        }
    }

    #[test]
    fn refuses_malformed_addresses_with_a_reason() {
        for (input, reason) in [
            ("tcp:127.0.0.1", "missing :PORT"),
            ("tcp:127.0.0.1:99999", "port"),
            ("tcp:::1:80", "brackets"),
            ("tcp:[::1:80", "unclosed"),
            ("unix:", "empty socket path"),
            ("tcp::80", "empty host"),
        ] {
            let err = input.parse::<ControlAddr>().expect_err(input).to_string();
            assert!(err.contains(reason), "{input}: {err}");
        }
    }
}
