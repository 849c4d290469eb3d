"""The ``llie`` command line, the top layer: it imports the flows and the library, nothing imports it.

``main`` assembles the group: ``commands`` (enhance, evaluate, synth; no Prefect), ``audit``, ``train`` and
``run`` (the archive flow); ``options`` holds the options several commands share.
"""

from llie.dask_logging import quiet_dask_logging

quiet_dask_logging()  # before `llie run` first imports Dask (lazily), which reads this config once
