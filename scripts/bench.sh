#!/usr/bin/env bash
# Benchmarks baton against its anchors in one sitting on this machine, and
# writes BENCHMARKS.md.
#
# Anchors, all driven by the same generator (`baton load`):
#   direct     no relay: the generator's own ceiling
#   forwarder  benches/forwarder.rs: recvmmsg/sendmmsg, no parsing (the
#              syscall floor of this kernel)
#   rtpengine  Debian's rtpengine-daemon, userspace, 1 thread, driven over
#              its ng protocol (installed with apt-get when missing)
#   baton-1w   baton, one media worker
#   baton-2w   baton, one worker per core
#   baton-srtp / rtpengine-srtp  an SRTP device bridged to a plain remote
#              (section srtp, 1000 streams)
# Per anchor and stream count (100, 1000, 5000 one-way streams): the highest
# rate with < 0.1 % loss (a packet later than 50 ms counts as lost), found by
# bisection, fresh calls for every trial. Then latency and relay CPU per
# packet at 50 000 packets/s (1000 streams x 50 pps), memory per session,
# and baton with a handoff every 10 ms under that load. The relay runs on
# core 0, the generator on core 1; medians of REPS repetitions.
#
# Usage: scripts/bench.sh            (REPS=3 STEPS=6 TRIAL=3 by default)
#        REPS=1 STEPS=4 scripts/bench.sh   for a quicker, rougher run
# Everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v rtpengine >/dev/null; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rtpengine-daemon >/dev/null
  else
    echo "bench: rtpengine is not installed (apt-get install rtpengine-daemon); it will be skipped" >&2
  fi
fi
cargo build --release --quiet
forwarder=$(cargo bench --bench forwarder --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys; print([j["executable"] for j in map(json.loads, sys.stdin) if j.get("executable") and "forwarder" in j["executable"]][-1])')

BATON=./target/release/baton FORWARDER="$forwarder" python3 scripts/bench.py "$@"
