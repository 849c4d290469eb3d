"""``--storage-option KEY=VALUE`` on ``llie run`` and ``llie audit``, and the flow's ``storage_options``:
a moto S3 server on loopback reached through options alone (no AWS_* variables anywhere), with the
credentials kept out of the output, the logs, the Parquet and Prefect's stored parameters."""

from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner

from llie.audit import summary as audit_summary
from llie.batch import archive, storage
from llie.batch import storage_options as so
from llie.batch.plan import plan_run
from llie.batch.spec import RunSpec
from llie.method.pipeline import Enhancer
from tests.conftest import encode, gradient, run_archive

KEY, SECRET = "AKIAOPTIONSKEY000001", "options-secret-never-shown-9876543210"


def test_parse_nests_dotted_keys_reads_json_and_keeps_credentials_strings():
    opts = so.parse(
        [
            "endpoint_url=http://127.0.0.1:9000",
            "client_kwargs.region_name=eu-west-1",
            "anon=false",
            "config_kwargs.max_pool_connections=50",
            "key=123456",
            "secret=true",
            "profile=a=b",
        ]
    )
    assert opts == {
        "endpoint_url": "http://127.0.0.1:9000",
        "client_kwargs": {"region_name": "eu-west-1"},
        "anon": False,
        "config_kwargs": {"max_pool_connections": 50},
        "key": "123456",
        "secret": "true",
        "profile": "a=b",
    }
    settings, credentials = so.split_credentials(opts)
    assert credentials == {"key": "123456", "secret": "true"} and "secret" not in settings
    assert so.merge(settings, credentials) == opts
    assert "123456" not in so.describe(opts) and "key=*** secret=***" in so.describe(opts)
    for bad in (["endpoint_url"], ["=x"], ["a..b=1"], ["a=1", "a.b=2"]):
        with pytest.raises(ValueError, match="storage option"):
            so.parse(bad)


def test_resume_command_repeats_the_options_without_their_credentials():
    from llie.batch.spec import RunSpec
    from llie_cli.run import resume_command

    options = so.parse(["endpoint_url=http://h:9000", f"secret={SECRET}"])
    cmd = resume_command(RunSpec("s3://b/in", "s3://b/out", run_id="r1", storage_options=options))
    assert "--storage-option endpoint_url=http://h:9000 --storage-option 'secret=***'" in cmd
    assert SECRET not in cmd


def test_bad_storage_option_is_a_usage_error():
    from llie_cli.main import cli

    result = CliRunner().invoke(cli, ["audit", "s3://b/out", "--storage-option", "endpoint_url"])
    assert result.exit_code == 2 and "expected KEY=VALUE" in result.output


@pytest.fixture
def options_only_s3(moto_endpoint, monkeypatch, tmp_path):
    """A bucket on the moto server, and an environment that knows nothing of it."""
    import boto3
    import s3fs

    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"llie-opt-{uuid.uuid4().hex[:10]}"
    boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id=KEY, aws_secret_access_key=SECRET
    ).create_bucket(Bucket=bucket)
    args = [f"endpoint_url={moto_endpoint}", "client_kwargs.region_name=us-east-1", f"key={KEY}", f"secret={SECRET}"]
    yield bucket, args, so.parse(args)
    s3fs.S3FileSystem.clear_instance_cache()


def _objects(bucket: str, opts) -> dict[str, bytes]:
    fs, _ = storage._fs(f"s3://{bucket}", opts)
    return {path: fs.cat_file(path) for path in fs.find(bucket)}


def test_run_and_audit_reach_s3_through_options_alone(prefect_harness, options_only_s3, bundle_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from llie_cli.main import cli

    bucket, args, opts = options_only_s3
    names = ["a.png", "sub/b.png", "c.png"]
    for i, name in enumerate(names):
        storage.write_bytes_atomic(f"s3://{bucket}/in/{name}", encode(gradient(32, 24, seed=i)), opts)
    flags = [x for a in args for x in ("--storage-option", a)]
    run_id = "opts-" + uuid.uuid4().hex[:6]
    command = [
        "run",
        f"s3://{bucket}/in",
        f"s3://{bucket}/out",
        "--workers",
        "1",
        "--shard-size",
        "2",
        "--run-id",
        run_id,
        "--no-progress",
        *flags,
        *(["--model", bundle_path] if bundle_path else []),
    ]
    result = CliRunner().invoke(cli, command, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert sorted(archive.read_metrics(f"s3://{bucket}/out", run_id, opts).column("rel_path").to_pylist()) == sorted(
        names
    )

    audit = CliRunner().invoke(cli, ["audit", f"s3://{bucket}/out", "--run", run_id, *flags])
    assert audit.exit_code == 0, audit.output
    assert f"run {run_id}" in audit.output and "PSNR" in audit.output

    # Prefect stored the settings, never the credentials; nothing the run wrote or logged holds them.
    with get_client(sync_client=True) as client:
        [flow_run] = [r for r in client.read_flow_runs() if (r.parameters or {}).get("run", {}).get("run_id") == run_id]
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
    assert flow_run.parameters["run"]["storage_options"] == {
        "endpoint_url": opts["endpoint_url"],
        "client_kwargs": {"region_name": "us-east-1"},
    }
    for text in (result.output, audit.output, json.dumps(flow_run.parameters), *(log.message for log in logs)):
        assert SECRET not in text and KEY not in text
    objects = _objects(bucket, opts)
    assert any(p.endswith(".parquet") for p in objects) and any(p.endswith("report.html") for p in objects)
    for path, data in objects.items():
        assert SECRET.encode() not in data and KEY.encode() not in data, path


def test_the_flow_refuses_credentials_as_parameters(prefect_harness, tmp_path):
    with pytest.raises(ValueError, match="Prefect stores and shows parameters"):
        run_archive(str(tmp_path / "in"), str(tmp_path / "out"), storage_options={"secret": SECRET})


def test_audit_of_a_run_reached_through_options_alone_keeps_its_reference_folder(options_only_s3):
    """The run manifest (which names the references: the report's reference column) is read with the
    same storage options as the rows, by llie audit and by the flow's report."""
    bucket, _, opts = options_only_s3
    for name in ("a.png", "b.png"):
        storage.write_bytes_atomic(f"s3://{bucket}/in/{name}", encode(gradient(32, 24)), opts)
        storage.write_bytes_atomic(f"s3://{bucket}/ref/{name}", encode(gradient(32, 24, peak=0.7)), opts)
    out, ref = f"s3://{bucket}/out", f"s3://{bucket}/ref"
    spec = RunSpec(f"s3://{bucket}/in", out, "ref-opts", reference_url=ref, storage_options=opts, stages="hist")
    plan = plan_run(spec)
    [shard] = plan.shards
    rows = archive.process_shard(plan.spec, shard, Enhancer.load(None, refiner=False))
    archive.write_shard_parquet(rows, plan.spec.layout.shard_url(shard.shard_id), storage_options=opts)

    run = audit_summary.load_run(out, "ref-opts", opts)
    assert run.table.num_rows == 2 and run.reference_url == ref
    assert audit_summary.run_from_rows(out, "ref-opts", run.table, opts).reference_url == ref
