"""The archive flow's two parameters: ``ArchiveRun`` (what to enhance and how) and ``Cluster`` (where).

Pydantic models, so Prefect builds its parameter schema (the deployment form in its UI) from the
fields' descriptions, validates a deployment's parameters against it, and stores them as JSON.
Storage credentials are never a field: Prefect stores and shows parameters (``flows.credentials``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flows import credentials
from llie.batch import storage_options as storage_options_mod
from llie.batch.spec import DEFAULT_SHARD_SIZE, MIN_SHARD_SIZE, RunSpec, decode_limits, encode_options
from llie.resources import available_cpus, threads_per_worker

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class ArchiveRun(BaseModel):
    """One archive run as the flow takes it: a :class:`llie.batch.spec.RunSpec` without credentials."""

    model_config = _FROZEN

    input_url: str = Field(description="Folder or object-store prefix with the originals (read only).")
    output_url: str = Field(
        description="Where enhanced images (same relative paths) and _metrics/run_id=<run_id>/*.parquet go; "
        "must not overlap the input."
    )
    model: str | None = Field(None, description="Model bundle folder; empty: the bundle shipped with llie.")
    shard_size: int | None = Field(
        None,
        ge=1,
        description="Images per task: the unit of retry and resume. Empty: a resumed run keeps its own; a new "
        f"one gets about 4 shards per worker, {MIN_SHARD_SIZE} to {DEFAULT_SHARD_SIZE} images each.",
    )
    reference_url: str | None = Field(
        None, description="Optional folder of well-lit references with the same relative paths, for PSNR/SSIM."
    )
    run_id: str | None = Field(None, description="An earlier run's id resumes it; empty: a new timestamped id.")
    retry_failed: bool = Field(False, description="Also redo images that ended with an error or skipped row.")
    max_pixels: int | None = Field(None, ge=1, description="Decode limit per image; empty: llie's default.")
    torch_threads: int | None = Field(
        None, ge=1, description="Torch threads per task; empty: CPUs / workers on a local cluster."
    )
    device: str = Field("auto", description='Torch device for the refiner: "auto", "cpu" or "cuda".')
    refiner_precision: Literal["float32", "bf16"] = Field(
        "float32",
        description='The refiner\'s arithmetic on CPU: "float32", or "bf16" (about 1.7x faster on CPUs with native '
        "bf16, AVX-512 BF16 or AMX; outputs move by a level or two; slower without it, with a warning). No effect "
        "on CUDA, which always runs fp16. Recorded in the run manifest.",
    )
    storage_options: dict[str, Any] | None = Field(
        None,
        description="fsspec options for every URL, as pandas and Dask take them (S3: endpoint_url, anon, profile, "
        "client_kwargs.region_name). Never credentials: those come from the environment or llie run.",
    )
    png_compression: int | None = Field(None, ge=0, le=9, description="PNG compression level; empty: llie's default.")
    jpeg_quality: int | None = Field(None, ge=1, le=100, description="JPEG quality; empty: llie's default.")

    def spec(self) -> RunSpec:
        """The RunSpec of these parameters, with the credentials of ``flows.credentials`` added.

        A credential among the storage options is refused here rather than by a validator: a
        validation error would quote its value.
        """
        _, given_credentials = storage_options_mod.split_credentials(self.storage_options)
        if given_credentials:
            raise ValueError(
                f"storage_options: {storage_options_mod.describe(given_credentials)} is a credential, and Prefect "
                "stores and shows parameters: give it through the environment (AWS_* variables, a profile) or llie run"
            )
        return RunSpec(
            input_url=self.input_url,
            output_url=self.output_url,
            run_id=self.run_id or "",
            model=self.model,
            reference_url=self.reference_url,
            shard_size=self.shard_size,
            storage_options=storage_options_mod.merge(self.storage_options, credentials.current()) or None,
            retry_failed=self.retry_failed,
            limits=decode_limits(self.max_pixels),
            encoding=encode_options(self.png_compression, self.jpeg_quality),
            device=self.device,
            threads=self.torch_threads,
            refiner_precision=self.refiner_precision,
        )

    @classmethod
    def of(cls, spec: RunSpec) -> ArchiveRun:
        """The parameters of a RunSpec (the inverse of :meth:`spec`), its credentials left out."""
        settings, _ = storage_options_mod.split_credentials(spec.storage_options)
        return cls(
            input_url=spec.input_url,
            output_url=spec.output_url,
            model=spec.model,
            shard_size=spec.shard_size,
            reference_url=spec.reference_url,
            run_id=spec.run_id or None,
            retry_failed=spec.retry_failed,
            max_pixels=spec.limits.max_pixels,
            torch_threads=spec.threads,
            device=spec.device,
            refiner_precision=spec.refiner_precision,
            storage_options=settings or None,
            png_compression=spec.encoding.png_compression,
            jpeg_quality=spec.encoding.jpeg_quality,
        )


class Cluster(BaseModel):
    """Where and how the shards run: no ``dask_address`` starts a LocalCluster of ``n_workers``."""

    model_config = _FROZEN

    dask_address: str | None = Field(None, description="Scheduler of an existing Dask cluster; empty: a local one.")
    n_workers: int | None = Field(None, ge=1, description="Local cluster worker processes; empty: one per CPU.")
    retries: int = Field(2, ge=0, description="Attempts after the first for a shard that raises.")
    retry_delay_seconds: float = Field(10.0, ge=0, description="First retry delay; doubles each further retry.")

    @property
    def workers(self) -> int:
        return self.n_workers or available_cpus()

    def task_spec(self, spec: RunSpec) -> RunSpec:
        """The spec the tasks get: on a LocalCluster, the CPUs shared out between its workers' torch threads."""
        if spec.threads is None and not self.dask_address:
            return dataclasses.replace(spec, threads=threads_per_worker(self.workers))
        return spec


def flow_arguments(**fields: Any) -> dict[str, BaseModel]:
    """The flow's ``run`` and ``cluster`` from keyword arguments named as their fields (others: an error)."""
    cluster = {name: fields.pop(name) for name in list(fields) if name in Cluster.model_fields}
    return {"run": ArchiveRun(**fields), "cluster": Cluster(**cluster)}
