"""``python -I -m cordon.worker._sandbox --probe``: print what this machine supports, as JSON."""

from __future__ import annotations

import json
import sys

from ._probe import probe_here


def main(argv: list[str]) -> int:
    if argv != ["--probe"]:
        print("usage: python -I -m cordon.worker._sandbox --probe", file=sys.stderr)
        return 2
    print(json.dumps(probe_here(), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
