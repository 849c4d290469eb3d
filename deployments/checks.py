"""Checks ``prefect deploy`` runs before it registers a deployment (a build step in prefect.yaml).

A scheduled deployment is made once and runs unattended: a missing or overlapping input/output
must stop it being made, not fail every night at 02:00.
"""

from __future__ import annotations

from llie.batch import storage

FLOW_NAME = "enhance-archive"  # flows.enhance_archive's @flow name: deployments are named FLOW/NAME


def refuse_deployment(
    input_url: str | None = None,
    output_url: str | None = None,
    name: str | None = None,
    work_pool: str | None = None,
) -> dict:
    """The build step of prefect.yaml: :func:`require_archive_urls` and :func:`require_own_name`, a
    refusal as one line and exit code 1.

    Prefect prints the traceback of an exception raised by a step (and wraps it in its own); a SystemExit
    passes through its steps and its command line as it is.
    """
    try:
        require_archive_urls(input_url, output_url)
        if name:
            require_own_name(name, work_pool)
    except ValueError as exc:
        raise SystemExit(f"Error: {exc}") from None
    return {}


def require_own_name(name: str, work_pool: str | None) -> None:
    """Refuse to register deployment ``name`` over one of that name made the other way (``prefect deploy``
    for a work pool, or ``python -m deployments.serve`` without one): Prefect would quietly replace it,
    pool, parameters and all, and the other route's runs would go on under settings it never gave."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
        except ObjectNotFound:
            return
    if bool(existing.work_pool_name) == bool(work_pool):
        return  # the same route again: an update
    how = (
        f"by `prefect deploy` for work pool {existing.work_pool_name!r}"
        if existing.work_pool_name
        else "by `python -m deployments.serve`"
    )
    raise ValueError(
        f"deployment {FLOW_NAME}/{name} exists already, made {how}: give this one another name, or delete "
        f"that one first (prefect deployment delete {FLOW_NAME}/{name})"
    )


def require_archive_urls(input_url: str | None = None, output_url: str | None = None) -> dict:
    """Refuse a deployment without both URLs, or whose output overlaps its input.

    prefect.yaml fills the arguments from ``{{ $LLIE_INPUT_URL }}`` / ``{{ $LLIE_OUTPUT_URL }}``; an
    unset variable reaches here as a missing argument (or an empty string).
    """
    missing = [
        name
        for name, value in (("LLIE_INPUT_URL", input_url), ("LLIE_OUTPUT_URL", output_url))
        if not str(value or "").strip()
    ]
    if missing:
        raise ValueError(
            f"{' and '.join(missing)} not set: a deployment needs the archive's input and output, e.g. "
            "LLIE_INPUT_URL=s3://archive/raw LLIE_OUTPUT_URL=s3://archive/enhanced prefect deploy --all"
        )
    storage.check_output_not_inside_input(input_url, output_url)
    return {}
