"""A hand-written peer: run as a test user, it says on the peer socket what stdin says.

    python -m tests.harness.peer_client SOCKET < requests

Each stdin line is ``METHOD JSON-PARAMS`` (or ``RAW <bytes count>``: send that many
bytes of one oversized line); each reply is printed as one JSON line, ``{"eof": true}``
when the agent closed the connection. A hostile local user would do exactly this;
nothing here goes through namesync's own client code.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys


def main() -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(sys.argv[1])
    reader = sock.makefile("rb")
    for n, line in enumerate(sys.stdin):
        method, _, params = line.strip().partition(" ")
        if method == "RAW":
            payload = b'{"v":1,"id":0,"method":"push","params":{"x":"' + b"a" * int(params)
            payload += b'"}}\n'
        else:
            payload = json.dumps({"v": 1, "id": n, "method": method,
                                  "params": json.loads(params or "{}")}).encode() + b"\n"
        # The agent may refuse and close mid-line: its reply is still there to read.
        with contextlib.suppress(OSError):
            sock.sendall(payload)
        try:
            reply = reader.readline()
        except OSError as e:
            print(json.dumps({"eof": True, "oserror": str(e)}), flush=True)
            return 0
        if not reply:
            print(json.dumps({"eof": True}), flush=True)
            return 0
        sys.stdout.write(reply.decode())
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
