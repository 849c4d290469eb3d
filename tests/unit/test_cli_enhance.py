"""The ``llie`` click group: enhance a folder of mixed images, reference scores, help, synth, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers_synthetic import pair, scene, to_uint8, write_lol
from PIL import Image

from llie.method.bundle import load_bundle
from llie_cli.main import cli

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _save(path: Path, image: Image.Image, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)


def _dark(h: int, w: int, seed: int) -> np.ndarray:
    return to_uint8(pair(h, w, seed=seed)[0])


# relative path -> (expected format, expected mode, (width, height))
EXPECTED = {
    "rgb.png": ("PNG", "RGB", (64, 48)),
    "gray.png": ("PNG", "L", (41, 30)),
    "rgba.png": ("PNG", "RGBA", (17, 33)),
    "gray16.png": ("PNG", "I;16", (31, 25)),
    "photo.jpg": ("JPEG", "RGB", (50, 40)),
    "sub/nested.png": ("PNG", "RGB", (35, 21)),
    "sub/deeper/UPPER.JPG": ("JPEG", "RGB", (19, 27)),
}


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "in"
    _save(root / "rgb.png", Image.fromarray(_dark(48, 64, 0)), "PNG")
    _save(root / "gray.png", Image.fromarray(_dark(30, 41, 1)[..., 1]), "PNG")
    rgba = np.dstack([_dark(33, 17, 2), np.linspace(0, 255, 33 * 17).reshape(33, 17).astype(np.uint8)])
    _save(root / "rgba.png", Image.fromarray(rgba, "RGBA"), "PNG")
    sixteen = np.random.default_rng(3).integers(200, 9000, size=(25, 31)).astype(np.uint16)
    _save(root / "gray16.png", Image.fromarray(sixteen), "PNG")
    _save(root / "photo.jpg", Image.fromarray(_dark(40, 50, 4)), "JPEG")
    _save(root / "sub" / "nested.png", Image.fromarray(_dark(21, 35, 5)), "PNG")
    _save(root / "sub" / "deeper" / "UPPER.JPG", Image.fromarray(_dark(27, 19, 6)), "JPEG")
    for rel, (fmt, mode, size) in EXPECTED.items():  # the inputs are what the table says
        with Image.open(root / rel) as im:
            assert (im.format, im.mode, im.size) == (fmt, mode, size), rel
    return root


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_enhance_folder_of_mixed_images(photos, tmp_path):
    out = tmp_path / "out"
    result = _run("enhance", "--input", str(photos), "--output", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"enhanced {len(EXPECTED)} of {len(EXPECTED)} images" in result.output
    assert _files(out) == sorted(EXPECTED)  # exactly one output per input, same relative path, no temp files
    for rel, (fmt, mode, size) in EXPECTED.items():
        with Image.open(out / rel) as im:
            assert (im.format, im.mode, im.size) == (fmt, mode, size), rel
    with Image.open(photos / "rgb.png") as a, Image.open(out / "rgb.png") as b:
        assert np.asarray(b).mean() > np.asarray(a).mean() + 20  # it did enhance
    with Image.open(photos / "rgba.png") as a, Image.open(out / "rgba.png") as b:
        np.testing.assert_array_equal(np.asarray(b)[..., 3], np.asarray(a)[..., 3])  # alpha kept as is
    with Image.open(out / "gray16.png") as im:
        values = np.asarray(im)
        assert values.dtype == np.uint16
        assert len(np.unique(values)) > 256  # real 16-bit output, not 8-bit scaled up
    # inputs are never touched
    assert _files(photos) == sorted(EXPECTED)


def test_broken_file_fails_the_run_but_not_the_others(tmp_path):
    src = tmp_path / "in"
    good = ["a.png", "sub/z.jpg"]
    _save(src / "a.png", Image.fromarray(_dark(20, 30, 7)), "PNG")
    _save(src / "sub" / "z.jpg", Image.fromarray(_dark(22, 18, 8)), "JPEG")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not a png" * 10)
    (src / "sub" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["enhance", "--input", str(src), "--output", str(out), "--stages", "hist"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, result.output
    assert any("broken.png" in line for line in errors)
    assert any("sub/empty.jpg" in line for line in errors)
    assert "enhanced 2 of 4 images" in result.output
    assert _files(out) == good  # a.png is processed before the broken files, sub/z.jpg after them


def test_photos_side_by_side_give_the_outputs_and_report_of_one_at_a_time(photos, tmp_path):
    """--workers 3 runs three photos at once on one torch thread each; --workers 1 one photo on all the
    cores. The outputs agree (to a level: convolutions split over threads may round differently), and
    the errors and the score table come in the order of the photos, not of their finishing."""
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a png" * 10)
    (photos / "sub" / "empty.jpg").write_bytes(b"")
    reports = {}
    for workers in (1, 3):
        out = tmp_path / f"out{workers}"
        args = ["--output", str(out), "--reference", str(photos), "--device", "cpu", "--workers", str(workers)]
        result = _run("enhance", "--input", str(photos), *args)
        assert result.exit_code == 1, result.output
        assert _files(out) == sorted(EXPECTED)
        lines = result.output.splitlines()
        errors = [line for line in lines if line.startswith("error:")]
        header = next(i for i, line in enumerate(lines) if "PSNR" in line and "SSIM" in line)
        reports[workers] = errors, [line.split()[0] for line in lines[header + 1 :] if line.strip()]
    assert reports[1] == reports[3]
    errors, table = reports[3]
    assert [e.split()[1] for e in errors] == ["broken.png:", "sub/empty.jpg:"]
    assert table == sorted(EXPECTED) + ["mean"]
    for rel in EXPECTED:
        with Image.open(tmp_path / "out1" / rel) as a, Image.open(tmp_path / "out3" / rel) as b:
            difference = np.abs(np.asarray(a, dtype=np.int64) - np.asarray(b, dtype=np.int64))
            assert difference.max() <= 1 and difference.mean() < 0.01, rel


def test_reference_prints_psnr_table_with_mean(tmp_path):
    src, ref = tmp_path / "low", tmp_path / "ref"
    names = ["a.png", "b/c.png"]
    for i, name in enumerate(names):
        low, high = pair(40, 56, seed=20 + i)
        _save(src / name, Image.fromarray(to_uint8(low)), "PNG")
        _save(ref / name, Image.fromarray(to_uint8(high)), "PNG")
    _save(src / "no_reference.png", Image.fromarray(_dark(24, 24, 9)), "PNG")
    result = _run(
        "enhance", "--input", str(src), "--output", str(tmp_path / "out"), "--reference", str(ref), "--stages", "hist"
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if "PSNR" in line and "SSIM" in line)
    rows = [line.split() for line in lines[header + 1 :] if line.strip()]
    assert [r[0] for r in rows] == names + ["mean"]
    psnrs = [float(r[1]) for r in rows]
    ssims = [float(r[2]) for r in rows]
    assert all(5 < p < 60 for p in psnrs) and all(-1 <= s <= 1 for s in ssims)
    assert psnrs[-1] == pytest.approx(np.mean(psnrs[:-1]), abs=0.011)
    assert ssims[-1] == pytest.approx(np.mean(ssims[:-1]), abs=0.0011)


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_output_overlapping_input_is_refused(photos, where):
    # "around": --input out/in --output out would write out/in/x.png over the input of in/in/x.png
    out = {"same": photos, "inside": photos / "sub" / "enhanced", "around": photos.parent}[where]
    before = {name: (photos / name).read_bytes() for name in _files(photos)}
    result = CliRunner().invoke(cli, ["enhance", "--input", str(photos), "--output", str(out)])
    assert result.exit_code == 2
    assert "must not be --input, inside it or contain it" in result.output
    assert {name: (photos / name).read_bytes() for name in _files(photos)} == before


def test_a_bad_reference_is_reported_not_counted_as_a_failure(tmp_path):
    src, ref = tmp_path / "low", tmp_path / "ref"
    for i, name in enumerate(["good.png", "unreadable.png", "resized.png", "missing.png"]):
        low, high = pair(30, 40, seed=40 + i)
        _save(src / name, Image.fromarray(to_uint8(low)), "PNG")
        if name == "good.png":
            _save(ref / name, Image.fromarray(to_uint8(high)), "PNG")
    (ref / "unreadable.png").write_bytes(b"not a png")
    _save(ref / "resized.png", Image.fromarray(to_uint8(pair(20, 40, seed=9)[1])), "PNG")
    out = tmp_path / "out"
    result = _run("enhance", "--input", str(src), "--output", str(out), "--reference", str(ref), "--stages", "hist")
    assert result.exit_code == 0, result.output
    assert "enhanced 4 of 4 images" in result.output and "scored 1 of 4 enhanced images" in result.output
    assert "not scored: unreadable.png: reference unreadable" in result.output
    assert "not scored: resized.png: reference is 40x20, output is 40x30" in result.output
    assert "not scored: missing.png: no reference image" in result.output
    assert len(_files(out)) == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{tmp}"], "manifest.json missing"),
        (["--device", "gpu"], "use auto, cpu, cuda or cuda:N"),
        (["--max-pixels", "0"], "--max-pixels"),
        (["--refiner-precision", "fp16"], "'fp16' is not one of 'float32', 'bf16'"),
    ],
)
def test_enhance_usage_errors_are_clear(photos, tmp_path, args, message):
    result = CliRunner().invoke(
        cli,
        ["enhance", "--input", str(photos), "--output", str(tmp_path / "out"), *[a.format(tmp=tmp_path) for a in args]],
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_enhance_on_cuda_without_a_gpu_is_a_usage_error(photos, tmp_path):
    result = CliRunner().invoke(
        cli, ["enhance", "--input", str(photos), "--output", str(tmp_path / "o"), "--device", "cuda"]
    )
    assert result.exit_code == 2 and "no CUDA GPU is available" in result.output


def test_refiner_precision_reaches_the_refiner(tmp_path):
    """bf16 runs the refiner in bfloat16: outputs a few levels from float32's at most, not the same bytes."""
    _save(tmp_path / "in" / "a.png", Image.fromarray(_dark(48, 64, 0)), "PNG")
    pixels = {}
    for precision in ("float32", "bf16", None):  # None: the default
        out = tmp_path / str(precision)
        args = ["--refiner-precision", precision] if precision else []
        result = _run("enhance", "--input", str(tmp_path / "in"), "--output", str(out), "--device", "cpu", *args)
        assert result.exit_code == 0, result.output
        pixels[precision] = np.asarray(Image.open(out / "a.png")).astype(int)
    np.testing.assert_array_equal(pixels[None], pixels["float32"])
    levels = np.abs(pixels["bf16"] - pixels["float32"])
    # on a photo this small a handful of pixels move by up to 8 levels (7 with 30c0b365479b on another seed)
    assert 0 < levels.max() <= 10 and levels.mean() < 0.5 and np.mean(levels > 4) < 0.01, (levels.max(), levels.mean())


def test_empty_input_folder_is_a_usage_error(tmp_path):
    (tmp_path / "in").mkdir()
    result = CliRunner().invoke(cli, ["enhance", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no images found" in result.output


@pytest.mark.parametrize(
    "command, options",
    [
        (None, ["enhance", "evaluate", "train", "synth"]),
        (
            "enhance",
            [
                "--input",
                "--output",
                "--model",
                "--stages",
                "--reference",
                "--device",
                "--max-pixels",
                "--refiner-precision",
                "--workers",
            ],
        ),
        ("evaluate", ["--data", "--model", "--device", "--json", "--baseline", "interval"]),
        (
            "train",
            [
                "--data",
                "--output",
                "--steps",
                "--batch",
                "--seed",
                "--threads",
                "--resume",
                "--max-pairs",
                "--pad-augment",
                "--histogram-rows",
            ],
        ),
        ("synth", ["--input", "--output", "--seed", "--exposure"]),
    ],
)
def test_help_mentions_every_option(command, options):
    for flag in ("--help", "-h"):
        result = _run(*([command] if command else []), flag)
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.output
        for option in options:
            assert option in result.output, (command, option)


def test_synth_writes_low_high_pairs(tmp_path):
    src = tmp_path / "wellLit"
    _save(src / "one.png", Image.fromarray(to_uint8(scene(40, 52, seed=1))), "PNG")
    _save(src / "more" / "two.jpg", Image.fromarray(to_uint8(scene(33, 45, seed=2))), "JPEG")
    out = tmp_path / "pairs"
    result = _run("synth", "--input", str(src), "--output", str(out), "--seed", "3")
    assert result.exit_code == 0, result.output
    assert "wrote 2 pairs" in result.output
    expected = ["more/two.png", "one.png"]
    assert _files(out / "low") == expected
    assert _files(out / "high") == expected
    for name in expected:
        with Image.open(out / "low" / name) as lo, Image.open(out / "high" / name) as hi:
            assert lo.size == hi.size and lo.mode == hi.mode == "RGB"
            assert np.asarray(lo).mean() < 0.7 * np.asarray(hi).mean()


def test_synth_refuses_an_output_around_its_input(tmp_path):
    src = tmp_path / "pairs" / "low"
    _save(src / "one.png", Image.fromarray(to_uint8(scene(20, 24, seed=1))), "PNG")
    before = (src / "one.png").read_bytes()
    result = CliRunner().invoke(cli, ["synth", "--input", str(src), "--output", str(tmp_path / "pairs")])
    assert result.exit_code == 2 and "must not be the input folder" in result.output
    assert (src / "one.png").read_bytes() == before and not (tmp_path / "pairs" / "high").exists()


@pytest.mark.parametrize("exposure", [("3", "5"), ("-0.1", "0.2"), ("0.3", "0.1"), ("0", "0.2")])
def test_synth_exposure_must_darken(tmp_path, exposure):
    (tmp_path / "in").mkdir()
    result = CliRunner().invoke(
        cli, ["synth", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--exposure", *exposure]
    )
    assert result.exit_code == 2 and "0 < LOW <= HIGH <= 1" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dim", "30", "--heads", "4"], "must divide by its 4 attention heads"),
        (["--lr", "0"], "--lr"),
        (["--crop", "0"], "--crop"),
        (["--crop", "100"], "must be a multiple of the refiner's 80 pixels"),
        (["--crop", "160"], "do not fit the smallest training image (40 px"),
        (["--device", "tpu"], "use auto, cpu, cuda or cuda:N"),
    ],
)
def test_train_setup_errors_come_before_any_work(tmp_path, args, message):
    data = write_lol(tmp_path / "lol", 6, 40, 48, seed=5)
    result = CliRunner().invoke(cli, ["train", "--data", str(data), "--output", str(tmp_path / "b"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b" / "_training" / "stage2").exists()


def test_evaluate_prints_per_stage_table(tmp_path):
    data = write_lol(tmp_path / "lol", 2, 40, 48, seed=5)
    report = tmp_path / "report.json"
    result = _run("evaluate", "--data", str(data), "--device", "cpu", "--json", str(report))
    assert result.exit_code == 0, result.output
    assert "stage3_psnr" in result.output and "**mean**" in result.output
    assert "95% interval of the mean" in result.output
    saved = json.loads(report.read_text())
    assert len(saved["rows"]) == 2
    assert saved["mean"]["stage3_psnr"] > saved["mean"]["input_psnr"]
    for key, (low, high) in saved["interval"].items():
        values = [r[key] for r in saved["rows"]]
        assert min(values) <= low <= saved["mean"][key] <= high <= max(values), key


def test_evaluate_errors_are_clear_and_come_first(tmp_path):
    data = write_lol(tmp_path / "lol", 2, 40, 48, seed=5)
    result = CliRunner().invoke(cli, ["evaluate", "--data", str(tmp_path)])  # no low/ and high/ here
    assert result.exit_code == 2 and "has no low/ and high/ folders" in result.output
    result = CliRunner().invoke(cli, ["evaluate", "--data", str(data), "--json", str(tmp_path / "no" / "r.json")])
    assert result.exit_code == 2 and "does not exist" in result.output
    name = sorted((data / "high").iterdir())[0].name
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(data / "high" / name)
    result = CliRunner().invoke(cli, ["evaluate", "--data", str(data), "--device", "cpu"])
    assert result.exit_code == 1 and "the low image is 48x40, the high one 12x10" in result.output
    assert "Traceback" not in result.output


def test_evaluate_against_a_baseline_pairs_the_images(tmp_path):
    from llie.method.bundle import default_bundle_path

    data = write_lol(tmp_path / "lol", 3, 40, 48, seed=6)
    report = tmp_path / "report.json"
    result = _run(
        "evaluate",
        "--data",
        str(data),
        "--device",
        "cpu",
        "--json",
        str(report),
        "--baseline",
        str(default_bundle_path()),
    )
    assert result.exit_code == 0, result.output
    assert "minus" in result.output and "paired" in result.output
    saved = json.loads(report.read_text())
    # the shipped model against itself: every per-image difference is 0, so nothing is shown either way
    for key, c in saved["comparison"]["metrics"].items():
        assert c["difference"] == 0.0 and c["interval"] == [0.0, 0.0] and c["better"] == c["worse"] == 0, key
    assert set(saved["comparison"]["metrics"]) == {"stage3_psnr", "stage3_ssim", "stage4_psnr", "stage4_ssim"}
    assert [r["name"] for r in saved["baseline"]["rows"]] == [r["name"] for r in saved["rows"]]


def test_train_command_passes_its_settings_through(tmp_path):
    data = write_lol(tmp_path / "lol", 12, 96, 112, seed=8)
    out = tmp_path / "bundle"
    threads = torch.get_num_threads()  # --threads sets torch's for the whole process; later tests keep theirs
    try:
        result = _run(
            "train",
            "--data",
            str(data),
            "--output",
            str(out),
            "--steps",
            "2",
            "--batch",
            "2",
            "--crop",
            "80",
            "--dim",
            "16",
            "--depth",
            "1",
            "--heads",
            "2",
            "--histogram-rows",
            "3",
            "--bag",
            "2",
            "--exposure-jitter",
            "0.1",
            "--ssim-weight",
            "30",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--seed",
            "4",
        )
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "manifest.json").read_text())["training"]["config"]
    assert config["quantile"]["augmentations"] == 3 and config["seed"] == 4
    assert config["refiner"]["dim"] == 16 and config["refiner_train"]["crop"] == 80
    assert config["quantile"]["bag"] == 2 and config["refiner_train"]["exposure_jitter"] == 0.1
    assert config["refiner_train"]["ssim_weight"] == 30.0
    assert load_bundle(out).quantile_model.config.bag == 2
    assert "bundle written to" in result.output


def test_train_defaults_for_stage2_match_the_library():
    from llie.method.quantiles import QuantileModelConfig
    from llie_cli.train import DEFAULT_BAG, DEFAULT_HISTOGRAM_ROWS

    assert DEFAULT_HISTOGRAM_ROWS == QuantileModelConfig().augmentations
    assert DEFAULT_BAG == QuantileModelConfig().bag
    help_text = _run("train", "--help").output
    assert f"[default: {DEFAULT_HISTOGRAM_ROWS};" in help_text and f"[default: {DEFAULT_BAG};" in help_text


def test_links_out_of_the_input_are_not_followed(tmp_path):
    src, secret = tmp_path / "in", tmp_path / "elsewhere"
    _save(src / "a.png", Image.fromarray(_dark(20, 30, 7)), "PNG")
    _save(secret / "private.png", Image.fromarray(_dark(20, 30, 8)), "PNG")
    (src / "link.png").symlink_to(secret / "private.png")
    (src / "inside.png").symlink_to(src / "a.png")  # a link that stays inside is an ordinary file
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["enhance", "--input", str(src), "--output", str(out), "--stages", "hist"])
    assert result.exit_code == 0, result.output
    assert "skipped: link.png: a link out of --input" in result.output
    assert _files(out) == ["a.png", "inside.png"]


def test_output_compression_settings_change_the_bytes_not_the_pixels(tmp_path):
    root = tmp_path / "in"
    _save(root / "a.png", Image.fromarray(_dark(60, 80, 7)), "PNG")
    _save(root / "b.jpg", Image.fromarray(_dark(60, 80, 8)), "JPEG")
    outputs = {}
    for name, args in {
        "stored": ["--png-compression", "0", "--jpeg-quality", "40"],
        "packed": ["--png-compression", "9", "--jpeg-quality", "98"],
    }.items():
        result = _run("enhance", "--input", str(root), "--output", str(tmp_path / name), "--stages", "hist", *args)
        assert result.exit_code == 0, result.output
        outputs[name] = {rel: (tmp_path / name / rel).read_bytes() for rel in ("a.png", "b.jpg")}
    assert len(outputs["stored"]["a.png"]) >= 60 * 80 * 3 > len(outputs["packed"]["a.png"])  # level 0 stores
    assert len(outputs["stored"]["b.jpg"]) < len(outputs["packed"]["b.jpg"])
    pixels = [np.asarray(Image.open(tmp_path / name / "a.png")) for name in outputs]
    np.testing.assert_array_equal(pixels[0], pixels[1])
    assert (
        _run("enhance", "--input", str(root), "--output", str(tmp_path / "x"), "--png-compression", "10").exit_code == 2
    )


def test_encoding_defaults_match_the_library():
    from llie.batch.imageio import EncodeOptions
    from llie_cli.commands import DEFAULT_JPEG_QUALITY, DEFAULT_PNG_COMPRESSION

    assert (DEFAULT_PNG_COMPRESSION, DEFAULT_JPEG_QUALITY) == (
        EncodeOptions().png_compression,
        EncodeOptions().jpeg_quality,
    )
    help_text = _run("enhance", "--help").output
    assert "--png-compression" in help_text and "--jpeg-quality" in help_text
