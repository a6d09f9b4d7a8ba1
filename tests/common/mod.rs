//! Helpers for tests that run the real `baton` binary on loopback.
#![allow(dead_code, missing_docs)]

pub mod calls;
pub mod gst;
pub mod media;
pub mod metrics;
pub mod native;
pub mod ng;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use baton_control::{Client, ControlAddr};

/// How long a relay may take to start or stop before a test fails.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(15);

pub fn baton_bin() -> &'static str {
    env!("CARGO_BIN_EXE_baton")
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A running `baton run`, killed when dropped.
pub struct Relay {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub tcp_port: u16,
}

impl Relay {
    /// Starts a relay listening on a Unix socket in a fresh temp dir and on a
    /// free loopback TCP port, with `extra` flags, and waits until it answers.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_logging(extra, Some("debug"))
    }

    /// As [`Relay::start`], with RUST_LOG set to `rust_log` or (`None`)
    /// unset, so that the configuration's `log-level` decides.
    pub fn start_logging(extra: &[&str], rust_log: Option<&str>) -> Self {
        Self::start_under(&[], extra, rust_log)
    }

    /// As [`Relay::start_logging`], the binary run by `wrapper` (a command
    /// and its arguments, e.g. one that drops capabilities) when not empty.
    pub fn start_under(wrapper: &[&str], extra: &[&str], rust_log: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("control.sock");
        let tcp_port = free_tcp_port();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(baton_bin());
                command
            }
            None => Command::new(baton_bin()),
        };
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let child = command
            .arg("run")
            .arg("--control")
            .arg(format!("unix:{}", socket.display()))
            .arg("--control")
            .arg(format!("tcp:127.0.0.1:{tcp_port}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn baton run");
        let mut relay = Self {
            child,
            dir,
            socket,
            tcp_port,
        };
        relay.wait_ready();
        relay
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PROCESS_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("relay exited early ({status}): {}", self.stderr());
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("relay not ready in time: {}", self.stderr());
    }

    pub fn unix_addr(&self) -> ControlAddr {
        ControlAddr::Unix(self.socket.clone())
    }

    pub fn tcp_addr(&self) -> ControlAddr {
        ControlAddr::Tcp {
            host: "127.0.0.1".into(),
            port: self.tcp_port,
        }
    }

    pub fn tcp_socket_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.tcp_port))
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.unix_addr(), None)
            .await
            .expect("connect to the relay")
    }

    /// Runs `baton ctl --control unix:… ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl(&self.unix_addr().to_string(), args)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Waits (bounded) until the log has `text`; false if it never came.
    pub fn wait_for_log(&self, text: &str) -> bool {
        self.wait_for_line(|line| line.contains(text))
    }

    /// Waits (bounded) until a line of the log matches; false if none did.
    pub fn wait_for_line(&self, matches: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + PROCESS_DEADLINE;
        while Instant::now() < deadline {
            if self.stderr().lines().any(&matches) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        signal(&self.child, nix::sys::signal::Signal::SIGTERM);
        wait_bounded(&mut self.child)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the test `name` again, in this test binary, inside a network
/// namespace with only loopback (up), with `marker` set in its environment;
/// returns true in that inner run, which does the work, and false in the
/// outer one after checking the inner one passed. Nothing in the namespace
/// reaches any network.
pub fn inside_namespace(name: &str, marker: &str) -> bool {
    if std::env::var_os(marker).is_some() {
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("ip link set lo up");
        assert!(up.success());
        return true;
    }
    let exe = std::env::current_exe().expect("test binary");
    let mut command = Command::new("unshare");
    // As root the namespace needs no user namespace; otherwise map to root.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root {
        command.arg("--map-root-user");
    }
    let status = command
        .arg("--net")
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(marker, "1")
        .status()
        .expect("unshare");
    assert!(
        status.success(),
        "{name} failed inside its network namespace"
    );
    false
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral UDP port")
}

/// Whether `tool ARG` runs and succeeds (a tool a test needs is here).
pub fn tool_answers(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `unshare` and `ip` are here for [`inside_namespace`]; without
/// them a test fails under `BATON_REQUIRE_NETNS=1` (set by `.ci/run`) and
/// skips otherwise.
pub fn netns_tools_present() -> bool {
    let present = tool_answers("unshare", "--version") && tool_answers("ip", "-V");
    if !present {
        assert!(
            std::env::var_os("BATON_REQUIRE_NETNS").is_none(),
            "BATON_REQUIRE_NETNS is set but unshare or ip is missing (util-linux, iproute2)"
        );
        eprintln!("SKIPPED: unshare or ip missing (apt-get install util-linux iproute2)");
    }
    present
}

pub fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
    nix::sys::signal::kill(pid, signal).expect("send signal");
}

pub fn wait_bounded(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + PROCESS_DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `baton ctl --control ADDR ARGS` with a bounded timeout.
pub fn ctl(addr: &str, args: &[&str]) -> Output {
    Command::new(baton_bin())
        .args(["ctl", "--control", addr, "--timeout", "10"])
        .args(args)
        .env_remove("BATON_CONTROL_TOKEN")
        .output()
        .expect("run baton ctl")
}

pub fn stdout_json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "ctl failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is one JSON object")
}

pub fn path_exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}
