"""Training targets from an instance map: the 3-class "centre + border" encoding and distance maps.

The code lives in :mod:`transforms.instances` (with the MONAI dictionary transform
:class:`transforms.instances.InstanceTargetsd`), because transforms import nothing from
``pipeline`` except errors and the registry; this module is the library's name for it, for the
post-processing, the benchmark and anything else outside a transform chain.

Example:
    >>> import numpy as np
    >>> ids = np.zeros((5, 5), np.int32); ids[:, 1:3] = 1; ids[:, 3:5] = 2
    >>> instance_classes(ids)[2].tolist()  # the image edge is not a boundary
    [0, 2, 2, 2, 1]
"""

from __future__ import annotations

from transforms.instances import BACKGROUND, BORDER, INTERIOR, boundary_distance, instance_classes

__all__ = ["BACKGROUND", "INTERIOR", "BORDER", "boundary_distance", "instance_classes"]
