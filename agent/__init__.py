"""namesync: consistent DNS names for libvirt VMs, Podman containers and the host."""

# The same as pyproject.toml's [project] version (tests/unit/test_version.py checks
# both and the installed metadata). Not read with importlib.metadata: that module
# pulls in zipfile, email, csv and calendar, 2.7 MB of the daemon's RSS (issue 11).
__version__ = "0.1.0"


def version() -> str:
    return __version__
