//! The README's configuration reference names every flag of `baton run`,
//! and no flag that does not exist.

mod common;

use std::collections::BTreeSet;

/// Long flags mentioned in `text`, like `--media-ip`.
fn flags_in(text: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("--") {
        let start = i + at + 2;
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_lowercase() || c == '-'))
                .unwrap_or(text.len() - start);
        if end > start && bytes[start].is_ascii_lowercase() {
            flags.insert(text[start..end].trim_end_matches('-').to_owned());
        }
        i = end.max(start);
    }
    flags
}

#[test]
fn readme_reference_matches_the_flags_of_baton_run() {
    let help = std::process::Command::new(common::baton_bin())
        .args(["run", "--help"])
        .output()
        .expect("baton run --help");
    let mut actual = flags_in(&String::from_utf8_lossy(&help.stdout));
    actual.remove("help");
    assert!(
        actual.contains("media-ip") && actual.contains("control"),
        "{actual:?}"
    );

    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let table_start = readme
        .find("| flag / key | default | meaning |")
        .expect("the reference table");
    let table: String = readme[table_start..]
        .lines()
        .take_while(|line| line.starts_with('|'))
        .collect::<Vec<_>>()
        .join("\n");
    let documented = flags_in(&table);
    assert_eq!(
        documented, actual,
        "README reference table vs `baton run --help`"
    );

    // Every flag is also a key of the config file (same name), except the
    // one naming the file: a wrong-typed value for a known key is refused
    // as such, never as an unknown field.
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("baton.toml");
    for key in actual.iter().filter(|f| *f != "config") {
        std::fs::write(&path, format!("{key} = {{ wrong = \"type\" }}\n")).expect("write");
        let output = std::process::Command::new(common::baton_bin())
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .expect("baton run --config");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{key}: {stderr}");
        assert!(
            !stderr.contains("unknown field"),
            "{key} is not a config key: {stderr}"
        );
        // A known key with a value of the wrong type (or, for an enum, an
        // unknown variant).
        assert!(
            stderr.contains("invalid type") || stderr.contains("unknown variant"),
            "{key}: {stderr}"
        );
    }
}

#[test]
fn the_packaged_default_config_names_every_key() {
    let help = std::process::Command::new(common::baton_bin())
        .args(["run", "--help"])
        .output()
        .expect("baton run --help");
    let mut keys = flags_in(&String::from_utf8_lossy(&help.stdout));
    keys.remove("help");
    keys.remove("config");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/baton.toml");
    let text = std::fs::read_to_string(path).expect("contrib/baton.toml");
    for key in &keys {
        assert!(
            text.lines().any(|line| {
                let line = line.trim_start_matches(['#', ' ']);
                line.starts_with(&format!("{key} ="))
            }),
            "contrib/baton.toml does not mention {key}"
        );
    }
    // As shipped (comments and all), it is a valid configuration.
    let dir = tempfile::tempdir().expect("dir");
    let copy = dir.path().join("baton.toml");
    std::fs::write(
        &copy,
        text.replace(
            "unix:/run/baton/control.sock",
            &format!("unix:{}/c.sock", dir.path().display()),
        )
        .replace(
            "tcp:127.0.0.1:7120",
            &format!("tcp:127.0.0.1:{}", common::free_tcp_port()),
        ),
    )
    .expect("write");
    let mut child = std::process::Command::new(common::baton_bin())
        .args(["run", "--config"])
        .arg(&copy)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("baton run");
    let socket = dir.path().join("c.sock");
    let deadline = std::time::Instant::now() + common::PROCESS_DEADLINE;
    while !socket.exists() && std::time::Instant::now() < deadline {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the shipped config was refused"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        socket.exists(),
        "the relay did not start with the shipped config"
    );
    common::signal(&child, nix::sys::signal::Signal::SIGTERM);
    assert!(common::wait_bounded(&mut child).success());
}

/// The README's table of drop reasons names every reason the relay counts,
/// and nothing else.
#[test]
fn readme_lists_every_drop_reason() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let start = readme
        .find("| reason | what was dropped |")
        .expect("the drop reasons table");
    let documented: BTreeSet<&str> = readme[start..]
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .filter_map(|line| line.split('`').nth(1))
        .collect();
    let actual: BTreeSet<&str> = baton_relay::core::stream::DropReason::ALL
        .iter()
        .map(|reason| reason.name())
        .collect();
    assert_eq!(documented, actual);
}

/// docs/kamailio.md maps every rtpengine option the relay names in its
/// refusals (the two tables are kept together by this test).
#[test]
fn the_rtpengine_option_table_covers_what_the_relay_names() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/kamailio.md"))
        .expect("docs/kamailio.md");
    let start = doc.find("| rtpengine | baton |").expect("the table");
    let table: String = doc[start..]
        .lines()
        .take_while(|line| line.starts_with('|'))
        .collect::<Vec<_>>()
        .join("\n");
    for option in [
        "interface",
        "port-min",
        "port-max",
        "num-threads",
        "timeout",
        "silent-timeout",
        "final-timeout",
        "delete-delay",
        "listen-cli",
        "listen-tcp",
        "log-level",
        "redis",
        "recording-dir",
        "tos",
    ] {
        assert!(
            table.contains(&format!("`{option}`")),
            "{option} missing from the table"
        );
    }
}

/// Issue 24: the README's operating sections name only real things: every
/// `baton ctl COMMAND` is a command of `baton ctl`, every flag given to
/// `baton ctl drain` is one of its flags, and every key the SIGHUP row says
/// is reloaded is a key of `baton run`.
#[test]
fn the_readmes_operating_sections_match_the_binary() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let help = |args: &[&str]| {
        let output = std::process::Command::new(common::baton_bin())
            .args(args)
            .output()
            .expect("baton --help");
        assert!(output.status.success(), "{args:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let ctl_help = help(&["ctl", "--help"]);
    let commands: BTreeSet<&str> = ctl_help
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(
        commands.contains("drain") && commands.contains("top"),
        "{commands:?}"
    );
    let mut named = BTreeSet::new();
    for (at, _) in readme.match_indices("baton ctl ") {
        let rest = &readme[at + "baton ctl ".len()..];
        // Skip the global options (`--control ADDR`) to the command.
        let mut words = rest.split_whitespace();
        let mut word = words.next().unwrap_or_default();
        while word.starts_with("--") {
            words.next();
            word = words.next().unwrap_or_default();
        }
        let command: String = word
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '-')
            .collect();
        if !command.is_empty() {
            named.insert(command);
        }
    }
    for command in &named {
        assert!(
            commands.contains(command.as_str()),
            "README names `baton ctl {command}`, which does not exist"
        );
    }
    assert!(named.contains("drain"), "{named:?}");

    let drain_flags = flags_in(&help(&["ctl", "drain", "--help"]));
    for flag in ["deadline", "refuse-ng-ping", "cancel"] {
        assert!(drain_flags.contains(flag), "{flag}: {drain_flags:?}");
        assert!(
            readme.contains(&format!("--{flag}")),
            "README explains --{flag}"
        );
    }

    let run_flags = flags_in(&help(&["run", "--help"]));
    let sighup = readme
        .lines()
        .find(|line| line.starts_with("| SIGHUP |"))
        .expect("the SIGHUP row of the signals table");
    let keys: Vec<&str> = sighup
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|key| key.contains('-'))
        .collect();
    assert!(keys.len() >= 8, "{keys:?}");
    for key in keys {
        assert!(
            run_flags.contains(key),
            "the SIGHUP row names {key}, which is not a key of baton run"
        );
    }
}

/// docs/kamailio.md's table of every ng key and flag is the one the relay
/// reads by (`BATON_WRITE_DOCS=1` writes it there).
#[test]
fn the_ng_flag_table_in_the_docs_is_the_relays_own() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/kamailio.md");
    let doc = std::fs::read_to_string(path).expect("docs/kamailio.md");
    let (start, end) = (
        "<!-- ng-vocabulary:start -->\n",
        "<!-- ng-vocabulary:end -->",
    );
    let from = doc.find(start).expect("the start marker") + start.len();
    let to = doc.find(end).expect("the end marker");
    let table = baton_control::ng::vocabulary::markdown_table();
    if std::env::var_os("BATON_WRITE_DOCS").is_some() {
        std::fs::write(path, format!("{}{table}{}", &doc[..from], &doc[to..])).expect("write");
        return;
    }
    assert_eq!(
        doc[from..to],
        table,
        "run BATON_WRITE_DOCS=1 cargo test --test docs to refresh the table"
    );
    // What Kamailio's and OpenSIPS's modules always send or make of their
    // own flag words is in it.
    for word in [
        "call-id",
        "from-tag",
        "to-tag",
        "via-branch",
        "received-from",
        "supports",
        "sip-message-type",
        "rtpp-flags",
        "replace",
        "direction",
        "transport-protocol",
        "media-address",
        "address-family",
        "rtcp-mux",
        "sdes",
        "t.38",
        "codec",
        "delete-delay",
        "repacketize",
        "tos",
        "directional",
        "force-answer",
    ] {
        assert!(table.contains(&format!("| `{word}` |")), "{word}");
    }
}
