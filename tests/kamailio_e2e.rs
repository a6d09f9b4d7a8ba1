//! scripts/kamailio-e2e.sh as CI runs it: Kamailio (running
//! contrib/kamailio/kamailio.cfg as shipped) and SIPp drive baton over the
//! ng protocol, a call is handed over to another device with INVITE /
//! Replaces, the remote must receive one continuous stream, in-dialog
//! requests after the handoff reach the right party in its own dialog, and
//! nothing is left on the relay (see the script's cases, among them a
//! relay set of an HA pair and a single baton: a failover mid-call, and a
//! dead relay skipped for a new call). Needs
//! kamailio and sipp (Debian: kamailio, sip-tester); without them the test
//! says so and passes, unless BATON_REQUIRE_KAMAILIO_E2E is set (CI sets it
//! after installing them).

mod common;

use std::process::Command;

fn present(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success() || !o.stdout.is_empty() || !o.stderr.is_empty())
}

#[test]
fn kamailio_and_sipp_hand_a_call_over_through_baton() {
    let kamailio = present("kamailio", "-v") || present("/usr/sbin/kamailio", "-v");
    let sipp = present("sipp", "-v");
    if !(kamailio && sipp) {
        let missing = format!("kamailio {kamailio}, sipp {sipp}");
        assert!(
            std::env::var_os("BATON_REQUIRE_KAMAILIO_E2E").is_none(),
            "BATON_REQUIRE_KAMAILIO_E2E is set but not everything is installed: {missing}"
        );
        eprintln!("SKIPPED: {missing} (apt-get install kamailio sip-tester)");
        return;
    }
    let tshark = common::gst::tshark_present();
    // The cases one after another (they use the same ports).
    for (case, lines) in [
        (
            "basic",
            &[
                "device A's leg ended by the proxy's BYE",
                "bob's one dialog ended by one BYE in it",
                "switches between devices: 1",
            ][..],
        ),
        (
            "held",
            &[
                "device B got the remote's re-INVITE and BYE in its own dialog, and its own re-INVITE reached bob in his",
                "device A's leg ended by the proxy's BYE",
                "bob's hold re-INVITE and BYE were answered in his own dialog",
                "device B's temporary GRUU was unbound when it unregistered",
                "switches between devices: 1",
            ][..],
        ),
        (
            "callee",
            &[
                "device A's leg ended by the proxy's BYE",
                "bob's one dialog ended by one BYE in it",
                "switches between devices: 1",
            ][..],
        ),
        (
            "refused",
            &[
                "device B was refused twice (421 Require: gruu; 488 no common codec) and the call stayed with A",
                "device A's call ended by bob's BYE",
                "switches between devices: 0",
            ][..],
        ),
        (
            "routed",
            &[
                "device A's leg ended by the proxy's BYE",
                "bob's one dialog ended by one BYE in it",
                "B's BYE reached bob through the proxy his dialog was routed by",
                "switches between devices: 1",
            ][..],
        ),
        (
            "withdrawn",
            &[
                "device B withdrew after the proxy's 200 OK and the call stayed with A",
                "device B (must not be heard): sent yes, heard 0",
                "device A's call ended by bob's BYE",
                "switches between devices: 0",
            ][..],
        ),
        (
            "chain",
            &[
                "device B's leg ended by the proxy's BYE in its own dialog",
                "device A's second leg ended by the proxy's BYE in its own dialog",
                "device A's leg ended by the proxy's BYE",
                "bob's one dialog ended by one BYE in it",
                "switches between devices: 3",
            ][..],
        ),
        // Issue 20: Kamailio's relay set of an HA pair and a single baton.
        (
            "relayset",
            &[
                "the pair's active relay was killed while B talked",
                "the standby took the call over in",
                "device A's leg ended by the proxy's BYE",
                "bob's one dialog ended by one BYE in it",
                "forward jumps (failovers): 1",
                "switches between devices: 1",
            ][..],
        ),
        (
            "relayset-down",
            &[
                "the single baton of the relay set was killed before the call",
                "the call went to the relay set's live relay",
                "device A's leg ended by the proxy's BYE",
                "switches between devices: 1",
            ][..],
        ),
    ] {
        let output = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/kamailio-e2e.sh"
            ))
            .arg(case)
            .env("BATON", common::baton_bin())
            .output()
            .expect("run scripts/kamailio-e2e.sh");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{case}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for line in lines.iter().chain(&[
            "SSRCs seen: 1 ",
            "sequence errors (gap or repeat): 0",
            "timestamps going backwards: 0",
            "RESULT: one continuous stream",
            "baton lists no session afterwards",
            "PASS",
        ]) {
            assert!(
                stdout.contains(line),
                "{case}: missing {line:?} in:\n{stdout}"
            );
        }
        if tshark {
            // tshark's own analysis of bob's capture agrees (a failover
            // loses the packets sent while no relay forwarded).
            let line = if case == "relayset" {
                "tshark: one RTP stream at bob, "
            } else {
                "tshark: one RTP stream at bob, nothing lost, no problem"
            };
            assert!(
                stdout.contains(line),
                "{case}: missing {line:?} in:\n{stdout}"
            );
        }
    }
}
