"""``python -m flows.demo``: the archive flow on the sample photos shipped with llie.

Runs the real thing (Prefect flow, local Dask cluster, Parquet metrics), just small: four dark
photos in ``llie/assets/samples/low`` scored against ``llie/assets/samples/high``.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

import llie
from flows.console import quiet_prefect_console

SAMPLES = Path(llie.__file__).resolve().parent / "assets" / "samples"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--output",
    default="demo-output",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where enhanced images and metrics go.",
)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Dask workers (default: one per CPU).")
def main(output: str, workers: int | None) -> None:
    """Enhance the bundled sample photos through the archive flow and show where everything went."""
    low, high = SAMPLES / "low", SAMPLES / "high"
    if not low.is_dir():
        raise click.ClickException(f"sample photos not found at {low}")
    out = Path(output).resolve()
    # A temporary Prefect server is started when no API is configured; give it time on small machines.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    quiet_prefect_console()  # the summary below says it all; Prefect's INFO lines still reach its API
    from flows.artifacts import summary_text
    from flows.enhance_archive import enhance_archive
    from flows.parameters import ArchiveRun, Cluster

    # Two images per shard, so even four samples show shards running side by side.
    run = ArchiveRun(input_url=str(low), output_url=str(out), reference_url=str(high), shard_size=2)
    summary = enhance_archive(run, Cluster(n_workers=workers))
    click.echo("")
    click.echo(summary_text(summary))
    click.echo("")
    click.echo(f"enhanced photos:  {out}/  (same names as {low}/)")
    click.echo(f"per-image rows:   {summary['metrics_url']}/shard-*.parquet")
    click.echo(
        "query with DuckDB: SELECT run_id, input_path, status, psnr, ssim, sec_refiner "
        f"FROM read_parquet('{out}/_metrics/*/*.parquet', hive_partitioning=true)"
    )


if __name__ == "__main__":
    main()
