"""``python -m deployments.serve``: serve the archive flow on a cron schedule from this process.

Everything can come from flags or ``LLIE_*`` environment variables (handy in a container or a
systemd unit). Storage credentials are *not* parameters: Prefect stores and shows parameters,
so credentials stay in the environment (AWS_* variables, instance roles) of this process, which
flow runs and Dask workers inherit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import click
from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from deployments.checks import require_archive_urls, require_own_name
from flows.console import no_server_analytics
from flows.enhance_archive import enhance_archive
from llie import option_help
from llie.batch import storage

DEFAULT_CRON = "0 2 * * *"  # 02:00 every night, after the day's uploads
DEFAULT_NAME = "served-archive"  # prefect.yaml's is nightly-archive: the two routes never share one


@dataclass(frozen=True)
class ArchiveDeployment:
    name: str
    parameters: dict[str, Any]
    cron: str = DEFAULT_CRON
    timezone: str = "UTC"
    tags: tuple[str, ...] = field(default=("llie",))


def build_deployment(cfg: ArchiveDeployment) -> RunnerDeployment:
    run = cfg.parameters.get("run") or {}
    require_archive_urls(run.get("input_url"), run.get("output_url"))
    return enhance_archive.to_deployment(
        name=cfg.name,
        schedules=[Cron(cfg.cron, timezone=cfg.timezone)],
        parameters=cfg.parameters,
        tags=list(cfg.tags),
        description=f"Enhance {storage.redact_url(run['input_url'])} on '{cfg.cron}' ({cfg.timezone}).",
        # By module, not file path: flow runs then work from any directory the package is importable in.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def _given(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields given a value: the others keep the flow's defaults, and no fixed ``run_id`` is stored."""
    return {key: value for key, value in fields.items() if value is not None}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--name",
    envvar="LLIE_DEPLOYMENT_NAME",
    default=DEFAULT_NAME,
    help="Deployment name; refused when `prefect deploy` made one of that name for a work pool.",
)
@click.option("--cron", envvar="LLIE_CRON", default=DEFAULT_CRON, help="When to run (cron syntax).")
@click.option("--timezone", envvar="LLIE_TIMEZONE", default="UTC", help="Time zone of the cron schedule.")
# --input, --output, --reference: the words of llie enhance; the -url names of earlier versions still work
@click.option("--input", "--input-url", "input_url", envvar="LLIE_INPUT_URL", required=True, help=option_help.INPUT_URL)
@click.option(
    "--output", "--output-url", "output_url", envvar="LLIE_OUTPUT_URL", required=True, help=option_help.OUTPUT_URL
)
@click.option(
    "--reference", "--reference-url", "reference_url", envvar="LLIE_REFERENCE_URL", help=option_help.REFERENCE
)
@click.option("--model", envvar="LLIE_MODEL", default=None, help=option_help.MODEL)
@click.option("--shard-size", envvar="LLIE_SHARD_SIZE", type=click.IntRange(min=1), help=option_help.SHARD_SIZE)
@click.option("--dask-address", envvar="LLIE_DASK_ADDRESS", default=None, help=option_help.DASK_ADDRESS)
@click.option("--workers", envvar="LLIE_WORKERS", type=click.IntRange(min=1), help=option_help.WORKERS_LOCAL)
@click.option(
    "--run-id",
    envvar="LLIE_RUN_ID",
    default=None,
    help="Fixed run id: every scheduled run resumes it (default: a new run each time).",
)
@click.option("--retries", envvar="LLIE_RETRIES", type=click.IntRange(min=0), default=2, help=option_help.RETRIES)
@click.option("--max-pixels", envvar="LLIE_MAX_PIXELS", type=click.IntRange(min=1), help=option_help.MAX_PIXELS)
@click.option(
    "--limit",
    envvar="LLIE_CONCURRENT_RUNS",
    type=click.IntRange(min=1),
    default=1,
    help="Flow runs at once; more than one would compete for the same cores.",
)
def main(
    name,
    cron,
    timezone,
    input_url,
    output_url,
    reference_url,
    model,
    shard_size,
    dask_address,
    workers,
    run_id,
    retries,
    max_pixels,
    limit,
) -> None:
    """Register the archive deployment with its schedule and run its flow runs here until stopped."""
    no_server_analytics()  # without PREFECT_API_URL, Prefect serves from a temporary server of its own
    run = {
        "input_url": input_url,
        "output_url": output_url,
        "reference_url": reference_url,
        "model": model,
        "shard_size": shard_size,
        "run_id": run_id,
        "max_pixels": max_pixels,
    }
    cluster = {"dask_address": dask_address, "n_workers": workers, "retries": retries}
    parameters = {"run": _given(run), "cluster": _given(cluster)}
    cfg = ArchiveDeployment(name=name, cron=cron, timezone=timezone, parameters=parameters)
    try:
        deployment = build_deployment(cfg)
        require_own_name(cfg.name, work_pool=None)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    serve(deployment, limit=limit)


if __name__ == "__main__":
    main()
