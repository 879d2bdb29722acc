"""The tiny.en teacher cut to shorter encoder windows (every layer kept, no training): WER on the `full` test sets.

Run from a project holding the teacher and the `full` profile's test sets (README of this folder), then:

    python docs/results/window-epyc/teacher_cut.py
    for s in test test_ood; do askd evaluate --manifest data/raw/synth/$s.csv --model models/teacher \
        --model probe/teacher_w10 --model probe/teacher_w8 --model probe/teacher_w6 --out probe/$s.json; done

It writes ``data/raw/synth/{test,test_ood}.csv`` (``audio,text`` manifests of the synth stage's clips) and the cut
teachers under ``probe/`` (``init_student`` with ``decoder_layers=4``: all of them, so only the window changes).
``teacher_cut.json`` next to this file is the two ``askd evaluate`` outputs without their per-clip predictions.
"""
import csv
import sys
from pathlib import Path

sys.path.insert(0, ".")
from benchmarks.speed import cut_student  # noqa: E402
from components.settings import load_settings  # noqa: E402

rows = list(csv.DictReader(open("data/raw/synth/metadata.csv", encoding="utf-8")))
for split in ("test", "test_ood"):
    with open(f"data/raw/synth/{split}.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["audio", "text"])
        writer.writerows([r["file_name"], r["text"]] for r in rows if r["split"] == split)
settings = load_settings("params.yaml")
for window_s in (10, 8, 6):
    out = Path(f"probe/teacher_w{window_s}")
    if not out.exists():
        print(cut_student(Path("models/teacher"), settings.train.student, ["decoder_layers=4", f"window_s={window_s}"],
                          out))
