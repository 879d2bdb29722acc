#!/bin/bash
# quick data: ASKD default with KD targets from the teacher at its own 30 s window (train.teacher_window=full)
cd /work/e2e
export PATH=/work/main/.venv/bin:$PATH PYTHONPATH=/work/main HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
date -u +"start %FT%TZ"
/usr/bin/time -f "kdfull train %e s %M KB" askd -s train.teacher_window=full -s train.out_dir=models/abl_kdfull stage train 2>&1 | tr '\r' '\n' | grep -v "^train:\|cache (full\|^encoder cache" 
cp metrics/train.json abl_train_kdfull.json
for split in test test_ood; do
  askd evaluate --manifest /tmp/e2e_man/$split.csv --model models/teacher --model models/student --model models/abl_kdfull --out abl_kdfull_eval_$split.json 2>&1 | tail -8
done
date -u +"end %FT%TZ"
