"""Deployments against a real ``prefect server start``: served from Python, and from prefect.yaml."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llie.batch import archive
from tests.conftest import REPO, free_port, stop_process, subprocess_env

PREFECT = str(Path(sys.executable).with_name("prefect"))
FLOW_NAME = "enhance-archive"


def _wait(predicate, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real Prefect server on a free port, with its own PREFECT_HOME and database."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = subprocess_env(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_UI_ENABLED="false",
    )
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=home,
    )

    def healthy():
        try:
            return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait(healthy, 120, "prefect server", [proc])
        yield {"api_url": api_url, "home": home}
    except Exception:
        log.flush()
        print((home / "server.log").read_text()[-3000:])
        raise
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture
def client_env(prefect_server, tmp_path):
    """Environment for CLI/serve/worker subprocesses that talk to the test server."""
    return subprocess_env(
        PREFECT_API_URL=prefect_server["api_url"],
        PREFECT_HOME=str(tmp_path / "client-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # Pick a new run up within a second instead of the default 10-15 s polls.
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_LOGGING_LEVEL="INFO",
    )


def _client(api_url: str):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api_url)


def _deployment(api_url: str, name: str):
    from prefect.exceptions import ObjectNotFound

    with _client(api_url) as client:
        try:
            return client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
        except ObjectNotFound:
            return None


def _final_flow_run(api_url: str, flow_run_id, timeout: float, procs=()):
    def final():
        with _client(api_url) as client:
            run = client.read_flow_run(flow_run_id)
        return run if run.state and run.state.is_final() else None

    return _wait(final, timeout, "flow run to finish", procs)


def _run_now(api_url: str, deployment_id):
    with _client(api_url) as client:
        return client.create_flow_run_from_deployment(deployment_id).id


def _check_outputs(out: Path, names: list[str]) -> None:
    runs = sorted(p.name for p in (out / "_metrics").iterdir())
    assert len(runs) == 1 and runs[0].startswith("run_id=")
    table = archive.read_metrics(str(out), runs[0].split("=", 1)[1])
    assert sorted(table.column("rel_path").to_pylist()) == sorted(names)
    assert set(table.column("status").to_pylist()) == {"ok"}
    for name in names:
        assert (out / name).is_file()


def test_serve_registers_schedule_and_runs(prefect_server, client_env, tmp_path, make_images, bundle_path):
    api = prefect_server["api_url"]
    inp, out = tmp_path / "in", tmp_path / "out"
    names = ["a.png", "b.jpg", "sub/c.png"]
    make_images(inp, names)
    args = [
        sys.executable,
        "-m",
        "deployments.serve",
        "--name",
        "served",
        "--cron",
        "30 3 * * 1",
        "--timezone",
        "Europe/Paris",
        "--input-url",
        str(inp),
        "--output-url",
        str(out),
        "--shard-size",
        "2",
        "--workers",
        "1",
    ]
    if bundle_path:
        args += ["--model", bundle_path]
    log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen(args, env=client_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deployment = _wait(lambda: _deployment(api, "served"), 90, "served deployment", [serve])
        [schedule] = deployment.schedules
        assert schedule.schedule.cron == "30 3 * * 1" and schedule.schedule.timezone == "Europe/Paris"
        run, cluster = deployment.parameters["run"], deployment.parameters["cluster"]
        assert run["input_url"] == str(inp) and run["shard_size"] == 2 and cluster["n_workers"] == 1
        assert "run_id" not in run  # each scheduled run gets a fresh id

        run = _final_flow_run(api, _run_now(api, deployment.id), 300, [serve])
        assert run.state.is_completed(), run.state
        _check_outputs(out, names)
    except Exception:
        log.flush()
        print((tmp_path / "serve.log").read_text()[-4000:])
        raise
    finally:
        stop_process(serve)
        log.close()


def test_prefect_yaml_deploys_and_runs_on_a_process_worker(
    prefect_server, client_env, tmp_path, make_images, bundle_path
):
    api = prefect_server["api_url"]
    inp, out = tmp_path / "in", tmp_path / "out"
    names = ["x.png", "y.png"]
    make_images(inp, names)
    # `prefect deploy` reads prefect.yaml from the current directory; run it on a copy so the
    # test never writes into the checkout (prefect may update the file or add .prefect/).
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    for pkg in ("llie", "tasks", "flows"):
        (project / pkg).symlink_to(REPO / pkg, target_is_directory=True)
    env = dict(client_env, LLIE_INPUT_URL=str(inp), LLIE_OUTPUT_URL=str(out), PWD=str(project))

    def prefect(*args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [PREFECT, "--no-prompt", *args], env=env, cwd=project, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    prefect("work-pool", "create", "llie-process", "--type", "process", "--overwrite")
    prefect("deploy", "--all")
    deployment = _deployment(api, "nightly-archive")
    assert deployment is not None
    [schedule] = deployment.schedules
    assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "UTC"
    run = deployment.parameters["run"]
    assert run["input_url"] == str(inp) and run["output_url"] == str(out)  # {{ $LLIE_INPUT_URL }} filled in
    assert deployment.work_pool_name == "llie-process"
    assert deployment.global_concurrency_limit is not None and deployment.global_concurrency_limit.limit == 1

    # A run with small-machine overrides, picked up by one pass of a process worker.
    with _client(api) as client:
        # an override replaces a parameter whole: the deployment's run, with a smaller shard size
        run = {**run, "shard_size": 1, **({"model": bundle_path} if bundle_path else {})}
        overrides = {"run": run, "cluster": {"n_workers": 1}}
        run_id = client.create_flow_run_from_deployment(deployment.id, parameters=overrides).id
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", "llie-process", "--run-once"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        run = _final_flow_run(api, run_id, 300)
        assert run.state.is_completed(), run.state
        _check_outputs(out, names)
    except Exception:
        log.flush()
        print((tmp_path / "worker.log").read_text()[-4000:])
        raise
    finally:
        stop_process(worker)
        log.close()


def test_prefect_deploy_refuses_a_deployment_without_input_and_output(prefect_server, client_env, tmp_path):
    """Without LLIE_INPUT_URL / LLIE_OUTPUT_URL the nightly run would fail at 02:00; the deployment
    must not be made at all. The same for an output inside the input."""
    api = prefect_server["api_url"]
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    for pkg in ("llie", "tasks", "flows", "deployments"):
        (project / pkg).symlink_to(REPO / pkg, target_is_directory=True)
    env = {k: v for k, v in client_env.items() if k not in ("LLIE_INPUT_URL", "LLIE_OUTPUT_URL")}
    env["PWD"] = str(project)

    def prefect(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PREFECT, "--no-prompt", *args],
            env=dict(env, **extra),
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert prefect("work-pool", "create", "llie-process", "--type", "process", "--overwrite").returncode == 0
    # (another test of this module may have made it, properly, before)
    existing = _deployment(api, "nightly-archive")
    for extra, reason in (
        ({}, "LLIE_INPUT_URL and LLIE_OUTPUT_URL not set"),
        ({"LLIE_INPUT_URL": "s3://archive/raw"}, "LLIE_OUTPUT_URL not set"),
        ({"LLIE_INPUT_URL": str(tmp_path / "in"), "LLIE_OUTPUT_URL": str(tmp_path / "in/out")}, "overlaps input"),
    ):
        done = prefect("deploy", "--all", **extra)
        assert done.returncode != 0 and reason in done.stdout + done.stderr, done.stdout[-2000:] + done.stderr[-2000:]
        assert "Traceback" not in done.stdout + done.stderr  # one line says it all
        assert (done.stdout + done.stderr).count("Error:") == 1
        after = _deployment(api, "nightly-archive")
        assert (after and after.updated) == (existing and existing.updated)  # neither made nor changed


def _project(tmp_path: Path, name: str) -> Path:
    """A copy of prefect.yaml whose deployment is called ``name``, next to the packages it runs."""
    project = tmp_path / "project"
    project.mkdir()
    text = (REPO / "prefect.yaml").read_text()
    assert "name: &name nightly-archive" in text  # the step checks the name the deployment has
    (project / "prefect.yaml").write_text(text.replace("name: &name nightly-archive", f"name: &name {name}"))
    for pkg in ("llie", "tasks", "flows", "deployments"):
        (project / pkg).symlink_to(REPO / pkg, target_is_directory=True)
    return project


def test_the_two_routes_never_take_over_each_others_deployment(prefect_server, client_env, tmp_path):
    """`prefect deploy` over a served deployment of the same name would change its pool and drop its
    cluster settings; serve over a deployed one would take it off its pool. Each refuses, in one line."""
    import yaml

    from deployments.serve import DEFAULT_NAME

    api = prefect_server["api_url"]
    assert yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"][0]["name"] != DEFAULT_NAME
    served = "clash-served"
    register = (
        "from deployments.serve import ArchiveDeployment, build_deployment; "
        f"build_deployment(ArchiveDeployment(name={served!r}, parameters={{'run': {{'input_url': 'in', "
        "'output_url': 'out'}, 'cluster': {'dask_address': 'tcp://10.0.0.5:8786'}})).apply()"
    )
    subprocess.run([sys.executable, "-c", register], env=client_env, cwd=REPO, check=True, timeout=120)
    before = _deployment(api, served)
    project = _project(tmp_path, served)
    env = dict(client_env, PWD=str(project), LLIE_INPUT_URL=str(tmp_path / "in"), LLIE_OUTPUT_URL=str(tmp_path / "o"))

    def prefect(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PREFECT, "--no-prompt", *args], env=env, cwd=project, capture_output=True, text=True, timeout=120
        )

    assert prefect("work-pool", "create", "llie-process", "--type", "process", "--overwrite").returncode == 0
    done = prefect("deploy", "--all")
    text = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in text, text[-3000:]
    assert f"deployment enhance-archive/{served} exists already, made by `python -m deployments.serve`" in text
    after = _deployment(api, served)
    assert after.work_pool_name is None and after.parameters == before.parameters and after.updated == before.updated

    pooled = "clash-pooled"
    shutil.rmtree(project)
    project = _project(tmp_path, pooled)
    assert prefect("deploy", "--all").returncode == 0
    serve = subprocess.run(
        [sys.executable, "-m", "deployments.serve", "--name", pooled, "--input-url", "in", "--output-url", "out"],
        env=client_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert serve.returncode == 2 and "made by `prefect deploy` for work pool 'llie-process'" in serve.stderr
    assert _deployment(api, pooled).work_pool_name == "llie-process"


def test_serve_refuses_an_empty_input(tmp_path):
    from click.testing import CliRunner

    from deployments.serve import main

    result = CliRunner().invoke(main, ["--input-url", "", "--output-url", str(tmp_path / "out")])
    assert result.exit_code == 2 and "LLIE_INPUT_URL not set" in result.output
