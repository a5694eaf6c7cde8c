"""The RPM built from packaging/namesync.spec: rpmlint-clean, complete, and what it ships works.

Built on Debian with the stand-in Fedora macros (packaging/rpm/); rpmlint with
packaging/rpm/rpmlint.toml (Fedora-like). The SELinux module is compiled by
the spec's %build with the reference policy's Makefile (m4, checkmodule,
semodule_package); nothing here runs SELinux, so it is never loaded.
"""

from __future__ import annotations

import bz2
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.harness import rpm
from tests.harness.cache import cached_build
from tests.harness.isolation import original_network

pytestmark = pytest.mark.rpm

# Exactly the warnings packaging/rpm/rpmlint.toml explains, nothing more.
EXPECTED_WARNINGS = {
    "namesync.noarch: W: no-manual-page-for-binary agentctl",
    "namesync.noarch: W: no-manual-page-for-binary namesync-agent",
    "namesync.noarch: W: postin-without-ghost-file-creation /run/namesync",
    "namesync.noarch: W: postin-without-ghost-file-creation /run/namesync/addn-hosts",
    "namesync-selinux.noarch: W: no-documentation",
    "namesync-selinux.noarch: W: dangerous-command-in-%pre cp",
    "namesync-selinux.noarch: W: dangerous-command-in-%posttrans rm",
}
REQUIRES_ON_RELEASE = re.compile(
    r"namesync-selinux\.noarch: W: requires-on-release namesync = [\w.]+-\d+\.\w+")

MAN_PAGES = ("namesync-agent.8", "agentctl.8", "namesync.conf.5")


def test_rpmlint_has_no_errors_and_only_the_explained_warnings(rpm_build: rpm.Build) -> None:
    lint = rpm.rpmlint(rpm_build)
    findings = {ln for ln in lint.stdout.splitlines() if re.search(r": [EW]: ", ln)}
    errors = {f for f in findings if ": E: " in f}
    assert not errors, lint.stdout
    warnings = {f for f in findings if not REQUIRES_ON_RELEASE.fullmatch(f)}
    assert warnings == EXPECTED_WARNINGS, lint.stdout
    assert lint.returncode == 0, lint.stdout


def test_spec_tags_and_versions(rpm_build: rpm.Build) -> None:
    main = rpm_build.rpms["namesync"]
    summary, url, license_, version = rpm.query(
        main, "--qf", "%{summary}\n%{url}\n%{license}\n%{version}\n")
    assert len(summary) < 80 and not summary.endswith(".")
    assert url.startswith("https://") and license_ == "MIT"
    pyproject = tomllib.loads((rpm.REPO / "pyproject.toml").read_text())
    assert version == pyproject["project"]["version"]
    # The build-system floor that reads `license = "MIT"` (SPDX, PEP 639).
    assert "setuptools>=77" in pyproject["build-system"]["requires"]


def test_layout_is_fedoras(rpm_build: rpm.Build) -> None:
    files = set(rpm.query(rpm_build.rpms["namesync"], "-l"))
    sitelib = rpm.rpm_eval("%{python3_sitelib}")
    for path in ("/usr/bin/namesync-agent", "/usr/bin/agentctl",
                 "/usr/lib/systemd/system/namesync.service",
                 "/usr/lib/systemd/user/namesync.service",
                 "/usr/lib/systemd/system-preset/90-namesync.preset",
                 "/usr/lib/tmpfiles.d/namesync.conf", "/etc/namesync/config.toml",
                 "/run/namesync", "/run/namesync/addn-hosts",
                 "/usr/share/man/man8/namesync-agent.8.gz", "/usr/share/man/man8/agentctl.8.gz",
                 "/usr/share/man/man5/namesync.conf.5.gz",
                 "/usr/share/bash-completion/completions/agentctl",
                 "/usr/share/zsh/site-functions/_agentctl",
                 "/usr/share/fish/vendor_completions.d/agentctl.fish",
                 f"{sitelib}/agent/daemon/main.py",
                 f"{sitelib}/namesync-0.1.0.dist-info/licenses/LICENSE"):
        assert path in files, path
    config = rpm.query(rpm_build.rpms["namesync"], "--configfiles")
    assert config == ["/etc/namesync/config.toml"]
    noreplace = rpm.query(rpm_build.rpms["namesync"], "--qf",
                          "[%{FILENAMES} %{FILEFLAGS:fflags}\n]")
    assert "/etc/namesync/config.toml cn" in noreplace  # %config(noreplace)
    assert f"{sitelib}/namesync-0.1.0.dist-info/licenses/LICENSE l" in noreplace  # %license
    assert "/run/namesync/addn-hosts g" in noreplace  # %ghost


def test_scriptlets_use_systemd_helpers_and_tmpfiles(rpm_build: rpm.Build) -> None:
    scripts = "\n".join(rpm.query(rpm_build.rpms["namesync"], "--scripts"))
    assert "systemd-update-helper install-system-units namesync.service" in scripts
    assert "systemd-update-helper install-user-units namesync.service" in scripts
    assert "systemd-update-helper mark-restart-system-units namesync.service" in scripts
    assert "systemd-tmpfiles --create /usr/lib/tmpfiles.d/namesync.conf" in scripts
    requires = rpm.query(rpm_build.rpms["namesync"], "--requires")
    assert "python3-libvirt" in requires


def test_man_pages_render(rpm_root: Path) -> None:
    for page in MAN_PAGES:
        path = rpm_root / "usr/share/man" / f"man{page[-1]}" / f"{page}.gz"
        env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"}
        out = subprocess.run(["man", "-l", str(path)], capture_output=True, text=True,
                             env=env, timeout=30, check=True)
        assert out.stderr == "", (page, out.stderr)
        head = out.stdout.splitlines()[0]
        assert head.split()[0] == page.rsplit(".", 1)[0].upper() + f"({page[-1]})"
        # groff's own warnings (-ww), e.g. an unknown request or bad escape
        warn = subprocess.run(["sh", "-c", f"zcat {path} | groff -man -Tutf8 -ww -z"],
                              capture_output=True, text=True, timeout=30)
        assert warn.stderr == "", (page, warn.stderr)
    agent = subprocess.run(["man", "-l", str(rpm_root / "usr/share/man/man8/namesync-agent.8.gz")],
                           capture_output=True, text=True, timeout=30,
                           env={**os.environ, "MANWIDTH": "200"}).stdout
    for option in ("--config", "--check-config", "--print-default-config", "SIGHUP"):
        assert option in agent
    ctl = subprocess.run(["man", "-l", str(rpm_root / "usr/share/man/man8/agentctl.8.gz")],
                         capture_output=True, text=True, timeout=30,
                         env={**os.environ, "MANWIDTH": "200"}).stdout
    for command in ("status", "reload", "setup", "--socket"):
        assert command in ctl
    conf = subprocess.run(["man", "-l", str(rpm_root / "usr/share/man/man5/namesync.conf.5.gz")],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "MANWIDTH": "200"}).stdout
    for section in ("[daemon]", "[dnsmasq]", "[control]"):
        assert section in conf


def test_bash_completion_completes_commands_options_and_files(rpm_root: Path,
                                                             tmp_path: Path) -> None:
    script = rpm_root / "usr/share/bash-completion/completions/agentctl"
    (tmp_path / "conf.toml").write_text("")

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        out = subprocess.run(
            ["bash", "-c", f'source {script}; COMP_WORDS=({line}); '
             f'COMP_CWORD={len(words) - 1}; _agentctl; printf "%s\\n" "${{COMPREPLY[@]}}"'],
            capture_output=True, text=True, timeout=30, check=True, cwd=tmp_path)
        return out.stdout.split()

    assert set(complete("agentctl", "")) >= {"status", "reload", "setup", "--socket"}
    assert complete("agentctl", "re") == ["reload"]
    assert complete("agentctl", "status", "--j") == ["--json"]
    assert complete("agentctl", "setup", "--config", "con") == ["conf.toml"]
    agent = rpm_root / "usr/share/bash-completion/completions/namesync-agent"
    out = subprocess.run(["bash", "-c", f"source {agent}; COMP_WORDS=(namesync-agent "
                          "--log-level ''); COMP_CWORD=2; _namesync_agent; echo ${COMPREPLY[@]}"],
                         capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.split() == ["debug", "info", "warning", "error"]


def test_fish_and_zsh_completion(rpm_root: Path) -> None:
    fish = rpm_root / "usr/share/fish/vendor_completions.d/agentctl.fish"
    zsh = rpm_root / "usr/share/zsh/site-functions/_agentctl"
    for tool in ("fish", "zsh"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            pytest.skip(f"{tool} is not installed (contrib/dev-setup.sh --test installs it)")
    out = subprocess.run(["fish", "--no-config", "-c", f"source {fish}; complete -C 'agentctl st'"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert [ln.split("\t")[0] for ln in out.splitlines()] == ["status"]
    out = subprocess.run(["fish", "--no-config", "-c",
                          f"source {fish}; complete -C 'agentctl status --'"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert "--json" in [ln.split("\t")[0] for ln in out.splitlines()]
    subprocess.run(["zsh", "-n", str(zsh)], check=True, timeout=30)
    text = zsh.read_text()
    assert text.startswith("#compdef agentctl\n")
    for word in ("'status:", "'reload:", "--socket[", "--json["):
        assert word in text


def test_selinux_module_compiled_and_labels_run_namesync_for_dnsmasq(
        rpm_build: rpm.Build, tmp_path: Path) -> None:
    """Compiled, never loaded: nothing on this machine runs SELinux."""
    sel = rpm_build.rpms["namesync-selinux"]
    pp = "/usr/share/selinux/packages/targeted/namesync.pp.bz2"
    assert pp in rpm.query(sel, "-l")
    rpm.extract(sel, tmp_path / "root")
    module = tmp_path / "namesync.pp"
    module.write_bytes(bz2.decompress((tmp_path / "root" / pp.lstrip("/")).read_bytes()))
    subprocess.run(["semodule_unpackage", str(module), str(tmp_path / "m.mod"),
                    str(tmp_path / "m.fc")], check=True, timeout=30)
    fc = [ln.split() for ln in (tmp_path / "m.fc").read_text().splitlines() if ln.strip()
          and not ln.startswith("#")]
    assert ["/run/namesync(/.*)?", "system_u:object_r:namesync_var_run_t:s0"] in fc
    assert ["/run/namesync/dnsmasq\\.pid", "--",
            "system_u:object_r:namesync_dnsmasq_var_run_t:s0"] in fc
    # The rules themselves, in the module source as the reference policy expands it.
    subprocess.run(["make", "-s", "-f", str(rpm.SELINUX_MAKEFILE), "namesync.pp"],
                   cwd=_copy(rpm.REPO / "packaging/selinux", tmp_path / "se"),
                   capture_output=True, text=True, timeout=60, check=True)
    policy = (tmp_path / "se/tmp/namesync.tmp").read_text()
    assert "allow dnsmasq_t namesync_var_run_t:file { getattr open read lock ioctl };" in policy
    assert "allow dnsmasq_t namesync_var_run_t:dir" in policy
    # namesync's own dnsmasq (the resolved path) runs confined as dnsmasq_t, binds
    # port 53, lists interfaces over rtnetlink, and writes only its pid file here.
    assert "type_transition unconfined_service_t dnsmasq_exec_t:process dnsmasq_t;" in policy
    assert "allow dnsmasq_t unconfined_service_t:fifo_file" in policy  # its stderr pipe
    assert "allow dnsmasq_t dns_port_t:udp_socket name_bind;" in policy
    assert "allow dnsmasq_t dns_port_t:tcp_socket name_bind;" in policy
    assert "allow dnsmasq_t self:netlink_route_socket { { create" in policy
    assert ('type_transition dnsmasq_t namesync_var_run_t:file namesync_dnsmasq_var_run_t '
            '"dnsmasq.pid";') in policy
    assert "allow dnsmasq_t namesync_var_run_t:file { getattr open read lock ioctl };" in policy
    assert not any("namesync_var_run_t:file" in ln and "write" in ln
                   for ln in policy.splitlines() if ln.lstrip().startswith("allow dnsmasq_t"))
    scripts = "\n".join(rpm.query(sel, "--scripts"))
    assert f"semodule -n -s targeted -X 200 -i {pp}" in scripts


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


SETUPTOOLS_FLOOR = ("76.1.0", "77.0.3")


def _setuptools_wheels() -> Path:
    """setuptools 76.1 and 77.0 wheels, downloaded once per machine (cached)."""
    def download(out: Path) -> None:
        for v in SETUPTOOLS_FLOOR:
            subprocess.run([*original_network(), sys.executable, "-m", "pip", "download",
                            "-q", "--no-deps", "-d", str(out), f"setuptools=={v}"],
                           check=True, capture_output=True, timeout=300)
    return cached_build(f"setuptools-{'-'.join(SETUPTOOLS_FLOOR)}", download)


@pytest.mark.parametrize(("setuptools", "builds"),
                         list(zip(SETUPTOOLS_FLOOR, (False, True), strict=True)))
def test_setuptools_floor_is_77(setuptools: str, builds: bool, tmp_path: Path) -> None:
    """A distribution build (no isolation: the system's setuptools, as %pyproject_wheel
    does) of `license = "MIT"` fails below 77; pip's isolated builds hide that."""
    wheels = _setuptools_wheels()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin/python")]
    subprocess.run([*pip, "install", "-q", "--no-index",
                    str(wheels / f"setuptools-{setuptools}-py3-none-any.whl")],
                   check=True, capture_output=True, timeout=120)
    # The source as the sdist has it, unpacked here: the build writes nothing in the tree.
    tarball = rpm.source_tarball(tmp_path, "src")
    subprocess.run(["tar", "-C", str(tmp_path), "-xzf", str(tarball)], check=True, timeout=60)
    r = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-w", str(tmp_path / "out"), str(tmp_path / "src")],
                       capture_output=True, text=True, timeout=300)
    assert (r.returncode == 0) == builds, r.stdout[-3000:] + r.stderr[-3000:]
    if not builds:
        assert "`project.license` must be valid exactly by one definition" in r.stdout + r.stderr


@pytest.mark.parametrize("spec", sorted(rpm.DEPS_DIR.glob("*.spec")), ids=lambda p: p.stem)
def test_missing_fedora_dependency_specs_build_and_are_rpmlint_clean(spec: Path,
                                                                      tmp_path: Path) -> None:
    """packaging/deps/: python3-structlog (retired after Fedora 36) and
    python3-asyncinotify (Fedora 45+ only), for Fedora 43/44, from their PyPI sdists."""
    b = rpm.build_dependency(spec, tmp_path / "rpmbuild")
    name = spec.stem.replace("python-", "python3-")
    lint = rpm.rpmlint(b)
    assert re.search(r" 0 errors, 0 warnings", lint.stdout), lint.stdout
    module = name.removeprefix("python3-")
    sitelib = rpm.rpm_eval("%{python3_sitelib}")
    flags = rpm.query(b.rpms[name], "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]")
    assert f"{sitelib}/{module}/__init__.py " in "\n".join(flags)
    assert any("/licenses/" in f and f.endswith(" l") for f in flags), flags  # %license
    assert any(p.startswith(f"{name} = ") for p in rpm.query(b.rpms[name], "--provides"))


def test_building_the_rpm_leaves_the_building_environment_alone(rpm_build: rpm.Build) -> None:
    """%pyproject_install runs the building interpreter's pip with --root: without
    --ignore-installed pip first uninstalls namesync from that interpreter's own
    environment (the project's venv), and agentctl and namesync-agent vanish from it."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("namesync")
    except PackageNotFoundError:
        pytest.fail("building the RPM uninstalled namesync from the test's environment")
    scripts = {ep.name for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts == {"agentctl", "namesync-agent"}
    bindir = Path(sys.executable).parent
    assert all((bindir / s).exists() for s in scripts), sorted(p.name for p in bindir.iterdir())
