"""config.toml: every problem names its key, all problems are reported at once."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path

import pytest

from agent.config import load
from agent.config.load import (
    default_config_path,
    default_socket_path,
    embedded_default_text,
    load_config,
    parse_config,
)
from agent.config.schema import Config, ConfigError, StaticEntry

# Every problem starts with the dotted key it is about: "static[0].addresses[2]: ...".
KEY_PREFIX = re.compile(r"^[a-z_]+(\[\d+\])?(\.[a-z_]+(\[\d+\])?)*: ")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "/etc/namesync/config.toml")
    assert err.value.source == "/etc/namesync/config.toml"
    return err.value.problems


def only_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def test_full_config_parses_to_typed_values() -> None:
    cfg = parse_config(
        """
        [daemon]
        coalesce_ms = 0
        log_level = "debug"
        [control]
        socket = "/run/ns/ctl.sock"
        allow_uids = [1000, 1001]
        [dnsmasq]
        enabled = false
        addn_hosts = "/run/ns/addn"
        pid_file = "/run/dm.pid"
        [hosts_file]
        enabled = false
        path = "/tmp/hosts"
        [[static]]
        name = "DB.dns.host."
        addresses = ["fd00::10", "192.168.122.10"]
        """,
        "/x/config.toml",
    )
    assert cfg.daemon.coalesce_ms == 0
    assert cfg.daemon.log_level == "debug"
    assert cfg.control.socket == Path("/run/ns/ctl.sock")
    assert cfg.control.allow_uids == (1000, 1001)
    assert cfg.dnsmasq.enabled is False
    assert cfg.dnsmasq.addn_hosts == Path("/run/ns/addn")
    assert cfg.dnsmasq.pid_file == Path("/run/dm.pid")
    assert cfg.hosts_file.enabled is False
    assert cfg.hosts_file.path == Path("/tmp/hosts")
    assert cfg.static == (
        StaticEntry(
            "db.dns.host",
            (ipaddress.ip_address("fd00::10"), ipaddress.ip_address("192.168.122.10")),
        ),
    )
    assert cfg.origin == "/x/config.toml"


def test_bad_static_name_names_its_index() -> None:
    p = only_problem(
        """
        [[static]]
        name = "db.dns.host"
        addresses = ["192.168.122.10"]
        [[static]]
        name = "bad_name.dns.host"
        addresses = ["192.168.122.11"]
        """
    )
    assert p.startswith("static[1].name: ")
    assert "bad_name" in p


@pytest.mark.parametrize(
    ("address", "reason_has"),
    [
        ("10.0.0.300", "not an IPv4 or IPv6 address"),
        ("fe80::1%eth0", "zone index"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("10.0.0.0/24", "not an IPv4 or IPv6 address"),
    ],
)
def test_bad_address_names_its_index(address: str, reason_has: str) -> None:
    p = only_problem(
        f"""
        [[static]]
        name = "db.dns.host"
        addresses = ["10.0.0.1", "fd00::1", "{address}"]
        """
    )
    assert p.startswith("static[0].addresses[2]: ")
    assert reason_has in p
    assert address in p


def test_non_string_address_names_its_index() -> None:
    p = only_problem('[[static]]\nname = "db.dns.host"\naddresses = [10]\n')
    assert p.startswith("static[0].addresses[0]: ")


@pytest.mark.parametrize(
    ("text", "starts"),
    [
        ("[daemon]\ncoalesce_ms = true\n", "daemon.coalesce_ms: expected int, got bool"),
        ("[daemon]\ncoalesce_ms = 2.5\n", "daemon.coalesce_ms: expected int, got float"),
        ('[daemon]\ncoalesce_ms = "20"\n', "daemon.coalesce_ms: expected int, got str"),
        ("[daemon]\ncoalesce_ms = -1\n", "daemon.coalesce_ms: must be 0..10000"),
        ("[daemon]\ncoalesce_ms = 10001\n", "daemon.coalesce_ms: must be 0..10000"),
        ('[daemon]\nlog_level = "verbose"\n', "daemon.log_level: must be one of"),
        ('[dnsmasq]\nenabled = "yes"\n', "dnsmasq.enabled: expected bool, got str"),
        ("[hosts_file]\nenabled = 1\n", "hosts_file.enabled: expected bool, got int"),
        ('[dnsmasq]\naddn_host = "/run/x"\n', "dnsmasq.addn_host: unknown key"),
        ("[daemon]\ncoalesce = 20\n", "daemon.coalesce: unknown key"),
        ("[dnsmask]\nenabled = true\n", "dnsmask: unknown section or key"),
        ("log_level = 'debug'\n", "log_level: unknown section or key"),
        ("daemon = 5\n", "daemon: expected a table"),
        ('[static]\nname = "a.b"\n', "static: expected an array of tables"),
        ("static = [1]\n", "static[0]: expected a table"),
        (
            '[dnsmasq]\naddn_hosts = "run/namesync/addn-hosts"\n',
            "dnsmasq.addn_hosts: must be an absolute path",
        ),
        ('[dnsmasq]\npid_file = "dnsmasq.pid"\n', "dnsmasq.pid_file: must be an absolute path"),
        ('[hosts_file]\npath = "etc/hosts"\n', "hosts_file.path: must be an absolute path"),
        ('[hosts_file]\npath = ""\n', "hosts_file.path: must be an absolute path"),
        ('[control]\nsocket = "ctl.sock"\n', "control.socket: must be an absolute path"),
        ("[control]\nallow_uids = [-1]\n", "control.allow_uids:"),
        ('[control]\nallow_uids = ["root"]\n', "control.allow_uids:"),
        ("[control]\nallow_uids = [true]\n", "control.allow_uids:"),
        ("[control]\nallow_uids = 1000\n", "control.allow_uids: expected list, got int"),
        ('[[static]]\naddresses = ["10.0.0.1"]\n', "static[0].name: missing"),
        ('[[static]]\nname = "db.dns.host"\n', "static[0].addresses: missing"),
        ('[[static]]\nname = "db.dns.host"\naddresses = []\n', "static[0].addresses: empty"),
        (
            '[[static]]\nname = "db.dns.host"\naddresses = "10.0.0.1"\n',
            "static[0].addresses: expected list, got str",
        ),
        ('[[static]]\nname = 5\naddresses = ["10.0.0.1"]\n', "static[0].name: expected str"),
    ],
)
def test_each_problem_names_its_key(text: str, starts: str) -> None:
    found = problems(text)
    assert any(p.startswith(starts) for p in found), found
    assert all(KEY_PREFIX.match(p) for p in found), found


def test_unknown_key_inside_static_entry() -> None:
    found = problems('[[static]]\nname = "db.dns.host"\naddresses = ["10.0.0.1"]\nttl = 5\n')
    assert found == ["static[0].ttl: unknown key"]


def test_empty_static_name_is_reported_not_dropped() -> None:
    found = problems('[[static]]\nname = ""\naddresses = ["10.0.0.1"]\n')
    assert any(p.startswith("static[0].name: ") for p in found), found


@pytest.mark.parametrize(
    "second", ["db.dns.host", "DB.dns.host", "db.dns.host."], ids=["same", "case", "dot"]
)
def test_duplicate_static_name_points_at_first_definition(second: str) -> None:
    p = only_problem(
        f"""
        [[static]]
        name = "db.dns.host"
        addresses = ["10.0.0.1"]
        [[static]]
        name = "other.dns.host"
        addresses = ["10.0.0.2"]
        [[static]]
        name = "{second}"
        addresses = ["10.0.0.3"]
        """
    )
    assert p.startswith("static[2].name: ")
    assert "already defined by static[0]" in p


def test_toml_syntax_error_names_the_line() -> None:
    p = only_problem('[daemon]\ncoalesce_ms = 20\nlog_level "debug"\n')
    assert p.startswith("TOML syntax:")
    assert "line 3" in p


def test_several_problems_are_reported_at_once() -> None:
    found = problems(
        """
        [daemon]
        coalesce_ms = true
        [dnsmasq]
        addn_host = "/run/x"
        pid_file = "relative.pid"
        [[static]]
        name = "ok.dns.host"
        addresses = ["10.0.0.1", "nope"]
        [[static]]
        name = "under_score.dns.host"
        addresses = ["10.0.0.2"]
        """
    )
    keys = sorted(p.split(":", 1)[0] for p in found)
    assert keys == sorted(
        [
            "daemon.coalesce_ms",
            "dnsmasq.addn_host",
            "dnsmasq.pid_file",
            "static[0].addresses[1]",
            "static[1].name",
        ]
    )


def test_config_error_text_names_the_file_and_every_problem() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("[daemon]\ncoalesce_ms = true\nlog_level = 'x'\n", "/etc/namesync/config.toml")
    text = str(err.value)
    assert "/etc/namesync/config.toml" in text
    for p in err.value.problems:
        assert p in text


def test_coalesce_bounds_are_inclusive() -> None:
    assert parse_config("[daemon]\ncoalesce_ms = 10000\n", "x").daemon.coalesce_ms == 10000
    assert parse_config("[daemon]\ncoalesce_ms = 0\n", "x").daemon.coalesce_ms == 0


def test_embedded_default_parses_to_the_defaults() -> None:
    cfg = parse_config(embedded_default_text(), "<embedded default>")
    assert dataclasses.replace(cfg, origin=Config().origin) == Config()
    assert cfg.origin == "<embedded default>"


def test_socket_default_applies_only_when_the_file_has_none() -> None:
    user_sock = Path("/run/user/1000/namesync/control.sock")
    assert parse_config("", "x", socket_default=user_sock).control.socket == user_sock
    cfg = parse_config('[control]\nsocket = "/srv/c.sock"\n', "x", socket_default=user_sock)
    assert cfg.control.socket == Path("/srv/c.sock")


def test_load_config_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as err:
        load_config(missing)
    assert err.value.source == str(missing)
    assert err.value.problems == ["file not found"]


def test_load_config_without_file_uses_embedded_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(load, "default_config_path", lambda: tmp_path / "absent" / "config.toml")
    sock = tmp_path / "control.sock"
    cfg = load_config(None, socket_default=sock)
    assert cfg.origin == "<embedded default>"
    assert cfg == dataclasses.replace(
        Config(), control=dataclasses.replace(Config().control, socket=sock)
    )


def test_load_config_reads_the_default_path_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[daemon]\ncoalesce_ms = 75\n")
    monkeypatch.setattr(load, "default_config_path", lambda: path)
    cfg = load_config(None, socket_default=tmp_path / "c.sock")
    assert cfg.daemon.coalesce_ms == 75
    assert cfg.origin == str(path)


def test_load_config_reports_problems_under_the_file_path(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[daemon]\ncoalesce_ms = true\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.source == str(path)
    assert err.value.problems[0].startswith("daemon.coalesce_ms: expected int, got bool")


def test_load_config_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"[daemon]\nlog_level = '\xff'\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.source == str(path)
    assert err.value.problems[0].startswith("cannot read")


def test_default_paths_for_root_and_users() -> None:
    assert default_config_path(euid=0, env={"XDG_CONFIG_HOME": "/x"}) == Path(
        "/etc/namesync/config.toml"
    )
    assert default_config_path(euid=1000, env={"XDG_CONFIG_HOME": "/cfg", "HOME": "/h"}) == Path(
        "/cfg/namesync/config.toml"
    )
    assert default_config_path(euid=1000, env={"HOME": "/home/u"}) == Path(
        "/home/u/.config/namesync/config.toml"
    )
    assert default_socket_path(euid=1000, env={"XDG_RUNTIME_DIR": "/run/user/1000"}) == Path(
        "/run/user/1000/namesync/control.sock"
    )
    assert default_socket_path(euid=0, env={"XDG_RUNTIME_DIR": "/run/user/0"}) == Path(
        "/run/namesync/control.sock"
    )


def test_libvirt_and_podman_sections_parse_to_typed_values() -> None:
    cfg = parse_config(
        """
        [libvirt]
        uris = ["qemu:///system", "lxc:///system"]
        zone = "VM.Internal"
        guest_hostnames = true
        lease_dir = "/srv/leases"
        [podman]
        socket = "/run/user/1000/podman/podman.sock"
        zone = "ctr.internal"
        aardvark_dir = "/run/user/1000/containers/networks/aardvark-dns"
        """,
        "x",
    )
    assert cfg.libvirt.uris == ("qemu:///system", "lxc:///system")
    assert cfg.libvirt.zone == "vm.internal"
    assert cfg.libvirt.guest_hostnames is True
    assert cfg.libvirt.lease_dir == Path("/srv/leases")
    assert cfg.podman.socket == Path("/run/user/1000/podman/podman.sock")
    assert cfg.podman.zone == "ctr.internal"


@pytest.mark.parametrize("text, expected", [
    ('[libvirt]\nuris = ["/var/run/libvirt"]\n',
     "libvirt.uris[0]: not a libvirt URI such as qemu:///system (in '/var/run/libvirt')"),
    ('[libvirt]\nuris = ["qemu:///system", "qemu:///system"]\n',
     "libvirt.uris: a URI is listed twice"),
    ('[libvirt]\nuris = "qemu:///system"\n', "libvirt.uris: expected list, got str"),
    ('[libvirt]\nzone = "dns..libvirt"\n', "libvirt.zone: empty label (in 'dns..libvirt')"),
    ('[libvirt]\nguest_hostnames = "yes"\n',
     "libvirt.guest_hostnames: expected bool, got str 'yes'"),
    ('[libvirt]\nlease_dir = "leases"\n', "libvirt.lease_dir: must be an absolute path"),
    ('[libvirt]\nuri = "qemu:///system"\n', "libvirt.uri: unknown key"),
    ('[podman]\nsocket = "podman.sock"\n', "podman.socket: must be an absolute path"),
    ('[podman]\nzone = "-bad.zone"\n', "podman.zone: label '-bad' must be letters, digits and"),
])
def test_libvirt_and_podman_problems_name_their_key(text: str, expected: str) -> None:
    assert only_problem(text).startswith(expected)


def test_podman_socket_default_is_per_user_for_users() -> None:
    assert load.default_podman_socket(euid=0, env={"XDG_RUNTIME_DIR": "/run/user/0"}) == Path(
        "/run/podman/podman.sock"
    )
    assert load.default_podman_socket(
        euid=1000, env={"XDG_RUNTIME_DIR": "/run/user/1000"}
    ) == Path("/run/user/1000/podman/podman.sock")
    user = Path("/run/user/1000/podman/podman.sock")
    assert parse_config("", "x", podman_socket_default=user).podman.socket == user


def test_control_limits_parse_and_are_bounded() -> None:
    cfg = parse_config(
        "[control]\nmax_connections = 50\nmax_per_uid = 4\nidle_timeout_s = 2\n"
        "request_timeout_s = 3\n", "t")
    c = cfg.control
    assert (c.max_connections, c.max_per_uid, c.idle_timeout_s, c.request_timeout_s) == (
        50, 4, 2, 3)
    with pytest.raises(ConfigError) as err:
        parse_config("[control]\nmax_connections = 0\nmax_per_uid = true\n"
                     "idle_timeout_s = nan\nrequest_timeout_s = \"1s\"\n", "t")
    text = "\n".join(err.value.problems)
    for key in ("max_connections", "max_per_uid", "idle_timeout_s", "request_timeout_s"):
        assert f"control.{key}:" in text


def test_user_mode_defaults_publish_through_the_system_agent() -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    defaults = load.user_defaults(euid=0, env=env)  # uid 0: the label is "root"
    for text in ("", embedded_default_text()):  # a missing file means the embedded default
        cfg = parse_config(text, "x", mode="user", defaults=defaults)
        assert cfg.mode == "user"
        assert (cfg.dnsmasq.enabled, cfg.hosts_file.enabled, cfg.networkmanager.enabled,
                cfg.host.enabled) == (False, False, False, False)
        assert cfg.podman.socket == Path("/run/user/1000/podman/podman.sock")
        assert cfg.podman.zone == "root.dns.podman"
        assert cfg.libvirt.uris == ("qemu:///session",)
        assert cfg.libvirt.zone == "root.dns.libvirt"
        assert cfg.control.socket == Path("/run/user/1000/namesync/control.sock")
        assert cfg.peers.socket == Path("/run/namesync/peer.sock")
    # What the file says wins over the mode's default.
    cfg = parse_config('[podman]\nzone = "dns.podman"\n[dnsmasq]\nenabled = true\n', "x",
                       mode="user", defaults=defaults)
    assert (cfg.podman.zone, cfg.dnsmasq.enabled) == ("dns.podman", True)


def test_system_mode_is_unchanged_by_the_user_defaults() -> None:
    cfg = parse_config(embedded_default_text(), "x")
    assert cfg == dataclasses.replace(Config(), origin="x")


def test_peers_section_is_validated() -> None:
    for text, key in (("max_names = 0", "peers.max_names"),
                      ('push_rate = "fast"', "peers.push_rate"),
                      ("grace_s = -1", "peers.grace_s"),
                      ('trusted_users = ["a:b"]', "peers.trusted_users[0]"),
                      ("surprise = 1", "peers.surprise")):
        with pytest.raises(ConfigError) as err:
            parse_config(f"[peers]\n{text}\n", "x")
        assert key in str(err.value), (text, str(err.value))
    cfg = parse_config('[peers]\npush_rate = 2\ngrace_s = 1\ntrusted_users = ["alice"]\n', "x")
    assert (cfg.peers.push_rate, cfg.peers.grace_s, cfg.peers.trusted_users) == (
        2, 1, ("alice",))
