"""Both units under a real systemd 252 (systemd-nspawn), installed from the RPM built here.

One container for the module: a Debian rootfs (tests/harness/rootfs.py,
cached), booted with --volatile=overlay, namesync installed from the RPM's
payload with its %post (tests/harness/installed.py), a real dnsmasq as a
unit of that systemd serving /run/namesync/addn-hosts, and dig asking it.
What a user relies on: `systemctl start` returns once names answer;
`systemctl reload` returns once the new names answer (no waiting) and fails,
keeping the old names, on a refused config; names survive stop/start and a
crash (Restart=on-failure); the sandbox is really applied (read from /proc
inside, not from `systemd-analyze security`, which scores the unit file);
the user unit reaches READY under user@UID.service; the resolved path (namesync0, its
own dnsmasq, the zone routed in the real systemd-resolved) comes up under the unit and
is withdrawn by `systemctl stop`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import installed, nspawn, rootfs
from tests.harness import rpm as rpmh
from tests.harness.dns import Answer, dig
from tests.harness.proc import parse_mountinfo, parse_status
from tests.harness.wait import until

pytestmark = [pytest.mark.integration, pytest.mark.systemd]

DNSMASQ_UNIT = """\
[Unit]
Description=the test's dnsmasq, serving namesync's addn-hosts
[Service]
ExecStart=/usr/sbin/dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
 --listen-address=127.0.0.1 --port=53 --addn-hosts=/run/namesync/addn-hosts \
 --pid-file=/run/test-dnsmasq.pid --local=/dns.test/ --log-facility=/run/test-dnsmasq.log
"""
# Every source that would need a daemon this container lacks is off: the test
# is about the units, not the sources.
CONFIG = """\
[daemon]
log_level = "debug"
[dnsmasq]
addn_hosts = "/run/namesync/addn-hosts"
pid_file = "/run/test-dnsmasq.pid"
local_zones = ["dns.test"]
[hosts_file]
path = "/etc/hosts"
[networkmanager]
enabled = false
# The image runs systemd-resolved: its path (tests/integration/test_resolved.py)
# would take dns.test off /etc/hosts, which these tests read.
[resolved]
enabled = false
[host]
enabled = false
[libvirt]
enabled = false
[podman]
enabled = false
"""
USER_CONFIG = """\
[host]
enabled = false
[libvirt]
enabled = false
[podman]
enabled = false
[[static]]
name = "mine.dns.test"
addresses = ["10.7.0.1"]
"""
# CapabilityBoundingSet=CAP_KILL CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_CHOWN CAP_FOWNER
#   CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID
CAP_BND = ((1 << 5) | (1 << 1) | (1 << 2) | (1 << 0) | (1 << 3)
           | (1 << 12) | (1 << 13) | (1 << 10) | (1 << 7) | (1 << 6))


def static(names: dict[str, str]) -> str:
    return "".join(f'[[static]]\nname = "{n}"\naddresses = ["{a}"]\n' for n, a in names.items())


@dataclass
class System:
    c: nspawn.Container

    def ask(self, name: str) -> Answer:
        assert self.c.pid1 is not None
        return dig(name, prefix=("nsenter", "-t", str(self.c.pid1), "-a", "--"))

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.c.run("systemctl", *args, check=check).stdout.strip()

    def prop(self, unit: str, name: str) -> str:
        return self.systemctl("show", "-p", name, "--value", unit)

    def configure(self, names: dict[str, str], extra: str = "") -> None:
        self.c.write("/etc/namesync/config.toml", CONFIG + static(names) + extra)


@pytest.fixture(scope="module")
def system(rpm_build: rpmh.Build, dependency_rpms: dict[str, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    for why in (rootfs.unavailable(), nspawn.unavailable()):
        if why:
            pytest.skip(why)
    # namesync and the two dependencies Fedora 43/44 lack (packaging/deps/), from
    # their RPMs; the rest (Fedora's own python3-* packages) from wheels.
    c = installed.container_with_rpms(
        rootfs.build(), (rpm_build.rpms["namesync"], *dependency_rpms.values()),
        tmp_path_factory.mktemp("payload"), tmp_path_factory.mktemp("nspawn"))
    c.boot()
    try:
        installed.install(c, rpm_build.rpms["namesync"], packaged=[
            name.removeprefix("python3-") for name in dependency_rpms])
        c.write("/etc/systemd/system/test-dnsmasq.service", DNSMASQ_UNIT)
        c.run("systemctl", "daemon-reload")
        c.run("systemctl", "start", "test-dnsmasq.service")
        yield System(c)
    finally:
        c.stop()


@pytest.fixture
def running(system: System) -> System:
    """namesync (re)started on the base config: web.dns.test only."""
    system.configure({"web.dns.test": "10.1.0.1"})
    # One restart per test: clear StartLimitBurst's count (5 starts in 60 s).
    system.systemctl("reset-failed", "namesync.service", check=False)
    system.systemctl("restart", "namesync.service")
    return system


def test_installed_from_the_rpm_enabled_by_preset_and_verified(system: System) -> None:
    assert system.systemctl("is-enabled", "namesync.service") == "enabled"  # the preset
    assert system.c.run("test", "-f", "/run/namesync/addn-hosts").returncode == 0  # tmpfiles
    verify = system.c.run("systemd-analyze", "verify", "namesync.service", check=False)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    # structlog and asyncinotify come from packaging/deps/' RPMs, in Fedora's sitelib.
    sitelib = rpmh.rpm_eval("%{python3_sitelib}")
    where = system.c.run("python3", "-c", "import agent, structlog, asyncinotify\n"
                         "for m in (agent, structlog, asyncinotify): print(m.__file__)")
    assert all(line.startswith(sitelib + "/") for line in where.stdout.split()), where.stdout


def test_shipped_config_starts_on_a_bare_system_and_says_what_to_start(system: System) -> None:
    """What `dnf install namesync; systemctl start namesync` gives on a host without
    libvirt, Podman or NetworkManager: READY at once, and each missing service named
    with its fix in the journal."""
    s = system
    s.c.run("cp", f"{installed.PAYLOAD}/etc/namesync/config.toml", "/etc/namesync/config.toml")
    s.systemctl("reset-failed", "namesync.service", check=False)
    s.systemctl("restart", "namesync.service")
    try:
        assert s.prop("namesync.service", "ActiveState") == "active"
        this_run = s.prop("namesync.service", "InvocationID")
        journal = s.c.run("journalctl", f"_SYSTEMD_INVOCATION_ID={this_run}", "-o", "cat",
                          "--no-pager").stdout
        assert "systemctl enable --now podman.socket" in journal
        assert "start libvirtd" in journal
        assert "ready" in journal
    finally:
        s.systemctl("stop", "namesync.service")


def test_start_returns_when_ready_and_names_answer(running: System) -> None:
    s = running
    assert s.prop("namesync.service", "ActiveState") == "active"
    assert s.prop("namesync.service", "StatusErrno") == "0"
    # Type=notify: start returned after READY=1, which comes after the first sync.
    assert s.ask("web.dns.test").records == ("10.1.0.1",)
    assert "web.dns.test" in s.c.host_path("/etc/hosts").read_text()


def test_reload_is_synchronous(running: System) -> None:
    s = running
    s.configure({"web.dns.test": "10.1.0.1", "new.dns.test": "10.1.0.2"})
    s.systemctl("reload", "namesync.service")
    assert s.ask("new.dns.test").records == ("10.1.0.2",)  # at once, no polling
    assert s.prop("namesync.service", "ActiveState") == "active"
    # dnsmasq runs as another user: that SIGHUP needed CAP_KILL, from the unit's
    # five-capability bounding set (see test_sandbox_is_applied_...).
    dnsmasq = s.prop("test-dnsmasq.service", "MainPID")
    uid = parse_status(s.c.run("cat", f"/proc/{dnsmasq}/status").stdout)["Uid"].split()[0]
    assert uid != "0"


def test_refused_reload_fails_and_keeps_serving_the_old_names(running: System) -> None:
    s = running
    pid = s.prop("namesync.service", "MainPID")
    s.configure({"web.dns.test": "10.1.0.9", "x..dns.test": "10.1.0.3"})
    r = s.c.run("systemctl", "reload", "namesync.service", check=False)
    assert r.returncode != 0
    journal = s.c.run("journalctl", "-u", "namesync.service", "-o", "cat", "--no-pager").stdout
    assert "empty label" in journal  # agentctl's stderr: the reason, in the unit's journal
    assert s.ask("web.dns.test").records == ("10.1.0.1",)
    assert s.prop("namesync.service", "ActiveState") == "active"
    assert s.prop("namesync.service", "MainPID") == pid


def test_stop_keeps_the_names_and_start_serves_them_again(running: System) -> None:
    s = running
    s.systemctl("stop", "namesync.service")
    assert s.prop("namesync.service", "ActiveState") == "inactive"
    # RuntimeDirectoryPreserve=yes: dnsmasq still serves the last published names.
    assert "web.dns.test" in s.c.host_path("/run/namesync/addn-hosts").read_text()
    assert s.ask("web.dns.test").records == ("10.1.0.1",)
    s.configure({"web.dns.test": "10.1.0.1", "after.dns.test": "10.1.0.4"})
    s.systemctl("start", "namesync.service")
    assert s.ask("after.dns.test").records == ("10.1.0.4",)


def test_restart_on_failure_after_sigkill(running: System) -> None:
    s = running
    pid = s.prop("namesync.service", "MainPID")
    s.c.run("kill", "-KILL", pid)
    until(lambda: s.prop("namesync.service", "MainPID") not in ("0", pid)
          and s.prop("namesync.service", "ActiveState") == "active",
          timeout=20, interval=0.05, what="namesync restarted by systemd")
    assert s.prop("namesync.service", "NRestarts") == "1"
    assert s.ask("web.dns.test").records == ("10.1.0.1",)


def test_sandbox_is_applied_to_the_running_process(running: System) -> None:
    s = running
    pid = s.prop("namesync.service", "MainPID")
    st = parse_status(s.c.run("cat", f"/proc/{pid}/status").stdout)
    assert int(st["CapBnd"], 16) == CAP_BND
    assert st["NoNewPrivs"] == "1"
    assert st["Seccomp"] == "2"  # filter mode: SystemCallFilter=@system-service
    mounts = {m.point: m for m in parse_mountinfo(s.c.run("cat", f"/proc/{pid}/mountinfo").stdout)}
    for path in ("/usr", "/boot", "/home", "/proc/sys"):
        assert path in mounts and mounts[path].read_only, path
    # /etc stays writable (the hosts file is replaced by rename in /etc), and so
    # does / itself: ProtectSystem=yes, not full or strict.
    assert "/etc" not in mounts and not mounts["/"].read_only
    assert mounts["/tmp"].fstype == "tmpfs"  # PrivateTmp=yes


@dataclass
class UserSession:
    """A real user with a running user@UID.service in the container: the hook for the
    user-session tests (issue 12) to add publishing through the system agent."""

    system: System
    name: str
    uid: int

    @property
    def runtime_dir(self) -> str:
        return f"/run/user/{self.uid}"

    def run(self, *argv: str, check: bool = True) -> str:
        return self.system.c.run("runuser", "-u", self.name, "--", "env",
                                 f"XDG_RUNTIME_DIR={self.runtime_dir}", *argv,
                                 check=check).stdout.strip()

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.run("systemctl", "--user", *args, check=check)

    def write(self, path: str, text: str) -> None:
        self.system.c.write(path, text)
        self.system.c.run("chown", f"{self.name}:", path)


@pytest.fixture(scope="module")
def user_session(system: System) -> Iterator[UserSession]:
    c = system.c
    c.run("useradd", "--create-home", "--uid", "1000", "tester")
    c.run("systemctl", "start", "user@1000.service")
    u = UserSession(system, "tester", 1000)
    u.run("mkdir", "-p", "/home/tester/.config/namesync")
    yield u
    c.run("systemctl", "stop", "user@1000.service", check=False)


def test_user_unit_reaches_ready_under_user_manager(user_session: UserSession) -> None:
    u = user_session
    u.write("/home/tester/.config/namesync/config.toml", USER_CONFIG)
    verify = u.run("systemd-analyze", "--user", "verify", "namesync.service", check=False)
    assert verify == "", verify
    u.systemctl("start", "namesync.service")  # returns after the user agent's READY=1
    assert u.systemctl("show", "-p", "ActiveState", "--value", "namesync.service") == "active"
    assert u.systemctl("show", "-p", "Type", "--value", "namesync.service") == "notify"
    # ExecReload=agentctl reload, run as the user, reaches the user's own agent.
    u.systemctl("reload", "namesync.service")
    u.write("/home/tester/.config/namesync/config.toml", USER_CONFIG + "[daemon]\nbogus = 1\n")
    refused = u.system.c.run("runuser", "-u", u.name, "--", "env",
                             f"XDG_RUNTIME_DIR={u.runtime_dir}", "systemctl", "--user",
                             "reload", "namesync.service", check=False)
    assert refused.returncode != 0
    assert u.systemctl("show", "-p", "ActiveState", "--value", "namesync.service") == "active"
    # Publishing through the system agent's peer socket (issue 12) extends this
    # test: the user agent runs in user mode, its sink pushes to the system agent.
    u.systemctl("stop", "namesync.service")


def test_user_unit_publishes_through_the_system_agent(running: System,
                                                      user_session: UserSession) -> None:
    """The user agent (user unit, user mode) pushes its table over the system agent's
    peer socket; the system agent publishes what is inside the user's sub-zone and
    refuses (and shows, with the uid) what is not."""
    u = user_session
    u.write("/home/tester/.config/namesync/config.toml", USER_CONFIG + static(
        {"web.tester.dns.podman": "10.7.0.2"}))
    u.systemctl("start", "namesync.service")
    try:
        until(lambda: running.ask("web.tester.dns.podman").records == ("10.7.0.2",),
              timeout=20, interval=0.05, what="the user's name served by the system's dnsmasq")
        assert running.ask("mine.dns.test").status == "NXDOMAIN"  # outside its sub-zone
        status = json.loads(running.c.run("agentctl", "status", "--json", check=False).stdout)
        refused = [r for r in status["table"]["rejected"] if r["source"] == f"peer:{u.uid}"]
        assert [r["value"] for r in refused] == ["mine.dns.test"]
        assert f"uid {u.uid} (tester)" in refused[0]["display"]
        user = json.loads(u.run("agentctl", "status", "--json", check=False))
        [sink] = user["sinks"]
        assert (sink["kind"], sink["connected"], sink["accepted"]) == ("peer-push", True, 1)
    finally:
        u.systemctl("stop", "namesync.service")
    # The user agent stopped: its name stays for the grace period (30 s by default).
    assert running.ask("web.tester.dns.podman").records == ("10.7.0.2",)


RESOLVED_CONFIG = CONFIG.replace("[resolved]\nenabled = false", "[resolved]\nenabled = true")


def _hosts_block(s: System) -> str:
    return s.c.run("cat", "/etc/hosts").stdout


def test_resolved_path_under_the_real_unit(system: System) -> None:
    """The installed unit, hardening and CapabilityBoundingSet as shipped, with the
    container's real systemd-resolved 252: namesync0 is made, namesync's dnsmasq (its
    child, under the same sandbox) answers on 127.0.0.153:53, the zone is routed on the
    link, and `resolvectl query` answers from it; `systemctl stop` withdraws it all and
    gives the hosts block its names back."""
    s = system
    assert s.systemctl("is-active", "systemd-resolved.service", check=False) == "active"
    # Every real host has one (the minbase image has no netbase): the block goes in it.
    s.c.write("/etc/hosts", "127.0.0.1 localhost\n")
    s.c.write("/etc/namesync/config.toml", RESOLVED_CONFIG + static({"web.dns.test": "10.1.0.1"}))
    s.systemctl("reset-failed", "namesync.service", check=False)
    s.systemctl("restart", "namesync.service")
    try:
        main = s.prop("namesync.service", "MainPID")
        link = s.c.run("ip", "-o", "addr", "show", "dev", "namesync0").stdout
        assert "inet 198.18.53.53/32" in link, link
        # namesync's dnsmasq: a child of the daemon, bound where resolved asks.
        own = s.c.run("cat", "/run/namesync/dnsmasq.pid").stdout.strip()
        st = parse_status(s.c.run("cat", f"/proc/{own}/status").stdout)
        assert st["PPid"] == main
        # Under the unit's sandbox too, and no longer root once its port is bound.
        assert int(st["CapBnd"], 16) == CAP_BND and st["NoNewPrivs"] == "1"
        assert st["Uid"].split()[0] != "0", st["Uid"]
        assert s.c.run("cat", f"/proc/{own}/comm").stdout.strip() == "dnsmasq"
        assert dig("web.dns.test", server="127.0.0.153",
                   prefix=("nsenter", "-t", str(s.c.pid1), "-a", "--")).records == ("10.1.0.1",)
        status = until(lambda: "~dns.test" in (o := s.c.run(
            "resolvectl", "status", "namesync0", check=False).stdout) and o, timeout=15,
            what="the zone registered on namesync0")
        assert "DNS Servers: 127.0.0.153" in status and "-DefaultRoute" in status, status
        # From DNS (not /etc/hosts: that would say "synthetic"); the container's only
        # DNS server is the one on namesync0 (--private-network: no other link).
        query = s.c.run("resolvectl", "query", "web.dns.test").stdout
        assert "web.dns.test: 10.1.0.1" in query and "Data from: network" in query, query
        # While routed, the hosts block leaves the zone to resolved.
        assert "web.dns.test" not in _hosts_block(s)
        # The same seen from the daemon.
        shown = s.c.run("agentctl", "status", check=False).stdout
        assert "path      systemd-resolved" in shown and ": registered" in shown, shown
    finally:
        s.systemctl("stop", "namesync.service")
    # Stopped: no link for resolved to route to a dead server, no dnsmasq left, the
    # hosts block serving the names again, resolved answering from it.
    assert s.c.run("ip", "link", "show", "namesync0", check=False).returncode != 0
    assert "namesync0" not in s.c.run("resolvectl", "status", check=False).stdout
    assert s.c.run("test", "-d", f"/proc/{own}", check=False).returncode != 0
    hosts = _hosts_block(s)
    assert hosts.startswith("127.0.0.1 localhost\n") and "10.1.0.1 web.dns.test" in hosts, hosts
    until(lambda: "web.dns.test: 10.1.0.1" in s.c.run(
        "resolvectl", "query", "web.dns.test", check=False).stdout, timeout=10,
        what="resolved answering from /etc/hosts again")
