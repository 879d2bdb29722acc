"""Prefect flows over the DVC pipeline (docs/orchestration.md).

``flows.pipeline.distill_pipeline`` runs the stages of dvc.yaml (one task per ``dvc repro -s <stage>``),
``flows.retrain.retrain_on_new_data`` polls S3 and calls it, ``askd up`` / ``askd flow run`` start them.
Importing this package does not import Prefect; ``flows.dvc_stages`` and ``flows.label_worker`` never do.
"""
