"""gpt2xl: GPT-2 (up to XL) written from scratch, with samplers, evaluation and benchmarks.

Layering: ``config``/``model``/``weights``/``tokenizer``/``sampling`` are the core; evaluation
(``data``, ``metrics``, ``perplexity``, ``grid``) and measurement (``generation``, ``hardware``)
build on it; the CLI, reports and plots live in ``gpt2xl_app`` and the pytest-benchmark suites in
``bench``. This package never imports typer, matplotlib, pytest or ``bench``.
"""

__version__ = "0.1.0"
