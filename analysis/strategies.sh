#!/usr/bin/env bash
# The README's strategy table: 8 strategies x 3 seeds on the embedded default; every run evaluates all
# indexing policies on its one training run (index.compare). One torch thread per run and JOBS runs at
# a time (default 2, one per core: the numbers do not depend on it); about 25 min on 2 cores.
#   bash analysis/strategies.sh [OUT=runs/strategies]
set -euo pipefail
out=${1:-runs/strategies}
one() {  # one study; a finished one is skipped, an interrupted one resumes
  local s=$1 seed=$2 out=$3
  [ -f "$out/$s-seed$seed/results.json" ] && grep -q '"status": "complete"' "$out/$s-seed$seed/results.json" && return
  ccr run --quiet --out "$out/$s-seed$seed" --set strategy.name="$s" --set seed="$seed" --set train.threads=1 \
    --set 'index.compare=[no_reindex,reindex_images,reindex_captions,backfill,drift_map]' > /dev/null \
    || { echo "FAILED $s seed $seed (see $out/$s-seed$seed/log.txt)" >&2; return 1; }
  echo "done $s seed $seed"
}
export -f one
for seed in 0 1 2; do
  for s in finetune joint ewc lwf replay freeze compat agem; do echo "$s $seed"; done
done | xargs -P "${JOBS:-2}" -L 1 bash -c 'one "$0" "$1" '"'$out'"
ccr analyze "$out"
