#!/usr/bin/env bash
# Install what namesync needs to run and be tested, then a venv with the project:
# dnsmasq, dig, iproute2 from the distribution; Python packages from PyPI.
# Debian/Ubuntu (apt) or Fedora (dnf); run as root. Idempotent.
#   --test  also what the integration tests run for real: NetworkManager,
#           dbus-daemon, libvirtd with the LXC driver, QEMU (session VMs under TCG),
#           Podman (they only ever run inside the tests' private namespaces), and
#           libvirt-python.
set -euo pipefail
cd "$(dirname "$0")/.."

deb_pkgs=(dnsmasq-base dnsutils iproute2 python3-venv util-linux)
rpm_pkgs=(dnsmasq bind-utils iproute python3 util-linux)
if [ "${1:-}" = "--test" ]; then
  rpm_pkgs+=(NetworkManager dbus-daemon dbus-tools libvirt-daemon libvirt-daemon-driver-lxc
             libvirt-daemon-driver-network libvirt-client libvirt-devel pkgconf-pkg-config gcc
             python3-devel busybox podman netavark aardvark-dns runc conmon slirp4netns
             systemd-container mmdebstrap rpm-build rpmlint cpio checkpolicy
             selinux-policy-devel make bzip2 git man-db groff-base zsh fish
             qemu-system-x86-core libvirt-daemon-driver-qemu)
  deb_pkgs+=(dbus busybox-static libvirt-clients libvirt-dev pkg-config gcc python3-dev
             libvirt-daemon libvirt-daemon-driver-lxc podman netavark aardvark-dns runc conmon
             uidmap catatonit slirp4netns   # rootless Podman (the user-session tests)
             golang-github-containers-common
             # tests/system: a real systemd booted with systemd-nspawn in a Debian rootfs
             # (mmdebstrap), the RPM built and linted from the spec, the SELinux module
             # compiled, man pages rendered, completions run.
             systemd-container mmdebstrap rpm rpmlint cpio checkpolicy selinux-policy-dev make
             bzip2 git man-db groff-base zsh fish
             # a real qemu:///session guest under TCG (tests/integration/test_qemu_session.py;
             # its kernel is apt-get download'ed and cached on first use)
             qemu-system-x86 libvirt-daemon-driver-qemu)
  # These two start a system service on install (network-manager becomes the
  # machine's network manager; libvirt-daemon-system starts libvirtd with its
  # default network). Install them only where that cannot happen (policy-rc.d
  # refuses service starts, as in CI containers) or where they already are.
  for p in network-manager libvirt-daemon-system; do
    if dpkg -s "$p" >/dev/null 2>&1 || [ -x /usr/sbin/policy-rc.d ] || [ -n "${CI:-}" ]; then
      deb_pkgs+=("$p")
    else
      echo "dev-setup: not installing $p (it would start on this machine);" \
           "the tests that need it will be skipped" >&2
    fi
  done
fi

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
if [ "${1:-}" = "--test" ]; then
  # libvirt-python is an sdist on PyPI: it builds against libvirt-dev (~6 s).
  .venv/bin/python -m pip install -q -e '.[libvirt]'
fi
