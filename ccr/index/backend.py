"""Where a study's galleries live: in this process (here), or on shard actors (ccr.distributed.shards). The
runner picks one and hands it to the evaluator, which never asks which it got."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ccr.index.gallery import IndexState

if TYPE_CHECKING:
    from ccr.config.schema import IndexConfig
    from ccr.data.dataset import RetrievalDataset
    from ccr.io.storage import Storage
    from ccr.models.embed import Embedder


class Galleries:
    """Galleries in this process. Subclasses put them elsewhere and hear of each step's model and end."""

    sharded = False  # True where the galleries live on resources.shards actors
    # distractors embedded elsewhere (index.embed_actors: ccr.distributed.embed_pool), or None: where they live
    streamed = None

    def make_state(self, namespace: str, icfg: IndexConfig, device: str) -> IndexState:
        """The empty galleries of one policy (`namespace`: the policy's name, `val/` + it for val items)."""
        return IndexState.empty(icfg, device)

    def hold(self, ds: RetrievalDataset, tokens: object, ids: dict[str, np.ndarray]) -> None:
        """Before task 1: the items the galleries will ever hold (`ids`: modality -> ascending global ids) of the
        dataset and its tokenized captions. Galleries that embed elsewhere send each place its own."""
        if self.streamed is not None:
            self.streamed.hold(ds, tokens)

    def before_index(self, step: int, embedder: Embedder) -> None:
        """Before step `step` indexes: galleries that embed elsewhere receive the step's model here."""

    def after_step(self, step: int) -> None:
        """After step `step` has indexed and queried (shards compact their journals)."""

    def save_snapshots(self, states: dict[str, IndexState], folder: Storage, label: str, step: int) -> None:
        """Each policy's galleries after step `step` under folder/POLICY/LABEL."""
        for name, st in states.items():
            st.save_snapshot(folder.child(f"{name}/{label}"), step)

    def close(self) -> None:
        """Release what the galleries hold outside this process."""
