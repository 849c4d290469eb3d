"""The model bundle: one directory holding both trained stages and a manifest.

``manifest.json`` records the mapping and refiner configuration, library versions, a summary of the
training data, evaluation metrics, and the SHA-256 of every model file. ``model_version`` is a hash over
those file hashes, so it changes exactly when the weights change. Loading checks every hash and refuses
a bundle that does not match its manifest; nothing is unpickled (XGBoost UBJSON, safetensors).
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .mapping import MappingConfig
from .quantiles import QuantileModel
from .refiner import Refiner, RefinerConfig

MANIFEST = "manifest.json"
REFINER_FILE = "refiner.safetensors"
BUNDLE_FORMAT = 1


class BundleError(ValueError):
    """A bundle that is missing, incomplete, or does not match its manifest."""


@dataclass
class Bundle:
    quantile_model: QuantileModel
    mapping: MappingConfig
    refiner: Refiner | None
    manifest: dict = field(default_factory=dict)

    @property
    def model_version(self) -> str:
        return self.manifest.get("model_version", "unsaved")


def default_bundle_path() -> Path:
    """The bundle that ships inside the package (trained on LOL-v1 our485)."""
    return Path(__file__).parent / "assets" / "default_model"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _version(file_hashes: dict[str, str]) -> str:
    joined = "".join(f"{name}:{digest}\n" for name, digest in sorted(file_hashes.items()))
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


def save_bundle(bundle: Bundle, directory: str | Path, extra: dict | None = None) -> dict:
    """Write the bundle and its manifest; returns the manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = bundle.quantile_model.save(directory)
    if bundle.refiner is not None:
        # fp16 halves the shipped size; inference casts back to fp32 on CPU
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in bundle.refiner.state_dict().items()}
        save_file(state, directory / REFINER_FILE)
        files.append(directory / REFINER_FILE)
    hashes = {p.name: _sha256(p) for p in files}
    import numpy, scipy, xgboost

    manifest = {
        **bundle.manifest,
        **(extra or {}),
        "format": BUNDLE_FORMAT,
        "model_version": _version(hashes),
        "files": hashes,
        "mapping": asdict(bundle.mapping),
        "refiner": asdict(bundle.refiner.cfg) if bundle.refiner is not None else None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "xgboost": xgboost.__version__,
            "numpy": numpy.__version__,
            "scipy": scipy.__version__,
        },
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    bundle.manifest = manifest
    return manifest


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{directory} is not a model bundle: {MANIFEST} missing")
    return json.loads(path.read_text())


def verify_bundle(directory: str | Path) -> dict:
    """The manifest, after checking every model file against its recorded hash."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"bundle format {manifest.get('format')!r} is not supported (expected {BUNDLE_FORMAT})")
    hashes = manifest.get("files") or {}
    for name, expected in hashes.items():
        path = directory / name
        if not path.is_file():
            raise BundleError(f"bundle file {name} is missing from {directory}")
        if _sha256(path) != expected:
            raise BundleError(f"bundle file {name} does not match the hash in its manifest: refusing to load")
    if _version(hashes) != manifest.get("model_version"):
        raise BundleError("bundle model_version does not match its file hashes: refusing to load")
    return manifest


def load_bundle(directory: str | Path | None = None, n_threads: int | None = None) -> Bundle:
    directory = Path(directory) if directory is not None else default_bundle_path()
    manifest = verify_bundle(directory)
    quantile_model = QuantileModel.load(directory, n_threads=n_threads)
    refiner = None
    if manifest.get("refiner") is not None:
        # manifests from before the whole-image context or the detail head name no such field: those
        # refiners have neither
        refiner = Refiner(RefinerConfig(**{"global_context": False, "detail_channels": 0, **manifest["refiner"]}))
        state = load_file(directory / REFINER_FILE)
        refiner.load_state_dict({k: v.float() for k, v in state.items()})
        refiner.eval()
    return Bundle(quantile_model, MappingConfig(**manifest["mapping"]), refiner, manifest)
