"""namesync installed inside a booted container the way its RPM lays it out.

The files are the RPM's own payload (rpm2cpio of the package built from the
spec: units, tmpfiles, preset, config, man pages, the Python package in
Fedora's sitelib), and the package's own %post scriptlet runs. What a Debian
container cannot do like Fedora is bridged, each bridge said here:

- Fedora's python3 reads /usr/lib/python3.X/site-packages; Debian's does
  not: one .pth file in Debian's dist-packages adds it to sys.path.
- The Python dependencies Fedora has (its python3-* packages) are wheels
  built on this host (`pip wheel`, cached per requirement list and Python
  version) and installed with pip inside: a venv made on the host does not
  work in the container (another python). The two Fedora 43/44 lack come
  from packaging/deps/' RPMs, unpacked with namesync's (``packaged``).
- Debian's systemd 252 has no systemd-update-helper, so %post's "install
  system units" step (which runs `systemctl preset`) is a no-op there; it is
  done by hand, exactly as the helper does it.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

from . import rpm
from .cache import cached_build
from .isolation import original_network
from .nspawn import Container

PAYLOAD = "/namesync-test/payload"
WHEELS = "/namesync-test/wheels"
SITELIB_PTH = "/usr/lib/python3/dist-packages/zz-fedora-sitelib.pth"


def requirements() -> list[str]:
    """namesync's runtime dependencies, with the libvirt binding (python3-libvirt)."""
    project = tomllib.loads((rpm.REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["libvirt"]]


def dependency_wheels(python: str = sys.executable) -> Path:
    """A directory of wheels for requirements(), built once per machine and list."""
    reqs = requirements()
    version = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    key = hashlib.sha256("\n".join([version, *sorted(reqs)]).encode()).hexdigest()[:16]

    def pip_wheel(out: Path) -> None:
        r = subprocess.run([*original_network(), python, "-m", "pip", "wheel", "-q",
                            "--wheel-dir", str(out), *reqs],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"pip wheel failed:\n{r.stderr[-4000:]}")

    return cached_build(f"wheels-{key}", pip_wheel, note="\n".join(reqs))


def _project(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()


# Unpacks the pure-Python wheels (py3-none-any) in argv[1] not named in argv[2:] into
# Debian's dist-packages: for a pure wheel, that is all pip's install does.
_UNPACK = """\
import pathlib, re, sys, zipfile
skip = {re.sub(r"[-_.]+", "_", a.lower()) for a in sys.argv[2:]}
for w in sorted(pathlib.Path(sys.argv[1]).glob("*-none-any.whl")):
    if w.name.split("-")[0].lower() not in skip:
        zipfile.ZipFile(w).extractall("/usr/lib/python3/dist-packages")
"""


def container_with_rpms(image: Path, rpms: Iterable[Path], payload: Path, workdir: Path,
                        *, unified: bool = False) -> Container:
    """A (not yet booted) container of ``image`` with ``rpms`` unpacked at PAYLOAD and
    the dependency wheels at WHEELS, read-only, ready for install()."""
    wheels = dependency_wheels()
    for package in rpms:
        rpm.extract(package, payload)
    return Container(image, workdir, ro_binds=[(payload, PAYLOAD), (wheels, WHEELS)],
                     unified=unified)


def install(c: Container, main_rpm: Path, packaged: Sequence[str] = (),
            from_image: Sequence[str] = ()) -> None:
    """Lay out ``main_rpm`` (bound at PAYLOAD, unpacked) in ``c`` and run its %post.

    ``packaged``: dependencies whose RPMs (packaging/deps/) are unpacked into the
    same payload, e.g. "structlog": pip installs only the others. ``from_image``:
    dependencies the image's own Debian packages provide (the sid image's
    python3-dbus-fast: the host's wheel is built for the host's Python); an image
    without pip gets the remaining pure-Python wheels unpacked instead."""
    sitelib = rpm.rpm_eval("%{python3_sitelib}")
    c.sh(f"cp -a {PAYLOAD}/. / && echo {sitelib} > {SITELIB_PTH}")
    skip = {*packaged, *from_image}
    if c.run("python3", "-c", "import pip", check=False).returncode != 0:
        c.run("python3", "-c", _UNPACK, WHEELS, *skip)
    else:
        wanted = [r for r in requirements() if _project(r) not in skip]
        c.run("python3", "-m", "pip", "install", "-q", "--no-index", "--find-links", WHEELS,
              "--break-system-packages", "--root-user-action=ignore", *wanted, timeout=300)
    postin = rpm.query(main_rpm, "--qf", "%{POSTIN}")
    c.run("systemctl", "daemon-reload")
    c.run("sh", "-s", "--", "1", input="\n".join(postin) + "\n")  # $1 = 1: first install
    # What systemd-update-helper install-system-units does (absent on Debian 252).
    c.run("systemctl", "--no-reload", "preset", "namesync.service")
