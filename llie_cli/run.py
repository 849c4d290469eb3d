"""``llie run``: the archive flow from the command line, with a progress bar and a resume command.

The one command that needs Prefect; ``llie_cli.commands`` stays free of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shlex
import signal
import sys
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from flows import credentials
from flows.artifacts import summary_text
from flows.console import mute_console_logging, quiet_prefect_console
from llie import option_help
from llie.batch import archive, storage, storage_options
from llie.batch.layout import RunLayout
from llie.batch.spec import (
    DEFAULT_SHARD_SIZE,
    RunSpec,
    decode_limits,
    encode_options,
)
from llie_cli.commands import encoding_options, refiner_precision_option
from llie_cli.errors import debugging
from llie_cli.options import storage_option_flag

if TYPE_CHECKING:
    from flows.parameters import Cluster

__all__ = ["DEFAULT_SHARD_SIZE", "ImageProgress", "resume_advice", "resume_command", "run_command"]


@contextmanager
def _logs_above_bar():
    """tqdm's logging redirect, keeping the console handler's level (Prefect's console setting)."""
    root = logging.getLogger()
    before = list(root.handlers)
    level = min((h.level for h in before if isinstance(h, logging.StreamHandler)), default=logging.NOTSET)
    with logging_redirect_tqdm():
        for handler in root.handlers:
            if handler not in before:
                handler.setLevel(level)
        yield


class ImageProgress:
    """A progress bar over images, fed by the shard Parquet files as they appear.

    Polling the output (rather than hooking into Dask) counts the same thing whether the
    cluster is local or remote, and shows resumed shards as done from the start. A shard adds
    its images when its file appears (the row count in its footer, read once per file). Log
    records of this process print above the bar instead of on its row (logging_redirect_tqdm).
    """

    def __init__(
        self,
        output_url: str,
        run_id: str,
        interval: float = 1.0,
        enabled: bool = True,
        storage_options: storage.StorageOptions = None,
    ):
        self.output_url, self.run_id, self.interval = output_url, run_id, interval
        self.storage_options = storage_options
        self.enabled = enabled
        self._rows: dict[str, int] = {}  # shard id -> images in its file
        self._stop = threading.Event()
        self._bar = tqdm(total=None, unit="image", desc=f"run {run_id}", disable=not enabled, dynamic_ncols=True)
        self._thread = threading.Thread(target=self._loop, name="llie-progress", daemon=True)
        self._redirect = _logs_above_bar() if enabled else contextlib.nullcontext()

    def __enter__(self) -> ImageProgress:
        self._redirect.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()
        self._bar.close()
        self._redirect.__exit__(*exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def _shard_rows(self, shard_id: str) -> int:
        if shard_id not in self._rows:
            import pyarrow.parquet as pq

            url = RunLayout(self.output_url, self.run_id).shard_url(shard_id)
            fs, path = storage._fs(url, self.storage_options)
            with fs.open(path, "rb") as fh:
                self._rows[shard_id] = pq.ParquetFile(fh).metadata.num_rows
        return self._rows[shard_id]

    def _poll(self) -> None:
        if not self.enabled:
            return
        try:
            # read every time: a resumed run whose archive changed rewrites the manifest with its
            # new plan a moment after the bar has started, and the old total would be wrong
            manifest = archive.read_run_manifest(self.output_url, self.run_id, self.storage_options)
            if manifest and manifest["images"] != self._bar.total:
                self._bar.total = manifest["images"]
                self._bar.refresh()
            done = sum(
                self._shard_rows(s) for s in archive.shard_files(self.output_url, self.run_id, self.storage_options)
            )
        except Exception:  # a progress bar must never break or slow down the run
            return
        done = done if self._bar.total is None else min(done, self._bar.total)
        if done != self._bar.n:  # redraw on change only: one line per shard in a CI log, not per second
            self._bar.n = done
            self._bar.refresh()


def check_reachable(url: str, options: storage.StorageOptions = None, must_exist: str | None = None) -> None:
    """Fail at once, in one line, when the store behind ``url`` cannot be reached, or when ``url`` (named
    ``must_exist``: "input", "reference") or, for the output, its bucket does not exist.

    Otherwise the flow would start, fail on its first listing and print Prefect's tracebacks before the
    reason. Anything else (permissions, odd stores) is the flow's to report.
    """
    secrets = storage.url_secrets(url) + storage_options.credential_values(options)
    try:
        fs, path = storage._fs(url, options)
        if storage._is_local(fs) and not must_exist:
            return
        fs.info(path if must_exist else path.split("/", 1)[0])
    except FileNotFoundError:
        if must_exist:
            what = "no such folder" if storage._is_local(fs) else "no such bucket, or nothing under that prefix"
            raise click.ClickException(f"{must_exist} {storage.redact_url(url)} not found: {what}") from None
        raise click.ClickException(f"output {storage.redact_url(url)}: no such bucket") from None
    except Exception as exc:
        if storage.is_unreachable(exc):
            raise click.ClickException(
                f"cannot reach {storage.redact_url(url)}: {storage.describe_error(exc, secrets)}"
            ) from None


def check_prefect_api() -> None:
    """Fail at once, in one line, when the configured Prefect API (PREFECT_API_URL) does not answer."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return  # llie run starts a temporary server of its own
    try:
        httpx.get(url.rstrip("/") + "/health", timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        reason = storage.describe_error(exc, storage.url_secrets(url))
        raise click.ClickException(
            f"cannot reach the Prefect API at {storage.redact_url(url)} (PREFECT_API_URL): {reason}"
        ) from None


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _stop_on_signals(run_id: str, debug: bool = False):
    """Ctrl-C and SIGTERM (timeout, systemd, a cron wrapper) stop the run as KeyboardInterrupt: Prefect
    records the flow run as crashed, the local Dask cluster is closed, the temporary Prefect server stops.

    Yields the list of the signals received. Default handlers would not do: SIGTERM's kills the process on
    the spot, leaving the temporary Prefect server it started running as an orphan.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # signals go to the main thread only
        yield received
        return

    def stop(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) == 1:
            if not debug:
                mute_console_logging()
            click.echo(f"\nstopping run {run_id} ({signal.Signals(signum).name}) ...", err=True)
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def resume_command(spec: RunSpec, cluster: Cluster | None = None) -> str:
    """The command that resumes a run, with every setting it was started with that a resume must repeat (a
    different shard size, model or refiner precision is refused; other limits, encodings or references would
    make the remaining images differ from the finished ones) and the cluster it ran on."""
    from llie.batch.imageio import DecodeLimits, EncodeOptions

    folders = [storage.redact_url(spec.input_url), storage.redact_url(spec.output_url)]
    args = ["--run-id", spec.run_id]
    given: list[tuple[str, Any, Any]] = [
        ("--model", spec.model, None),
        ("--shard-size", spec.shard_size, None),
        ("--reference", storage.redact_url(spec.reference_url) if spec.reference_url else None, None),
        ("--refiner-precision", spec.refiner_precision, "float32"),
        ("--max-pixels", spec.limits.max_pixels, DecodeLimits().max_pixels),
        ("--png-compression", spec.encoding.png_compression, EncodeOptions().png_compression),
        ("--jpeg-quality", spec.encoding.jpeg_quality, EncodeOptions().jpeg_quality),
        ("--device", spec.device, "auto"),
        ("--dask-address", cluster.dask_address if cluster else None, None),
    ]
    for flag, value, default in given:
        if value is not None and value != default:
            args += [flag, str(value)]
    args += storage_options.as_arguments(spec.storage_options)  # credentials as ***
    if any(f.startswith("-") for f in folders):  # "-in" would be read as an option: options first, then "--"
        return shlex.join(["llie", "run", *args, "--", *folders])
    return shlex.join(["llie", "run", *folders, *args])


def _resumable(state: Any) -> bool:
    """Whether running the run again can finish it: not when it stopped on what it was given (a bad
    bundle, a damaged record, settings other than the run's, a missing input: ValueError, FileNotFoundError),
    except a shard size other than the run's, which the printed command takes from the run's manifest."""
    from llie.batch.plan import SettingMismatch

    try:
        error = state.result(raise_on_failure=False)
    except Exception:  # no result to look at (a crash): a resume is worth a try
        return True
    if isinstance(error, SettingMismatch):
        return error.key == "shard_size"
    return not isinstance(error, ValueError | FileNotFoundError)


def resume_advice(spec: RunSpec, cluster: Cluster | None = None) -> str | None:
    """The resume command of a run that has started (its manifest written), None for one that never did.

    Its shard size comes from the manifest: the one the run was cut with, chosen or given.
    """
    try:
        manifest = archive.read_run_manifest(spec.output_url, spec.run_id, spec.storage_options)
    except Exception:  # the store that failed the run may be the one that holds the manifest
        manifest = None
    if not manifest:
        return None
    return resume_command(dataclasses.replace(spec, shard_size=manifest.get("shard_size")), cluster)


def print_summary(summary: dict[str, Any], spec: RunSpec, cluster: Cluster) -> None:
    advice = resume_advice(spec, cluster) if summary["errors"] or summary["skipped"] else None
    click.echo("")
    click.echo(summary_text(summary, advice and advice + " --retry-failed"))


@click.command("run")
@click.argument("input_url")
@click.argument("output_url")
@click.option(
    "--model",
    default=None,
    metavar="BUNDLE",
    help=option_help.MODEL,
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=None,
    help=option_help.SHARD_SIZE,
)
@click.option(
    "--reference",
    "reference_url",
    default=None,
    metavar="URL",
    help=option_help.REFERENCE,
)
@click.option(
    "--dask-address",
    default=None,
    metavar="ADDR",
    help=option_help.DASK_ADDRESS,
)
@click.option(
    "--workers",
    "n_workers",
    type=click.IntRange(min=1),
    default=None,
    help=option_help.WORKERS_LOCAL,
)
@click.option(
    "--run-id",
    default=None,
    metavar="ID",
    help="Resume this run: finished shards are skipped (default: a new UTC-timestamped id).",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help=option_help.RETRIES,
)
@click.option(
    "--retry-failed", is_flag=True, help="With --run-id: also redo images that ended with an error or skipped row."
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=None,
    help=option_help.MAX_PIXELS,
)
@click.option("--device", default="auto", show_default=True, help=option_help.DEVICE)
@refiner_precision_option
@storage_option_flag
@click.option("--no-progress", is_flag=True, help="No progress bar (e.g. in CI logs).")
@encoding_options
def run_command(input_url: str, output_url: str, **options: Any) -> None:
    """Enhance a whole archive with Prefect + Dask.

    \b
    INPUT_URL and OUTPUT_URL are folders or object-store prefixes (s3://bucket/prefix).
    Enhanced images keep their relative paths under OUTPUT_URL; per-image metrics go to
    OUTPUT_URL/_metrics/run_id=<ID>/<shard>.parquet (hive partitioned, one file per shard).
    Credentials come from the environment (AWS_* variables, ~/.aws) or --storage-option key=... and
    secret=... (never shown), not from user:password@ in a URL, which is refused.

    \b
    Examples:
      llie run photos/ enhanced/
      llie run s3://archive/raw s3://archive/enhanced --reference s3://archive/ref --workers 8
      llie run photos/ enhanced/ --run-id 20250101T000000Z-1a2b3c --retry-failed
    """
    # Without a configured API, Prefect boots a temporary local server; on a small, busy machine
    # that can take longer than its 20 s default. Must be set before prefect is first imported.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # The terminal shows the bar, warnings, errors and the summary; Prefect's INFO lines go to its API.
    quiet_prefect_console()
    from flows import prefect_server
    from flows.console import console_without_tracebacks
    from flows.enhance_archive import enhance_archive
    from flows.parameters import ArchiveRun

    if not debugging():
        console_without_tracebacks()  # the reasons, one line each; the tracebacks reach Prefect's API
    spec, cluster = _checked_spec(input_url, output_url, options)
    check_reachable(spec.input_url, spec.storage_options, must_exist="input")
    if spec.reference_url:
        check_reachable(spec.reference_url, spec.storage_options, must_exist="reference")
    check_reachable(spec.output_url, spec.storage_options)
    check_prefect_api()
    _, secret = storage_options.split_credentials(spec.storage_options)
    prefect_server.start_if_needed()  # a temporary API, if one is needed, that dies with this process
    progress = ImageProgress(
        spec.output_url, spec.run_id, enabled=not options["no_progress"], storage_options=spec.storage_options
    )
    if options["no_progress"]:  # the bar names the run; without it, a run stopped early would not
        click.echo(f"run {spec.run_id}", err=True)
    received: list[int] = []
    try:
        with _stop_on_signals(spec.run_id, debugging()) as received, credentials.storage_credentials(secret), progress:
            state = enhance_archive(ArchiveRun.of(spec), cluster, return_state=True)
    except KeyboardInterrupt:
        signum = received[0] if received else signal.SIGINT
        _fail(spec, cluster, f"stopped ({signal.Signals(signum).name})", 128 + signum)
    if (signum := stopped_by(state)) is not None:
        _fail(spec, cluster, f"stopped ({signal.Signals(signum).name})", 128 + signum)
    if not state.is_completed():
        # The message may quote the URLs' credentials without a scheme (botocore: "KEY:SECRET@bucket").
        reason = storage.scrub(state.message or state.name, spec.secrets())
        _fail(spec, cluster, "did not complete: " + reason, 1, resumable=_resumable(state))
    print_summary(state.result(), spec, cluster)


def stopped_by(state: Any) -> int | None:
    """SIGTERM when the run failed on Prefect's own SIGTERM handler (which replaces ours while the flow
    runs) in a place that wrapped its TerminationSignal into another error (pydantic, while a task was being
    submitted); None otherwise. A stopped run is resumable, whatever the wrapper says."""
    if state.is_completed():
        return None
    return signal.SIGTERM if "TerminationSignal" in (state.message or "") else None


def _fail(spec: RunSpec, cluster: Cluster, what: str, code: int, resumable: bool = True) -> None:
    """Say what became of the run and how to resume it (when a resume can help), and exit with ``code``."""
    advice = resume_advice(spec, cluster) if resumable else None
    click.echo(f"\nrun {spec.run_id} {what}", err=True)
    if advice:
        click.echo(f"resume it with: {advice}", err=True)
    elif resumable:
        click.echo("it had not started: nothing to resume", err=True)
    sys.exit(code)


def _checked_spec(input_url: str, output_url: str, options: dict[str, Any]) -> tuple[RunSpec, Cluster]:
    """The run the options describe, with its run id; a usage error for what no run may do."""
    from flows.enhance_archive import check_model
    from flows.parameters import Cluster
    from llie.batch.plan import check_spec

    if options["retry_failed"] and not options["run_id"]:  # a new run has nothing to retry: it would redo everything
        raise click.UsageError("--retry-failed redoes the failed images of an earlier run: give its --run-id")
    spec = RunSpec(
        input_url=input_url,
        output_url=output_url,
        run_id=options["run_id"] or "",
        model=options["model"],
        reference_url=options["reference_url"],
        shard_size=options["shard_size"],
        storage_options=options["storage_option"] or None,
        retry_failed=options["retry_failed"],
        limits=decode_limits(options["max_pixels"]),
        encoding=encode_options(options["png_compression"], options["jpeg_quality"]),
        device=options["device"],
        refiner_precision=options["refiner_precision"],
    )
    cluster = Cluster(dask_address=options["dask_address"], n_workers=options["n_workers"], retries=options["retries"])
    try:
        spec = check_spec(spec)
        check_model(spec.model, cluster.dask_address)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return spec, cluster
