"""Dictionary keys used across medseg, and the layout of the value stored under each.

Datalists produced by ``pipeline.data`` and every dictionary transform in ``transforms`` use
these names, so a loss, the trainer or a metric can find what it needs in a batch without
configuration. Layouts are written channel first, ``C`` channels, spatial ``H W [D]``; a batch
adds a leading ``B``.

Datalist values (before loading, see :mod:`pipeline.data.layouts`): a path, or a list of paths.
A list under ``image`` is stacked as channels (nnU-Net's one file per channel); a list under
``label`` / ``instance`` / ``fov`` holds one binary mask per object (DSB2018), which
:class:`transforms.dictionary.LoadCased` turns into a union (``label``) or an id map
(``instance``). Every loaded array is a MONAI ``MetaTensor`` (float32). 2D files load in
MONAI's PIL convention: spatial axes ``(W, H)``, the transpose of ``numpy.asarray`` of the
picture; MONAI's ``PILWriter`` transposes back when a prediction is saved.
"""

from __future__ import annotations

IMAGE = "image"
"""Intensity image, float32 ``C H W [D]`` after loading (RGB images have C=3)."""

LABEL = "label"
"""Semantic label, class indices ``1 H W [D]`` (0 = background) after label mapping, float32."""

INSTANCE = "instance"
"""Instance label (cells), ``1 H W [D]``, 0 = background, 1..N one id per object."""

FOV = "fov"
"""Field-of-view mask (DRIVE), ``1 H W``, 1 inside the region metrics are computed on."""

DIST = "dist"
"""Signed distance maps, float32 ``K H W [D]`` with one map per class (K = number of classes,
background included): negative inside the class, 0 on its inner boundary, positive outside,
in physical units (the image spacing); all zeros for a class that is absent or fills the image."""

LABEL_SPACING = "label_spacing"
"""The label's voxel spacing, a tuple of one float per spatial axis, recorded in the training chain before the
random transforms, which run without MONAI's metadata (see :class:`transforms.chains.Chain`);
dropped before collation."""

CASE = "case"
"""Case identifier (a string), used to name outputs."""

ALL = (IMAGE, LABEL, INSTANCE, FOV, DIST)
