"""llie: low-light image enhancement at archive scale.

The library, one folder per concern (nothing here imports Prefect):
  ``method/``    the enhancement, one module per stage: ``features`` (per-channel histogram features),
                 ``quantiles`` (XGBoost predicts the well-lit image's value at every 5th percentile),
                 ``mapping`` (a KDE rebuilds the target histogram; histogram matching maps the image onto
                 it), ``refiner`` (a small vision transformer on 10x10 patches removes leftover noise and
                 casts); ``pipeline.Enhancer`` runs them in order from a model ``bundle``
  ``batch/``     the archive machinery: storage, image decode/encode, shards and their Parquet rows
  ``audit/``     a run's numbers and comparisons from its Parquet (``summary``), and its HTML ``report``
  ``training/``  paired data, synthetic darkening, training and per-stage evaluation
  ``metrics``, ``stats``  image quality measures and bootstrap intervals, shared by all of the above
  ``allocator``, ``dask_logging``  process settings the entry points apply at start
  ``atomic``     the one local writer: a reader sees the old file or the whole new one
"""

__version__ = "0.1.0"
