"""Helpers for testing spava deployments (fault injection)."""
