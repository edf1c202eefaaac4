"""Where ccr reads and writes: storage by path or URI, staging inputs once per node, checkpoints, provenance,
live tracking, and image files turned into pixels. Below everything that computes, above nothing of ccr's."""
