"""Prefect tasks: thin wrappers that give llie's library functions retries, logging and caching."""

from tasks.enhance import enhance_shard

__all__ = ["enhance_shard"]
