#!/usr/bin/env bash
# One short device check of the complete-CLIP paths (model.pretrained, LoRA) on a GPU: CLIP ViT-B/16 through
# ccr against a plain transformers loop in the same run, then LoRA against full fine-tuning.
#   bash bench/gpu_clip_check.sh   (on the lent GPU machine; wheels of this checkout's transformers/peft under .whl/)
set -u -o pipefail
cd "$(dirname "$0")"
if [ -d ../.whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ../.whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(cd .. && pwd)" TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
python3 clip_throughput.py --preset b16 --device cuda --batch 256 --steps 20 --warmup 3 2>&1 | grep -v "Loading weights\|Writing model"
python3 lora_bench.py --preset b16 --device cuda --batch 128 --steps 20 2>&1 | grep -v "Loading weights\|Writing model"
