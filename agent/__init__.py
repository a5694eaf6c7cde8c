"""namesync: consistent DNS names for libvirt VMs, Podman containers and the host."""

from importlib import metadata


def version() -> str:
    try:
        return metadata.version("namesync")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"
