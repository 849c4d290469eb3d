"""Shared fixtures: synthetic images, a real moto S3 server, one Prefect test harness."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Before anything imports prefect: its settings are read once per process.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="llie-prefect-home-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# Fault injection (tasks.enhance.FAULTS_ENV): set before any Dask worker starts, so that workers of
# every cluster of the session, local or external, inherit it; the fixture below arms it per run.
FAULTS_DIR = Path(os.environ.setdefault("LLIE_TEST_FAULTS_DIR", tempfile.mkdtemp(prefix="llie-faults-")))

import numpy as np
import pytest
from PIL import Image

from llie.dask_logging import quiet_dask_logging

quiet_dask_logging()  # as every entry point does, before a test first imports Dask or the flows

REPO = Path(__file__).resolve().parents[1]
FAKE_KEY_ID = "AKIALLIETESTKEY00001"
FAKE_SECRET = "llie-test-secret-do-not-log-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_archive(input_url: str, output_url: str, return_state: bool = False, **fields):
    """The archive flow, its ``run`` and ``cluster`` built from keyword arguments named as their fields."""
    from flows.enhance_archive import enhance_archive
    from flows.parameters import flow_arguments

    arguments = flow_arguments(input_url=input_url, output_url=output_url, **fields)
    return enhance_archive(**arguments, return_state=return_state)


def gradient(width: int = 64, height: int = 48, seed: int = 0, peak: float = 0.25) -> np.ndarray:
    """A dark, smooth test picture: gradients plus a little seeded noise, uint8 HxWx3."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1)
    img = peak * base * (0.6 + 0.4 * rng.random(3)) + rng.normal(0, 0.01, base.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def write_images(root: Path, names: list[str], width: int = 64, height: int = 48, peak: float = 0.25) -> None:
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = "JPEG" if name.lower().endswith((".jpg", ".jpeg")) else "PNG"
        path.write_bytes(encode(gradient(width, height, seed=i, peak=peak), fmt))


@pytest.fixture
def inject_faults():
    """``inject_faults(run_id)``: every shard of that run fails its first attempt (after writing its
    outputs). Returns the folder where the task leaves one marker per shard it failed."""
    armed = []

    def arm(run_id: str) -> Path:
        folder = FAULTS_DIR / run_id
        folder.mkdir()
        armed.append(folder)
        return folder

    yield arm
    for folder in armed:
        for marker in folder.iterdir():
            marker.unlink()
        folder.rmdir()


@pytest.fixture
def make_images():
    """``make_images(root, names, **size)`` writes small gradient images (format from the name)."""
    return write_images


@dataclass(frozen=True)
class S3Env:
    endpoint: str
    bucket: str

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}".rstrip("/")


@pytest.fixture(scope="session")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint, monkeypatch) -> S3Env:
    """A fresh bucket on the moto server, reachable through the standard AWS env vars.

    Env vars (not storage_options) because that is how credentials reach Dask workers and
    deployment subprocesses too: they inherit the environment.
    """
    import boto3
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    # s3fs caches filesystem objects, which would keep an endpoint from an earlier test.
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"llie-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    yield S3Env(endpoint=moto_endpoint, bucket=bucket)
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session.

    The harness only changes this process's settings; exporting PREFECT_API_URL as well lets
    Dask worker processes (which start from the environment) talk to the same API instead of
    each booting a temporary server of its own.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        mp = pytest.MonkeyPatch()
        mp.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
        try:
            yield PREFECT_API_URL.value()
        finally:
            mp.undo()


@pytest.fixture(scope="session")
def bundle_path() -> str | None:
    """The model bundle under test: the default one shipped in the package (None).

    LLIE_TEST_BUNDLE points the suite at another bundle directory instead, e.g. a freshly
    trained one before it is shipped.
    """
    return os.environ.get("LLIE_TEST_BUNDLE") or None


@pytest.fixture(scope="session")
def enhancer(bundle_path):
    """The bundle under test, loaded once for the session."""
    from llie.method.pipeline import Enhancer

    return Enhancer.load(bundle_path, device="cpu")


def subprocess_env(**overrides: str) -> dict[str, str]:
    """This process's environment, plus the repo on PYTHONPATH so children import tasks/flows."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    env.update(overrides)
    return env


@contextmanager
def mounted(target: Path, *args: str):
    """``mount ARGS target`` for the block; the test is skipped where mounting is not allowed (not root)."""
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kill_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGKILL to the process group ``proc`` leads (started with ``start_new_session=True``), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=timeout)


def group_gone(pgid: int, timeout: float) -> bool:
    """Whether every process of group ``pgid`` has exited within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def start_dask_cluster(
    env: dict[str, str], logs: Path, workers: int, scheduler_cwd: Path = REPO
) -> tuple[str, list[subprocess.Popen]]:
    """``dask scheduler`` and ``dask worker --nworkers N`` as separate processes on loopback, as on a real
    cluster; returns the address and the processes once the workers have joined (stopped if they never do)."""
    from distributed import Client

    address = f"tcp://127.0.0.1:{free_port()}"
    commands = {
        "scheduler": (
            ["scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--dashboard-address", ":0"],
            scheduler_cwd,
        ),
        "worker": (
            [
                "worker",
                address,
                "--nworkers",
                str(workers),
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--death-timeout",
                "60",
            ],
            REPO,
        ),
    }
    procs = []
    for name, (args, cwd) in commands.items():
        with open(logs / f"{name}.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "dask", *args], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
                )
            )
    deadline = time.monotonic() + 120
    while True:
        try:
            with Client(address, timeout=10) as client:
                client.wait_for_workers(workers, timeout=max(1, deadline - time.monotonic()))
            return address, procs
        except (OSError, TimeoutError):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                for proc in reversed(procs):
                    stop_process(proc)
                raise RuntimeError(  # noqa: B904 (the logs say why)
                    "dask cluster did not start:\n"
                    + (logs / "scheduler.log").read_text()[-2000:]
                    + (logs / "worker.log").read_text()[-2000:]
                )


@pytest.fixture(scope="session")
def dask_address(prefect_harness, tmp_path_factory):
    """A separate ``dask scheduler`` and ``dask worker`` (2 processes), as on a real cluster.

    Shared by the flow tests: the workers stay warm (imports done, Enhancer cached), which is
    also how a long-lived cluster behaves. They inherit PREFECT_API_URL from the harness.
    """
    address, procs = start_dask_cluster(subprocess_env(), tmp_path_factory.mktemp("dask-logs"), workers=2)
    try:
        yield address
    finally:
        for proc in reversed(procs):
            stop_process(proc)


@pytest.fixture
def torch_one_thread():
    """One torch thread for the duration of a test: the suite shares two cores with Dask workers."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
