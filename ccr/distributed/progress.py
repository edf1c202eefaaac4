"""Sweep progress a person can read: a line per trial event (started, finished with its headline
numbers and time, failed) with how many trials are pending, running, done and failed, and an
estimate of the time left. Plain lines on stderr (no terminal control codes), so a log file reads
the same as a terminal; `ccr sweep --quiet` turns them off.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ray import tune

HEADLINE = ("t2i/R@1", "i2t/R@1", "forgetting/t2i/R@1", "index_cost/embedded")


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def time_left(durations: list[float], remaining: int, running: int, since: list[float]) -> float | None:
    """Remaining trials x mean trial time, spread over the trials running at once (those already running
    have done part of their share); None before any trial has finished."""
    if not durations or remaining <= 0:
        return None
    mean = sum(durations) / len(durations)
    now = time.time()
    left = remaining * mean - sum(min(mean, now - s) for s in since)
    return max(0.0, left) / max(1, running)


def headline(metrics: dict[str, Any], first: str | None = None) -> str:
    """The numbers a progress line shows; `first`: the metric an HPO search selects on (val), shown first."""
    keys = [first, *(k for k in HEADLINE if k != first)] if first else HEADLINE
    return ", ".join(f"{k} {metrics[k]:.1f}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
                     for k in keys if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics[k], bool))


class SweepProgress(tune.Callback):
    """Counts come from what this callback saw, not from Tune's internal states."""

    def __init__(self, total: int, label=None, stream: TextIO | None = None, metric: str | None = None,
                 runs=None, every: float = 5.0):
        self.total, self.label, self.stream = total, label or (lambda trial: str(trial)), stream
        # where each trial's study writes results.json after every task (a ccr Storage): read every `every`
        # seconds, for a line per task learned; None: no per-task lines
        self.runs, self.every, self.polled = runs, every, 0.0
        self.tasks_seen: dict[str, int] = {}
        self.metric = metric  # an HPO search's selection metric (val/...), shown before the test numbers
        self.running: dict[str, float] = {}  # trial id -> start time
        self.width = 0  # the most trials seen running at once: what the cluster sustains
        self.durations: list[float] = []
        self.done = self.failed = 0
        self.t0 = time.time()
        self.counted_restored = False

    def on_step_begin(self, iteration, trials, **info):
        """A resumed sweep: the trials that finished before the interruption count as done (Tune calls no
        trial callback for them)."""
        if not self.counted_restored:
            self.counted_restored = True
            self.done = sum(t.status == "TERMINATED" for t in trials)
            self.failed = sum(t.status == "ERROR" for t in trials)

    def on_step_end(self, iteration, trials, **info):
        """A line for each task a running trial has learned since the last look (its study's results.json)."""
        if self.runs is None or time.time() - self.polled < self.every:
            return
        self.polled = time.time()
        for trial in trials:
            if trial.trial_id in self.running:
                self._task_line(trial)

    def _task_line(self, trial) -> None:
        name = self.label(trial)
        try:
            res = self.runs.child(name).read_json("results.json")
        except Exception:  # noqa: BLE001 - not written yet, or being replaced: the next look finds it
            return
        k, order = res.get("tasks_done") or 0, res.get("task_order") or []
        if res.get("status") != "running" or not order or k <= self.tasks_seen.get(trial.trial_id, 0):
            return
        self.tasks_seen[trial.trial_id] = k
        train = (res.get("train") or [])[k - 1] if len(res.get("train") or []) >= k else {}
        loss = f", loss {train['mean_loss']:.3f}" if isinstance(train.get("mean_loss"), (int, float)) else ""
        numbers = headline(res.get("metrics") or {}, self.metric)
        self.say(f"{name}: task {k}/{len(order)} ({order[k - 1]}) learned{loss}" + (f", {numbers}" if numbers else ""))

    def say(self, what: str) -> None:
        running = len(self.running)
        pending = max(0, self.total - self.done - self.failed - running)
        # spread over the width seen, not over the trials running at this instant: right after a trial
        # ends one fewer runs for a moment, and the estimate would jump (e.g. 28 min, then 56 min)
        eta = time_left(self.durations, pending + running, min(self.width, pending + running),
                        list(self.running.values()))
        tail = f" | about {duration(eta)} left" if eta is not None else ""
        print(f"[sweep {self.done + self.failed}/{self.total}, {duration(time.time() - self.t0)}] {what} | "
              f"{pending} pending, {running} running, {self.done} done, {self.failed} failed{tail}",
              file=self.stream or sys.stderr, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running[trial.trial_id] = time.time()
        self.width = max(self.width, len(self.running))
        self.say(f"started {self.label(trial)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        secs = time.time() - self.running.pop(trial.trial_id, time.time())
        self.durations.append(secs)
        self.done += 1
        self.say(f"done {self.label(trial)} in {duration(secs)}: {headline(trial.last_result or {}, self.metric)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.pop(trial.trial_id, None)
        self.failed += 1
        self.say(f"FAILED {self.label(trial)} (its error.txt says why)")
