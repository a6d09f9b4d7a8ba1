//! `baton run` settings: command-line flags over an optional TOML file over
//! built-in defaults. Every flag `--some-name` is the key `some-name` in the
//! file, so one reference describes both.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use baton_control::{ControlAddr, ServerOptions};
use clap::{Args, ValueEnum};
use serde::Deserialize;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Flags of `baton run`; the same names are the keys of the config file.
/// Every field is optional so that file and flags can be layered.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RunOptions {
    /// TOML config file; flags given on the command line override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Control address, tcp:HOST:PORT or unix:PATH; repeat for several.
    /// [default: tcp:127.0.0.1:7120]
    #[arg(long, value_name = "ADDR")]
    #[serde(default)]
    pub control: Vec<String>,

    /// Shared secret that TCP control clients must present first; required
    /// for a control address that is not loopback.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "BATON_CONTROL_TOKEN",
        hide_env_values = true
    )]
    pub control_token: Option<String>,

    /// Permission bits of control Unix sockets, in octal. [default: 0600]
    #[arg(long, value_name = "MODE")]
    pub control_socket_mode: Option<String>,

    /// Largest control frame accepted, in bytes. [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    pub max_frame_bytes: Option<usize>,

    /// Control connections open at once; more are refused. [default: 1024]
    #[arg(long, value_name = "N")]
    pub max_control_connections: Option<usize>,

    /// Log format on stderr (RUST_LOG sets the filter). [default: text]
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// Everything `baton run` needs, defaults applied and values checked.
#[derive(Debug)]
pub struct Config {
    /// The control server's settings.
    pub control: ServerOptions,
    /// Log line format.
    pub log_format: LogFormat,
}

impl RunOptions {
    /// Reads the config file (if any) and lays the flags over it.
    pub fn load(self) -> anyhow::Result<Config> {
        let merged = match &self.config {
            Some(path) => Self::from_file(path)?.overlaid_with(self),
            None => self,
        };
        merged.resolve()
    }

    fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            // toml's message spans several lines with a caret; keep one.
            let message = e.message().to_owned();
            let at = e
                .span()
                .map(|span| {
                    let line = text[..span.start].lines().count().max(1);
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            anyhow::anyhow!("config file {}{at}: {message}", path.display())
        })
    }

    /// `self` (from the file) with every value given in `flags` replaced.
    fn overlaid_with(self, flags: Self) -> Self {
        Self {
            config: flags.config,
            control: if flags.control.is_empty() {
                self.control
            } else {
                flags.control
            },
            control_token: flags.control_token.or(self.control_token),
            control_socket_mode: flags.control_socket_mode.or(self.control_socket_mode),
            max_frame_bytes: flags.max_frame_bytes.or(self.max_frame_bytes),
            max_control_connections: flags
                .max_control_connections
                .or(self.max_control_connections),
            log_format: flags.log_format.or(self.log_format),
        }
    }

    fn resolve(self) -> anyhow::Result<Config> {
        let listen = if self.control.is_empty() {
            vec![baton_control::addr::DEFAULT_CONTROL_ADDR.to_owned()]
        } else {
            self.control
        };
        let listen = listen
            .iter()
            .map(|text| text.parse::<ControlAddr>())
            .collect::<Result<Vec<_>, _>>()?;
        let token = self.control_token.filter(|t| !t.is_empty());
        if let Some(token) = &token
            && token.len() < 16
        {
            bail!("control token is too short: use at least 16 characters");
        }
        let mode_text = self.control_socket_mode.as_deref().unwrap_or("0600");
        let socket_mode = u32::from_str_radix(mode_text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .with_context(|| {
                format!("control socket mode {mode_text:?} is not an octal mode like 0600")
            })?;
        let max_frame_len = self
            .max_frame_bytes
            .unwrap_or(baton_proto::frame::DEFAULT_MAX_FRAME_LEN);
        if !(1024..=64 << 20).contains(&max_frame_len) {
            bail!("max frame size {max_frame_len} is outside 1024..=67108864 bytes");
        }
        let max_connections = self.max_control_connections.unwrap_or(1024);
        if max_connections == 0 {
            bail!("max control connections must be at least 1");
        }
        Ok(Config {
            control: ServerOptions {
                listen,
                token,
                socket_mode,
                max_frame_len,
                max_connections,
                write_stall_timeout: Duration::from_secs(10),
            },
            log_format: self.log_format.unwrap_or(LogFormat::Text),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> anyhow::Result<RunOptions> {
        toml::from_str(toml_text).map_err(Into::into)
    }

    #[test]
    fn defaults_are_local_only() -> anyhow::Result<()> {
        let config = RunOptions::default().load()?;
        assert_eq!(
            config.control.listen,
            vec![ControlAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 7120
            }]
        );
        assert_eq!(config.control.socket_mode, 0o600);
        assert!(config.control.token.is_none());
        Ok(())
    }

    #[test]
    fn flags_override_the_file() -> anyhow::Result<()> {
        let file = parse(
            r#"
            control = ["unix:/tmp/a.sock"]
            control-socket-mode = "0660"
            max-frame-bytes = 4096
            log-format = "json"
            "#,
        )?;
        let flags = RunOptions {
            control: vec!["tcp:127.0.0.1:1".into()],
            max_frame_bytes: Some(2048),
            ..RunOptions::default()
        };
        let config = file.overlaid_with(flags).resolve()?;
        assert_eq!(config.control.listen.len(), 1);
        assert_eq!(config.control.listen[0].to_string(), "tcp:127.0.0.1:1");
        assert_eq!(config.control.max_frame_len, 2048);
        assert_eq!(config.control.socket_mode, 0o660);
        assert_eq!(config.log_format, LogFormat::Json);
        Ok(())
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(parse("contrl = []").is_err());
        for bad in [
            RunOptions {
                control_socket_mode: Some("rw-------".into()),
                ..RunOptions::default()
            },
            RunOptions {
                control: vec!["tcp:nowhere".into()],
                ..RunOptions::default()
            },
            RunOptions {
                control_token: Some("short".into()),
                ..RunOptions::default()
            },
            RunOptions {
                max_frame_bytes: Some(10),
                ..RunOptions::default()
            },
        ] {
            assert!(bad.resolve().is_err());
        }
    }
}
