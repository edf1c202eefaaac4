"""After each task: update every policy's galleries, query them, and record recall and anatomy.

Indexing never feeds back into training, so the configured policy and any `index.compare`
policies are all evaluated on one training run; each keeps its own galleries and cost counters.

Before the first task, θ0 (the model the sequence starts from: pretrained, or a random
initialisation) is evaluated on every task: the zero-shot row. Tasks not learned yet (the zero-shot
row, `eval.transfer`) and never learned (`eval.control`) need no index policy: both sides are
embedded with the current model, and the gallery is the one the task would be searched in once
learned (its own items in `task` scope; in `seen` scope, the order's tasks up to it; control tasks:
all control tasks).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from ccr import results
from ccr.anatomy import COMBOS, anatomy_of_task
from ccr.backfill import backfill_rank, chosen
from ccr.config import Config
from ccr.context import task_label, task_seed
from ccr.data.dataset import RetrievalDataset
from ccr.embed import Embedder
from ccr.index import MODALITIES, IndexState
from ccr.metrics import DIRECTIONS, negative_flips, to_json_matrix
from ccr.policies import StepInput, build_policy, fit_linear_map
from ccr.query import evaluate_step, gallery_tasks, recall_direct
from ccr.storage import Storage

log = logging.getLogger(__name__)


def _nan(n: int) -> np.ndarray:
    return np.full((n, n), np.nan)


def _record(matrices: dict[str, dict[int, np.ndarray]], rows: dict[str, dict[str, dict[int, float]]], step: int,
            seen: list[str]) -> None:
    """Row `step` of recall matrices {direction: {K: (n, n)}} from one step's {direction: {task: {K: %}}}."""
    for d, by_task in rows.items():
        for i, t in enumerate(seen):
            for k, v in by_task[t].items():
                matrices[d][k][step, i] = v


class Evaluator:
    """Holds galleries, recall matrices and anatomy across steps; its state checkpoints with the model."""

    shards_galleries: bool = False  # True for evaluators whose galleries live on index.shards actors

    def __init__(self, cfg: Config, ds: RetrievalDataset, order: list[str], device: str = "cpu",
                 tokenizer: Storage | None = None):
        """`tokenizer`: where evaluators that embed in other processes load it from (unused here)."""
        self.cfg, self.ds, self.order = cfg, ds, order
        n, ks = len(order), cfg.eval.ks
        self.policy_names = [cfg.index.policy, *cfg.index.compare]
        self.policies = {p: build_policy(p, cfg.index) for p in self.policy_names}
        search_device = device if cfg.index.backend == "torch" else "cpu"
        self.states = {p: self.make_state(p, cfg, search_device) for p in self.policy_names}
        self.recall = {p: {d: {k: _nan(n) for k in ks} for d in DIRECTIONS} for p in self.policy_names}
        self.test_ids = {t: {"images": ds.image_ids(t, "test"), "captions": ds.caption_ids(t, "test")}
                         for t in order}
        # the same galleries, policies and queries on val items, for selection (HPO) that never sees test
        self.val_ids = {t: {"images": ds.image_ids(t, "val"), "captions": ds.caption_ids(t, "val")} for t in order}
        self.has_val = cfg.eval.val and all(len(v["images"]) >= cfg.eval.min_test_items for v in self.val_ids.values())
        self.val_states = {p: self.make_state(f"val/{p}", cfg, search_device) for p in self.policy_names} \
            if self.has_val else {}
        self.val_recall = {p: {d: {k: _nan(n) for k in ks} for d in DIRECTIONS} for p in self.val_states}
        self.learned: dict[str, dict[str, np.ndarray]] = {}
        # negative flips: each policy's first-hit ranks of every seen task's queries after the last step, and
        # per step the % of old tasks' queries that were hits at R@K before it and are misses after it
        self.ranks: dict[str, dict[str, dict[str, np.ndarray]]] = {p: {} for p in self.policy_names}
        self.flips = {p: {d: {k: np.full(n, np.nan) for k in ks} for d in DIRECTIONS} for p in self.policy_names}
        # index.approx: recall@10 of approximate vs exact search per step, per policy and gallery
        self.approx_steps = {p: {m: np.full(n, np.nan) for m in MODALITIES} for p in self.policy_names}
        self.curve: list[dict[str, Any]] = []  # eval.backfill_curve: {step, order, fraction, direction, k, ...}
        # forward passes and seconds of embedding, per modality, over the sequence: the throughput behind the
        # cost of each policy at another gallery size (ccr analyze --gallery-size)
        self.embedding = {m: {"items": 0, "seconds": 0.0} for m in MODALITIES}
        self.anatomy = {"grid": {c: {d: {k: _nan(n) for k in ks} for d in DIRECTIONS} for c in COMBOS},
                        "stability": {m: _nan(n) for m in MODALITIES}, "alignment": _nan(n),
                        "stability_from_init": {m: _nan(n) for m in MODALITIES}}
        self.search_device = search_device
        # θ0: the zero-shot row {split: {direction: {K: (n,)}}} and test embeddings {task: {modality: (m, D)}}
        self.zero_shot: dict[str, dict[str, dict[int, np.ndarray]]] | None = None
        self.initial: dict[str, dict[str, np.ndarray]] = {}
        # eval.transfer: recall of task i after step s < i (both sides with θ_s)
        self.transfer = {d: {k: _nan(n) for k in ks} for d in DIRECTIONS} if cfg.eval.transfer else None
        # eval.control: row 0 at θ0, row s + 1 after step s; one column per control task
        self.control = {d: {k: np.full((n + 1, len(cfg.eval.control)), np.nan) for k in ks} for d in DIRECTIONS} \
            if cfg.eval.control else None

    def make_state(self, policy: str, cfg: Config, device: str) -> IndexState:
        """The galleries of one policy (a sharded evaluator puts them on its actors)."""
        return IndexState.empty(cfg.index, device)

    @property
    def needs_previous_model(self) -> bool:
        e = self.cfg.eval
        return any(p.needs_previous_model for p in self.policies.values()) or (
            bool(e.backfill_curve) and "drift" in e.backfill_orders)

    def fit_ids(self, step: int) -> dict[str, np.ndarray]:
        """Training items of the new task used by policies that fit a drift map."""
        imgs = self.ds.image_ids(self.order[step], "train")
        rng = np.random.default_rng(task_seed(self.cfg.seed, step, 2))
        imgs = np.sort(rng.choice(imgs, min(len(imgs), self.cfg.index.drift_map_fit), replace=False))
        caps = self.ds.captions_of(imgs)
        caps = np.sort(rng.choice(caps, min(len(caps), self.cfg.index.drift_map_fit), replace=False))
        return {"images": imgs, "captions": caps}

    def step(self, step: int, embedder: Embedder, prev_embedder: Embedder | None = None) -> None:
        """Index task order[step] (θ_step = embedder's model), then query all seen tasks."""
        seen = self.order[: step + 1]
        self.before_index(step, embedder)
        fit = self.fit_ids(step) if self.needs_previous_model else None
        for name, policy in self.policies.items():
            inp = StepInput(step, self.order, embedder, self.test_ids, prev_embedder, fit)
            cost = policy.update(self.states[name], inp)
            ranks: dict[str, dict[str, np.ndarray]] = {}
            gal = self.states[name].galleries
            seen_q, seen_t = {m: len(g.quality) for m, g in gal.items()}, {m: len(g.trainings) for m, g in gal.items()}
            rows = evaluate_step(self.states[name], embedder, self.ds, seen, self.cfg.eval.scope, self.cfg.eval.ks,
                                 ranks=ranks)
            for m, g in gal.items():
                if len(g.quality) > seen_q[m]:
                    self.approx_steps[name][m][step] = float(np.mean(g.quality[seen_q[m]:]))
                for t in g.trainings[seen_t[m]:]:
                    t["step"] = step
            _record(self.recall[name], rows, step, seen)
            self._negative_flips(name, step, ranks)
            k = min(self.cfg.eval.ks)
            log.info("after task %d/%d (%s) [%s]: embedded %d images, %d captions; t2i R@%d %s", step + 1,
                     len(self.order), self.order[step], name, cost["images"], cost["captions"], k,
                     ", ".join(f"{t} {rows['t2i'][t][k]:.1f}" for t in seen))
            if name in self.val_states:
                val = self.val_states[name]
                policy.update(val, StepInput(step, self.order, embedder, self.val_ids, prev_embedder, fit))
                vrows = evaluate_step(val, embedder, self.ds, seen, self.cfg.eval.scope, self.cfg.eval.ks, "val")
                _record(self.val_recall[name], vrows, step, seen)
        self._after_step(step, embedder)
        task = self.order[step]
        if self.cfg.eval.anatomy or self.cfg.eval.backfill_curve:  # its items as embedded when it was learned
            self.learned[task] = {m: embedder.embed(m, self.test_ids[task][m]) for m in MODALITIES}
        if self.cfg.eval.backfill_curve:
            self._backfill_curve(step, embedder, prev_embedder, fit)
        if self.cfg.eval.anatomy:
            self._anatomy(step, embedder)
        for e in (embedder, prev_embedder):
            for m in MODALITIES if e is not None else ():
                self.embedding[m]["items"] += e.computed[m]
                self.embedding[m]["seconds"] += e.seconds[m]

    def _backfill_curve(self, step: int, embedder: Embedder, prev_embedder: Embedder | None,
                        fit: dict[str, np.ndarray] | None) -> None:
        """Recall over the seen tasks with a fraction of the old gallery re-embedded by θ_step (ccr.backfill),
        in every order of eval.backfill_orders; exact search, in the study's scope."""
        e, old, seen = self.cfg.eval, self.order[:step], self.order[: step + 1]
        icfg = dataclasses.replace(self.cfg.index, approx="none")
        # modality -> (ids, the step that learned each = its task's index, old embeddings, θ_step's), the old
        # tasks pooled in order; None before there is an old task
        pools: dict[str, tuple[np.ndarray, ...] | None] = {m: None for m in MODALITIES}
        for m in MODALITIES if old else ():
            parts = []
            for i, t in enumerate(old):
                ids = np.asarray(self.test_ids[t][m], np.int64)
                o = np.argsort(ids, kind="stable")
                parts.append((ids[o], np.full(len(ids), i), self.learned[t][m][o], embedder.embed(m, ids[o])))
            pools[m] = tuple(np.concatenate(x) for x in zip(*parts, strict=True))
        n_old = {m: 0 if p is None else len(p[0]) for m, p in pools.items()}
        for o_i, order in enumerate(e.backfill_orders):
            ranks = {}
            for m_i, m in enumerate(MODALITIES):
                if pools[m] is None:
                    continue
                ids, ver, old_emb, _ = pools[m]
                mat = None
                if order == "drift" and fit is not None and prev_embedder is not None:
                    mat = fit_linear_map(prev_embedder.embed(m, fit[m]), embedder.embed(m, fit[m]),
                                         self.cfg.index.drift_map_ridge)
                rng = np.random.default_rng(task_seed(self.cfg.seed, step, 10 + 2 * o_i + m_i))
                ranks[m] = backfill_rank(order, ids, ver, old_emb, rng, mat)
            for f in e.backfill_curve:
                state, counts = IndexState.empty(icfg, self.search_device), {m: 0 for m in MODALITIES}
                for m in MODALITIES:
                    g, new_ids = state.galleries[m], self.test_ids[self.order[step]][m]
                    g.put(self.order[step], new_ids, embedder.embed(m, new_ids), step)
                    if pools[m] is None:
                        continue
                    ids, ver, old_emb, new_emb = pools[m]
                    pick = np.zeros(len(ids), bool)
                    pick[ranks[m][: chosen(len(ids), f)]] = True
                    counts[m] = int(pick.sum())
                    emb = np.where(pick[:, None], new_emb, old_emb)
                    version = np.where(pick, step, ver)
                    for i, t in enumerate(old):
                        sel = ver == i
                        g.put(t, ids[sel], emb[sel], version[sel])
                rows = evaluate_step(state, embedder, self.ds, seen, e.scope, e.ks)
                for d in DIRECTIONS:
                    for k in e.ks:
                        self.curve.append({"step": step, "order": order, "fraction": float(f), "direction": d,
                                           "k": k, "recall": float(np.mean([rows[d][t][k] for t in seen])),
                                           "images": counts["images"], "captions": counts["captions"],
                                           "old_images": n_old["images"], "old_captions": n_old["captions"]})

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

    # ---- tasks not learned yet, and never ------------------------------------------------------
    def _direct(self, embedder: Embedder, task: str, gallery: list[str], split: str = "test"
                ) -> dict[str, dict[int, float]]:
        return recall_direct(embedder, self.ds, task, gallery, self.cfg.eval.ks, split, self.cfg.index.backend,
                             self.search_device)

    def _unlearned(self, embedder: Embedder, i: int, split: str = "test") -> dict[str, dict[int, float]]:
        """Task order[i] evaluated with `embedder`'s model on both sides, in the gallery it will have."""
        task = self.order[i]
        return self._direct(embedder, task, gallery_tasks(task, self.order[: i + 1], self.cfg.eval.scope), split)

    def _control_row(self, row: int, embedder: Embedder) -> None:
        tasks = self.cfg.eval.control
        for j, t in enumerate(tasks):
            r = self._direct(embedder, t, gallery_tasks(t, tasks, self.cfg.eval.scope))
            for d in DIRECTIONS:
                for k in self.cfg.eval.ks:
                    self.control[d][k][row, j] = r[d][k]

    def before_sequence(self, embedder: Embedder) -> None:
        """θ0 on every task (test, and val where measured) and on control data, before task 1 trains."""
        n, ks = len(self.order), self.cfg.eval.ks
        self.zero_shot = {}
        for split in ("test", "val") if self.has_val else ("test",):
            row = {d: {k: np.full(n, np.nan) for k in ks} for d in DIRECTIONS}
            for i in range(n):
                r = self._unlearned(embedder, i, split)
                for d in DIRECTIONS:
                    for k in ks:
                        row[d][k][i] = r[d][k]
            self.zero_shot[split] = row
        k = min(ks)
        log.info("zero-shot (θ0, before task 1): t2i R@%d %s", k,
                 ", ".join(f"{t} {v:.1f}" for t, v in zip(self.order, self.zero_shot["test"]["t2i"][k], strict=True)))
        if self.control is not None:
            self._control_row(0, embedder)
        if self.cfg.eval.anatomy:
            self.initial = {t: {m: embedder.embed(m, self.test_ids[t][m]) for m in MODALITIES} for t in self.order}

    def _after_step(self, step: int, embedder: Embedder) -> None:
        if self.transfer is not None:
            for i in range(step + 1, len(self.order)):
                r = self._unlearned(embedder, i)
                for d in DIRECTIONS:
                    for k in self.cfg.eval.ks:
                        self.transfer[d][k][step, i] = r[d][k]
        if self.control is not None:
            self._control_row(step + 1, embedder)

    def before_index(self, step: int, embedder: Embedder) -> None:
        """Hook for galleries that embed elsewhere (shards receive the step's model here)."""

    def close(self) -> None:
        """Release what the evaluator holds outside this process (shard actors)."""

    def save_snapshots(self, folder: Storage, step: int) -> None:
        for name, st in self.states.items():
            st.save_snapshot(folder.child(f"{name}/{task_label(step, self.order)}"), step)

    def _anatomy(self, step: int, embedder: Embedder) -> None:
        for i, t in enumerate(self.order[: step + 1]):
            ids = self.test_ids[t]
            current = {m: embedder.embed(m, ids[m]) for m in MODALITIES}
            a = anatomy_of_task(self.ds, ids["images"], ids["captions"], self.learned[t], current, self.cfg.eval.ks)
            for c in COMBOS:
                for d in DIRECTIONS:
                    for k in self.cfg.eval.ks:
                        self.anatomy["grid"][c][d][k][step, i] = a["grid"][c][d][k]
            for m in MODALITIES:
                self.anatomy["stability"][m][step, i] = a["stability"][m]
            self.anatomy["alignment"][step, i] = a["alignment"]
            if t in self.initial:  # stability since θ0 (same measure: mean cosine of an item's two embeddings)
                for m in MODALITIES:
                    self.anatomy["stability_from_init"][m][step, i] = float(
                        np.mean(np.sum(self.initial[t][m] * current[m], axis=1)))

    # ---- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"states": {p: s.state_dict() for p, s in self.states.items()}, "recall": self.recall,
                "learned": self.learned, "anatomy": self.anatomy,
                "val_states": {p: s.state_dict() for p, s in self.val_states.items()}, "val_recall": self.val_recall,
                "zero_shot": self.zero_shot, "initial": self.initial, "transfer": self.transfer,
                "control": self.control, "ranks": self.ranks, "flips": self.flips, "curve": self.curve,
                "embedding": self.embedding, "approx_steps": self.approx_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for p, s in self.states.items():
            s.load_state_dict(state["states"][p])
        self.recall, self.learned = state["recall"], state["learned"]
        # a checkpoint of an earlier ccr names stability "drift" and may lack it since θ0
        self.anatomy = {**self.anatomy, **{results.RENAMED_ANATOMY.get(k, k): v for k, v in state["anatomy"].items()}}
        self.zero_shot, self.initial = state.get("zero_shot"), state.get("initial", {})
        # a checkpoint of an earlier ccr has no ranks: the flips of the step after it are not known
        self.ranks = {p: state.get("ranks", {}).get(p, {}) for p in self.policy_names}
        if "flips" in state:
            self.flips = {p: state["flips"].get(p, self.flips[p]) for p in self.policy_names}
        self.curve = list(state.get("curve", []))
        self.approx_steps = state.get("approx_steps", self.approx_steps)
        self.embedding = state.get("embedding", self.embedding)
        for key in ("transfer", "control"):  # kept only when this study measures them too
            if getattr(self, key) is not None and state.get(key) is not None:
                setattr(self, key, state[key])
        if self.val_states and "val_states" not in state:
            raise ValueError("this checkpoint was written without val evaluation (eval.val)")
        for p, s in self.val_states.items():
            s.load_state_dict(state["val_states"][p])
        if self.val_states:
            self.val_recall = state["val_recall"]

    # ---- results -----------------------------------------------------------------------------
    def policy_results(self, name: str, upto: int) -> dict[str, Any]:
        """One policy's results over the first `upto` steps (schema: `ccr.results`)."""
        mats = {d: {k: m[:upto, :upto] for k, m in by_k.items()} for d, by_k in self.recall[name].items()}
        st = self.states[name]
        cost = {"images_embedded": st.cost["images"], "captions_embedded": st.cost["captions"],
                "seconds": round(sum(c.get("seconds", 0.0) for c in st.cost_per_step[:upto]), 4),
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

    def anatomy_results(self, upto: int) -> dict[str, Any]:
        def cut(m: np.ndarray) -> list:
            return to_json_matrix(m[:upto, :upto])

        a = self.anatomy
        out = {
            "scope": "task",
            "grid": {c: {d: {str(k): cut(m) for k, m in by_k.items()} for d, by_k in g.items()}
                     for c, g in a["grid"].items()},
            "stability": {m: cut(v) for m, v in a["stability"].items()},
            "alignment": cut(a["alignment"]),
        }
        if self.initial:
            out["stability_from_init"] = {m: cut(v) for m, v in a["stability_from_init"].items()}
        return out

    def backfill_results(self, upto: int) -> list[dict[str, Any]] | None:
        """results.json's `backfill_curve` (None where not measured)."""
        return [r for r in self.curve if r["step"] < upto] if self.cfg.eval.backfill_curve else None

    def embedding_results(self, device: str) -> dict[str, Any]:
        """Embedding throughput over the sequence, per modality, on `device` (queries, galleries, fitting)."""
        out: dict[str, Any] = {"device": device}
        for m, v in self.embedding.items():
            out[m] = {"items": v["items"], "seconds": round(v["seconds"], 4),
                      "per_second": v["items"] / v["seconds"] if v["seconds"] > 0 else None}
        return out

    def initial_results(self, upto: int) -> dict[str, Any]:
        """results.json's `zero_shot`, `transfer` and `control` (None where not measured) and their metrics."""
        return results.initial_results(self.zero_shot, self.transfer, self.control, self.cfg.eval.control,
                                       upto, self.cfg.eval.scope)
