"""The application layer: the typer CLI, report rendering and plots. Reads result files; the
library (``gpt2xl``) never imports this package."""
