"""The Python entry point: segment images in a notebook or a script, three lines.

    >>> from pipeline import Segmenter                                   # doctest: +SKIP
    >>> seg = Segmenter.from_checkpoint("runs/x/checkpoints/best.pt")    # doctest: +SKIP
    >>> labels = seg.predict("case_01.nii.gz")                           # doctest: +SKIP

:class:`Segmenter` is the thin public face of :class:`pipeline.engines.predictor.Predictor`, the
object ``medseg infer`` and ``medseg evaluate -c`` run: the same checkpoint loading, transform
chain, sliding window, test-time augmentation and inversion to the input's geometry, so
``predict(path)`` equals the label map ``medseg infer`` writes for that file, value for value.
``infer``'s file loop, :func:`pipeline.engines.predictor.run_inference`, segments every file
through a :class:`Segmenter` (defined beside the Predictor, re-exported here).

Inputs (:mod:`pipeline.engines.inputs`): a path (any format :mod:`pipeline.io` reads, a DICOM
series folder included), a NumPy array or torch tensor in :mod:`pipeline.io`'s axis order
(``X Y [Z]``, 2D ``W H``; channel-first or without a channel axis) with ``spacing`` in mm (default:
the network's training spacing), or a MONAI ``MetaTensor`` with its affine. Outputs are NumPy
arrays of the input's spatial shape in the same order.
"""

from __future__ import annotations

from pipeline.engines.predictor import Segmenter

__all__ = ["Segmenter"]
