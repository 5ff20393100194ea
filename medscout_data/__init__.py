"""medscout-data: regenerate, publish and score Med-Scout-Bench.

Geometric proxy VQA items (scale localization, 2x2 jigsaw, cut-paste anomaly)
built from unlabeled CT, MRI and chest X-ray images, following Med-Scout
(ICML 2026, arXiv 2601.23220).
"""

__version__ = "0.1.0"

MODALITIES = ("ct", "mri", "xray")
TASKS = ("scale", "jigsaw", "anomaly")
SCALE_VARIANTS = ("tier", "box")
