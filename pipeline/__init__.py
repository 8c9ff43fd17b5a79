"""medseg: a MONAI-native segmentation pipeline. ``from pipeline import Segmenter`` is the Python
entry point (:mod:`pipeline.api`); it is imported on first use, so ``import pipeline`` stays cheap."""

from __future__ import annotations

from typing import Any

__all__ = ["Segmenter"]


def __getattr__(name: str) -> Any:
    if name == "Segmenter":
        from pipeline.api import Segmenter

        return Segmenter
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
