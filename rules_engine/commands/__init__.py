"""The click front end: one module per command group, each a thin layer over the engine's Python API.

Nothing below this package (spec, promql, source, evaluate, compile, report, playbooks, server) imports click.
"""
