"""Value kinds of config keys: how a TOML value is checked, converted, printed and described.

A kind never raises on bad input: it reports ``key: reason`` to ``Problems``
and returns ``None``, so the loader can go on and report every problem at
once. Every value it quotes goes through ``quote`` (short, bounded).
"""

from __future__ import annotations

import ipaddress
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from agent.config.errors import Problems
from agent.model.names import InvalidName, parse_fqdn
from agent.model.quote import quote
from agent.model.record import Address, AddressError, parse_address

T = TypeVar("T")
# An item check: the converted item, or why it is refused.
ItemCheck = Callable[[str], "tuple[str, None] | tuple[None, str]"]


def _type_ok(raw: object, kind: type) -> bool:
    # bool is an int in Python; a config saying `coalesce_ms = true` is a mistake.
    return isinstance(raw, kind) and not (kind is int and isinstance(raw, bool))


def expect(raw: object, kind: type, key: str, problems: Problems) -> bool:
    if _type_ok(raw, kind):
        return True
    problems.add(key, f"expected {kind.__name__}, got {type(raw).__name__} {quote(raw)}")
    return False


def toml_string(value: str) -> str:
    # TOML basic strings share JSON's escapes for everything a config holds.
    return json.dumps(value, ensure_ascii=False)


class Kind(ABC, Generic[T]):
    """One key's value type; ``describe`` is what the reference says about it."""

    @abstractmethod
    def parse(self, raw: object, key: str, problems: Problems) -> T | None: ...

    @abstractmethod
    def toml(self, value: T) -> str: ...

    @abstractmethod
    def describe(self) -> str: ...


class Bool(Kind[bool]):
    def parse(self, raw: object, key: str, problems: Problems) -> bool | None:
        if not expect(raw, bool, key, problems):
            return None
        return bool(raw)

    def toml(self, value: bool) -> str:
        return "true" if value else "false"

    def describe(self) -> str:
        return "boolean"


class Int(Kind[int]):
    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def parse(self, raw: object, key: str, problems: Problems) -> int | None:
        if not expect(raw, int, key, problems):
            return None
        assert isinstance(raw, int)
        if not self.lo <= raw <= self.hi:
            problems.add(key, f"must be {self.lo}..{self.hi}")
            return None
        return raw

    def toml(self, value: int) -> str:
        return str(value)

    def describe(self) -> str:
        return f"integer {self.lo}..{self.hi}"


class Choice(Kind[str]):
    def __init__(self, *options: str) -> None:
        self.options = options

    def parse(self, raw: object, key: str, problems: Problems) -> str | None:
        if not expect(raw, str, key, problems):
            return None
        if raw not in self.options:
            problems.add(key, f"must be one of {', '.join(self.options)}")
            return None
        return str(raw)

    def toml(self, value: str) -> str:
        return toml_string(value)

    def describe(self) -> str:
        return "one of " + ", ".join(f"`{o}`" for o in self.options)


class AbsPath(Kind[Path]):
    def parse(self, raw: object, key: str, problems: Problems) -> Path | None:
        if not expect(raw, str, key, problems):
            return None
        assert isinstance(raw, str)
        if not raw.startswith("/"):
            problems.add(key, "must be an absolute path")
            return None
        if "\0" in raw:
            problems.add(key, "a path cannot contain a NUL character")
            return None
        return Path(raw)

    def toml(self, value: Path) -> str:
        return toml_string(str(value))

    def describe(self) -> str:
        return "absolute path"


def fqdn_item(value: str) -> tuple[str, None] | tuple[None, str]:
    try:
        return parse_fqdn(value), None
    except InvalidName as e:
        return None, f"{e.reason} (in {quote(value)})"


class Fqdn(Kind[str]):
    """A fully qualified name the user wrote: validated, lowercased, never repaired."""

    def parse(self, raw: object, key: str, problems: Problems) -> str | None:
        if type(raw) is str:  # the usual case first: one [[static]] name per entry
            try:
                return parse_fqdn(raw)
            except InvalidName as e:
                problems.add(key, f"{e.reason} (in {quote(raw)})")
                return None
        expect(raw, str, key, problems)
        return None

    def toml(self, value: str) -> str:
        return toml_string(value)

    def describe(self) -> str:
        return "DNS name (RFC 1123)"


class Strings(Kind[tuple[str, ...]]):
    """A list of strings, each checked on its own and reported by its index."""

    def __init__(self, item: ItemCheck, what: str, *, unique: str = "") -> None:
        self.item = item
        self.what = what
        self.unique = unique  # e.g. "a URI": then "a URI is listed twice" is refused

    def parse(self, raw: object, key: str, problems: Problems) -> tuple[str, ...] | None:
        if not expect(raw, list, key, problems):
            return None
        assert isinstance(raw, list)
        bad = [v for v in raw if not isinstance(v, str)]
        if bad:
            problems.add(key, f"expected strings, got {quote(bad)}")
            return None
        out: list[str] = []
        for i, value in enumerate(raw):
            item, why = self.item(value)
            if item is None:
                problems.add(f"{key}[{i}]", str(why))
            else:
                out.append(item)
        if self.unique and len(set(out)) != len(out):
            problems.add(key, f"{self.unique} is listed twice")
            return None
        return tuple(out) if len(out) == len(raw) else None

    def toml(self, value: tuple[str, ...]) -> str:
        return "[" + ", ".join(toml_string(v) for v in value) + "]"

    def describe(self) -> str:
        return f"list of {self.what}"


class Text(Kind[str]):
    """One string, checked by ``item`` (which may also normalise it)."""

    def __init__(self, item: ItemCheck, what: str) -> None:
        self.item = item
        self.what = what

    def parse(self, raw: object, key: str, problems: Problems) -> str | None:
        if not expect(raw, str, key, problems):
            return None
        assert isinstance(raw, str)
        value, why = self.item(raw)
        if value is None:
            problems.add(key, str(why))
        return value

    def toml(self, value: str) -> str:
        return toml_string(value)

    def describe(self) -> str:
        return self.what


# uid_t is 32 bits and (uid_t)-1 means "no uid" to the kernel (setresuid, chown).
UID_MAX = 2**32 - 2


class Uids(Kind[tuple[int, ...]]):
    def parse(self, raw: object, key: str, problems: Problems) -> tuple[int, ...] | None:
        if not expect(raw, list, key, problems):
            return None
        assert isinstance(raw, list)
        bad = [u for u in raw if not _type_ok(u, int) or not 0 <= u <= UID_MAX]
        if bad:
            problems.add(key, f"not uids (integers 0..{UID_MAX}): {quote(bad)}")
            return None
        return tuple(raw)

    def toml(self, value: tuple[int, ...]) -> str:
        return "[" + ", ".join(map(str, value)) + "]"

    def describe(self) -> str:
        return f"list of uids (0..{UID_MAX})"


class Addresses(Kind[tuple[Address, ...]]):
    """At least one host address; each refused one is reported by its index."""

    def parse(self, raw: object, key: str, problems: Problems) -> tuple[Address, ...] | None:
        if type(raw) is list and raw:  # the usual case first, in C; a refusal is reported below
            try:
                return tuple(map(parse_address, raw))
            except AddressError:
                pass
        if not expect(raw, list, key, problems):
            return None
        assert isinstance(raw, list)
        if not raw:
            problems.add(key, "empty; a name needs at least one address")
            return None
        out: list[Address] = []
        for j, a in enumerate(raw):
            try:
                out.append(parse_address(a))
            except AddressError as e:
                problems.add(f"{key}[{j}]", f"{e.reason} (in {quote(a)})")
        return tuple(out) if len(out) == len(raw) else None

    def toml(self, value: tuple[Address, ...]) -> str:
        return "[" + ", ".join(toml_string(str(a)) for a in value) + "]"

    def describe(self) -> str:
        return "list of IPv4/IPv6 addresses"


def interface_item(value: str) -> tuple[str, None] | tuple[None, str]:
    # IFNAMSIZ is 16 with the NUL; the kernel refuses '/', ':' and whitespace.
    if not value or len(value) > 15 or any(c in value for c in "/: \t\n") or value in (".", ".."):
        return None, f"not an interface name: {quote(value)}"
    return value, None


LIBVIRT_URI_SCHEMES: Sequence[str] = ("qemu", "lxc", "test", "xen", "ch", "bhyve", "vz", "libxl")


def libvirt_uri_item(value: str) -> tuple[str, None] | tuple[None, str]:
    scheme = value.split(":", 1)[0].split("+", 1)[0]
    if "://" not in value or scheme not in LIBVIRT_URI_SCHEMES:
        return None, f"not a libvirt URI such as qemu:///system (in {quote(value)})"
    return value, None


def ip_item(value: str) -> tuple[str, None] | tuple[None, str]:
    try:
        return str(ipaddress.ip_address(value)), None
    except ValueError:
        return None, f"not an IP address: {quote(value)}"


def server_item(value: str) -> tuple[str, None] | tuple[None, str]:
    """ADDRESS or ADDRESS#PORT, as dnsmasq's --server= takes it."""
    addr, sep, port = value.partition("#")
    if ip_item(addr)[0] is None or (sep and not (port.isdigit() and 0 < int(port) < 65536)):
        return None, f"not ADDRESS or ADDRESS#PORT: {quote(value)}"
    return value, None


def program_item(value: str) -> tuple[str, None] | tuple[None, str]:
    # A name looked up in PATH, or an absolute path; never a relative one.
    if not value or "\0" in value or ("/" in value and not value.startswith("/")):
        return None, f"not a program name or absolute path: {quote(value)}"
    return value, None


BOOL = Bool()
PATH = AbsPath()
FQDN = Fqdn()
FQDNS = Strings(fqdn_item, "DNS names")
INTERFACES = Strings(interface_item, "interface names")
LIBVIRT_URIS = Strings(libvirt_uri_item, "libvirt URIs", unique="a URI")
UIDS = Uids()
ADDRESSES = Addresses()
INTERFACE = Text(interface_item, "interface name")
IP_ADDRESS = Text(ip_item, "IP address")
SERVER = Text(server_item, "ADDRESS or ADDRESS#PORT")
PROGRAM = Text(program_item, "program name or absolute path")
