"""Security guarantees: model files, paths, credentials, read-only inputs.

Bundle hashing and the ``torch.load`` scan of ``llie/`` live in test_bundle.py; path joining and
symlinks inside the input root in test_storage.py. This file adds what those do not cover: a run
refusing a tampered bundle, a correctly hashed malicious file that is still never unpickled, the
rest of the code base scanned too, object keys that try to climb out of their prefix, symlinks
out of the root (off by default, on by request), credentials kept out of every output and log of
a real S3 run, and inputs that cannot be written to.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import pickle
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pytest

import llie
from llie.batch import archive, storage
from llie.method.bundle import MANIFEST, BundleError, _sha256, default_bundle_path, load_bundle, manifest_version
from tests.conftest import FAKE_KEY_ID, FAKE_SECRET, encode, gradient, mounted, run_archive

SECRETS = (FAKE_KEY_ID, FAKE_SECRET)

# --------------------------------------------------------------------------- model files


def _copy_bundle(dest: Path) -> Path:
    shutil.copytree(default_bundle_path(), dest)
    return dest


def test_run_with_a_tampered_bundle_is_refused_before_any_work(prefect_harness, tmp_path, make_images):
    from click.testing import CliRunner

    from llie_cli.main import cli

    bundle = _copy_bundle(tmp_path / "bundle")
    data = bytearray((bundle / "refiner.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / "refiner.safetensors").write_bytes(bytes(data))
    make_images(tmp_path / "in", ["a.png"])
    result = CliRunner().invoke(
        cli,
        [
            "run",
            str(tmp_path / "in"),
            str(tmp_path / "out"),
            "--model",
            str(bundle),
            "--run-id",
            "tampered",
            "--no-progress",
        ],
    )
    assert result.exit_code == 2
    assert "bundle file refiner.safetensors does not match the hash in its manifest: refusing to load" in result.output
    assert not (tmp_path / "out").exists()  # refused before a manifest, a shard or an image was written


def test_run_with_a_consistent_bundle_of_nonsense_settings_is_refused_before_any_work(
    prefect_harness, tmp_path, make_images
):
    """Hashes that match, a version recomputed, and a bag of a billion members: refused up front (exit 2),
    not loaded by every shard and retried with backoff."""
    from click.testing import CliRunner

    from llie.method.bundle import manifest_version
    from llie_cli.main import cli

    bundle = _copy_bundle(tmp_path / "bundle")
    config = json.loads((bundle / "quantiles.json").read_text())
    data = json.dumps({**config, "bag": 10**9}).encode()
    (bundle / "quantiles.json").write_bytes(data)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["quantiles.json"] = hashlib.sha256(data).hexdigest()
    manifest["model_version"] = manifest_version(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    make_images(tmp_path / "in", ["a.png"])
    args = ["run", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(bundle), "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "quantiles.json.bag is 1000000000: not a finite number from 1 to 64" in result.output
    assert not (tmp_path / "out").exists()


def test_a_missing_model_is_refused_before_any_work(prefect_harness, tmp_path, make_images):
    """Not three shards retried with backoff until they fail: the CLI and the flow check it first."""
    from click.testing import CliRunner

    from llie_cli.main import cli

    make_images(tmp_path / "in", ["a.png"])
    missing = str(tmp_path / "no-such-bundle")
    result = CliRunner().invoke(
        cli, ["run", str(tmp_path / "in"), str(tmp_path / "out"), "--model", missing, "--no-progress"]
    )
    assert result.exit_code == 2 and f"model bundle '{missing}' is not a folder" in result.output, result.output
    with pytest.raises(ValueError, match="is not a folder"):
        run_archive(str(tmp_path / "in"), str(tmp_path / "out"), model=missing, retries=0)
    assert not (tmp_path / "out").exists()


class _Payload:
    """Unpickling this creates ``marker``: proof that a file was unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize(
    "name,compress",
    [
        ("refiner.safetensors", False),
        ("quantiles-0.ubj.gz", False),
        ("quantiles-0.ubj.gz", True),
        ("quantiles_pca.safetensors", False),
    ],
)
def test_a_correctly_hashed_pickle_in_a_bundle_is_never_unpickled(tmp_path, name, compress):
    """Hashes only prove a file is the one the manifest names; the formats make it data, not code."""
    bundle = _copy_bundle(tmp_path / "bundle")
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Payload(marker), protocol=2)
    (bundle / name).write_bytes(gzip.compress(payload) if compress else payload)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"][name] = _sha256(bundle / name)  # an attacker who can write the bundle can do this too
    manifest["model_version"] = manifest_version(manifest)
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(Exception):  # noqa: B017 - safetensors and XGBoost each refuse it their own way
        load_bundle(bundle)
    assert not marker.exists()


def test_bundle_files_are_data_formats_and_no_code_unpickles():
    from tests.unit.test_bundle import _unsafe_loads  # the same AST check test_bundle applies to llie/

    manifest = json.loads((default_bundle_path() / MANIFEST).read_text())
    assert {"".join(Path(name).suffixes[-2:]) for name in manifest["files"]} <= {".json", ".ubj.gz", ".safetensors"}
    for name in manifest["files"]:
        if name.endswith(".ubj.gz"):  # gzip around UBJSON: an object marker once decompressed
            assert gzip.decompress((default_bundle_path() / name).read_bytes())[:1] == b"{"
    repo = Path(llie.__file__).resolve().parents[1]
    sources = [p for d in ("llie_cli", "tasks", "flows", "deployments") for p in sorted((repo / d).rglob("*.py"))]
    assert len(sources) >= 4
    for path in sources:
        _, problems = _unsafe_loads(path.read_text())
        assert not problems, f"{path.relative_to(repo)}: {problems}"


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "rel,safe",
    [
        ("a.png", True),
        ("a/b/c.png", True),
        ("x..y.png", True),
        ("C:\\evil.png", True),  # a POSIX name
        ("", False),
        ("..", False),
        ("../x.png", False),
        ("a/../../x.png", False),
        ("/x.png", False),
        ("a//x.png", False),
        ("./x.png", False),
        ("a/.", False),
    ],
)
def test_is_safe_rel(rel, safe):
    assert storage.is_safe_rel(rel) is safe


def test_object_keys_that_climb_out_of_the_prefix_are_never_listed(s3):
    hostile = ["in/../escape.png", "in/a/../../up.png", "in//abs.png", "in/./dot.png", "in/a//b.png"]
    for key in hostile + ["in/good.png", "in/sub/x..y.png"]:
        storage.write_bytes_atomic(s3.url(key), b"data")
    listed = storage.list_images(s3.url("in"))
    assert listed == ["good.png", "sub/x..y.png"]
    for rel in listed:
        assert storage.join(s3.url("out"), rel).startswith(s3.url("out") + "/")


def test_stale_temp_cleanup_stays_inside_its_root(tmp_path):
    root = tmp_path / "out"
    (root / "sub").mkdir(parents=True)
    victims = [tmp_path / ".x.png.abcdefgh.tmp", root / "sub" / ".y.png.abcdefgh.tmp"]
    keep = [root / ".other.png.abcdefgh.tmp", root / "sub" / "y.png", root / "sub" / ".y.png.short.tmp"]
    for path in victims + keep:
        path.write_bytes(b"x")
    removed = storage.remove_stale_temps(str(root), ["../x.png", "/x.png", "sub/y.png", "sub/../../x.png"])
    assert removed == ["sub/.y.png.abcdefgh.tmp"]  # only the temp of a listed path inside the root
    assert victims[0].exists() and not victims[1].exists() and all(p.exists() for p in keep)


def test_symlinks_out_of_the_root_are_followed_only_on_request(tmp_path):
    root, outside = tmp_path / "in", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    (outside / "dir").mkdir(parents=True)
    for path in (root / "real" / "a.png", outside / "secret.png", outside / "dir" / "x.png"):
        path.write_bytes(b"x")
    os.symlink(outside / "secret.png", root / "leak.png")
    os.symlink(outside / "dir", root / "leakdir")
    os.symlink(root, outside / "dir" / "back")  # out and back in: must not loop
    os.symlink(root / "real", root / "real" / "loop")
    assert storage.list_images(str(root)) == ["real/a.png"]
    followed = storage.list_images(str(root), follow_symlinks=True)
    assert followed == ["leak.png", "leakdir/x.png", "real/a.png"]


# --------------------------------------------------------------------------- credentials


def _flow_run_logs_and_artifacts(flow_run_id) -> tuple[list[str], list[str], dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        # Every page, not the API's default first 200 rows.
        logs, page = [], None
        while page is None or len(page) == 200:
            page = client.read_logs(log_filter=log_filter, limit=200, offset=len(logs))
            logs += page
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        flow_run = client.read_flow_run(flow_run_id)
    return (
        [log.message for log in logs],
        [json.dumps(a.data, default=str) + str(a.description) for a in artifacts],
        flow_run.parameters,
    )


def test_credentials_never_reach_output_logs_or_artifacts(prefect_harness, s3, bundle_path, capfd, caplog):
    """A real run, S3 in and out, fake keys in the environment (as workers get them), errors included."""
    caplog.set_level(logging.INFO)
    names = ["a.png", "b.jpg", "sub/c.png"]
    for i, name in enumerate(names):
        data = encode(gradient(32, 24, seed=i), "JPEG" if name.endswith(".jpg") else "PNG")
        storage.write_bytes_atomic(s3.url(f"in/{name}"), data)
    storage.write_bytes_atomic(s3.url("ref/a.png"), encode(gradient(32, 24, seed=0, peak=0.7)))
    storage.write_bytes_atomic(s3.url("ref/b.jpg"), b"a broken reference")
    storage.write_bytes_atomic(s3.url("in/broken.png"), b"\x89PNG\r\n\x1a\n truncated")
    # Keys that try to leave the input prefix, and through the mirror the output prefix.
    for key in ["in/../escape.png", "in//abs.png", "in/a/../../up.png"]:
        storage.write_bytes_atomic(s3.url(key), encode(gradient(32, 24)))
    keys_before = set(_keys(s3))

    state = run_archive(
        s3.url("in"),
        s3.url("out"),
        reference_url=s3.url("ref"),
        shard_size=2,
        n_workers=1,
        run_id="creds",
        model=bundle_path,
        return_state=True,
    )
    summary = state.result()
    assert (summary["images"], summary["ok"], summary["errors"], summary["failed_shards"]) == (4, 3, 1, [])
    assert all(k.startswith("out/") for k in set(_keys(s3)) - keys_before)  # nothing landed elsewhere

    rows = archive.read_metrics(s3.url("out"), "creds")
    assert sorted(rows.column("rel_path").to_pylist()) == ["a.png", "b.jpg", "broken.png", "sub/c.png"]
    texts = {"summary": json.dumps(summary, default=str)}
    for column in rows.column_names:
        if pa.types.is_string(rows.schema.field(column).type):
            texts[f"parquet column {column}"] = "\n".join(v for v in rows.column(column).to_pylist() if v)
    for key in _keys(s3):
        if key.startswith("out/"):
            texts[key] = storage.read_bytes(s3.url(key)).decode("latin-1")  # every byte, Parquet and manifest too
    # The workers' task logs did arrive (else this test would check nothing of theirs). The flow sends
    # them before it returns; a loaded machine may still be writing the last batch, so give it time.
    deadline = time.monotonic() + 30
    while True:
        logs, artifacts, parameters = _flow_run_logs_and_artifacts(state.state_details.flow_run_id)
        if any("broken.png" in message for message in logs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert any("broken.png" in message for message in logs), logs
    texts["prefect logs"] = "\n".join(logs)
    texts["prefect artifacts"] = "\n".join(artifacts)
    texts["flow run parameters"] = json.dumps(parameters, default=str)
    captured = capfd.readouterr()
    texts["stdout"], texts["stderr"], texts["python logs"] = captured.out, captured.err, caplog.text
    assert any(f"_metrics/run_id=creds/{archive.RUN_MANIFEST}" in k for k in texts)
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret[:8]}... found in {where}"


def _keys(s3) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=s3.endpoint)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


# --------------------------------------------------------------------------- read-only inputs


def _chattr(flag: str, paths: list[Path]) -> bool:
    try:
        subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


@pytest.fixture
def read_only_inputs(tmp_path, make_images):
    """Inputs made read-only; and immutable (chattr +i) where this runs as root, which ignores modes."""
    inp = tmp_path / "in"
    names = ["a.png", "b.jpg", "sub/c.png"]
    make_images(inp, names, width=32, height=24)
    files = [inp / n for n in names]
    dirs = [inp, inp / "sub"]
    immutable = False
    try:
        for path in files:
            path.chmod(0o444)
        for path in dirs:
            path.chmod(0o555)
        immutable = os.geteuid() == 0 and _chattr("+i", files + dirs)
        yield inp, names, immutable
    finally:
        if immutable:
            assert _chattr("-i", files + dirs), "could not undo chattr +i"
        for path in dirs:
            path.chmod(0o755)


def _state(path: Path) -> tuple:
    st = path.lstat()
    return st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, path.read_bytes() if path.is_file() else None


def test_read_only_inputs_are_enough_and_stay_unchanged(
    prefect_harness, dask_address, read_only_inputs, tmp_path, bundle_path
):
    inp, names, immutable = read_only_inputs
    before = {p: _state(p) for p in [inp, *inp.rglob("*")]}
    if os.geteuid() != 0 or immutable:
        # The protection is real: any open for writing fails (so a write-mode open in the run would
        # have turned into error rows below).
        with pytest.raises(PermissionError):
            open(inp / names[0], "r+b")
        with pytest.raises(PermissionError):
            (inp / "new.png").write_bytes(b"x")
    summary = run_archive(
        str(inp), str(tmp_path / "out"), shard_size=2, dask_address=dask_address, run_id="ro", model=bundle_path
    )
    assert (summary["images"], summary["ok"], summary["failed_shards"]) == (3, 3, [])
    assert {p: _state(p) for p in [inp, *inp.rglob("*")]} == before
    assert all(stat.S_IMODE(before[inp / n][0]) == 0o444 for n in names)


# --------------------------------------------------------------------------- folders that overlap


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_output_overlapping_the_reference_or_the_input_through_an_alias_is_refused(tmp_path, make_images):
    """Outputs are written at the references' relative paths too: a reference folder that is, holds or
    sits in the output would be overwritten. And an alias the path cannot show (a bind mount) is seen
    through by file identity."""
    from click.testing import CliRunner

    from llie_cli.main import cli

    inp, ref = tmp_path / "in", tmp_path / "refs" / "ref"
    make_images(inp, ["a.png", "b.png"])
    make_images(ref, ["a.png", "b.png"], peak=0.9)
    before = _tree(ref)
    for output in (ref, ref / "enhanced", ref.parent):
        result = CliRunner().invoke(cli, ["run", str(inp), str(output), "--reference", str(ref), "--no-progress"])
        assert result.exit_code == 2, result.output
        assert "overlaps reference" in result.output
    assert _tree(ref) == before and not (ref / "enhanced").exists()

    with mounted(tmp_path / "alias", "--bind", str(inp)) as alias:
        for output in (alias / "out", alias):
            result = CliRunner().invoke(cli, ["run", str(inp), str(output), "--no-progress"])
            assert result.exit_code == 2, result.output
            assert "overlaps input" in result.output
        with pytest.raises(ValueError, match="overlaps input"):
            storage.check_output_not_inside_input(str(alias / "sub"), str(inp))  # the input inside the output
    assert sorted(p.name for p in inp.iterdir()) == ["a.png", "b.png"]


def _rewrite_manifest(bundle: Path, edit) -> None:
    """Edit the manifest the way someone who can write the bundle could: with a consistent model_version."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    edit(manifest)
    manifest["model_version"] = manifest_version(manifest)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def test_the_bundle_check_cannot_be_switched_off_and_reads_nothing_outside_the_bundle(tmp_path, make_images):
    """Every file the model needs must be listed and match; links and names out of the bundle are refused
    before anything is read; every error names its file."""
    from click.testing import CliRunner

    from llie_cli.main import cli

    tampered = _copy_bundle(tmp_path / "emptied")
    data = bytearray((tampered / "refiner.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tampered / "refiner.safetensors").write_bytes(bytes(data))
    _rewrite_manifest(tampered, lambda m: m.update(files={}))  # an empty list, a matching version
    with pytest.raises(BundleError, match=f"{MANIFEST} lists no model files"):
        load_bundle(tampered)
    _rewrite_manifest(
        tampered, lambda m: m.update(files={n: h for n, h in _listed().items() if n != "refiner.safetensors"})
    )
    with pytest.raises(BundleError, match="bundle file refiner.safetensors is needed by the model but not listed"):
        load_bundle(tampered)
    make_images(tmp_path / "in", ["a.png"])
    result = CliRunner().invoke(
        cli, ["run", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(tampered), "--no-progress"]
    )
    assert result.exit_code == 2 and "refiner.safetensors is needed by the model" in result.output, result.output
    assert not (tmp_path / "out").exists()

    linked = _copy_bundle(tmp_path / "linked")  # a link to the very same bytes: the hash would match
    (linked / "refiner.safetensors").rename(tmp_path / "elsewhere.safetensors")
    os.symlink(tmp_path / "elsewhere.safetensors", linked / "refiner.safetensors")
    with pytest.raises(BundleError, match="bundle file refiner.safetensors is a symbolic link"):
        load_bundle(linked)

    outside = tmp_path / "secret"
    outside.write_text("not yours")
    climbing = _copy_bundle(tmp_path / "bundles" / "climbing")
    _rewrite_manifest(climbing, lambda m: m["files"].update({"../../secret": _sha256(outside)}))
    os.utime(outside, (0, outside.stat().st_mtime))  # atime before mtime: any read moves it (relatime)
    with pytest.raises(BundleError, match=r"names '\.\./\.\./secret', which is not a file of the bundle"):
        load_bundle(climbing)
    assert outside.stat().st_atime == 0, "the file outside the bundle was read before the refusal"

    (climbing / MANIFEST).write_text('{"format": 1, "files": {')  # truncated
    with pytest.raises(BundleError, match=f"bundle file {MANIFEST} is not valid JSON"):
        load_bundle(climbing)


def _listed() -> dict[str, str]:
    return json.loads((default_bundle_path() / MANIFEST).read_text())["files"]


# --------------------------------------------------------------------------- credentials in a URL


def test_credentials_in_a_url_are_refused_before_anything_sees_them(prefect_harness, tmp_path):
    """Refused with where credentials go instead, before Prefect stores a parameter or botocore quotes the
    bucket name: not in the output, not in Prefect's database."""
    from click.testing import CliRunner
    from prefect.client.orchestration import get_client

    from llie_cli.main import cli

    secret_urls = [
        f"s3://{FAKE_KEY_ID}:{FAKE_SECRET}@bucket/in",
        f"s3://{FAKE_KEY_ID}:abc/{FAKE_SECRET}@bucket/in",
        f"https://{FAKE_KEY_ID}@host.example/in",
    ]
    with get_client(sync_client=True) as client:
        runs_before = len(client.read_flow_runs())
    for url in secret_urls:
        for args in (
            ["run", url, str(tmp_path / "out")],
            ["run", str(tmp_path), url + "-out"],
            ["run", str(tmp_path / "in"), str(tmp_path / "out"), "--reference", url],
            ["audit", url],
        ):
            result = CliRunner().invoke(cli, [*args, "--no-progress"] if args[0] == "run" else args)
            assert result.exit_code == 2, result.output
            assert "credentials in a URL are refused" in result.output
            assert all(where in result.output for where in ("environment", "AWS profile", "storage_options"))
            assert FAKE_SECRET not in result.output and FAKE_KEY_ID not in result.output
        with pytest.raises(ValueError, match="credentials in a URL are refused"):
            storage.list_images(url)
    with get_client(sync_client=True) as client:
        assert len(client.read_flow_runs()) == runs_before  # not a flow run, so no parameter, log or event
    assert not (tmp_path / "out").exists()
    # what is not credentials stays accepted: an "@" in a key, a port
    for url in ("s3://bucket/icons/logo@2x.png", "http://127.0.0.1:5000/bucket/a@b.png", "/tmp/a:b@c"):
        storage.check_no_credentials(url)


# --------------------------------------------------------------------------- log lines


def test_a_file_name_cannot_forge_a_log_line(prefect_harness, dask_address, tmp_path, make_images, bundle_path):
    """Names are quoted in logs, with a newline escaped, so no line of the log comes from a file name."""
    inp = tmp_path / "in"
    make_images(inp, ["good.png"])
    forged = "shard-00000: 2 ok, 0 errors, 0 skipped in 0.1s"
    name = f"bad\n{forged}\n.png"
    (inp / name).write_bytes(b"not an image")
    state = run_archive(
        str(inp),
        str(tmp_path / "out"),
        dask_address=dask_address,
        run_id="forge",
        model=bundle_path,
        retries=0,
        return_state=True,
    )
    assert state.result()["errors"] == 1
    deadline = time.monotonic() + 30
    while True:  # the workers ship their task logs to the API in the background
        logs, _, _ = _flow_run_logs_and_artifacts(state.state_details.flow_run_id)
        if any("bad" in message for message in logs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert any(repr(name) in message for message in logs), logs  # the name is there, quoted
    for message in logs:
        assert not any(line.startswith("shard-00000: 2 ok") for line in message.splitlines()), message
