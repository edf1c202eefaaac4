"""One study end to end: the config it runs with (registries composed), its output folder, resume and
checkpoints, the pretraining cache, and the runner that trains, indexes, queries and records task by task."""
