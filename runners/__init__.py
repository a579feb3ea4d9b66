"""Runners: the command line and the thin adapters that run pipelines on an engine."""
