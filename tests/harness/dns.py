"""Ask a DNS server with the user's own tool (dig) and parse what it says."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    status: str  # NOERROR, NXDOMAIN, ...
    records: tuple[str, ...]  # rdata of answer records of the asked type
    authoritative: bool

    @property
    def nodata(self) -> bool:
        return self.status == "NOERROR" and not self.records


def dig(name: str, rtype: str = "A", *, server: str = "127.0.0.1", port: int = 53,
        prefix: tuple[str, ...] = ()) -> Answer:
    """``prefix`` runs dig through another command, e.g. nsenter into a netns."""
    args = [*prefix, "dig", f"@{server}", "-p", str(port), "+time=1", "+tries=1", "+noall",
            "+comments", "+answer"]
    args += ["-x", name] if rtype == "PTR" else [name, rtype]
    out = subprocess.run(args, capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"status: (\w+)", out)
    status = m.group(1) if m else "NOANSWER"
    flags = re.search(r";; flags: ([a-z ]+);", out)
    records = []
    for line in out.splitlines():
        if not line or line.startswith(";"):
            continue
        fields = line.split()
        if len(fields) >= 5 and fields[3] == rtype:
            records.append(fields[4])
    return Answer(status, tuple(sorted(records)), bool(flags and "aa" in flags.group(1).split()))
