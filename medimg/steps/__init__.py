"""One module per step of the retraining pipeline: plain functions that Prefect tasks wrap.

Each step takes typed params, the workspace and the previous steps' plain outputs, does its
I/O through the modules named for it (versioning, registry, ...) and returns a plain,
JSON-serialisable summary. Nothing here imports Prefect, so each step also runs and tests alone.
"""
