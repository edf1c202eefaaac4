#!/usr/bin/env bash
# One short device check of ccr's Ray-free core on a GPU, with raw baselines in the same run.
#   bash bench/gpu_check.sh            (on the lent GPU machine; faiss-cpu wheel optional under .carry/wheels)
set -u
cd "$(dirname "$0")"
[ -d ../.carry/wheels ] && python3 -m pip install -q --no-deps --no-index ../.carry/wheels/*.whl 2>&1 | tail -1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
export TOKENIZERS_PARALLELISM=false
python3 search_throughput.py --backend torch --device cuda --n 1000000 --d 512 --nq 10000 --dtype float16
python3 search_throughput.py --backend torch --device cuda --n 1000000 --d 512 --nq 10000 --dtype float32 --tf32
python3 search_throughput.py --backend torch --device cuda --n 10000000 --d 256 --nq 10000 --dtype float16
python3 train_throughput.py --preset base --device cuda --batch 256 --steps 30 --warmup 5
python3 embed_throughput.py --preset base --device cuda --batch 256 --n 10240
python3 train_throughput.py --preset tiny --device cuda --batch 256 --steps 40
python3 gpu_data_check.py --n 8192 --batch 256 --workers 8
