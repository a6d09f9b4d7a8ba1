#!/bin/sh
# keepalived's health check of baton (vrrp_script): fails when baton does
# not answer its control socket, or when it was fenced — another relay took
# the heartbeat key, and the calls, while this one still served — so that
# the floating address leaves this host.
stats=$(/usr/bin/baton ctl --control unix:/run/baton/control.sock --timeout 1 stats) || exit 1
case "$stats" in
    *'"role":"fenced"'*) exit 1 ;;
esac
exit 0
