#!/usr/bin/env bash
# Run namesync for real in one command (as root): a private dnsmasq on
# 127.0.0.1:5354 serving namesync's addn-hosts file, and namesync-agent in the
# foreground feeding it with this machine's Podman containers, libvirt VMs (where
# libvirtd runs), the host's own name and two static names. Touches nothing of
# the machine's own DNS: all files live in /run/namesync-quickstart. Ctrl-C stops
# both.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "quickstart: run as root (sudo $0)" >&2; exit 1; }

Q=/run/namesync-quickstart
PORT=${PORT:-5354}
PODMAN_SOCK=/run/podman/podman.sock
say() { printf 'quickstart: %s\n' "$*"; }

# A second quickstart would empty the first one's file under its feet.
# status exits 3 only when no agent answers; 0 (healthy), 1 (degraded) and 4
# (cannot tell) all mean one may be running.
if [ -x .venv/bin/agentctl ]; then
  rc=0
  .venv/bin/agentctl --socket "$Q/control.sock" status >/dev/null 2>&1 || rc=$?
  if [ "$rc" -ne 3 ]; then
    say "already running (agentctl --socket $Q/control.sock status); stop it first" >&2
    exit 1
  fi
fi

contrib/dev-setup.sh

# libvirt VMs: the venv needs libvirt-python, which PyPI ships as a source package
# only (it builds against the libvirt headers). A distribution's python3-libvirt
# is not visible inside the venv; the [libvirt] extra is.
LIBVIRT=false
if command -v virsh >/dev/null && virsh -c qemu:///system version >/dev/null 2>&1; then
  if ! .venv/bin/python -c 'import libvirt' 2>/dev/null; then
    say "installing the [libvirt] extra (builds libvirt-python, ~10 s)"
    if command -v apt-get >/dev/null; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        libvirt-dev pkg-config gcc python3-dev >/dev/null
    elif command -v dnf >/dev/null; then
      dnf install -y -q libvirt-devel pkgconf-pkg-config gcc python3-devel >/dev/null
    fi
    .venv/bin/python -m pip install -q -e '.[libvirt]' || say "could not build libvirt-python; VMs will not be published"
  fi
  .venv/bin/python -c 'import libvirt' 2>/dev/null && LIBVIRT=true
else
  say "libvirtd is not running here: no VMs to show (start it: systemctl enable --now libvirtd)"
fi

PODMAN=false
if ! command -v podman >/dev/null; then
  say "Podman is not installed: no containers to show"
elif [ -S "$PODMAN_SOCK" ]; then
  PODMAN=true
else
  say "no Podman API socket at $PODMAN_SOCK: \`systemctl enable --now podman.socket\`"
  say "(namesync waits for it and publishes containers as soon as it appears)"
  PODMAN=true
fi

mkdir -p "$Q"
chmod 755 "$Q"   # dnsmasq reads the file as an unprivileged user
: > "$Q/addn-hosts"
chmod 644 "$Q/addn-hosts"
[ -f "$Q/hosts" ] || printf '127.0.0.1 localhost\n' > "$Q/hosts"

cat > "$Q/config.toml" <<TOML
# The default config (namesync-agent --print-default-config) with paths pointing
# at the quickstart's private dnsmasq and hosts file. Edit it, then
# \`agentctl --socket $Q/control.sock reload\`.
[control]
socket = "$Q/control.sock"

[dnsmasq]
addn_hosts = "$Q/addn-hosts"
pid_file = "$Q/dnsmasq.pid"

[hosts_file]
path = "$Q/hosts"

[networkmanager]
enabled = false   # the quickstart signals its own dnsmasq, not NetworkManager's

[resolved]
enabled = false   # no namesync0 link, no routing in the machine's systemd-resolved

[peers]
enabled = false   # /run/namesync/peer.sock belongs to the machine's system agent

[libvirt]
enabled = $LIBVIRT

[podman]
enabled = $PODMAN
socket = "$PODMAN_SOCK"

# [host]: host.dns.host follows the address of virbr0 (libvirt's bridge) when
# it exists; otherwise \`agentctl explain host.dns.host\` says why it is not published.

[[static]]
name = "hello.dns.host"
addresses = ["192.0.2.10", "2001:db8::10"]
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

CTL=".venv/bin/agentctl --socket $Q/control.sock"
VM=""
if $LIBVIRT; then
  # The DNS spelling of its name: lowercase, '_' and '.' become '-'.
  VM=$(virsh -c qemu:///system list --name 2>/dev/null | sed -n '/./{p;q}' | tr 'A-Z_.' 'a-z--')
fi
cat <<MSG

namesync quickstart: dnsmasq on 127.0.0.1:$PORT, config $Q/config.toml
In another terminal (as root):
  dig +short @127.0.0.1 -p $PORT hello.dns.host
  $CTL list                      # every name, where it comes from
  $CTL status
MSG
if $PODMAN; then
  cat <<MSG
A container resolves the moment it starts:
  podman run -d --rm --name web registry.fedoraproject.org/fedora-minimal sleep 600
  dig +short @127.0.0.1 -p $PORT web.dns.podman
  $CTL explain web.dns.podman    # the whole chain, a live answer, the verdict
  podman rm -f web; dig @127.0.0.1 -p $PORT web.dns.podman   # NXDOMAIN at once
MSG
fi
if [ -n "$VM" ]; then
  cat <<MSG
A running VM:
  dig +short @127.0.0.1 -p $PORT $VM.dns.libvirt
MSG
fi
cat <<MSG
Edit $Q/config.toml, then: $CTL reload
  and dig again: the new answer is there at once. Ctrl-C here stops namesync and dnsmasq.

MSG
.venv/bin/namesync-agent --config "$Q/config.toml"
