"""llie: low-light image enhancement at archive scale.

The method, one module per stage:
  1. ``features``   per-channel histogram features of the low-light image
  2. ``quantiles``  XGBoost predicts the well-lit image's value at every 5th percentile
  3. ``mapping``    a KDE rebuilds the target histogram; histogram matching maps the image onto it
  4. ``refiner``    a small vision transformer on 10x10 patches removes leftover noise and casts

``pipeline.Enhancer`` runs them in order from a model ``bundle``.
"""

__version__ = "0.1.0"
