#!/usr/bin/env bash
# The README's strategy table: 7 strategies x 3 seeds on the embedded default; every run evaluates all
# indexing policies on its one training run (index.compare). One thread per run; about 45 min.
#   bash experiments/strategies.sh [OUT=runs/strategies]
set -euo pipefail
out=${1:-runs/strategies}
for seed in 0 1 2; do
  for s in finetune joint ewc lwf replay freeze compat; do
    [ -f "$out/$s-seed$seed/results.json" ] && grep -q '"status": "complete"' "$out/$s-seed$seed/results.json" && continue
    ccr run --quiet --out "$out/$s-seed$seed" --set strategy.name=$s --set seed=$seed --set train.threads=1 \
      --set 'index.compare=[no_reindex,reindex_images,reindex_captions,backfill,drift_map]' > /dev/null
    echo "done $s seed $seed"
  done
done
ccr analyze "$out"
