"""The command line loads torch only where the refiner runs: help, audit and stages 1-3 start without it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env, write_images

from llie.batch import archive
from llie.batch.layout import RunLayout
from llie.batch.spec import RunSpec
from llie.method.pipeline import Enhancer

REPO = Path(__file__).resolve().parents[2]
# runs the console entry point's command group in this interpreter, then reports what it imported
PROBE = """
import sys
from llie_cli.main import cli
try:
    cli(sys.argv[1:])
except SystemExit as exit:
    code = exit.code or 0
print("exit", code, "torch", "torch" in sys.modules, "prefect", "prefect" in sys.modules)
heavy = ("torch", "prefect", "flows", "dask", "distributed", "pyarrow", "xgboost")
print("loaded", ",".join(m for m in heavy if m in sys.modules) or "-")
"""


def _imports(*args: str) -> tuple[int, bool]:
    code, loaded = _loaded(*args)
    return code, "torch" in loaded


def _loaded(*args: str) -> tuple[int, set[str]]:
    """Exit code of ``llie ARGS`` run in a fresh interpreter, and which of the heavy packages it imported."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    exit_line, loaded_line = (line.split() for line in done.stdout.strip().splitlines()[-2:])
    assert exit_line[0] == "exit" and loaded_line[0] == "loaded", done.stdout + done.stderr
    return int(exit_line[1]), set(loaded_line[1].split(",")) - {"-"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lazy")
    write_images(root / "in", ["a.png", "b.png"])
    return root


def test_help_does_not_import_torch():
    assert _imports("--help") == (0, False)
    assert _imports("enhance", "--help") == (0, False)


def test_enhance_hist_does_not_import_torch_and_full_does(photos):
    assert _imports("enhance", "--input", str(photos / "in"), "--output", str(photos / "hist"), "--stages", "hist") == (
        0,
        False,
    )
    assert sorted(p.name for p in (photos / "hist").iterdir()) == ["a.png", "b.png"]
    # the probe sees torch when it is loaded: the refiner's path does load it
    assert _imports("enhance", "--input", str(photos / "in"), "--output", str(photos / "full")) == (0, True)


def test_audit_does_not_import_torch(photos):
    out = photos / "run"
    shard = archive.plan_shards(["a.png", "b.png"], 2)[0]
    rows = archive.process_shard(
        RunSpec(str(photos / "in"), str(out), run_id="20250101T000000Z-abcdef", stages="hist"),
        shard,
        Enhancer.load(None, refiner=False),
    )
    archive.write_shard_parquet(rows, RunLayout(str(out), "20250101T000000Z-abcdef").shard_url(shard.shard_id))
    code, torch_loaded = _imports("audit", str(out), "--run", "20250101T000000Z-abcdef")
    assert code == 0 and not torch_loaded


def test_enhance_hist_starts_without_the_archive_stack(photos):
    """`llie run` (Prefect, Dask, pyarrow) is imported when asked for, not for `llie enhance`."""
    args = ("enhance", "--input", str(photos / "in"), "--output", str(photos / "lean"), "--stages", "hist")
    assert _loaded(*args) == (0, {"xgboost"})  # stage 2's booster is all stages 1-3 need beyond numpy and scipy
    code, loaded = _loaded("run", "--help")
    assert code == 0 and "torch" not in loaded
