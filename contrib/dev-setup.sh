#!/usr/bin/env bash
# Install what namesync needs to run and be tested, then a venv with the project:
# dnsmasq, dig, iproute2 from the distribution; Python packages from PyPI.
# Debian/Ubuntu (apt) or Fedora (dnf); run as root. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

deb_pkgs=(dnsmasq-base dnsutils iproute2 python3-venv util-linux)
rpm_pkgs=(dnsmasq bind-utils iproute python3 util-linux)

if command -v apt-get >/dev/null; then
  missing=()
  for p in "${deb_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -q
    # policy-rc.d keeps postinst scripts from starting a system dnsmasq where it applies;
    # dnsmasq-base ships no service anyway.
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
  fi
elif command -v dnf >/dev/null; then
  dnf install -y -q "${rpm_pkgs[@]}"
else
  echo "dev-setup: neither apt-get nor dnf found; install: dnsmasq, dig, iproute2" >&2
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
