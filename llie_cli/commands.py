"""The ``llie`` command line: enhance a folder, evaluate on pairs, make synthetic pairs.

``llie_cli.main`` adds ``llie audit``, ``llie train`` and ``llie run`` (the archive flow, which needs Prefect)
to this group, so this module stays free of Prefect.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from llie import option_help
from llie_cli.options import check_device

if TYPE_CHECKING:  # imported where used: --help stays light
    from llie.batch.imageio import DecodeLimits, EncodeOptions
    from llie.method.pipeline import Enhancer

STAGE_CHOICE = click.Choice(["hist", "full"])
# llie.batch.imageio.EncodeOptions' defaults, repeated so that --help does not import Pillow
DEFAULT_PNG_COMPRESSION = 1
DEFAULT_JPEG_QUALITY = 95


def refiner_precision_option(command):
    """--refiner-precision, shared by `llie enhance` and `llie run`."""
    from llie.method.refine import REFINER_PRECISIONS

    # A CPU without native bf16 gets a warning, not a refusal: the output is as good, only slower, and on a
    # Dask cluster the CPU that matters is the workers', which this process cannot see.
    return click.option(
        "--refiner-precision",
        type=click.Choice(REFINER_PRECISIONS),
        default="float32",
        show_default=True,
        help="The refiner's arithmetic on CPU. bf16 runs it about 1.7x faster on CPUs with native bf16 "
        "(AVX-512 BF16, AMX), its outputs within a level or two of float32's; on other CPUs it is slower, "
        "with a warning. No effect on CUDA (always fp16).",
    )(command)


def encoding_options(command):
    """--png-compression and --jpeg-quality, shared by `llie enhance` and `llie run`."""
    command = click.option(
        "--jpeg-quality",
        type=click.IntRange(1, 100),
        default=DEFAULT_JPEG_QUALITY,
        show_default=True,
        help="Quality of JPEG (and WebP) outputs.",
    )(command)
    return click.option(
        "--png-compression",
        type=click.IntRange(0, 9),
        default=DEFAULT_PNG_COMPRESSION,
        show_default=True,
        help="zlib level of PNG outputs: 1 is fast, 6-9 write smaller files several times slower.",
    )(command)


class LazyGroup(click.Group):
    """A group whose commands named in ``LAZY_COMMANDS`` are imported when first asked for: ``llie run``
    brings Prefect, Dask, fsspec and pyarrow (half a second), which ``llie enhance`` does not need."""

    LAZY_COMMANDS = {"run": ("llie_cli.run", "run_command")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.LAZY_COMMANDS and name not in self.commands:
            import importlib

            module, attribute = self.LAZY_COMMANDS[name]
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="llie")
@click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, param, value: _set_debug(value),
    help="Show the traceback of an error, not its one line (also: LLIE_DEBUG=1).",
)
def cli() -> None:
    """llie: turn dark, noisy photos into well-lit ones.

    \b
    The method, four stages:
      1. per-channel histogram features of the low-light image
      2. XGBoost predicts the well-lit image's value at every 5th percentile
      3. a KDE rebuilds the target histogram; histogram matching maps the image onto it
      4. a small vision transformer on 10x10 patches removes leftover noise and colour casts

    \b
    Start with:  llie enhance --input photos/ --output enhanced/
    Archives:    llie run INPUT_URL OUTPUT_URL   (Prefect + Dask, Parquet metrics, local or s3://)
    """


def _set_debug(value: bool) -> None:
    import os

    from llie_cli.errors import DEBUG_ENV

    if value:
        os.environ[DEBUG_ENV] = "1"  # read where an error is reported, here and in `llie run`


def _load_enhancer(model, device: str, refiner: bool = True, precision: str = "float32", threads: int | None = None):
    """The Enhancer of ``model``; without ``refiner`` stage 4 and torch stay unloaded and ``device`` and
    ``precision`` unused. ``threads``: torch and XGBoost threads per photo (None: their own defaults)."""
    from llie.method.bundle import BundleError
    from llie.method.pipeline import Enhancer

    if refiner:
        check_device(device)
    try:
        return Enhancer.load(model, device=device, threads=threads, refiner=refiner, precision=precision)
    except BundleError as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from None


def _reference_score(reference: Path, rel: Path, image: np.ndarray, like, limits) -> tuple[dict | None, str | None]:
    """(scores, None) against the reference of ``rel``, or (None, why not): a missing, unreadable or
    differently sized reference is reported, not counted as a failed enhancement."""
    from llie.batch.scoring import reference_scores

    def read() -> bytes:
        from llie.batch.localfs import read_regular

        if not (reference / rel).is_file():
            raise FileNotFoundError(reference / rel)
        return read_regular(str(reference / rel), root=str(reference))

    try:
        psnr, ssim, why_not = reference_scores(image, like, read, limits)
    except (OSError, ValueError) as exc:  # not readable by this user, a link out, a FIFO: the photo was enhanced
        return None, f"reference unreadable: {exc}"
    return (None, why_not) if psnr is None else ({"psnr": psnr, "ssim": ssim}, None)


@cli.command()
@click.option(
    "--input",
    "input_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of photos (searched recursively; png, jpg, tif, bmp, webp, gif).",
)
@click.option(
    "--output",
    "output_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where enhanced photos go, with the same relative paths and formats. Must not be inside --input.",
)
@click.option(
    "--model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help=option_help.MODEL,
)
@click.option(
    "--stages",
    type=STAGE_CHOICE,
    default="full",
    show_default=True,
    help="'hist' stops after histogram mapping (stages 1-3, fastest); 'full' adds the ViT refiner.",
)
@click.option(
    "--reference",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help=option_help.REFERENCE,
)
@click.option("--device", default="auto", show_default=True, help=option_help.DEVICE)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=None,
    help=option_help.MAX_PIXELS,
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help=option_help.WORKERS_THREADS + " A photo starts only "
    "while the photos in flight fit in half the free memory (about 56 bytes per pixel each), so large "
    "photos may run fewer at a time.",
)
@refiner_precision_option
@encoding_options
def enhance(input_dir: Path, output_dir: Path, **options: Any) -> None:
    """Enhance every photo in a folder.

    A photo that cannot be read or enhanced is reported and skipped, the others go on, and the exit
    status is 1. Each output is written to a temporary file and renamed, so a photo is never left
    half-written under its real name.
    """
    from tqdm import tqdm

    from llie.batch.imageio import stored_pixels
    from llie.batch.spec import decode_limits, encode_options
    from llie.resources import available_cpus, threads_per_worker
    from llie_cli.parallel import PEAK_BYTES_PER_PIXEL, default_budget, map_in_order

    o = SimpleNamespace(**options)  # the options by name, as click gives them
    names = _photos(input_dir, output_dir)
    workers = min(o.workers or available_cpus(), len(names))
    enhancer = _load_enhancer(o.model, o.device, o.stages == "full", o.refiner_precision, threads_per_worker(workers))
    job = PhotoJob(
        enhancer,
        input_dir,
        output_dir,
        o.stages,
        o.reference,
        decode_limits(o.max_pixels),
        encode_options(o.png_compression, o.jpeg_quality),
    )
    outcomes = map_in_order(
        job.run, names, workers, lambda name: PEAK_BYTES_PER_PIXEL * stored_pixels(input_dir / name), default_budget()
    )
    rows, unscored, failures, skipped = [], [], 0, 0
    for outcome in tqdm(outcomes, total=len(names), desc="enhance", unit="img"):
        if outcome.skipped is not None:  # over --max-pixels: a choice, as in llie run, not a failure
            skipped += 1
            tqdm.write(f"skipped: {outcome.name}: {outcome.skipped}", file=sys.stderr)
        elif outcome.error is not None:
            failures += 1
            tqdm.write(f"error: {outcome.name}: {outcome.error}", file=sys.stderr)
        elif outcome.scores is not None:
            rows.append({"name": outcome.name, **outcome.scores})
        elif o.reference is not None:
            unscored.append((outcome.name, outcome.unscored_why))
    click.echo(
        f"enhanced {len(names) - failures - skipped} of {len(names)} images into {output_dir} "
        f"(model {enhancer.model_version}, stages {o.stages})" + (f", {skipped} skipped" if skipped else "")
    )
    if o.reference is not None:
        _print_scores(rows, unscored, len(names) - failures - skipped, o.reference)
    if failures:
        sys.exit(1)


@dataclass(frozen=True)
class PhotoOutcome:
    name: str
    error: str | None = None  # why the photo was not enhanced
    scores: dict | None = None  # PSNR and SSIM against its reference
    unscored_why: str | None = None
    skipped: str | None = None  # why the photo was left out (larger than --max-pixels)


@dataclass(frozen=True)
class PhotoJob:
    """One photo of `llie enhance`, start to end; runs on several threads at once."""

    enhancer: Enhancer
    input_dir: Path
    output_dir: Path
    stages: str
    reference: Path | None
    limits: DecodeLimits
    encoding: EncodeOptions

    def run(self, name: str) -> PhotoOutcome:
        from llie.batch.imageio import ImageDecodeError, ImageTooLargeError, decode_image, encode_image
        from llie.batch.localfs import read_regular
        from llie.batch.storage import write_bytes_atomic

        rel = Path(name)
        try:
            # only from inside --input and only into --output: a folder swapped for a link is refused
            data = read_regular(str(self.input_dir / rel), root=str(self.input_dir))
            decoded = decode_image(data, self.limits)
            levels = 65536 if decoded.bit_depth > 8 else 256
            result = self.enhancer.enhance(decoded.rgb, stages=self.stages, levels=levels, mask=decoded.opaque)
            # a photo left as it was is copied, not encoded again (generation loss, a bigger file)
            encoded = data if result.unchanged else encode_image(result.image, decoded, options=self.encoding)
            write_bytes_atomic(str(self.output_dir / rel), encoded, root=str(self.output_dir))
        except ImageTooLargeError as exc:
            return PhotoOutcome(rel.as_posix(), skipped=str(exc))
        except (ImageDecodeError, OSError, ValueError) as exc:
            return PhotoOutcome(rel.as_posix(), error=str(exc))
        if self.reference is None:
            return PhotoOutcome(rel.as_posix())
        scores, why_not = _reference_score(self.reference, rel, result.image, decoded, self.limits)
        return PhotoOutcome(rel.as_posix(), scores=scores, unscored_why=why_not)


def _photos(input_dir: Path, output_dir: Path) -> list[str]:
    """The photos under ``input_dir`` as ``llie run`` lists them (llie.batch.storage); a link out of it is
    reported and left out, as it may reach anything."""
    from llie.batch.storage import check_output_not_inside_input, list_local_images

    try:
        check_output_not_inside_input(str(input_dir), str(output_dir))
    except ValueError:
        raise click.UsageError(
            "--output must not be --input, inside it or contain it: inputs are never overwritten"
        ) from None
    unreadable: list[str] = []
    names, links_out = list_local_images(str(input_dir), unreadable=unreadable)
    for name in links_out:
        click.echo(f"skipped: {name}: a link out of --input", err=True)
    for folder in unreadable:
        click.echo(f"warning: cannot read folder {folder}: its photos are left out", err=True)
    if not names:
        raise click.UsageError(f"no images found under {input_dir}")
    return names


def _print_scores(rows: list[dict], unscored: list[tuple[Path, str | None]], enhanced: int, reference: Path) -> None:
    click.echo(f"scored {len(rows)} of {enhanced} enhanced images against {reference}")
    for rel, why_not in unscored:
        click.echo(f"  not scored: {rel}: {why_not}")
    if rows:
        click.echo(f"\n{'image':40s} {'PSNR':>7s} {'SSIM':>6s}")
        for r in rows:
            click.echo(f"{r['name']:40s} {r['psnr']:7.2f} {r['ssim']:6.3f}")
        click.echo(f"{'mean':40s} {np.mean([r['psnr'] for r in rows]):7.2f} {np.mean([r['ssim'] for r in rows]):6.3f}")


@cli.command()
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Paired set in LOL layout: DATA/low and DATA/high (or DATA/eval15 is used when present).",
)
@click.option(
    "--model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Model bundle directory (default: the shipped model).",
)
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda.")
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the per-image rows, means and intervals (and the comparison) as JSON.",
)
@click.option(
    "--baseline",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Also score this bundle on the same pairs and print, per metric, the mean difference (model minus "
    "baseline) with its paired 95% bootstrap interval and how many images got better or worse. An "
    "interval that contains 0 means the set does not show which model is better.",
)
def evaluate(data: Path, model, device, json_out, baseline) -> None:
    """Per-stage PSNR/SSIM table on a paired set (plain protocol: 8-bit output, no GT-mean rescaling).

    The last row is a 95% bootstrap interval of each mean, which is wide on a set of a few images:
    compare two models with --baseline, which pairs them image by image.
    """
    from llie.training.data import find_pairs
    from llie.training.evaluate import compare_reports, format_comparison, format_table

    if json_out is not None and not json_out.parent.is_dir():  # found out now, not after the evaluation
        raise click.BadParameter(f"folder {json_out.parent} does not exist", param_hint="--json")
    root = data / "eval15" if (data / "eval15").is_dir() else data
    try:
        pairs = find_pairs(root)
    except FileNotFoundError as exc:
        raise click.BadParameter(str(exc), param_hint="--data") from None
    check_device(device)
    report = _evaluate_or_fail(model, pairs, device, "--model")
    click.echo(f"model {report['model_version']} on {root} ({len(report['rows'])} pairs)\n")
    click.echo(format_table(report))
    if baseline is not None:
        base = _evaluate_or_fail(baseline, pairs, device, "--baseline")
        report["comparison"] = compare_reports(report, base)
        report["baseline"] = base
        click.echo("")
        click.echo(format_comparison(report["comparison"]))
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))


def _evaluate_or_fail(bundle, pairs, device: str, option: str) -> dict:
    from llie.method.bundle import BundleError
    from llie.training.evaluate import evaluate_pairs

    try:
        return evaluate_pairs(bundle, pairs, device=device)
    except BundleError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None
    except (ValueError, OSError) as exc:  # a pair that cannot be read or whose images differ in size
        raise click.ClickException(str(exc)) from None


def _check_exposure(ctx, param, value):
    if value is not None and not 0.0 < value[0] <= value[1] <= 1.0:
        raise click.BadParameter(f"{value[0]} {value[1]}: need 0 < LOW <= HIGH <= 1 (a gain that darkens)")
    return value


@cli.command()
@click.option(
    "--input",
    "input_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of well-lit photos.",
)
@click.option(
    "--output",
    "output_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Writes OUTPUT/low and OUTPUT/high (PNG) in LOL layout.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--exposure",
    type=(float, float),
    default=None,
    callback=_check_exposure,
    help="Range of the linear gain that darkens each photo, LOW HIGH with 0 < LOW <= HIGH <= 1, e.g. 0.05 0.25.",
)
def synth(input_dir, output_dir, seed, exposure) -> None:
    """Make low/high training pairs from well-lit photos (exposure drop, gamma, sensor noise, colour shift)."""
    from llie.training.synth import SynthConfig, make_pairs

    cfg = SynthConfig() if exposure is None else replace(SynthConfig(), exposure=exposure)
    try:
        names = make_pairs(input_dir, output_dir, cfg, seed=seed)
    except ValueError as exc:  # overlapping folders, two inputs that would share an output name
        raise click.UsageError(str(exc)) from None
    click.echo(f"wrote {len(names)} pairs to {output_dir}/low and {output_dir}/high")
