"""Distillation stage: student construction (``student``), ASKD losses and self-teachers (``losses``),
training data and encoder cache (``data``), checkpoints (``checkpoint``) and the training loop (``loop``).

Nothing is imported here, so ``import components.train.<module>`` stays cheap and side-effect free.
"""
