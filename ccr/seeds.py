"""Every random stream a study draws, named once.

A stream is `task_seed(cfg.seed, task index, SALT)`: it depends only on the run seed, the task and what it is
for, so a resumed study draws what an uninterrupted one drew, and two consumers never share draws by accident
(tests/test_seeds.py checks the salts are distinct). Changing a salt changes numbers: add new ones, never
renumber.
"""

from __future__ import annotations

import numpy as np

# the training loop: batch plan and caption choice, and torch's own generator (dropout, init of new heads)
TRAIN_PLAN = 0
TRAIN_TORCH = 1
# the joint pretraining stage before the sequence draws from its own (TRAIN_* + PRETRAIN_OFFSET)
PRETRAIN_OFFSET = 1000
PRETRAIN_PLAN = TRAIN_PLAN + PRETRAIN_OFFSET
PRETRAIN_TORCH = TRAIN_TORCH + PRETRAIN_OFFSET
# evaluation: the new task's training items that fit a drift map (drift_map, backfill by drift)
DRIFT_FIT = 2
# strategies
EWC_FISHER = 10  # the items whose gradients estimate the Fisher information
REPLAY_MEMORY = 20  # which items enter the replay memory
REPLAY_CANDIDATES = 30  # MIR's candidates drawn from memory
AGEM_REFERENCE = 40  # A-GEM's reference batch
AGEM_CANDIDATES = 41  # ... drawn from memory
ZSCL_REFERENCE = 50  # ZSCL's reference batches
# eval.backfill_curve: one stream per order (position in eval.backfill_orders) and modality, 8 in all
BACKFILL_CURVE = 60
BACKFILL_CURVE_STREAMS = 8
BACKFILL_POLICY = 70  # the backfill policy's random order (index.backfill_order): images 70, captions 71
BACKFILL_POLICY_CAPTIONS = 71
ADAPTER_INIT = 77  # LoRA adapters' initialisation (the same in every process)
CCLIP_PROJECTOR = 80  # C-CLIP's projector h_ψ, drawn afresh for each task


def salts() -> dict[str, int]:
    """Every salt above by name (the curve's as a range), for the test that no two streams coincide."""
    out = {k: v for k, v in globals().items() if k.isupper() and isinstance(v, int)
           and k not in ("PRETRAIN_OFFSET", "BACKFILL_CURVE_STREAMS", "BACKFILL_CURVE")}
    out.update({f"BACKFILL_CURVE+{i}": BACKFILL_CURVE + i for i in range(BACKFILL_CURVE_STREAMS)})
    return out


def backfill_curve_salt(order_index: int, modality_index: int) -> int:
    """The curve's stream for one backfill order and one modality (images 0, captions 1)."""
    i = 2 * order_index + modality_index
    if not 0 <= i < BACKFILL_CURVE_STREAMS:
        raise ValueError(f"backfill curve stream {i} outside its {BACKFILL_CURVE_STREAMS} salts")
    return BACKFILL_CURVE + i


def task_seed(seed: int, index: int, salt: int = 0) -> int:
    """A seed for task `index` that does not depend on what ran before (so resumed runs match)."""
    return int(np.random.SeedSequence([seed, index, salt]).generate_state(1)[0])
