"""Seeds derived from (recipe seed, key): no global random state anywhere.

Every random choice of the pipeline draws from a `numpy.random.Generator` made
here from the recipe seed and a key naming what is being drawn (an item, a
cell plan, a subject partition). Same seed and key, same stream, whatever the
process, worker count or order.
"""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(seed: int, *key: object) -> int:
    """A 63-bit seed from the recipe seed and a key, stable across platforms."""
    text = "\x1f".join([str(seed), *map(str, key)])
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def rng_for(seed: int, *key: object) -> np.random.Generator:
    """A fresh generator for one key."""
    return np.random.default_rng(derive_seed(seed, *key))


def stable_rank(seed: int, *key: object) -> str:
    """A hex digest used to order things reproducibly (subjects, candidates)."""
    text = "\x1f".join([str(seed), *map(str, key)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
