"""Datasets: layout readers, seeded splits, integrity checks and synthetic look-alikes.

Public entry points: :func:`load_datalist` (config → train/val/test datalists),
:func:`read_dataset`, :func:`split_cases`, :func:`check_dataset` and
:func:`pipeline.data.synth.make_dataset`.
"""

from __future__ import annotations

from pipeline.data.datalist import load_datalist, read_dataset
from pipeline.data.layouts import LAYOUTS, Dataset
from pipeline.data.splits import fisher_yates, kfold, split_cases

__all__ = ["load_datalist", "read_dataset", "LAYOUTS", "Dataset", "split_cases", "kfold", "fisher_yates"]
