"""The querying stage and what it measures: recall, the recall matrix and its summaries, negative flips, the
anatomy of forgetting, the per-step evaluator, and the results schema every front end reads."""
