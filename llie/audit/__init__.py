"""The audit of a run from its Parquet metrics: numbers and comparisons (summary), pictures (report)."""
