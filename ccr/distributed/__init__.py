"""The Ray layer: Ray Train for data-parallel training, Ray Tune for sweeps, Ray actors for sharded
galleries. The only package of ccr that imports ray; everything here wraps the Ray-free core."""
