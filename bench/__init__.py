"""Throughput benchmarks of the gpt2xl samplers (pytest-benchmark suites; run ``python -m bench``).

Not part of the core library: ``gpt2xl`` never imports this package.
"""
