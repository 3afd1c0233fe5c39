"""Benchmarks, one module each; every one returns a JSON-ready dict (the CLI prints the table and writes it).

- ``detector``: exact count of the detector on fresh renders;
- ``base``: count accuracy of the base pipeline;
- ``engine``: every policy on the same jobs at the same budget (decides the default policy);
- ``optimize``: refinement on near misses, library tokens against the base on held-out seeds;
- ``iteration``: seconds per optimization iteration against its floor;
- ``service``: the service's overhead and throughput.

Seed ranges never overlap with training or learning (``optimization.seeds``). Plots live in ``plots``.
"""
