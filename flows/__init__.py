"""Prefect flows composed from the tasks in ``tasks``: ``flows.enhance_archive.enhance_archive``.

Nothing is imported here, so entry points (``flows.cli``, ``flows.demo``) can adjust Prefect's
settings through the environment before Prefect is first imported.
"""
