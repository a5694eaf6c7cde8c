"""libvirt's iptables chains, removed again (session netns only)."""

from __future__ import annotations

import shlex
import shutil
import subprocess


def remove_libvirt_chains() -> None:
    """Drop libvirt's LIBVIRT_* chains and the jumps to them, one iptables-restore per
    family (other chains, e.g. netavark's, untouched)."""
    for family in ("iptables", "ip6tables"):
        if shutil.which(family) is None or shutil.which(f"{family}-restore") is None:
            continue
        script: list[str] = []
        for table in ("filter", "nat", "mangle"):
            r = subprocess.run([family, "-w", "-t", table, "-S"], capture_output=True,
                               text=True, timeout=30)
            rules = [shlex.split(ln) for ln in r.stdout.splitlines()]
            chains = [ln[1] for ln in rules if ln[:1] == ["-N"] and
                      ln[1].startswith("LIBVIRT_")]
            if r.returncode != 0 or not chains:
                continue
            script.append(f"*{table}")
            script += [shlex.join(["-D", *ln[1:]]) for ln in rules
                       if ln[:1] == ["-A"] and "-j" in ln and
                       ln[ln.index("-j") + 1] in chains]
            script += [f"-F {c}" for c in chains] + [f"-X {c}" for c in chains]
            script.append("COMMIT")
        if script:
            subprocess.run([f"{family}-restore", "-w", "--noflush"], check=True,
                           input="\n".join(script) + "\n", capture_output=True,
                           text=True, timeout=30)
