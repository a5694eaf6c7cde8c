"""Connect to a socket from many uids at once and hold the connections: run as root.

    python -m tests.harness.subuid_flood SOCKET FIRST_UID COUNT PER_UID

What a rootless user can do with newuidmap: become any uid of its /etc/subuid
range (none of which has a passwd entry) and connect from each. One forked
child per uid (setgroups/setgid/setuid, as newuidmap's mapping would make it)
opens PER_UID connections and reads what arrives within a moment: a refusal
line, or nothing (admitted: the server speaks only when asked). One JSON line
per connection goes to stdout, then ``{"done": true}``; the connections are
held until stdin closes, then every child exits.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time

READ_S = 1.5


def _child(path: str, uid: int, per: int, out: int, hold: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    socks = []
    results: dict[int, str | None] = {}
    for _ in range(per):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError as e:
            results[s.fileno()] = f"connect: {e}"
        socks.append(s)
    deadline = time.monotonic() + READ_S
    waiting = [s for s in socks if s.fileno() not in results]
    while waiting and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select(waiting, [], [], left)
        for s in ready:
            try:
                results[s.fileno()] = s.recv(4096).decode(errors="replace")
            except OSError as e:
                results[s.fileno()] = f"recv: {e}"
            waiting.remove(s)
    lines = "".join(json.dumps({"uid": uid, "reply": results.get(s.fileno())}) + "\n"
                    for s in socks)
    os.write(out, lines.encode())
    os.close(out)
    os.read(hold, 1)  # EOF when the parent goes: then let go of everything


def main() -> int:
    path, first, count, per = sys.argv[1], *map(int, sys.argv[2:5])
    out_r, out_w = os.pipe()
    hold_r, hold_w = os.pipe()
    children = []
    for uid in range(first, first + count):
        pid = os.fork()
        if pid == 0:
            os.close(out_r)
            os.close(hold_w)
            try:
                _child(path, uid, per, out_w, hold_r)
            finally:
                os._exit(0)
        children.append(pid)
    os.close(out_w)
    os.close(hold_r)
    with os.fdopen(out_r) as results:
        for line in results:  # EOF once every child has written and closed
            sys.stdout.write(line)
    print(json.dumps({"done": True}), flush=True)
    sys.stdin.read()
    os.close(hold_w)
    for pid in children:
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
