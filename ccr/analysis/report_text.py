"""The words of report.html: what each number means, each section's introduction, each figure's note, and the
page's style. Kept apart from the code that assembles the page, so a reader edits prose in one place."""

GLOSSARY = [
    ("R@K", "recall at K: the share (%) of queries whose true match is among the K gallery items nearest to "
            "the query. <b>i2t</b>: an image queries the caption gallery; <b>t2i</b>: a caption queries the "
            "image gallery. Each task's test items are queried within that task's gallery (eval.scope=task) "
            "or within the gallery of every task seen so far (eval.scope=seen)."),
    ("R@K (summary tables)", "the average final recall: R@K of every task after the last task, averaged over "
                             "tasks."),
    ("F@K, forgetting", "for each task but the last, the best R@K it had before the last task minus its R@K "
                        "after the last task, averaged over those tasks; in points of R@K. Lower is better; "
                        "0 means nothing was forgotten."),
    ("BWT@K, backward transfer", "for each task but the last, its R@K after the last task minus its R@K right "
                                 "after it was learned, averaged. Negative: learning later tasks hurt it."),
    ("rsum", "R@1 + R@5 + R@10 of both directions after the last task, averaged over tasks (0–600)."),
    ("index cost", "how many embeddings (images + captions) the indexing policy computed over the whole "
                   "sequence to keep its galleries current: reindex embeds every gallery item after every task, "
                   "no_reindex each item once."),
    ("negative flips", "queries of old tasks that were hits at R@K before a model update and are misses after "
                       "it, in % of those queries, averaged over updates (RACT's negative flip rate)."),
    ("backfill", "re-embedding a fraction of the old gallery with the new model after a task, the rest keeping "
                 "its old embeddings: 0 is no_reindex, 1 is reindex (eval.backfill_curve)."),
    ("mean ± std, n", "each number is a mean over n runs (seeds, and task orders unless they are separate "
                      "rows); ± is the standard deviation over those runs, not a confidence interval, and is "
                      "left out when n = 1."),
    ("bold", "the best value of each column: highest recall, BWT and rsum, lowest forgetting and index cost."),
    ("θ0, zero-shot", "the model before the first task (pretrained, or its random initialisation: then chance) "
                      "evaluated on every task; the row above each recall matrix, the first point of each task "
                      "curve. Zero-shot R@K is its mean over tasks."),
    ("transfer", "a task's mean R@K before it was learned (θ0 included), averaged over tasks 2..n: ZSCL's "
                 "Transfer (eval.transfer)."),
    ("control, retention", "R@K on control data, tasks never trained (eval.control), after the last task; "
                           "retention is that in % of θ0's: how much zero-shot capability the sequence eroded."),
]

INITIAL_TITLE = "What the model could do before the first task, and what is left of it"

INITIAL_INTRO = ("θ0 is the model the sequence starts from. Zero-shot: θ0 on every task (mean over tasks). "
                 "Transfer: tasks before they were learned. Control: tasks never trained, after the last task; "
                 "retention: control in % of θ0's. No indexing policy changes these (one row per configuration).")

FIELD_NOTE = ("Mean over runs (n) of each strategy and indexing policy. Transfer, Avg. and Last per direction "
              "are ZSCL's: Transfer, a task's mean recall over the steps before it was learned (θ0 not among "
              "them), over tasks 2..n; Avg., each task's mean over every step; Last, after the last task. "
              "Transfer and Avg. need the tasks measured before they are learned (eval.transfer: true). A "
              "classification set's top-1 is θ0's in the zero-shot row and after the last task elsewhere. "
              "Costs: the most trainable parameters of any task; what the strategy keeps beside the model after "
              "the last task (its state's tensors and the items it keeps, images at the model's input size); "
              "the largest peak memory of a task (GPU: torch's peak allocation; CPU: the process's peak "
              "resident set); training time x data-parallel workers.")

FIGURE_NOTES = {
    "forgetting": "How much of what each task had reached was lost by the end, per strategy and indexing policy.",
    "quality_vs_cost": "What each indexing policy buys: final recall against the embeddings it computed.",
    "heatmaps": "The recall matrix: row <i>after X</i> is the moment task X has been learned and the galleries "
                "updated; each cell is the recall of the column's task at that moment. The diagonal is how well a "
                "task is learned; what lies below it is what later tasks did to it.",
    "task_curves": "Each task's recall from the moment it is learned to the end of the sequence (the rows of the "
                   "recall matrix as lines).",
    "compatibility_grid": "The anatomy of forgetting: old tasks queried by the last model or the model that "
                          "learned them, against galleries embedded by either. <i>old/old</i> is what the task had; "
                          "<i>new/new</i> what reindex gives; <i>new/old</i> what no_reindex gives.",
    "effect_": "The paired effect of not re-indexing, per configuration (strategy, and the swept settings): the mean "
               "difference to reindex over runs that share a seed and a task order, with its 95 % interval where "
               "there is more than one pair.",
    "stability_vs_forgetting": "One point per run: how stable old tasks' image embeddings stayed (cosine to when "
                               "learned; lower means more drift), against how much they were forgotten under "
                               "reindex.",
    "backfill_curve": "Recall after the last task against the share of the old gallery re-embedded with the "
                      "new model, in each order: 0 % is what no_reindex gives, 100 % what reindex gives.",
    "cost_at_scale": "Each strategy × policy at the gallery size asked for: recall against the device-hours of "
                     "embedding one model update costs; the line is the backfill curve, from embedding only the "
                     "new task to re-embedding everything.",
    "stability": "How little the first task's embeddings move as later tasks are learned (cosine between its "
                 "items' embeddings under the current model and the model that learned it; 1 = not at all).",
}

ECON_TITLE = "Re-indexing: negative flips, backfill and cost at scale"

ECON_INTRO = ("Negative flips: queries of old tasks that were hits at R@K before a model update and are misses "
              "after it, in % of those queries, averaged over updates (RACT's negative flip rate; here the gallery "
              "also grows with each task, which can push an old hit out of the top K without any drift). "
              "Backfill: recall after the last task when a fraction of the old gallery is re-embedded with the new "
              "model (0 = no_reindex, 1 = reindex), in each order. Cost at scale: the embeddings each policy "
              "computes, scaled to a gallery of N images, at the embedding throughput measured on that device (the "
              "median over the runs of one model) and at a throughput you give.")

COST_COLUMNS = ("Per model update (`*_per_update`, `device_hours`, `usd`): the mean over updates 2..n of what the "
                "policy embeds and indexes; `*_last`: the last update alone (what the plot shows); `*_sequence`: "
                "everything over the sequence, the first task's gallery included. `device_hours` = `embed_hours` "
                "(re-embedding) + `index_hours` (adding every embedded entry to the index, and training the "
                "approximate index as often as the policy did). `priced_by`: `calibration` where `ccr calibrate` "
                "measured the run's model on its device (`--calibration FILE`); else the median of what the runs of "
                "one model, evaluation batch size and device measured (`throughput_runs` of them), one throughput "
                "for all of them, so that equal work costs equal device-hours, and index building is not priced "
                "(`index_hours` empty: a test split's gallery is too small to time an index by). `*_given`: at "
                "the throughput you gave.")

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:auto;padding:1em 1.5em;color:#222;line-height:1.45}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}
th{background:#f4f4f4;text-align:left} td{font-variant-numeric:tabular-nums}
table.facts th{width:14em} dl{display:grid;grid-template-columns:13em 1fr;gap:.35em 1em;font-size:14px}
dt{font-weight:600} dd{margin:0} figure{margin:1.2em 0} img{max-width:100%;height:auto;display:block}
figcaption{font-size:13px;color:#444;margin-top:.3em} .file{color:#888} details{margin:.6em 0}
summary{cursor:pointer;color:#246} .problems li{color:#a00} pre{background:#f6f6f6;padding:.6em;overflow:auto}
"""

EFFECTS_INTRO = ("Each effect is the mean difference between two runs that share a seed and a task order "
                 "(the same data order and initialisation), over all such pairs, with its 95 % confidence "
                 "interval (Student's t); * marks an interval that excludes 0. Δ R is in points of average "
                 "final recall (higher: the first is better), Δ F in points of forgetting (lower: the first "
                 "forgets less). One pair gives no interval.")
