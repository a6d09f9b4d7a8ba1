//! The handoff demo a new user runs, run as they would run it.

mod common;

#[test]
fn handoff_demo_shows_one_continuous_stream() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plot = dir.path().join("switch.svg");
    let output = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/handoff-demo.sh"
        ))
        .arg("2")
        .arg("--plot")
        .arg(&plot)
        .env("BATON", common::baton_bin())
        .env("NO_TSHARK", "1")
        .output()
        .expect("run scripts/handoff-demo.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("RESULT: one continuous stream"), "{stdout}");
    assert!(stdout.contains("SSRCs seen: 1 "), "{stdout}");
    assert!(
        stdout.contains("sequence errors (gap or repeat): 0"),
        "{stdout}"
    );
    // The picture: both devices' points and the switch.
    let svg = std::fs::read_to_string(&plot).expect("the plot was written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("#1f77b4") && svg.contains("#ff7f0e"), "{svg}");
    assert_eq!(svg.matches("0 (switch)").count(), 2);
}
