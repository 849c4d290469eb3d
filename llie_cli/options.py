"""Click options and checks shared by commands of several modules (``llie run``, ``llie audit``, ``llie train``...)."""

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


def check_device(device: str) -> None:
    """A clear usage error for a device this machine cannot give, before a bundle is loaded."""
    if device == "auto":
        return
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise click.BadParameter(f"{device!r}: use auto, cpu, cuda or cuda:N", param_hint="--device") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(f"{device!r}: no CUDA GPU is available here (use auto or cpu)", param_hint="--device")
    if parsed.type not in ("cpu", "cuda"):
        raise click.BadParameter(f"{device!r}: use auto, cpu, cuda or cuda:N", param_hint="--device")
