"""`make bench`: run every benchmark in turn, each writing bench/results/*.json.

Usage: python -m bench [NAME ...] [--quick]
A benchmark is a module in this package with a `main(argv: list[str] | None)`
function returning an exit status.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["sip_parse", "bearer_relay", "control"]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    extra = [a for a in args if a.startswith("-")]
    names = [a for a in args if not a.startswith("-")] or BENCHMARKS
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"usage: python -m bench [{'|'.join(BENCHMARKS)} ...] [--quick]", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        rc = module.main(extra)
        failed += bool(rc)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
