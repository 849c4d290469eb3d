"""``make bench``: throughput, orchestration overhead, scaling, memory and quality of llie.

Run ``python -m benchmarks.run`` (``--quick`` for a smoke run); see benchmarks/README.md.
"""
