"""A real dnsmasq serving an addn-hosts file on a loopback port, as the test's child."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

from .dns import Answer, dig
from .proc import terminate
from .wait import until


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Dnsmasq:
    def __init__(self, workdir: Path, zones: tuple[str, ...] = ("dns.test",),
                 port: int | None = None) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.zones = zones
        self.port = port or free_udp_port()
        self.addn_hosts = self.dir / "addn-hosts"
        self.pid_file = self.dir / "dnsmasq.pid"
        self.log = self.dir / "dnsmasq.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Dnsmasq:
        if not self.addn_hosts.exists():
            self.addn_hosts.write_bytes(b"")
        self.addn_hosts.chmod(0o644)  # dnsmasq re-reads it as nobody
        self.dir.chmod(0o755)
        args = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                "--bind-interfaces", "--listen-address=127.0.0.1", f"--port={self.port}",
                f"--addn-hosts={self.addn_hosts}", f"--pid-file={self.pid_file}",
                f"--log-facility={self.log}", "--cache-size=1000"]
        args += [f"--local=/{z}/" for z in self.zones]
        self.proc = subprocess.Popen(args)
        until(lambda: self.pid_file.exists() and self.pid_file.read_text().strip()
              and self.query("ready.invalid").status != "NOANSWER",
              what="dnsmasq to answer")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def query(self, name: str, rtype: str = "A") -> Answer:
        return dig(name, rtype, port=self.port)

    def reads(self) -> list[int]:
        """Counts from dnsmasq's ``read FILE - N names`` lines for our addn-hosts file."""
        if not self.log.exists():
            return []
        pat = re.compile(rf"read {re.escape(str(self.addn_hosts))} - (\d+) names")
        return [int(m.group(1)) for m in pat.finditer(self.log.read_text())]

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None
