"""``python -m benchmarks [NAME [OPTIONS...]]``: run every benchmark module, or the one named.

A benchmark is any module in this package, not starting with ``_``, that defines ``main``;
it receives the options that follow its name (none when all benchmarks run).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import benchmarks


def discover(names: list[str] | None = None) -> dict[str, object]:
    """Benchmark modules by name, sorted; modules without ``main()`` are helpers, not benchmarks.

    Only the modules in ``names`` are imported when it is given, so one broken benchmark does
    not stop the others from running on their own.
    """
    available = sorted(info.name for info in pkgutil.iter_modules(benchmarks.__path__) if not info.name.startswith("_"))
    found = {}
    for name in available if names is None else [name for name in available if name in names]:
        module = importlib.import_module(f"benchmarks.{name}")
        if callable(getattr(module, "main", None)):
            found[name] = module
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help", "--list"):
        print(__doc__.strip().splitlines()[0])
        print("benchmarks: " + ", ".join(discover()))
        return 0
    if argv:
        name, options = argv[0], argv[1:]
        found = discover([name])
        if name not in found:
            print(f"unknown benchmark {name!r}; choose one of {', '.join(discover())}", file=sys.stderr)
            return 2
        selected = {name: options}
    else:
        found = discover()
        selected = {name: [] for name in found}
    for name, options in selected.items():
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        found[name].main(options)
        print(f"== {name} took {time.perf_counter() - started:.1f} s\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
