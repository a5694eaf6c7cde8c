"""The busybox rootfs every LXC guest is hard-linked from (the guests have no libraries)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path


def build_template(t: Path) -> Path:
    """A fresh busybox rootfs at ``t``: static busybox, one symlink per applet, passwd."""
    if t.exists():
        shutil.rmtree(t)
    for d in ("bin", "dev", "proc", "sys", "tmp", "run", "etc", "root", "var"):
        (t / d).mkdir(parents=True)
    busybox = t / "bin" / "busybox"
    shutil.copy2(static_busybox(), busybox)
    applets = subprocess.run([str(busybox), "--list"], check=True, capture_output=True,
                             text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (t / "bin" / applet).symlink_to("busybox")
    (t / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return t


def static_busybox() -> Path:
    """A statically linked busybox (the guest rootfs has no libraries)."""
    for candidate in ("/bin/busybox", shutil.which("busybox")):
        if candidate and Path(candidate).is_file() and not elf_interp(Path(candidate)):
            return Path(candidate)
    raise RuntimeError("a static busybox is needed for LXC guests (Debian: busybox-static)")


def elf_interp(path: Path) -> bool:
    """True if the 64-bit little-endian ELF ``path`` asks for a dynamic loader."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return True  # not an ELF64 we understand: treat as unusable
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return any(struct.unpack_from("<I", table, i * phentsize)[0] == 3  # PT_INTERP
               for i in range(phnum))

