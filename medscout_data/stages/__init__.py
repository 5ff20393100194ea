"""The pipeline over shards: subject plan, reference index (+ embedders), build, split, validate.

Stages read the catalogue and the cache that `sources` wrote and write the
pool, the split and the manifest; they never import `evaluation` or `hub`.
"""
