"""Diagnostic tools behind `spava` CLI subcommands."""
