"""Shared fixtures: tiny configs that train in seconds on CPU."""

from __future__ import annotations

import os

import pytest

from ccr.study.configure import load_config

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray nodes started by tests (ray.init, cluster_utils, and the processes they spawn) take 127.0.0.1 as
# their address instead of the machine's network address: test traffic stays on the loopback range.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

TINY = [
    "data.n_tasks=3", "data.train_per_task=48", "data.test_per_task=12", "data.captions_per_image=2",
    "data.image_size=16", "model.image.image_size=16", "model.image.patch_size=4",
    "model.image.hidden_size=32", "model.image.layers=1", "model.image.intermediate_size=64",
    "model.text.hidden_size=32", "model.text.layers=1", "model.text.intermediate_size=64",
    "model.embed_dim=16", "train.epochs=2", "train.batch_size=16", "train.warmup_steps=2",
]


@pytest.fixture
def tiny_overrides(tmp_path):
    return [*TINY, f"data.cache_dir={tmp_path / 'cache'}"]


@pytest.fixture
def tiny_cfg(tiny_overrides):
    def make(*extra: str):
        return load_config(None, [*tiny_overrides, *extra])

    return make


def counts(cost: dict) -> dict:
    """An index_cost without its (timing) seconds: what must match between equivalent runs."""
    timing = ("seconds", "index_seconds")
    return {k: ([{m: v for m, v in s.items() if m not in timing} for s in cost[k]] if k == "per_step" else cost[k])
            for k in cost if k not in timing}


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray (2 CPUs) per test module that asks for it."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3():
    """moto's S3 on 127.0.0.1 with a bucket 'ccr', shared by the tests of a session."""
    import logging

    from tests.s3server import S3Server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = S3Server().start()
    server.make_bucket("ccr")
    yield server
    server.stop()
