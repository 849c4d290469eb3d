"""What a run is asked to do, in one frozen value handed from the command line down to each image."""

from __future__ import annotations

from dataclasses import dataclass, field

from llie.batch import storage
from llie.batch import storage_options as storage_options_mod
from llie.batch.imageio import DecodeLimits, EncodeOptions
from llie.batch.layout import RunLayout

DEFAULT_SHARD_SIZE = 64  # the most images a shard is given when its size is chosen for the run
MIN_SHARD_SIZE = 2  # ... and the fewest: a task's own cost (Prefect's records, a Parquet file) stays small
SHARDS_PER_WORKER = 4  # enough to keep every worker busy to the end, and to retry a small part of a run


@dataclass(frozen=True)
class RunSpec:
    """One archive run: where from and to, with which model and settings.

    ``run_id`` is empty until :func:`llie.batch.plan.plan_run` gives the run one (a new id, or the
    one given to resume). ``storage_options`` are the fsspec options of every URL, credentials
    included once the flow has merged them in: they travel to the workers, never into a Prefect
    parameter, a log or a row (``repr`` leaves them out).
    """

    input_url: str
    output_url: str
    run_id: str = ""
    model: str | None = None
    reference_url: str | None = None
    shard_size: int | None = None  # None: chosen by plan_run (auto_shard_size, or a resumed run's own)
    storage_options: storage.StorageOptions = field(default=None, repr=False)
    retry_failed: bool = False  # also redo the images of finished shards that ended without an ok row
    limits: DecodeLimits = DecodeLimits()
    encoding: EncodeOptions = EncodeOptions()
    stages: str = "full"
    device: str = "auto"
    threads: int | None = None  # torch threads per task; None leaves torch's own count
    refiner_precision: str = "float32"  # the refiner's CPU arithmetic: llie.method.refine.REFINER_PRECISIONS
    read_ahead: int = 1  # images whose bytes are fetched while the one before is enhanced

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.output_url, self.run_id)

    def image_input_url(self, rel: str) -> str:
        return storage.join(self.input_url, rel)

    def url_secrets(self) -> tuple[str, ...]:
        """What must never be shown of this run: its URLs' credentials (the strings a library may quote)."""
        return storage.url_secrets(self.input_url, self.output_url, self.reference_url)

    def secrets(self) -> tuple[str, ...]:
        """Every secret of this run: its URLs' credentials and those of its storage options."""
        return self.url_secrets() + storage_options_mod.credential_values(self.storage_options)


def auto_shard_size(images: int, workers: int) -> int:
    """Images per shard for ``images`` on ``workers``: about SHARDS_PER_WORKER shards each, within
    MIN_SHARD_SIZE and DEFAULT_SHARD_SIZE (11 photos on 2 workers: 6 shards of 2, not one of 11)."""
    wanted = -(-images // max(1, workers * SHARDS_PER_WORKER))
    return max(MIN_SHARD_SIZE, min(DEFAULT_SHARD_SIZE, wanted))


def decode_limits(max_pixels: int | None) -> DecodeLimits:
    """The decode limits of a ``max_pixels`` option (None: the default limit)."""
    return DecodeLimits() if max_pixels is None else DecodeLimits(max_pixels=max_pixels)


def encode_options(png_compression: int | None, jpeg_quality: int | None) -> EncodeOptions:
    """The encode options of two options, each None for its default."""
    defaults = EncodeOptions()
    return EncodeOptions(
        defaults.png_compression if png_compression is None else png_compression,
        defaults.jpeg_quality if jpeg_quality is None else jpeg_quality,
    )
