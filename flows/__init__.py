"""Prefect flows composed from the tasks in ``tasks``."""

from flows.enhance_archive import enhance_archive

__all__ = ["enhance_archive"]
