"""``llie calibrate``: a bundle whose exposure and contrast suit an archive, fit to a few of its pairs or set
by hand.

Registered on the ``llie`` group by ``llie_cli.main``; the library is imported inside the command so that
``llie --help`` stays light.
"""

from __future__ import annotations

from pathlib import Path

import click

# llie.method.exposure_offset's limits, repeated so that --help stays light (a test keeps them equal)
MAX_STOPS = 4.0
MIN_GAMMA, MAX_GAMMA = 0.5, 2.0


@click.command("calibrate")
@click.option(
    "--data",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Pairs from the archive in LOL layout (DATA/low and DATA/high, same names; DATA/pairs.json may name "
    "each pair's scene), each high photo exposed as you want the archive to come out; repeatable.",
)
@click.option(
    "--exposure",
    type=click.FloatRange(-MAX_STOPS, MAX_STOPS),
    default=None,
    help="Set the offset by hand instead of fitting it: stops added to the model's exposure for every dark "
    "photo (+1 twice the light, -0.5 a little darker). By hand, --exposure and --gamma replace the bundle's own "
    "(unset: 0 and 1).",
)
@click.option(
    "--gamma",
    type=click.FloatRange(MIN_GAMMA, MAX_GAMMA),
    default=None,
    help="Set the tone curve by hand (with or without --exposure): the output's levels raised to this power "
    "before the offset; below 1 lifts the shadows and flattens contrast (0.8 a little), above 1 deepens them.",
)
@click.option(
    "--model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Bundle to start from (default: the shipped model).",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the calibrated bundle; must not exist yet. Use it with --model in enhance, run or evaluate.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def calibrate(
    data: tuple[Path, ...],
    exposure: float | None,
    gamma: float | None,
    model: Path | None,
    output: Path,
    no_progress: bool,
) -> None:
    """Write a copy of a model bundle whose exposure and contrast suit your archive.

    The model guesses how bright each photo should be and how its tones spread; an archive's owner may want
    its photos brighter or darker, flatter or deeper throughout. With --data an offset and a gamma are fit
    to your pairs, and each pair is also scored with the setting fit on the other scenes: that gain is
    printed with its 80% interval, and the fit is written only where the interval lies above 0 (else the
    model's own setting is kept). Well-exposed photos stay as they are.
    """
    from llie.method.bundle import BundleError, check_new_bundle_folder, derive_bundle, load_bundle
    from llie.training.calibrate import ADOPT_CONFIDENCE, calibrated_settings
    from llie.training.calibrate import calibrate as fit_calibration
    from llie.training.data import resolve_training_sets

    by_hand = exposure is not None or gamma is not None
    if by_hand == bool(data):
        raise click.UsageError("give either --data (fit to pairs) or --exposure STOPS and/or --gamma G (set by hand)")
    try:  # before minutes of fitting, not after
        check_new_bundle_folder(output)
    except FileExistsError as exc:
        raise click.BadParameter(str(exc), param_hint="--output") from None
    try:
        bundle = load_bundle(model, refiner=False)
    except BundleError as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from None
    if by_hand:
        setting = (exposure or 0.0, gamma or 1.0)
        record = {"calibration": {"written": list(setting), "set_by_hand": True}}
    else:
        try:
            pairs, _ = resolve_training_sets(data)
            result = fit_calibration(bundle, pairs, progress=not no_progress)
        except FileNotFoundError as exc:
            raise click.BadParameter(str(exc), param_hint="--data") from None
        except ValueError as exc:  # one scene only, a pair whose photos differ in size
            raise click.ClickException(str(exc)) from None
        setting, record = result.written, {"calibration": result.record()}
        low, high = result.interval
        click.echo(f"fit on {result.pairs} pairs of {result.scenes} scenes: {describe(result.fitted)}")
        click.echo(
            f"stage-3 PSNR {result.before:.2f} dB as the model stands, {result.after:.2f} dB with the setting fit "
            f"on the other scenes ({result.after - result.before:+.2f} dB, {ADOPT_CONFIDENCE:.0%} interval "
            f"{low:+.2f} to {high:+.2f})"
        )
        if setting != result.fitted:
            click.echo(
                f"the interval does not lie above 0: these pairs do not show that the fit carries over to other "
                f"photos, so the bundle keeps {describe(setting)} (more scenes may show it; --exposure and "
                f"--gamma set them by hand)"
            )
    try:
        manifest = derive_bundle(model, output, calibrated_settings(*setting), record, bundle.model_version)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"wrote {output}: model {manifest['model_version']} ({manifest['previous_version']} {describe(setting)})"
    )


def describe(setting: tuple[float, float]) -> str:
    return f"{setting[0]:+.2f} stops, gamma {setting[1]:.2f}"
