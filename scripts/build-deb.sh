#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (installed if missing) and checks
# it: its contents, and with INSTALL=1 (root, Debian 12) that it installs,
# that the unit passes `systemd-analyze verify`, and that the installed
# binary starts with the packaged config. Prints the .deb's path last.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "installing cargo-deb..."
    cargo install cargo-deb --locked --quiet
fi
deb=$(cargo deb --locked --profile deb 2>/dev/null | tail -n 1)
[ -f "$deb" ] || { echo "cargo deb did not produce a package"; exit 1; }

contents=$(dpkg-deb --contents "$deb")
for path in ./usr/bin/baton ./etc/baton/baton.toml ./usr/share/baton/baton.proto \
    ./usr/lib/systemd/system/baton.service ./usr/share/doc/baton/README.md \
    ./usr/lib/sysusers.d/baton.conf; do
    grep -q " $path\$" <<<"$contents" || { echo "missing from the package: $path"; exit 1; }
done
dpkg-deb --info "$deb" | sed -n 's/^ *\(Package\|Version\|Depends\|Installed-Size\):/&/p'

if [ "${INSTALL:-0}" = 1 ]; then
    dpkg -i "$deb"
    systemd-analyze verify /usr/lib/systemd/system/baton.service
    # The unit's user and group came with the package.
    getent group baton >/dev/null || { echo "no baton group after install"; exit 1; }
    # Without systemd as PID 1 (a container), start it as the unit would.
    timeout 5 /usr/bin/baton run --config /etc/baton/baton.toml \
        --control unix:/tmp/baton-deb-check.sock >/tmp/baton-deb-check.log 2>&1 &
    pid=$!
    for _ in $(seq 30); do
        /usr/bin/baton ctl --control unix:/tmp/baton-deb-check.sock ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    /usr/bin/baton ctl --control unix:/tmp/baton-deb-check.sock ping
    kill "$pid"
    wait "$pid" || true
fi
echo "$deb"
