"""``llie train``: fit stage 2 (XGBoost) and stage 4 (the refiner) on paired sets and write a model bundle.

Registered on the ``llie`` group by ``llie_cli.main``; the library is imported inside the command so that
``llie --help`` stays light.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

from llie_cli.options import check_device

# QuantileModelConfig.augmentations and .bag, repeated so that --help does not import XGBoost (a test keeps
# them equal)
DEFAULT_HISTOGRAM_ROWS = 24
DEFAULT_BAG = 4


def _read_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """``--config FILE``: the command's options from a TOML file, as defaults that its command line overrides.

    Keys are the options' names without ``--`` (``steps = 600``, ``histogram-rows = 24``); an unknown key
    is an error, so that a misspelt setting is never silently ignored.
    """
    if value is None:
        return
    import tomllib

    try:
        config = tomllib.loads(value.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"{value}: {exc}", param_hint="--config") from None
    names = {opt[2:]: p.name for p in ctx.command.params if p is not param for opt in p.opts if opt.startswith("--")}
    unknown = sorted(set(config) - set(names))
    if unknown:
        raise click.BadParameter(
            f"{value}: unknown key(s) {', '.join(unknown)}; the keys are llie {ctx.info_name}'s options without "
            "'--', e.g. steps or histogram-rows",
            param_hint="--config",
        )
    ctx.default_map = {**(ctx.default_map or {}), **{names[key]: v for key, v in config.items()}}


def config_option(command):
    """--config FILE for a command whose options may come from a TOML file (read before the others)."""
    return click.option(
        "--config",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        is_eager=True,
        expose_value=False,
        callback=_read_config,
        help="TOML file of this command's options (keys: option names without '--'); the command line overrides it.",
    )(command)


@click.command("train")
@config_option
@click.option(
    "--data",
    required=True,
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A paired set in LOL layout: DATA/low + DATA/high (PNG or JPEG; DATA/pairs.json may name each pair's "
    "scene), or DATA/our485 (+ DATA/eval15, used for the final report only). Repeat it to train on "
    "several sets; every split keeps a scene on one side.",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Bundle directory to write (checkpoints go to OUTPUT/_training).",
)
@click.option(
    "--steps",
    type=click.IntRange(min=0),
    default=3000,
    show_default=True,
    help="Refiner optimisation steps. 0 with --init-refiner keeps that refiner as it is and retrains stage 2.",
)
@click.option("--batch", type=click.IntRange(min=1), default=16, show_default=True, help="Refiner crops per step.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the split, augmentation and init.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda.")
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="CPU threads for XGBoost and torch (default: all)."
)
@click.option(
    "--resume", is_flag=True, help="Continue from OUTPUT/_training (stage 2 and the last refiner checkpoint)."
)
@click.option(
    "--max-pairs", type=click.IntRange(min=1), default=None, help="Use only the first N pairs (quick trials)."
)
@click.option("--dim", type=click.IntRange(min=1), default=None, help="Refiner width (default 96).")
@click.option("--depth", type=click.IntRange(min=1), default=None, help="Refiner blocks (default 4).")
@click.option(
    "--heads",
    type=click.IntRange(min=1),
    default=None,
    help="Refiner attention heads (default 4; dim must divide by it).",
)
@click.option(
    "--global-context/--no-global-context",
    default=True,
    show_default=True,
    help="Refiner tokens also see a summary of the whole image, so it can fix global exposure and casts.",
)
@click.option(
    "--detail-channels",
    type=click.IntRange(min=0),
    default=None,
    help="Width of the refiner's full-resolution convolutions after the patch head, 0 for none (default 24).",
)
@click.option(
    "--ema",
    type=click.FloatRange(min=0.0, max=1.0, max_open=True),
    default=None,
    help="Validate and keep an exponential moving average of the refiner's weights with this decay "
    "(e.g. 0.999; default: off).",
)
@click.option(
    "--freeze-transformer",
    is_flag=True,
    help="Train only the refiner's detail head; the transformer stays as --init-refiner gave it.",
)
@click.option(
    "--pad-augment",
    is_flag=True,
    help="Train on crops cut short by up to one window and mirror-padded back in random places (loss on the "
    "crop's own pixels), as inference pads photos whose sides are not a multiple of 80 px.",
)
@click.option(
    "--exposure-jitter",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="Raise each refiner training input to a random gamma, log-normal with this spread (e.g. 0.12), so "
    "the refiner meets more exposure errors than the one stage 3 left on each training pair.",
)
@click.option(
    "--ssim-weight",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="Add this weight times 1 - SSIM to the refiner's loss (-PSNR + L1); 30 puts 0.01 of SSIM on a par "
    "with 0.3 dB. It trades PSNR for SSIM (docs/method.md).",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Refiner peak learning rate (default 2e-3; lower when fine-tuning).",
)
@click.option(
    "--crop",
    type=click.IntRange(min=1),
    default=None,
    help="Refiner training crop side in pixels, a multiple of 80 (default 160).",
)
@click.option(
    "--eval-every",
    type=click.IntRange(min=1),
    default=None,
    help="Refiner steps between validation passes; the best one is kept (default 250).",
)
@click.option(
    "--error-weighting/--no-error-weighting",
    default=True,
    show_default=True,
    help="Weight each pair in the stage-2 fit by the inverse of its out-of-fold error, which optimises the "
    "mean PSNR rather than the mean squared error.",
)
@click.option(
    "--capture-gate/--no-capture-gate",
    default=True,
    show_default=True,
    help="Where the data hold sets of two kinds (targets whose brightness follows the scene, as LOL's, and "
    "targets at each scene's best exposure, as SICE's), fit a classifier that tells their captures apart: "
    "a photo unlike the first kind gets a neutral brightness instead of stage 2's.",
)
@click.option(
    "--detail/--no-detail",
    default=True,
    show_default=True,
    help="Fit a rule on the validation pairs that sets, photo by photo, how much the refined photo is smoothed "
    "or sharpened: the amount of highest SSIM that costs no PSNR (needs a validation split and a refiner).",
)
@click.option(
    "--histogram-rows",
    type=click.IntRange(min=1),
    default=DEFAULT_HISTOGRAM_ROWS,
    show_default=True,
    help="Stage-2 training rows drawn per pair: the whole image plus random crops with exposure jitter.",
)
@click.option(
    "--bag",
    type=click.IntRange(min=1),
    default=DEFAULT_BAG,
    show_default=True,
    help="Stage-2 models averaged, each on its own histogram rows and trees; more take longer to train.",
)
@click.option(
    "--features",
    "feature_set",
    type=click.IntRange(min=1, max=2),
    default=2,
    show_default=True,
    help="Stage 1's feature set: 2 measures noise on coarser copies (a resized photo looks the same to it) "
    "and adds where the light is and how colourful the scene is; 1 is the set of earlier bundles.",
)
@click.option(
    "--illumination-steps",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Steps that train a local gain applied before the refiner (an illumination map that lifts shadows "
    "and highlights differently, the photo's mean brightness kept; 1500 take about two minutes); 0 for none.",
)
@click.option(
    "--harmless-rows",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Stage-2 rows per pair that teach it to leave a well-exposed photo as it is: the target (whole, "
    "then crops) as its own input. 0 for none.",
)
@click.option(
    "--colour",
    type=click.Choice(["bounded", "channels", "hue"]),
    default="bounded",
    show_default=True,
    help="Stage 3: 'channels' maps each channel on its own; 'hue' keeps each pixel's hue, with brightness and "
    "colour balance from the per-channel maps; 'bounded' keeps the per-channel result unless it turns a "
    "pixel's hue by more than --max-hue-turn degrees.",
)
@click.option(
    "--max-hue-turn",
    type=click.FloatRange(min=0.0, max=180.0),
    default=30.0,
    show_default=True,
    help="With --colour bounded: the hue turn, in degrees, past which a pixel keeps its hue.",
)
@click.option(
    "--exposure-gate",
    type=(float, float),
    default=(0.22, 0.28),
    show_default=True,
    help="FULL OFF: stage 3 changes photos whose mean luma (0-1) is at most FULL in full, leaves those from "
    "OFF as they are, and blends in between.",
)
@click.option(
    "--max-slope",
    type=click.FloatRange(min=0.0),
    default=16.0,
    show_default=True,
    help="Stage 3: no step of a channel's map may exceed this many times its mean step over the photo's "
    "levels (banding); 0 for no bound.",
)
@click.option(
    "--min-slope",
    type=click.FloatRange(min=0.0),
    default=0.05,
    show_default=True,
    help="Stage 3: nor fall below this many times it (posterising); 0 for no bound.",
)
@click.option(
    "--slope-anchor",
    type=click.Choice(["mean", "median"]),
    default="mean",
    show_default=True,
    help="Stage 3: where a map whose steps were bounded is pinned: 'mean' keeps the channel's mean "
    "(stage 2's exposure), 'median' the value at the photo's median level (older bundles).",
)
@click.option(
    "--anchor-exposure/--no-anchor-exposure",
    default=True,
    show_default=True,
    help="The refiner's output keeps stage 3's channel means: exposure comes from stages 2-3.",
)
@click.option(
    "--refiner-gain",
    type=(float, float),
    default=(1.15, 1.6),
    show_default=True,
    help="OFF FULL: the refiner is left out of photos that stage 3 brightened by at most OFF (mean luma after "
    "over before), applies in full from FULL, and in proportion between.",
)
@click.option(
    "--hue-guard",
    type=click.FloatRange(min=0.0, max=179.0),
    default=30.0,
    show_default=True,
    help="Degrees a visible hue (HSV saturation above 0.3, value above 0.08) may turn between the photo and "
    "the result before it is turned back, in full 15 degrees later; 0 for no bound.",
)
@click.option(
    "--black-point-knee",
    type=click.FloatRange(min=0.0, max=99.0),
    default=5.0,
    show_default=True,
    help="For captures whose brightness follows the scene (the capture gate's first kind), pull the refined "
    "tones below this luma percentile down so the darkest return to stage 3's level; 0 to leave them.",
)
@click.option(
    "--init-refiner",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Start the refiner from this bundle's weights (same architecture, or the same transformer without a "
    "detail head, which is then added) instead of from scratch.",
)
def train(**options: Any) -> None:
    """Train stage 2 (XGBoost) and stage 4 (ViT refiner) and write a model bundle."""
    from llie.training.train import TrainingSetupError
    from llie.training.train import train as run_training

    o = SimpleNamespace(**options)  # the options by name, as click gives them
    check_device(o.device)
    cfg = _train_config(o)
    try:
        manifest = run_training(cfg, resume=o.resume)
    except (TrainingSetupError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(
        json.dumps(
            {k: manifest[k] for k in ("model_version", "metrics") if k in manifest} | {"eval": manifest.get("eval")},
            indent=2,
            default=str,
        )
    )
    click.echo(f"bundle written to {o.output}")


def _train_config(o: SimpleNamespace):
    """The training run ``llie train``'s options describe; a usage error for settings no model may have."""
    from llie.method.mapping import MappingConfig
    from llie.method.policy import EnhancePolicy
    from llie.method.quantiles import QuantileModelConfig
    from llie.training.config import IlluminationTrainConfig
    from llie.training.train import TrainConfig

    refiner, refiner_train = _refiner_configs(o)
    try:
        mapping = MappingConfig(
            colour=o.colour,
            max_hue_turn=o.max_hue_turn,
            max_slope=o.max_slope,
            min_slope=o.min_slope,
            slope_anchor=o.slope_anchor,
        )
        policy = EnhancePolicy(
            exposure_full=o.exposure_gate[0],
            exposure_off=o.exposure_gate[1],
            anchor_exposure=o.anchor_exposure,
            gain_off=o.refiner_gain[0],
            gain_full=o.refiner_gain[1],
            hue_guard=o.hue_guard,
            black_point_knee=o.black_point_knee,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return TrainConfig(
        data=tuple(str(d) for d in o.data),
        output=str(o.output),
        mapping=mapping,
        policy=policy,
        seed=o.seed,
        device=o.device,
        threads=o.threads,
        quantile=QuantileModelConfig(
            error_weighting=o.error_weighting,
            augmentations=o.histogram_rows,
            bag=o.bag,
            harmless=o.harmless_rows,
            features=o.feature_set,
        ),
        refiner=refiner,
        refiner_train=refiner_train,
        illumination=IlluminationTrainConfig(steps=o.illumination_steps),
        capture_gate=o.capture_gate,
        detail=o.detail,
        max_pairs=o.max_pairs,
        init_refiner=o.init_refiner,
    )


def _refiner_configs(o: SimpleNamespace):
    """(RefinerConfig, RefinerTrainConfig) of the options: unset ones keep the configs' defaults."""
    from llie.method.refiner import RefinerConfig
    from llie.training.train import RefinerTrainConfig

    refiner = RefinerConfig()
    try:
        refiner = replace(
            refiner,
            dim=o.dim or refiner.dim,
            depth=o.depth or refiner.depth,
            heads=o.heads or refiner.heads,
            global_context=o.global_context,
            detail_channels=refiner.detail_channels if o.detail_channels is None else o.detail_channels,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    rt = RefinerTrainConfig(steps=o.steps, batch=o.batch)
    rt = replace(
        rt,
        lr=o.lr or rt.lr,
        crop=o.crop or rt.crop,
        eval_every=o.eval_every or rt.eval_every,
        ema_decay=o.ema or rt.ema_decay,
        freeze_transformer=o.freeze_transformer,
        pad_augment=o.pad_augment,
        exposure_jitter=o.exposure_jitter,
        ssim_weight=o.ssim_weight,
    )
    if o.steps < rt.eval_every:
        rt = replace(rt, eval_every=max(1, o.steps), checkpoint_every=max(1, o.steps))
    return refiner, rt
