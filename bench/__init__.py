"""Benchmarks and the load tester: the figures behind every performance claim.

Nothing here is on the serving path. ``bench.loadtest`` drives a running server over HTTP;
``bench.blocks``, ``bench.models`` and ``bench.service`` are scripts that write JSON and
markdown tables to ``bench/results/``.
"""
