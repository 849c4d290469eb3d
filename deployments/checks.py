"""Checks ``prefect deploy`` runs before it registers a deployment (a build step in prefect.yaml).

A scheduled deployment is made once and runs unattended: a missing or overlapping input/output
must stop it being made, not fail every night at 02:00.
"""

from __future__ import annotations

from llie.batch import storage


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
