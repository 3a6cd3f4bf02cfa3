#!/bin/bash
# Do two checkouts train the same run? The first STEPS steps of configs/camvid_cpu.py
# (METHOD, seed 0) with each, then their logged losses compared line by line. Used before
# a grid on newer code takes reference rows from a grid on older code (issue 38).
# Usage: same_runs_check.sh OLD_CHECKOUT NEW_CHECKOUT METHOD [STEPS]
set -e
OLD=$1 NEW=$2 METHOD=$3 STEPS=${4:-20}
PY=/work/main/.venv/bin/python
OUT=$(mktemp -d)
for side in old new; do
  CODE=$OLD; [ $side = new ] && CODE=$NEW
  (cd "$CODE" && PYTHONPATH="$CODE" $PY -P -m cowmix_jax.main --config=configs/camvid_cpu.py \
     --workdir="$OUT/$side" --config.data.manual_dir=/work/shared/data/camvid \
     --config.method="$METHOD" --config.num_epochs=0 --config.num_train_steps="$STEPS" \
     --config.log_every=1 --config.checkpoint_every=0 > "$OUT/$side.log" 2>&1)
  grep '"loss"' "$OUT/$side/metrics.jsonl" | sed 's/"steps_per_sec[^,]*, //' > "$OUT/$side.losses"
done
if cmp -s "$OUT/old.losses" "$OUT/new.losses"; then
  echo "same: $METHOD, $(wc -l < "$OUT/new.losses") steps logged identically ($OUT)"
else
  echo "DIFFERENT: $METHOD ($OUT)"; diff "$OUT/old.losses" "$OUT/new.losses" | head -6
fi
