"""The `full` profile's 6,000 training sentences (synth's own split, no audio) as a labelled-like dataset.

Stands in for the full run's labels when timing a pruned-vocabulary student of the full shape on a machine that
has not run the full profile: the kept token set is that of all 6,000 sentences (the label filter keeps ~4,300
of them, so the real set is at most this large).

    python docs/results/quick-run6-epyc/benchmarks/full_train_texts.py OUT_DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from datasets import Dataset, DatasetDict  # noqa: E402

from components.settings import load_settings  # noqa: E402
from components.synth import sentence_pools  # noqa: E402

cfg = load_settings(Path(__file__).resolve().parents[4] / "params.yaml", overrides=["profile=full"]).synth
pools = sentence_pools(cfg)
DatasetDict({"train": Dataset.from_dict({"teacher_text": pools["train"]})}).save_to_disk(sys.argv[1])
print(f"{len(pools['train'])} sentences -> {sys.argv[1]}")
