"""Instance segmentation of touching objects (cells, nuclei): one id per object.

Modules (imported where used, so ``import pipeline.instances`` costs nothing):

- :mod:`pipeline.instances.metrics`: matching of predicted and true instance maps by IoU, AP at
  IoU thresholds 0.5:0.05:0.95 (DSB2018), F1, precision, recall, AJI, PQ, count error.
- :mod:`pipeline.instances.targets`: training targets from an instance map (3-class
  "centre + border" encoding, per-object distance to the boundary).
- :mod:`pipeline.instances.postprocess`: class probabilities to instances (seeded watershed,
  hole filling, small-object removal) and the choice of its thresholds on validation pairs.
- :mod:`pipeline.instances.measure`: per-object measurements (``objects.csv``) and the label
  map's dtype.
- :mod:`pipeline.instances.render`: objects in distinct colours or outlined over the image.

Every function takes channel-less label maps ``H W [D]`` (0 = background, any positive ids,
gaps allowed) as numpy arrays.
"""
