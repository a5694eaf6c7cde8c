"""A tiny stand-in for systemd's libvirtd.socket/libvirtd-ro.socket/libvirtd-admin.socket:
holds the listening sockets, and whenever one is readable and no libvirtd runs, starts
libvirtd with them (LISTEN_FDS), as systemd does.  argv: LOGFILE TIMEOUT_S [HIDE_MOUNT]
Writes one line "spawn <pid> <time>" per libvirtd start to LOGFILE."""
import contextlib
import os
import select
import socket
import subprocess
import sys
import time

log, timeout = sys.argv[1], sys.argv[2]
hide = sys.argv[3] if len(sys.argv) > 3 else ""
paths = [("/run/libvirt/libvirt-sock", "libvirtd.socket", 0o666),
         ("/run/libvirt/libvirt-sock-ro", "libvirtd-ro.socket", 0o666),
         ("/run/libvirt/libvirt-admin-sock", "libvirtd-admin.socket", 0o600)]
socks = []
for p, _, mode in paths:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(p)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(p)
    os.chmod(p, mode)
    s.listen(64)
    socks.append(s)
names = ":".join(n for _, n, _ in paths)
child = None
def preexec():
    for i, s in enumerate(socks):
        os.dup2(s.fileno(), 3 + i)
        os.set_inheritable(3 + i, True)
script = ('for m in $1; do umount "$m"; done; shift; '
          'export LISTEN_PID=$$ LISTEN_FDS=3 LISTEN_FDNAMES=' + names + '; exec "$@"')
with open(log, "a", buffering=1) as out, open(log + ".libvirtd", "ab") as daemon_log:
    while True:
        if child is not None:
            rc = child.wait()
            out.write(f"exit {child.pid} {rc} {time.time():.3f}\n")
            child = None
        r, _, _ = select.select(socks, [], [])
        child = subprocess.Popen(["unshare", "-m", "--propagation", "slave", "sh", "-c", script,
                                  "x", hide, "libvirtd", "--timeout", timeout],
                                 preexec_fn=preexec, pass_fds=(3, 4, 5),
                                 stdout=daemon_log, stderr=subprocess.STDOUT)
        out.write(f"spawn {child.pid} {time.time():.3f}\n")
