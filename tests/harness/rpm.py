"""Build namesync's RPMs from the working tree with the real spec, as CI does on Debian.

Debian's rpm has no Fedora macros: packaging/rpm/macros.debian-stand-in
supplies them (a clearly labelled stand-in; on Fedora the distribution's are
used). ``--nodeps``: Debian's rpm database knows no Fedora package, so
BuildRequires cannot be checked here; the build interpreter is the one
running the tests (it has the runtime dependencies and setuptools >= 77,
and builds without isolation as Fedora does).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "packaging" / "namesync.spec"
STAND_IN_MACROS = REPO / "packaging" / "rpm" / "macros.debian-stand-in"
RPMLINT_CONFIG = REPO / "packaging" / "rpm" / "rpmlint.toml"
TOOLS = ("rpmbuild", "rpmlint", "rpm2cpio", "cpio", "checkmodule", "semodule_package", "make",
         "bzip2", "git")
SELINUX_MAKEFILE = Path("/usr/share/selinux/devel/Makefile")


@dataclass(frozen=True)
class Build:
    topdir: Path
    log: str
    srpm: Path
    rpms: dict[str, Path]  # package name -> binary RPM


def rpm_eval(expr: str, python: str = sys.executable) -> str:
    """``expr`` expanded as the build expands it (same macros, same interpreter)."""
    return subprocess.run(["rpm", "--load", str(STAND_IN_MACROS), "--define",
                           f"__python3 {python}", "--eval", expr],
                          check=True, capture_output=True, text=True, timeout=30).stdout.strip()


def version() -> str:
    out = subprocess.run(["rpmspec", "--load", str(STAND_IN_MACROS), "-q", "--srpm",
                          "--qf", "%{version}", str(SPEC)],
                         check=True, capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def source_tarball(sources: Path, name_version: str) -> Path:
    """The working tree (tracked files and new ones not ignored) as NAME-VERSION.tar.gz,
    standing in for the sdist: what is under test, not the last commit."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-co", "--exclude-standard"],
                           check=True, capture_output=True, timeout=30).stdout
    existing = b"\0".join(f for f in files.split(b"\0") if f and (REPO / f.decode()).exists())
    sources.mkdir(parents=True, exist_ok=True)
    tarball = sources / f"{name_version}.tar.gz"
    subprocess.run(["tar", "-C", str(REPO), "--null", "-T", "-", "--transform",
                    f"s,^,{name_version}/,", "-czf", str(tarball)],
                   input=existing, check=True, capture_output=True, timeout=60)
    return tarball


def _check_setuptools(python: str) -> None:
    """The build is not isolated (as on Fedora): the interpreter's own setuptools must meet
    the floor, else the failure is pip's obscure 'project.license' error."""
    out = subprocess.run([python, "-c", "import setuptools; print(setuptools.__version__)"],
                         capture_output=True, text=True, timeout=60)
    found = out.stdout.strip()
    if out.returncode != 0 or int(found.split(".")[0]) < 77:
        raise AssertionError(f"{python} has setuptools {found or 'missing'}; the RPM build "
                             "needs >= 77 (run: .venv/bin/pip install -e '.[test]')")


def build(topdir: Path, python: str = sys.executable) -> Build:
    """``rpmbuild -ba`` of the spec; raises with the log's tail if it fails."""
    _check_setuptools(python)
    source_tarball(topdir / "SOURCES", f"namesync-{version()}")
    r = subprocess.run(
        ["rpmbuild", "-ba", "--nodeps", "--load", str(STAND_IN_MACROS),
         "--define", f"_topdir {topdir}", "--define", f"__python3 {python}", str(SPEC)],
        capture_output=True, text=True, timeout=300)
    log = r.stdout + r.stderr
    (topdir / "build.log").write_text(log)
    if r.returncode != 0:
        raise AssertionError(f"rpmbuild failed ({r.returncode}):\n{log[-6000:]}")
    rpms = {}
    for path in (topdir / "RPMS").rglob("*.rpm"):
        name = subprocess.run(["rpm", "-qp", "--qf", "%{name}", str(path)], check=True,
                              capture_output=True, text=True, timeout=30).stdout
        rpms[name] = path
    srpm, = (topdir / "SRPMS").glob("*.src.rpm")
    return Build(topdir, log, srpm, rpms)


def rpmlint(b: Build) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rpmlint", "-c", str(RPMLINT_CONFIG), *map(str, b.rpms.values()),
                           str(b.srpm), str(SPEC)],
                          capture_output=True, text=True, timeout=120)


def query(rpm: Path, *args: str) -> list[str]:
    out = subprocess.run(["rpm", "-qp", *args, str(rpm)], check=True, capture_output=True,
                         text=True, timeout=30).stdout
    return out.splitlines()


def extract(rpm: Path, root: Path) -> None:
    """The RPM's payload laid out under ``root``, as rpm would install it (no scriptlets)."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # it stands for "/" (copied onto a container's root with cp -a)
    cpio = subprocess.run(["rpm2cpio", str(rpm)], check=True, capture_output=True, timeout=60)
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], cwd=root,
                   input=cpio.stdout, check=True, capture_output=True, timeout=60)
