"""Click options shared by commands of several modules (``llie run``, ``llie audit``)."""

from __future__ import annotations

import click


def _parse_storage_options(ctx, param, values):
    from llie.batch import storage_options

    try:
        return storage_options.parse(values)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


storage_option_flag = click.option(
    "--storage-option",
    "storage_option",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_parse_storage_options,
    help="fsspec storage option for every URL, repeatable, e.g. endpoint_url=http://minio:9000, "
    "client_kwargs.region_name=eu-west-1, anon=true, profile=NAME. Values of credential keys "
    "(key, secret, token, ...) are never printed, logged or stored.",
)
