"""``python -m agent.docs OUT``: write the man pages and completions the RPM installs.

    OUT/man/namesync-agent.8  OUT/man/agentctl.8  OUT/man/namesync.conf.5
    OUT/completion/bash/{namesync-agent,agentctl}
    OUT/completion/zsh/{_namesync-agent,_agentctl}
    OUT/completion/fish/{namesync-agent,agentctl}.fish

The date on the pages is SOURCE_DATE_EPOCH's (rpmbuild sets it from the
changelog), so a rebuild produces the same bytes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from agent import version

from .completion import scripts
from .man import pages


def page_date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    return time.strftime("%Y-%m-%d", time.gmtime(int(epoch) if epoch.isdigit() else None))


def write(out: Path) -> list[Path]:
    files = {out / "man" / name: roff for name, roff in pages(version(), page_date()).items()}
    files.update({out / "completion" / shell / name: script
                  for (shell, name), script in scripts().items()})
    for path, body in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    return list(files)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.docs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="directory to write man/ and completion/ into")
    args = p.parse_args(argv)
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
