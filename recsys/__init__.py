"""The `recsys` command, configuration, artifact registry and the project's error types.

Importing this package is cheap and side-effect free: the CLI lives in `recsys.cli`.
"""
