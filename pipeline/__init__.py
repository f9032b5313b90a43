"""clipcache: a feature-cache pipeline for CLIP modality-gap research (library side, no DVC, no argv)."""

__version__ = "0.1.0"
