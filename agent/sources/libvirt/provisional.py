"""Leases seen as DHCPACKs (sources/libvirt/dhcp_ack.py), waiting for the lease file.

The lease file stays the trusted record. A lease from an ACK is published only
while the file says nothing about that NIC and address family; once the file
holds the same lease it is the file's (and the entry here is dropped); while the
file holds another address for it, the file's answers; an entry the file does
not confirm within ``confirm_s`` is withdrawn (the caller logs it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agent.sources.libvirt.leases import Lease

# libvirt's lease helper wrote the file 15-90 ms after the ACK on a busy machine,
# once 1.05 s (docs/benchmarks.md): a few seconds is long past any of that.
CONFIRM_S = 5.0
# ACKs are the host's, but a guest decides how many: DHCP requests for made-up MACs
# are each acknowledged. Past this many waiting, the oldest goes (the file follows).
MAX_PENDING = 4096


@dataclass(frozen=True, slots=True)
class Pending:
    lease: Lease
    seen: float  # time.monotonic() of the ACK


@dataclass
class Provisional:
    confirm_s: float = CONFIRM_S
    limit: int = MAX_PENDING
    _pending: dict[tuple[str, str], Pending] = field(default_factory=dict)

    def add(self, lease: Lease, now: float) -> None:
        """The latest ACK for a NIC replaces an earlier one still unconfirmed."""
        key = (lease.bridge, lease.mac)
        self._pending.pop(key, None)
        self._pending[key] = Pending(lease, now)  # dicts keep order: oldest first
        while len(self._pending) > self.limit:
            del self._pending[next(iter(self._pending))]

    def __len__(self) -> int:
        return len(self._pending)

    def merge(self, trusted: Sequence[Lease], now: float, wall: float,
              wanted: Callable[[Lease], bool] = lambda _: True,
              ) -> tuple[list[Lease], list[Pending]]:
        """``trusted`` plus the ``wanted`` provisional leases it does not contradict;
        and the entries withdrawn now (unconfirmed for ``confirm_s``). ``now`` is
        monotonic (the ACKs' clock), ``wall`` the epoch time leases expire by."""
        live = [x for x in trusted if x.live(wall)]
        confirmed = {(x.bridge, x.mac, x.address) for x in live}
        claimed = {(x.bridge, x.mac, x.address.version) for x in live}
        out = list(trusted)
        withdrawn: list[Pending] = []
        for key, p in list(self._pending.items()):
            lease = p.lease
            if (lease.bridge, lease.mac, lease.address) in confirmed:
                del self._pending[key]
            elif now - p.seen >= self.confirm_s:
                del self._pending[key]
                withdrawn.append(p)
            elif (lease.bridge, lease.mac, lease.address.version) not in claimed \
                    and wanted(lease):
                out.append(lease)
        return out, withdrawn

    def next_deadline(self) -> float | None:
        """Monotonic time at which the oldest entry is withdrawn if unconfirmed."""
        if not self._pending:
            return None
        return min(p.seen for p in self._pending.values()) + self.confirm_s
