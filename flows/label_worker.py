"""Worker process of the label fan-out (no Prefect here): ``python -m flows.label_worker plan|run``.

* ``plan``: print the shard plan ``components.label.plan_shards`` computes (and convert the teacher for
  CTranslate2 once, before any worker starts).
* ``run --shards '{"train": [0, 2], "validation": [1]}'``: label exactly those shards into the shard folder that
  ``askd stage label`` resumes from.

Settings come from ``--params`` (default ``params.yaml`` in the working directory) exactly as the DVC stage
reads them (``ASKD_`` environment variables included), so the shard key, and so the shards, are the stage's own.
The last stdout line is ``ASKD_RESULT <json>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

RESULT_PREFIX = "ASKD_RESULT "


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.label_worker", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["plan", "run"])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--shards", default="{}", help='JSON: split -> shard indices, e.g. {"train": [0, 2]}')
    parser.add_argument("--threads", type=int, default=None, help="torch / CTranslate2 threads in this process")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from components.label import label_shards, plan_shards
    from components.settings import SettingsError, load_settings

    try:
        cfg = load_settings(args.params)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.action == "plan":
        result = plan_shards(cfg.label, cfg.teacher.out_dir, cfg.prepare.out_dir)
    else:
        shards = {str(k): [int(i) for i in v] for k, v in json.loads(args.shards).items()}
        result = label_shards(cfg.label, cfg.teacher.out_dir, cfg.prepare.out_dir, shards)
    print(RESULT_PREFIX + json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover - subprocess entry
    sys.exit(main())
