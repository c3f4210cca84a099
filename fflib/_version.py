"""fflib's version: the one place it is written (pyproject.toml reads it, fflib re-exports it)."""
__version__ = "0.1.0"
