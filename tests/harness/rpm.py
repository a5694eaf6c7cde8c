"""Build namesync's RPMs from the working tree with the real spec, as CI does on Debian.

Debian's rpm has no Fedora macros: packaging/rpm/macros.debian-stand-in
supplies them (a clearly labelled stand-in; on Fedora the distribution's are
used). ``--nodeps``: Debian's rpm database knows no Fedora package, so
BuildRequires cannot be checked here; the build interpreter is the one
running the tests (it has the runtime dependencies and setuptools >= 77,
and builds without isolation as Fedora does).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .cache import cached_build
from .isolation import original_network

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "packaging" / "namesync.spec"
STAND_IN_MACROS = REPO / "packaging" / "rpm" / "macros.debian-stand-in"
RPMLINT_CONFIG = REPO / "packaging" / "rpm" / "rpmlint.toml"
DEPS_DIR = REPO / "packaging" / "deps"
# What the sdists of packaging/deps/ build with (structlog: hatchling; asyncinotify:
# flit_core), plus pip and wheel for the stand-in %pyproject_* macros.
DEP_BUILD_BACKENDS = ("pip", "wheel", "hatchling", "hatch-vcs", "hatch-fancy-pypi-readme",
                      "flit_core>=3.12,<4")
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


def spec_query(spec: Path, qf: str) -> str:
    out = subprocess.run(["rpmspec", "--load", str(STAND_IN_MACROS), "-q", "--srpm",
                          "--qf", qf, str(spec)],
                         check=True, capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def version() -> str:
    return spec_query(SPEC, "%{version}")


def pypi_sdist(name: str, version: str) -> Path:
    """The PyPI sdist NAME-VERSION.tar.gz (Source0 of a packaging/deps/ spec), cached."""
    def fetch(d: Path) -> None:
        subprocess.run([*original_network(), sys.executable, "-m", "pip", "download", "-q",
                        "--no-deps", "--no-binary", ":all:", "-d", str(d), f"{name}=={version}"],
                       check=True, capture_output=True, timeout=300)
    d = cached_build(f"sdist-{name}-{version}", fetch)
    found, = d.glob("*.tar.gz")
    return found


def build_venv() -> Path:
    """A venv with the build backends the dependency specs' sdists use (Fedora installs
    them as BuildRequires: python3-hatchling, python3-flit-core, ...), cached: the venv
    is made in place (its scripts name its path), read-only once complete."""
    key = hashlib.sha256("\n".join(DEP_BUILD_BACKENDS).encode()).hexdigest()[:12]

    def make(d: Path) -> None:
        subprocess.run([sys.executable, "-m", "venv", str(d)], check=True, timeout=300,
                       capture_output=True)
        subprocess.run([*original_network(), str(d / "bin" / "python"), "-m", "pip",
                        "install", "-q", *DEP_BUILD_BACKENDS],
                       check=True, capture_output=True, timeout=600)
    return cached_build(f"rpm-build-venv-{key}", make, in_place=True)


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
    """``rpmbuild -ba`` of namesync's spec; raises with the log's tail if it fails."""
    _check_setuptools(python)
    source_tarball(topdir / "SOURCES", f"namesync-{version()}")
    return rpmbuild(SPEC, topdir, python)


def build_dependency(spec: Path, topdir: Path) -> Build:
    """``rpmbuild -ba`` of a spec in packaging/deps/ from its PyPI sdist."""
    name = spec_query(spec, "%{name}").removeprefix("python-")
    sdist = pypi_sdist(name, spec_query(spec, "%{version}"))
    (topdir / "SOURCES").mkdir(parents=True, exist_ok=True)
    shutil.copy2(sdist, topdir / "SOURCES" / sdist.name)
    return rpmbuild(spec, topdir, str(build_venv() / "bin" / "python"))


def rpmbuild(spec: Path, topdir: Path, python: str) -> Build:
    r = subprocess.run(
        ["rpmbuild", "-ba", "--nodeps", "--load", str(STAND_IN_MACROS),
         "--define", f"_topdir {topdir}", "--define", f"__python3 {python}", str(spec)],
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
