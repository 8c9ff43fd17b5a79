"""The Python entry point: segment images in a notebook or a script, three lines.

    >>> from pipeline import Segmenter                                   # doctest: +SKIP
    >>> seg = Segmenter.from_checkpoint("runs/x/checkpoints/best.pt")    # doctest: +SKIP
    >>> labels = seg.predict("case_01.nii.gz")                           # doctest: +SKIP

:class:`Segmenter` is the thin public face of :class:`pipeline.engines.predictor.Predictor`, the
object ``medseg infer`` and ``medseg evaluate -c`` run: the same checkpoint loading, transform
chain, sliding window, test-time augmentation and inversion to the input's geometry, so
``predict(path)`` equals the label map ``medseg infer`` writes for that file, value for value.
(``infer``'s file loop, :func:`pipeline.engines.predictor.run_inference`, calls the same
``Predictor.__call__`` and ``raw_values`` that :meth:`Segmenter.predict` calls; it cannot import
this module, which sits above it.)

Inputs (:mod:`pipeline.engines.inputs`): a path (any format :mod:`pipeline.io` reads, a DICOM
series folder included), a NumPy array or torch tensor in :mod:`pipeline.io`'s axis order
(``X Y [Z]``, 2D ``W H``; channel-first or without a channel axis) with ``spacing`` in mm (default:
the network's training spacing), or a MONAI ``MetaTensor`` with its affine. Outputs are NumPy
arrays of the input's spatial shape in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.config import Config
from pipeline.engines.predictor import Prediction, Predictor

__all__ = ["Segmenter"]


class Segmenter:
    """A trained network that segments one image at a time.

    Args:
        predictor: the :class:`~pipeline.engines.predictor.Predictor` to use; usually made by
            :meth:`from_checkpoint`.
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str = "cpu",
        *,
        config: Config | None = None,
        tta: bool | None = None,
        sw_batch_size: int | None = None,
        overlap: float | None = None,
        progress: bool = False,
    ) -> Segmenter:
        """Load a medseg checkpoint (``weights_only``) for ``device`` (``cpu``, ``cuda``, ``auto``).

        The other options override the checkpoint's ``infer`` settings, as ``medseg infer`` does.

        Raises:
            MedsegError: a damaged checkpoint or weights that do not fit its network.
        """
        predictor = Predictor(
            path, config, device=device, tta=tta, sw_batch_size=sw_batch_size, overlap=overlap, progress=progress
        )
        return cls(predictor)

    @property
    def label_values(self) -> list[int] | None:
        """The raw label value of each class (``transforms.label_values``), what :meth:`predict` returns."""
        return self.predictor.label_values

    @property
    def spatial_dims(self) -> int:
        return self.predictor.config.spatial_dims

    def segment(self, image: Any, spacing: Sequence[float] | None = None) -> Prediction:
        """Probabilities, class indices and the transformed input (:class:`Prediction`) of one image."""
        return self.predictor(image, spacing=spacing)

    def predict(self, image: Any, spacing: Sequence[float] | None = None) -> np.ndarray:
        """The label map of ``image`` in its own shape and axis order, as raw label values (the
        dataset's, e.g. 0/255; what ``medseg infer`` writes).

        Raises:
            MedsegError: an input of the wrong shape or type (one line), out of memory.
            DataError: a path that cannot be read.
        """
        return self.predictor.raw_values(self.segment(image, spacing).labels)

    def predict_proba(self, image: Any, spacing: Sequence[float] | None = None) -> np.ndarray:
        """Class probabilities ``K`` x the input's spatial shape, float32 (one foreground
        channel for a sigmoid network)."""
        return self.segment(image, spacing).probabilities.numpy()

    __call__ = predict
