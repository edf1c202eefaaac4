"""After each task: update every policy's galleries, query them, and record recall.

Indexing never feeds back into training, so the configured policy and any `index.compare` policies are all
evaluated on one training run; each keeps its own galleries and cost counters. Where the galleries live (this
process, or shard actors) is the runner's choice, handed in as `galleries` (ccr.index.backend). What needs no
policy (the zero-shot row, transfer, control) is `UnlearnedRows`; the backfill curve and the anatomy are
`BackfillCurve` and `AnatomyRecord`; this class runs them at the right moments and checkpoints them all.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ccr import seeds
from ccr.config.schema import Config
from ccr.data.dataset import RetrievalDataset
from ccr.data.webdataset import DISTRACTORS, SPLIT
from ccr.index.backend import Galleries
from ccr.index.gallery import MODALITIES
from ccr.index.policies import StepInput, build_policy
from ccr.io.checkpoint import task_label
from ccr.io.storage import Storage
from ccr.measure import results
from ccr.measure.anatomy import AnatomyRecord
from ccr.measure.classification import ClassificationRows, LoadedSet
from ccr.measure.curve import BackfillCurve
from ccr.measure.metrics import DIRECTIONS, negative_flips
from ccr.measure.query import evaluate_step
from ccr.measure.unlearned import UnlearnedRows
from ccr.models.embed import Embedder
from ccr.seeds import task_seed

log = logging.getLogger(__name__)


def _record(matrices: dict[str, dict[int, np.ndarray]], rows: dict[str, dict[str, dict[int, float]]], step: int,
            seen: list[str]) -> None:
    """Row `step` of recall matrices {direction: {K: (n, n)}} from one step's {direction: {task: {K: %}}}."""
    for d, by_task in rows.items():
        for i, t in enumerate(seen):
            for k, v in by_task[t].items():
                matrices[d][k][step, i] = v


class Evaluator:
    """Holds each policy's galleries and recall matrices across steps; its state checkpoints with the model."""

    def __init__(self, cfg: Config, ds: RetrievalDataset, order: list[str], device: str = "cpu",
                 galleries: Galleries | None = None, classification: list[LoadedSet] | None = None):
        self.cfg, self.ds, self.order = cfg, ds, order
        self.galleries = galleries or Galleries()
        n, ks = len(order), cfg.eval.ks
        self.policy_names = [cfg.index.policy, *cfg.index.compare]
        self.policies = {p: build_policy(p, cfg.index) for p in self.policy_names}
        self.search_device = device if cfg.index.backend == "torch" else "cpu"
        self.states = {p: self.galleries.make_state(p, cfg.index, self.search_device) for p in self.policy_names}
        self.recall = {p: self._matrices() for p in self.policy_names}
        self.test_ids = {t: {"images": ds.image_ids(t, "test"), "captions": ds.caption_ids(t, "test")}
                         for t in order}
        # the same galleries, policies and queries on val items, for selection (HPO) that never sees test
        self.val_ids = {t: {"images": ds.image_ids(t, "val"), "captions": ds.caption_ids(t, "val")} for t in order}
        # gallery entries of no task (eval.distractors), in every gallery (val's too) from task 1 on
        self.standing: tuple[str, ...] = (DISTRACTORS,) if "distractors" in ds.info else ()
        for part in self.standing:
            self.test_ids[part] = self.val_ids[part] = {"images": ds.image_ids(part, SPLIT),
                                                        "captions": ds.caption_ids(part, SPLIT)}
        self.has_val = cfg.eval.val and all(len(v["images"]) >= cfg.eval.min_test_items for v in self.val_ids.values())
        self.val_states = {p: self.galleries.make_state(f"val/{p}", cfg.index, self.search_device)
                           for p in self.policy_names} if self.has_val else {}
        self.val_recall = {p: self._matrices() for p in self.val_states}
        self.learned: dict[str, dict[str, np.ndarray]] = {}  # each task's test items as embedded when learned
        # negative flips: each policy's first-hit ranks of every seen task's queries after the last step, and
        # per step the % of old tasks' queries that were hits at R@K before it and are misses after it
        self.ranks: dict[str, dict[str, dict[str, np.ndarray]]] = {p: {} for p in self.policy_names}
        self.flips = {p: {d: {k: np.full(n, np.nan) for k in ks} for d in DIRECTIONS} for p in self.policy_names}
        # index.approx: recall@10 of approximate vs exact search per step, per policy and gallery
        self.approx_steps = {p: {m: np.full(n, np.nan) for m in MODALITIES} for p in self.policy_names}
        # forward passes and seconds of embedding, per modality, over the sequence: the throughput behind the
        # cost of each policy at another gallery size (ccr analyze --gallery-size)
        self.embedding = {m: {"items": 0, "seconds": 0.0} for m in MODALITIES}
        self.unlearned = UnlearnedRows(cfg, ds, order, self.search_device, self.has_val)
        self.classification = ClassificationRows(classification or [], n)
        self.curve = BackfillCurve(cfg, ds, order, self.test_ids, self.search_device, self.standing)
        self.anatomy = AnatomyRecord(ds, order, ks, self.test_ids)

    def gallery_ids(self) -> dict[str, np.ndarray]:
        """Every item any gallery of this study will hold, per modality (ascending): test and val items of every
        task, and the distractors."""
        parts = [*self.test_ids.values(), *(self.val_ids.values() if self.has_val else ())]
        return {m: np.unique(np.concatenate([p[m] for p in parts])).astype(np.int64) for m in MODALITIES}

    def _matrices(self) -> dict[str, dict[int, np.ndarray]]:
        n = len(self.order)
        return {d: {k: np.full((n, n), np.nan) for k in self.cfg.eval.ks} for d in DIRECTIONS}

    @property
    def needs_previous_model(self) -> bool:
        e = self.cfg.eval
        return any(p.needs_previous_model for p in self.policies.values()) or (
            bool(e.backfill_curve) and "drift" in e.backfill_orders)

    def fit_ids(self, step: int) -> dict[str, np.ndarray]:
        """Training items of the new task used by policies that fit a drift map."""
        imgs = self.ds.image_ids(self.order[step], "train")
        rng = np.random.default_rng(task_seed(self.cfg.seed, step, seeds.DRIFT_FIT))
        imgs = np.sort(rng.choice(imgs, min(len(imgs), self.cfg.index.drift_map_fit), replace=False))
        caps = self.ds.captions_of(imgs)
        caps = np.sort(rng.choice(caps, min(len(caps), self.cfg.index.drift_map_fit), replace=False))
        return {"images": imgs, "captions": caps}

    def before_sequence(self, embedder: Embedder) -> None:
        """θ0 on every task and on control data, before task 1 trains (and θ0's embeddings for the anatomy)."""
        self.unlearned.before_sequence(embedder)
        self.classification.measure(0, embedder)
        if self.cfg.eval.anatomy:
            self.anatomy.before_sequence(embedder)

    def step(self, step: int, embedder: Embedder, prev_embedder: Embedder | None = None) -> None:
        """Index task order[step] (θ_step = embedder's model), then query all seen tasks."""
        self.galleries.before_index(step, embedder)
        fit = self.fit_ids(step) if self.needs_previous_model else None
        for name in self.policy_names:
            self._policy_step(name, step, embedder, prev_embedder, fit)
        self.unlearned.after_step(step, embedder)
        self.classification.measure(step + 1, embedder)
        task = self.order[step]
        if self.cfg.eval.anatomy or self.cfg.eval.backfill_curve:  # its items as embedded when it was learned
            self.learned[task] = {m: embedder.embed(m, self.test_ids[task][m]) for m in MODALITIES}
        for part in self.standing if step == 0 and self.cfg.eval.backfill_curve else ():  # distractors: old items
            self.learned[part] = {m: embedder.embed(m, self.test_ids[part][m]) for m in MODALITIES}
        if self.cfg.eval.backfill_curve:
            self.curve.step(step, embedder, prev_embedder, fit, self.learned)
        if self.cfg.eval.anatomy:
            self.anatomy.step(step, embedder, self.learned)
        for e in (embedder, prev_embedder):
            for m in MODALITIES if e is not None else ():
                self.embedding[m]["items"] += e.computed[m]
                self.embedding[m]["seconds"] += e.seconds[m]
        self.galleries.after_step(step)

    def _policy_step(self, name: str, step: int, embedder: Embedder, prev_embedder: Embedder | None,
                     fit: dict[str, np.ndarray] | None) -> None:
        """One policy's update and queries after step `step` (and the same on val items)."""
        seen, e = self.order[: step + 1], self.cfg.eval
        policy, state = self.policies[name], self.states[name]
        cost = policy.update(state, StepInput(step, self.order, embedder, self.test_ids, prev_embedder, fit,
                                              self.cfg.seed, self.standing))
        ranks: dict[str, dict[str, np.ndarray]] = {}
        gal = state.galleries
        seen_q, seen_t = {m: len(g.quality) for m, g in gal.items()}, {m: len(g.trainings) for m, g in gal.items()}
        built = sum(g.build_seconds for g in gal.values())
        rows = evaluate_step(state, embedder, self.ds, seen, e.scope, e.ks, ranks=ranks, standing=self.standing)
        # indexes are built where first searched: this step's building is what the queries made it do
        state.cost_per_step[-1]["index_seconds"] = round(sum(g.build_seconds for g in gal.values()) - built, 4)
        for m, g in gal.items():
            if len(g.quality) > seen_q[m]:
                self.approx_steps[name][m][step] = float(np.mean(g.quality[seen_q[m]:]))
            for t in g.trainings[seen_t[m]:]:
                t["step"] = step
        _record(self.recall[name], rows, step, seen)
        self._negative_flips(name, step, ranks)
        k = min(e.ks)
        log.info("after task %d/%d (%s) [%s]: embedded %d images, %d captions; t2i R@%d %s", step + 1,
                 len(self.order), self.order[step], name, cost["images"], cost["captions"], k,
                 ", ".join(f"{t} {rows['t2i'][t][k]:.1f}" for t in seen))
        if name in self.val_states:
            val = self.val_states[name]
            policy.update(val, StepInput(step, self.order, embedder, self.val_ids, prev_embedder, fit, self.cfg.seed,
                                         self.standing))
            vrows = evaluate_step(val, embedder, self.ds, seen, e.scope, e.ks, "val", standing=self.standing)
            _record(self.val_recall[name], vrows, step, seen)

    def _negative_flips(self, name: str, step: int, ranks: dict[str, dict[str, np.ndarray]]) -> None:
        """Old tasks' queries (learned before this step) that were hits at R@K after the previous step and are
        misses now, pooled over those tasks, in % of their queries."""
        before = self.ranks[name]
        old = self.order[:step]
        if old and all(t in before.get(d, {}) for d in DIRECTIONS for t in old):
            for d in DIRECTIONS:
                for k in self.cfg.eval.ks:
                    counts = [negative_flips(before[d][t], ranks[d][t], k) for t in old]
                    total = sum(c[1] for c in counts)
                    if total:
                        self.flips[name][d][k][step] = 100.0 * sum(c[0] for c in counts) / total
        self.ranks[name] = ranks

    def close(self) -> None:
        """Release what the galleries hold outside this process (shard actors)."""
        self.galleries.close()

    def save_snapshots(self, folder: Storage, step: int) -> None:
        self.galleries.save_snapshots(self.states, folder, task_label(step, self.order), step)

    # ---- checkpointing: one flat dict, the keys every release has written ----------------------
    def state_dict(self) -> dict[str, Any]:
        return {"states": {p: s.state_dict() for p, s in self.states.items()}, "recall": self.recall,
                "learned": self.learned, **self.anatomy.state_dict(),
                "val_states": {p: s.state_dict() for p, s in self.val_states.items()}, "val_recall": self.val_recall,
                **self.unlearned.state_dict(), **self.classification.state_dict(), "ranks": self.ranks,
                "flips": self.flips, "curve": self.curve.rows, "embedding": self.embedding,
                "approx_steps": self.approx_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for p, s in self.states.items():
            s.load_state_dict(state["states"][p])
        self.recall, self.learned = state["recall"], state["learned"]
        self.anatomy.load_state_dict(state)
        self.unlearned.load_state_dict(state)
        self.classification.load_state_dict(state)
        # a checkpoint of an earlier ccr has no ranks: the flips of the step after it are not known
        self.ranks = {p: state.get("ranks", {}).get(p, {}) for p in self.policy_names}
        if "flips" in state:
            self.flips = {p: state["flips"].get(p, self.flips[p]) for p in self.policy_names}
        self.curve.rows = list(state.get("curve", []))
        self.approx_steps = state.get("approx_steps", self.approx_steps)
        self.embedding = state.get("embedding", self.embedding)
        if self.val_states and "val_states" not in state:
            raise ValueError("this checkpoint was written without val evaluation (eval.val)")
        for p, s in self.val_states.items():
            s.load_state_dict(state["val_states"][p])
        if self.val_states:
            self.val_recall = state["val_recall"]

    # ---- results -----------------------------------------------------------------------------
    def policy_results(self, name: str, upto: int) -> dict[str, Any]:
        """One policy's results over the first `upto` steps (schema: `ccr.measure.results`)."""
        mats = {d: {k: m[:upto, :upto] for k, m in by_k.items()} for d, by_k in self.recall[name].items()}
        st = self.states[name]
        cost = {"images_embedded": st.cost["images"], "captions_embedded": st.cost["captions"],
                "seconds": round(sum(c.get("seconds", 0.0) for c in st.cost_per_step[:upto]), 4),
                "index_seconds": round(sum(c.get("index_seconds", 0.0) for c in st.cost_per_step[:upto]), 4),
                "per_step": st.cost_per_step[:upto]}
        quality = None if self.cfg.index.approx == "none" else {
            "kind": self.cfg.index.approx, "retrain": self.cfg.index.approx_retrain,
            "recall_at_10_vs_exact": st.quality(),
            "per_step": {m: results._vector(v[:upto]) for m, v in self.approx_steps[name].items()},
            "trainings": {m: [t for t in g.trainings if t.get("step", 0) < upto] for m, g in st.galleries.items()}}
        val = {d: {k: m[:upto, :upto] for k, m in by_k.items()} for d, by_k in self.val_recall[name].items()} \
            if name in self.val_recall else None
        flips = {d: {k: v[:upto] for k, v in by_k.items()} for d, by_k in self.flips[name].items()}
        return results.policy_results(mats, cost, quality, val, flips)

    def initial_results(self, upto: int) -> dict[str, Any]:
        """What needs no policy, for results.json: zero-shot row, transfer, control and classification, with
        their metrics."""
        out = self.unlearned.results(upto)
        cls = self.classification.results(upto)
        return {**out, "classification": cls["classification"], "metrics": {**out["metrics"], **cls["metrics"]}}

    def embedding_results(self, device: str) -> dict[str, Any]:
        """Embedding throughput over the sequence, per modality, on `device` (queries, galleries, fitting)."""
        from ccr.io.provenance import device_name

        out: dict[str, Any] = {"device": device, "device_name": device_name(device)}
        for m, v in self.embedding.items():
            out[m] = {"items": v["items"], "seconds": round(v["seconds"], 4),
                      "per_second": v["items"] / v["seconds"] if v["seconds"] > 0 else None}
        return out
