"""The decoded-image cache shared through a bucket (`data.image_cache: shared`, ccr/data/pipeline.py): decoded
once and downloaded by other nodes; replaced, truncated or mismatched caches decoded again and replaced; storage
that cannot take it a warning."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ccr.data import load_dataset
from ccr.io.staging import events
from ccr.io.storage import Storage
from tests.karpathy_fixture import make_karpathy
from tests.test_staging import _cfg, _upload


def test_a_shared_image_cache_is_decoded_once_and_downloaded_by_other_nodes(s3, tmp_path, monkeypatch):
    local = make_karpathy(tmp_path / "src")
    uris = _upload(s3, local, "staging/shared")
    shared = s3.uri("ccr", "staging/shared-cache")
    arrays = {}
    for node in ("a", "b"):  # two nodes: separate caches
        monkeypatch.setenv("CCR_CACHE", str(tmp_path / f"cache-{node}"))
        ds = load_dataset(_cfg(uris, "data.image_cache=shared", f"data.shared_cache={shared}"))
        arrays[node] = ds.images.load(np.arange(ds.n_images))
    kinds = {n: [e["event"] for e in events(tmp_path / f"cache-{n}")] for n in "ab"}
    # node a copies the images to decode them; node b downloads their pixels and never copies the images
    assert kinds == {"a": ["staged"] * 3 + ["decoded", "uploaded"], "b": ["staged"] * 2 + ["downloaded"]}
    assert "data.images" not in [e.get("what") for e in events(tmp_path / "cache-b")]
    assert torch.equal(arrays["a"], arrays["b"])
    local_ds = load_dataset(_cfg({k: str(v) for k, v in local.items()}, f"data.cache_dir={tmp_path / 'c'}"))
    assert torch.equal(arrays["a"], local_ds.images.load(np.arange(local_ds.n_images)))


def _damage(store: Storage, case: str) -> None:
    """The shared cache in the bucket, damaged as a user or a fault would: replaced, truncated, of another
    dataset (with a marker to match), its object gone, or marked by an older ccr."""

    from ccr.data.pipeline import file_digest

    npy = next(f for f in store.files("images") if f.endswith(".npy"))
    rel = f"images/{npy}" if not npy.startswith("images/") else npy
    good = np.load(io.BytesIO(store.read_bytes(rel)))
    bad = {"white": np.full_like(good, 255), "too few rows": good[:-3], "4x4 images": good[:, :, :4, :4],
           "object dtype": good.astype(object)}.get(case)
    if case == "truncated":
        store.write_bytes(rel, store.read_bytes(rel)[: len(store.read_bytes(rel)) // 2])
    elif case == "marker without its object":
        store.delete(rel)
    elif case == "old marker":
        store.write_text(rel.removesuffix(".npy") + ".done", f"{len(store.read_bytes(rel))}\n")
    else:
        buf = io.BytesIO()
        np.save(buf, bad, allow_pickle=True)
        store.write_bytes(rel, buf.getvalue())
        if case != "white":  # a marker that matches the bad object: only the dataset's own needs refuse it
            tmp = Path(tempfile.mkdtemp()) / "x.npy"
            tmp.write_bytes(buf.getvalue())
            store.write_text(rel.removesuffix(".npy") + ".done", json.dumps(
                {"bytes": tmp.stat().st_size, "sha256": file_digest(tmp), "shape": list(bad.shape)}))


@pytest.mark.parametrize("case", ["white", "truncated", "too few rows", "4x4 images", "object dtype",
                                  "marker without its object", "old marker"])
def test_a_damaged_shared_image_cache_is_decoded_again_and_replaced(case, s3, tmp_path, monkeypatch, caplog):
    local = make_karpathy(tmp_path / "src", per_task=6, test_per_task=2)
    uris = _upload(s3, local, f"staging/damaged-{case.replace(' ', '-')}")
    shared = s3.uri("ccr", f"staging/damaged-cache-{case.replace(' ', '-')}")
    arrays = {}
    for node in ("a", "b", "c"):  # a builds it; then it is damaged; b decodes and replaces it; c downloads that
        monkeypatch.setenv("CCR_CACHE", str(tmp_path / f"cache-{node}"))
        ds = load_dataset(_cfg(uris, "data.image_cache=shared", f"data.shared_cache={shared}"))
        arrays[node] = ds.images.load(np.arange(ds.n_images))
        if node == "a":
            _damage(Storage(shared), case)
            caplog.clear()
    kinds = {n: [e["event"] for e in events(tmp_path / f"cache-{n}") if e["event"] != "staged"] for n in "abc"}
    assert kinds == {"a": ["decoded", "uploaded"], "b": ["decoded", "uploaded"], "c": ["downloaded"]}, kinds
    assert torch.equal(arrays["a"], arrays["b"]) and torch.equal(arrays["a"], arrays["c"])
    if case != "old marker":
        assert "cannot be used" in caplog.text or case == "marker without its object", caplog.text


@pytest.mark.parametrize("where", ["missing bucket", "dead endpoint", "unwritable path"])
def test_a_shared_cache_where_nothing_can_be_written_is_a_warning(where, s3, tmp_path, monkeypatch, caplog):
    local = make_karpathy(tmp_path / "src", per_task=6, test_per_task=2)
    (tmp_path / "file").write_text("not a folder")
    shared = {"missing bucket": s3.uri("no-such-bucket", "cache"),
              "dead endpoint": "s3://ccr/cache?endpoint_override=127.0.0.1:1&scheme=http",
              "unwritable path": str(tmp_path / "file" / "cache")}[where]
    monkeypatch.setenv("CCR_CACHE", str(tmp_path / "cache"))
    ds = load_dataset(_cfg({k: str(v) for k, v in local.items()}, "data.image_cache=shared",
                           f"data.shared_cache={shared}"))
    assert ds.images.load(np.arange(ds.n_images)).shape[0] == ds.n_images
    assert "decoded" in [e["event"] for e in events(tmp_path / "cache")]
    assert "shared image cache" in caplog.text or "cannot upload the image cache" in caplog.text
