"""`make bench`: run every benchmark in turn, each writing bench/results/*.json.

Usage: python -m bench [NAME ...] [OPTION ...]
A benchmark is a module in this package with a `main(argv: list[str] | None)`
function returning an exit status.  The leading words are benchmark names
(none: all of them); everything from the first option on is the benchmarks'
own arguments, values included, so
`python -m bench bearer_relay --scenario relay --steps 500` hands
`--scenario relay --steps 500` to bearer_relay.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["sip_parse", "bearer_relay", "control", "defence"]
USAGE = f"usage: python -m bench [{'|'.join(BENCHMARKS)} ...] [--quick | BENCHMARK OPTIONS]"


def split_argv(args: list[str]) -> tuple[list[str], list[str]]:
    """(benchmark names, arguments passed through) from ``python -m bench``'s argv.

    Names are the words before the first option; an option's value (``relay``
    in ``--scenario relay``) is the benchmark's, never a name.  Raises
    ValueError naming a leading word that is not a benchmark.

    >>> split_argv(["bearer_relay", "--scenario", "relay", "--steps", "500"])
    (['bearer_relay'], ['--scenario', 'relay', '--steps', '500'])
    """
    first_option = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))
    names, extra = args[:first_option], args[first_option:]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"not a benchmark: {', '.join(unknown)}")
    return names or list(BENCHMARKS), extra


def main(argv: list[str] | None = None) -> int:
    try:
        names, extra = split_argv(list(sys.argv[1:] if argv is None else argv))
    except ValueError as exc:
        print(f"{USAGE}\n{exc}", file=sys.stderr)
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
