"""Leases seen as DHCPACKs (sources/libvirt/dhcp_ack.py), waiting for the lease file.

The lease file stays the trusted record. A lease from an ACK is published only
while the file says nothing about that NIC and address family and no live file
lease gives its address to another NIC; once the file holds the same lease it is
the file's (and the entry here is dropped); while the file holds another address
for it, the file's answers; an entry the file does not confirm within
``confirm_s`` is withdrawn (the caller logs it).

A guest decides how many ACKs there are (DHCP requests for made-up MACs are each
acknowledged), so ACKs for a MAC no known NIC has wait apart: a small bucket per
bridge, oldest out first, that never displaces an entry of ours, is never
published and never arms the withdrawal timer; one is moved to ours if a domain
with that NIC is listed within ``confirm_s`` (its ACK may come before its event).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from agent.sources.libvirt.leases import Lease

# libvirt's lease helper wrote the file 15-90 ms after the ACK on a busy machine,
# once 1.05 s (docs/benchmarks.md): a few seconds is long past any of that.
CONFIRM_S = 5.0
# ACKs for MACs of no known NIC kept per bridge (for a domain listed meanwhile).
FOREIGN_PER_BRIDGE = 64

Key = tuple[str, str]  # bridge, MAC


@dataclass(frozen=True, slots=True)
class Pending:
    lease: Lease
    seen: float  # time.monotonic() of the ACK


@dataclass
class Provisional:
    confirm_s: float = CONFIRM_S
    foreign_limit: int = FOREIGN_PER_BRIDGE
    _ours: dict[Key, Pending] = field(default_factory=dict)  # NICs of known domains
    _foreign: dict[str, dict[Key, Pending]] = field(default_factory=dict)  # per bridge

    def add(self, lease: Lease, now: float, ours: bool = True) -> bool:
        """Keep the ACK's lease; ``ours``: its NIC is a known domain's. True when
        what would be published changed (a new entry of ours, or a new address)."""
        key = (lease.bridge, lease.mac)
        if not ours:
            self._ours.pop(key, None)
            bucket = self._foreign.setdefault(lease.bridge, {})
            bucket.pop(key, None)
            bucket[key] = Pending(lease, now)  # dicts keep order: oldest first
            while len(bucket) > self.foreign_limit:
                del bucket[next(iter(bucket))]
            return False
        self._foreign.get(lease.bridge, {}).pop(key, None)
        old = self._ours.get(key)
        if old is not None and old.lease == lease:
            return False  # the same grant again: still waiting since the first
        self._ours[key] = Pending(lease, now)
        return True

    def __len__(self) -> int:
        """Entries of ours waiting (foreign ones are not counted)."""
        return len(self._ours)

    def foreign(self) -> int:
        return sum(len(b) for b in self._foreign.values())

    def _adopt(self, known: Collection[Key], now: float) -> None:
        """Foreign entries whose NIC is known now become ours; stale ones go."""
        for bridge, bucket in list(self._foreign.items()):
            while bucket:
                first = next(iter(bucket.values()))
                if now - first.seen < self.confirm_s:
                    break
                del bucket[(first.lease.bridge, first.lease.mac)]
            for key in [k for k in bucket if k in known]:
                self._ours[key] = bucket.pop(key)
            if not bucket:
                del self._foreign[bridge]

    def merge(self, trusted: Sequence[Lease], now: float, wall: float,
              known: Collection[Key] | None = None,
              ) -> tuple[list[Lease], list[Pending]]:
        """``trusted`` plus the provisional leases of ``known`` NICs (None: all of
        ours) it does not contradict; and the entries withdrawn now (unconfirmed for
        ``confirm_s``). ``now`` is monotonic (the ACKs' clock), ``wall`` the epoch
        time leases expire by."""
        if known is not None:
            self._adopt(known, now)
        live = [x for x in trusted if x.live(wall)]
        confirmed = {(x.bridge, x.mac, x.address) for x in live}
        claimed = {(x.bridge, x.mac, x.address.version) for x in live}
        holder = {(x.bridge, x.address): x.mac for x in live}
        out = list(trusted)
        withdrawn: list[Pending] = []
        for key, p in list(self._ours.items()):
            lease = p.lease
            if (lease.bridge, lease.mac, lease.address) in confirmed:
                del self._ours[key]
            elif now - p.seen >= self.confirm_s:
                del self._ours[key]
                withdrawn.append(p)
            elif (lease.bridge, lease.mac, lease.address.version) not in claimed \
                    and holder.get((lease.bridge, lease.address), lease.mac) == lease.mac \
                    and (known is None or key in known):
                out.append(lease)
        return out, withdrawn

    def next_deadline(self) -> float | None:
        """Monotonic time at which the oldest entry of ours is withdrawn if
        unconfirmed (foreign ones never wake anything: they go at the next merge)."""
        if not self._ours:
            return None
        return min(p.seen for p in self._ours.values()) + self.confirm_s
