"""Benchmarks for llcv: each module here that defines ``main(argv)`` is one benchmark.

Run them all with ``python -m benchmarks`` (or ``make bench``), one with
``python -m benchmarks train_throughput``, and pass it options after its name
(``python -m benchmarks train_throughput --epochs 3``). A new benchmark is a new module with a
``main(argv: list[str] | None = None)`` function; nothing else needs editing. Benchmarks print
their numbers and are not tests: they make no assertions and are not collected by pytest.
"""
