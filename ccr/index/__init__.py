"""The indexing stage: galleries (exact or approximate search), snapshots of them, the indexing policies that
decide what happens to old entries when the model changes, and the order in which a backfill re-embeds."""
