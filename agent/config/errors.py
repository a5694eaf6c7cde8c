"""What the loader reports: every problem, each keyed by its dotted path, at once."""

from __future__ import annotations

# A config with 100,000 bad [[static]] entries must still give a short error
# (it travels in `agentctl reload`'s reply and in `status`): the first ones
# say what is wrong, the count says how much.
MAX_PROBLEMS = 50


class ConfigError(Exception):
    """One or more problems in a config file, each naming its key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        detail = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config {source}:\n{detail}")


class Problems:
    """Collects ``key: reason`` lines; bounded, and counts what it did not keep."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.dropped = 0

    def add(self, key: str, reason: str) -> None:
        if len(self.lines) < MAX_PROBLEMS:
            self.lines.append(f"{key}: {reason}")
        else:
            self.dropped += 1

    def __bool__(self) -> bool:
        return bool(self.lines)

    def raise_if_any(self, origin: str) -> None:
        if not self.lines:
            return
        lines = list(self.lines)
        if self.dropped:
            lines.append(f"... and {self.dropped} more problems (fix these first)")
        raise ConfigError(origin, lines)
