"""Prefect flows over the DVC pipeline. Not built yet (issue 8): run the pipeline with `dvc repro`."""
