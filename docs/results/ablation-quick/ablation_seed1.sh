#!/bin/bash
# quick data, seed 1: ASKD default (teacher_window student) vs teacher_window full; both scored in one evaluate run
cd /work/e2e
export PATH=/work/main/.venv/bin:$PATH PYTHONPATH=/work/main HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
date -u +"start %FT%TZ"
for mode in student full; do
  /usr/bin/time -f "seed1 $mode train %e s %M KB" askd -s train.seed=1 -s train.teacher_window=$mode -s train.out_dir=models/abl_seed1_$mode stage train 2>&1 | tr '\r' '\n' | grep -v "^train:\|cache\|^Loading\|^ *$"
  cp metrics/train.json abl_train_seed1_$mode.json
done
for split in test test_ood; do
  askd evaluate --manifest /tmp/e2e_man/$split.csv --model models/abl_seed1_student --model models/abl_seed1_full --out abl_seed1_eval_$split.json 2>&1 | tail -2
done
date -u +"end %FT%TZ"
