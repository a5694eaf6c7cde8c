"""A tiny QEMU guest: Debian's cloud kernel plus a busybox initramfs whose init runs udhcpc.

The guest exists to take a real DHCP lease through a real NIC and to answer on
a port: its /init loads the virtio NIC driver, starts busybox httpd on port 80
(a page naming the guest: what a port forward reaches), brings every ethN up
and runs ``udhcpc -i ethN -x hostname:NAME`` on each (NAME from the kernel
command line, ``namesync.hostname=NAME``), logging each step to the serial
console.

Both files are cached in /var/cache/namesync-tests/qemu-guest-KEY/, where KEY
hashes everything that goes into them (the kernel package and version, the
busybox binary, the init and udhcpc scripts, the module list), so CI pays for
the build once per machine (a ~27 MB download and ~2 s of work), made by
cache.cached_build like the rootfs images.

No /boot here: the kernel comes from ``apt-get download`` of the package
linux-image-cloud-amd64 depends on (run in the machine's network namespace:
the test session's has only ``lo``), unpacked with dpkg-deb. Its virtio drivers
are modules; their load order comes from each module's own ``depends=``.

    from tests.harness.qemu_image import build
    image = build()      # image.kernel, image.initrd; image.cmdline("vm1")
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .cache import cached_build
from .isolation import original_network
from .libvirt.busybox import static_busybox

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
# What eth0 needs: virtio_pci finds the device, virtio_net drives it (their
# dependencies are added from the modules' own metadata).
NIC_MODULES = ("virtio_pci", "virtio_net")
BUILD_TIMEOUT_S = 300
CONSOLE_MARK = "namesync-guest:"  # every line /init and the udhcpc hook print

# udhcpc's hook: configure the address and default route (as a real guest does: a
# connection forwarded from the host by slirp keeps its source address, and the
# reply must find its way back), say so on the console.
UDHCPC_SCRIPT = f"""\
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"; ip addr add "$ip/${{mask:-24}}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${{router%% *}}" dev "$interface" ;;
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
esac
echo "{CONSOLE_MARK} $1 $interface ${{ip:-}}"
"""

INIT = f"""\
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "{CONSOLE_MARK} init"
for m in $(cat /etc/modules); do
  insmod "/lib/modules/$m.ko" || echo "{CONSOLE_MARK} insmod $m failed"
done
name=$(sed -n 's/.*namesync\\.hostname=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
ip link set lo up
# What a forwarded port reaches: a page naming this guest.
mkdir -p /www && echo "{CONSOLE_MARK} page of ${{name:-none}}" > /www/index.html
httpd -p 80 -h /www
for dev in /sys/class/net/eth*; do
  dev=${{dev##*/}}
  ip link set "$dev" up
  echo "{CONSOLE_MARK} $dev up, udhcpc hostname ${{name:-none}}"
  udhcpc -f -i "$dev" -s /etc/udhcpc.script -t 30 -T 1 ${{name:+-x hostname:$name}} &
done
while :; do sleep 3600; done
"""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path

    @staticmethod
    def cmdline(hostname: str) -> str:
        """Kernel command line: serial console, no reboot loop on a panic, the DHCP name."""
        return f"console=ttyS0 panic=-1 quiet namesync.hostname={hostname}"


def unavailable() -> str | None:
    """Why no guest image can be built here (None if it can)."""
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: the guest's kernel comes from Debian's {KERNEL_METAPACKAGE}"
    try:
        static_busybox()
    except RuntimeError as e:
        return str(e)
    return None


def _run(argv: list[str], cwd: Path | None = None) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=BUILD_TIMEOUT_S)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    return r.stdout


def kernel_package() -> tuple[str, str]:
    """(package, version) of the kernel image the metapackage's candidate points at."""
    # One apt-cache call (about a second on a loaded machine, paid by every test module
    # that builds): the metapackage pins the exact image version it depends on.
    show = _run(["apt-cache", "show", "--no-all-versions", KERNEL_METAPACKAGE])
    found = re.search(r"^Depends:.*?\b(linux-image-[^\s,(]+) \(= ([^)\s]+)\)", show, re.M)
    if not found:
        raise RuntimeError(f"apt-cache show {KERNEL_METAPACKAGE}: no 'linux-image-* (= V)' "
                           f"dependency (run apt-get update):\n{show[-2000:]}")
    return found.group(1), found.group(2)


def cache_key(package: str, version: str) -> str:
    h = hashlib.sha256()
    for part in (package, version, INIT, UDHCPC_SCRIPT, " ".join(NIC_MODULES)):
        h.update(part.encode() + b"\0")
    h.update(static_busybox().read_bytes())
    return h.hexdigest()[:16]


def build() -> GuestImage:
    """The cached kernel + initramfs: built once per machine, then reused as they are."""
    why = unavailable()
    if why:
        raise FileNotFoundError(why)
    package, version = kernel_package()
    target = cached_build(f"qemu-guest-{cache_key(package, version)}",
                          lambda out: _build_into(out, package, version),
                          note=f"{package} {version}")
    return GuestImage(target / "vmlinuz", target / "initrd.cpio")


def _build_into(out: Path, package: str, version: str) -> None:
    out.mkdir()
    # Read by the session user's QEMU: world-readable files in a traversable dir.
    out.chmod(0o755)
    # The download and unpacking go beside ``out``, in the build's own directory.
    with tempfile.TemporaryDirectory(prefix="qemu-guest-", dir=out.parent) as work_dir:
        work = Path(work_dir)
        # apt's sandbox user cannot write into a root-only temp dir: download as root.
        _run([*original_network(), "apt-get", "download", "-q",
              "-o", "APT::Sandbox::User=root", f"{package}={version}"], cwd=work)
        [deb] = work.glob("*.deb")
        tree = work / "tree"
        _run(["dpkg-deb", "-x", str(deb), str(tree)])
        [vmlinuz] = (tree / "boot").glob("vmlinuz-*")
        shutil.copyfile(vmlinuz, out / "vmlinuz")
        (out / "vmlinuz").chmod(0o644)
        [moddir] = (tree / "lib" / "modules").iterdir()
        modules = load_order(moddir / "kernel", NIC_MODULES)
        write_initramfs(out / "initrd.cpio", modules)
        (out / "initrd.cpio").chmod(0o644)


def _module_files(kernel_dir: Path) -> dict[str, Path]:
    """Module name (as depends= spells it) -> its .ko file."""
    return {p.name[:-3].replace("-", "_"): p for p in kernel_dir.rglob("*.ko")}


def module_depends(ko: Path) -> list[str]:
    """The ``depends=`` list of a module's .modinfo (what modprobe would load first)."""
    found = re.search(rb"(?:^|\0)depends=([^\0]*)\0", ko.read_bytes())
    if not found or not found.group(1):
        return []
    return [d.replace("-", "_") for d in found.group(1).decode().split(",") if d]


def load_order(kernel_dir: Path, wanted: tuple[str, ...]) -> list[Path]:
    """``wanted`` and everything they depend on, each after its dependencies."""
    files = _module_files(kernel_dir)
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in files:
            raise RuntimeError(f"kernel module {name} not found under {kernel_dir}")
        for dep in module_depends(files[name]):
            visit(dep)
        order.append(files[name])

    for name in wanted:
        visit(name)
    return order


# --- the initramfs: a newc cpio written here (root-owned entries, a /dev/console node) ---


class _Cpio:
    def __init__(self) -> None:
        self.data = bytearray()
        self.ino = 0

    def add(self, name: str, mode: int, body: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self.ino += 1
        fields = [self.ino, mode, 0, 0, 1, 0, len(body), 0, 0, rdev[0], rdev[1],
                  len(name) + 1, 0]
        self.data += b"070701" + b"".join(b"%08X" % f for f in fields)
        self.data += name.encode() + b"\0"
        self._pad()
        self.data += body
        self._pad()

    def _pad(self) -> None:
        self.data += b"\0" * (-len(self.data) % 4)

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return bytes(self.data)


def write_initramfs(path: Path, modules: list[Path]) -> None:
    cpio = _Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp", "run"):
        cpio.add(d, stat.S_IFDIR | 0o755)
    # The kernel opens /dev/console for init's stdio before init mounts devtmpfs.
    cpio.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    cpio.add("bin/busybox", stat.S_IFREG | 0o755, static_busybox().read_bytes())
    cpio.add("bin/sh", stat.S_IFLNK | 0o777, b"busybox")
    cpio.add("init", stat.S_IFREG | 0o755, INIT.encode())
    cpio.add("etc/udhcpc.script", stat.S_IFREG | 0o755, UDHCPC_SCRIPT.encode())
    names = [ko.name[:-3] for ko in modules]
    cpio.add("etc/modules", stat.S_IFREG | 0o644, ("\n".join(names) + "\n").encode())
    for ko in modules:
        cpio.add(f"lib/modules/{ko.name}", stat.S_IFREG | 0o644, ko.read_bytes())
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(cpio.finish())
    os.replace(tmp, path)
