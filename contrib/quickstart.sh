#!/usr/bin/env bash
# Run namesync for real in one command (as root): a private dnsmasq on
# 127.0.0.1:5354 serving namesync's addn-hosts file, and namesync-agent in the
# foreground feeding it. Touches nothing of the machine's own DNS: all files
# live in /run/namesync-quickstart. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "quickstart: run as root (sudo $0)" >&2; exit 1; }
contrib/dev-setup.sh

Q=/run/namesync-quickstart
PORT=${PORT:-5354}
mkdir -p "$Q"
chmod 755 "$Q"   # dnsmasq reads the file as an unprivileged user
: > "$Q/addn-hosts"
chmod 644 "$Q/addn-hosts"
[ -f "$Q/hosts" ] || printf '127.0.0.1 localhost\n' > "$Q/hosts"

[ -f "$Q/config.toml" ] || cat > "$Q/config.toml" <<TOML
# The embedded default (namesync-agent --print-default-config) with paths
# pointing at the quickstart's private dnsmasq and hosts file.
[control]
socket = "$Q/control.sock"

[dnsmasq]
addn_hosts = "$Q/addn-hosts"
pid_file = "$Q/dnsmasq.pid"

[hosts_file]
path = "$Q/hosts"

[[static]]
name = "hello.dns.host"
addresses = ["192.0.2.10", "2001:db8::10"]

# [host]: host.dns.host follows the address of virbr0 (libvirt's bridge) when
# it exists; otherwise \`agentctl status\` says why it is not published.
TOML

rm -f "$Q/dnsmasq.pid"
dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
  --listen-address=127.0.0.1 --port="$PORT" \
  --local=/dns.host/ --local=/dns.libvirt/ --local=/dns.podman/ \
  --addn-hosts="$Q/addn-hosts" --pid-file="$Q/dnsmasq.pid" --log-facility="$Q/dnsmasq.log" &
DNSMASQ=$!
trap 'kill $DNSMASQ 2>/dev/null; wait $DNSMASQ 2>/dev/null || true' EXIT
# namesync signals the pid in the pid file: wait until dnsmasq has written it.
for _ in $(seq 100); do [ -s "$Q/dnsmasq.pid" ] && break; sleep 0.05; done

cat <<MSG

namesync quickstart: dnsmasq on 127.0.0.1:$PORT, config $Q/config.toml
In another terminal try:
  dig +short @127.0.0.1 -p $PORT hello.dns.host
  .venv/bin/agentctl --socket $Q/control.sock status
Edit $Q/config.toml, then: .venv/bin/agentctl --socket $Q/control.sock reload
  (or: pkill -HUP -f namesync-agent), and dig again: the new answer is there at once.

MSG
.venv/bin/namesync-agent --config "$Q/config.toml"
