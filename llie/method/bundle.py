"""The model bundle: one directory holding both trained stages and a manifest.

``manifest.json`` records the mapping and refiner configuration, library versions, a summary of the
training data, evaluation metrics, and the SHA-256 of every model file. ``model_version`` is a hash over
those file hashes and the settings that change what the model does with them (mapping, policy, refiner
architecture), so it changes exactly when the output can: the version in an audit's rows names a
behaviour. Loading checks every hash and refuses a bundle that does not match its manifest; nothing is
unpickled (XGBoost UBJSON, safetensors).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import stat
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llie.method import bundle_settings
from llie.method.capture_gate import GATE_FILE, CaptureGate, GateSettings
from llie.method.detail import DetailRule
from llie.method.exposure_offset import ExposureOffset, offset_quantiles
from llie.method.mapping import MappingConfig
from llie.method.policy import EnhancePolicy
from llie.method.quantiles import QuantileModel

if TYPE_CHECKING:  # torch is imported where a refiner is saved or loaded: stages 1-3 alone never need it
    from llie.method.illumination import IlluminationNet
    from llie.method.refiner import Refiner

MANIFEST = "manifest.json"
REFINER_FILE = "refiner.safetensors"
ILLUMINATION_FILE = "illumination.safetensors"
BUNDLE_FORMAT = 2
# format 1's model_version covered the model files only; a policy edited in place kept the version
SUPPORTED_FORMATS = (1, 2)
BEHAVIOUR_KEYS = ("mapping", "policy", "refiner")
# behaviour settings of later parts, hashed only where a bundle has them, so earlier versions stay valid
OPTIONAL_BEHAVIOUR_KEYS = ("illumination", "capture_gate", "detail", "exposure_offset")


class BundleError(ValueError):
    """A bundle that is missing, incomplete, or does not match its manifest."""


@dataclass
class Bundle:
    quantile_model: QuantileModel
    mapping: MappingConfig
    refiner: Refiner | None
    manifest: dict = field(default_factory=dict)
    policy: EnhancePolicy = field(default_factory=EnhancePolicy)
    illumination: IlluminationNet | None = None  # the local gain between stages 3 and 4, if trained
    capture_gate: CaptureGate | None = None  # stage 2's brightness gated by the kind of capture, if trained
    detail: DetailRule | None = None  # how much fine detail the refined photo keeps, if fit
    exposure_offset: ExposureOffset | None = None  # stops added to stage 2's brightness, if calibrated

    @property
    def model_version(self) -> str:
        return self.manifest.get("model_version", "unsaved")

    def predict_quantiles(self, features: np.ndarray) -> tuple[np.ndarray, float]:
        """Stage 2 for one photo's (F,) features: (3, 21) percentile values, their brightness gated by the
        kind of capture where the bundle has a gate and moved by its exposure offset where it has one, and
        the share of stage 2's brightness kept (1 without a gate: every photo counts as scene-exposed)."""
        quantiles, keep = self.quantile_model.predict(features), 1.0
        if self.capture_gate is not None:
            quantiles, keep = self.capture_gate.apply(features, quantiles)
        if self.exposure_offset is not None:
            quantiles = offset_quantiles(quantiles, self.exposure_offset.stops, self.exposure_offset.gamma)
        return quantiles, keep


def default_bundle_path() -> Path:
    """The bundle that ships inside the package (trained on LOL-v1 our485)."""
    return Path(__file__).parents[1] / "assets" / "default_model"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _version(file_hashes: dict[str, str], settings: dict | None) -> str:
    joined = "".join(f"{name}:{digest}\n" for name, digest in sorted(file_hashes.items()))
    if settings is not None:
        joined += json.dumps(settings, sort_keys=True)
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


def manifest_version(manifest: dict) -> str:
    """The model_version a manifest's files and behaviour settings give, by the rule of its format."""
    settings = None
    if manifest.get("format") != 1:
        settings = {k: manifest.get(k) for k in BEHAVIOUR_KEYS}
        settings |= {k: manifest[k] for k in OPTIONAL_BEHAVIOUR_KEYS if manifest.get(k) is not None}
    return _version(manifest["files"], settings)


def save_bundle(bundle: Bundle, directory: str | Path, extra: dict | None = None) -> dict:
    """Write the bundle and its manifest; returns the manifest."""
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = bundle.quantile_model.save(directory)
    if bundle.refiner is not None:
        # fp16 halves the shipped size; inference casts back to fp32 on CPU
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in bundle.refiner.state_dict().items()}
        save_file(state, directory / REFINER_FILE)
        files.append(directory / REFINER_FILE)
    if bundle.illumination is not None:
        save_file(
            {k: v.detach().contiguous() for k, v in bundle.illumination.state_dict().items()},
            directory / ILLUMINATION_FILE,
        )
        files.append(directory / ILLUMINATION_FILE)
    if bundle.capture_gate is not None:
        files.append(bundle.capture_gate.save(directory))
    import numpy
    import scipy
    import xgboost

    manifest = {
        **bundle.manifest,
        **(extra or {}),
        "format": BUNDLE_FORMAT,
        "files": {p.name: _sha256(p) for p in files},
        "mapping": asdict(bundle.mapping),
        "policy": asdict(bundle.policy),
        "refiner": asdict(bundle.refiner.cfg) if bundle.refiner is not None else None,
        "illumination": asdict(bundle.illumination.cfg) if bundle.illumination is not None else None,
        "capture_gate": asdict(bundle.capture_gate.settings) if bundle.capture_gate is not None else None,
        "detail": asdict(bundle.detail) if bundle.detail is not None else None,
        "exposure_offset": bundle.exposure_offset.section() if bundle.exposure_offset is not None else None,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "xgboost": xgboost.__version__,
            "numpy": numpy.__version__,
            "scipy": scipy.__version__,
        },
    }
    manifest = json.loads(json.dumps(manifest))  # the values as a reader will see them
    manifest["model_version"] = manifest_version(manifest)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    bundle.manifest = manifest
    return manifest


def _plain_name(name: object) -> bool:
    """A file name directly inside the bundle: no folder part, no way out of it."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )


def _read_regular(directory: Path, name: str) -> bytes:
    """The bytes of ``directory/name``, which must be a plain file: checked before anything is read.

    A link could point anywhere (``/etc/shadow``, a file swapped in later), so none is followed, and
    the file is opened with ``O_NOFOLLOW`` so it cannot become one between the check and the read.
    """
    if not _plain_name(name):
        raise BundleError(f"bundle file {name!r} is not a plain name inside the bundle: refusing to read it")
    path = directory / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise BundleError(f"bundle file {name} is missing from {directory}") from None
    if stat.S_ISLNK(st.st_mode):
        raise BundleError(f"bundle file {name} is a symbolic link: refusing to read it")
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"bundle file {name} is not a regular file: refusing to read it")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise BundleError(f"bundle file {name} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def read_manifest(directory: str | Path) -> dict:
    directory = Path(directory)
    if not os.path.lexists(directory / MANIFEST):
        raise BundleError(f"{directory} is not a model bundle: {MANIFEST} missing")
    try:
        manifest = json.loads(_read_regular(directory, MANIFEST))
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, BundleError):
            raise
        raise BundleError(f"bundle file {MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"bundle file {MANIFEST} is not a JSON object")
    return manifest


def required_files(manifest: dict, quantiles_config: dict) -> set[str]:
    """Every file the model loads, from its two configurations: none may go unlisted (and unhashed)."""
    bag = int(quantiles_config.get("bag", 1))
    listed = manifest.get("files") or {}
    # bundles from before bagging hold one plain quantiles.ubj
    trees = {"quantiles.ubj"} if "quantiles.ubj" in listed else {f"quantiles-{k}.ubj.gz" for k in range(bag)}
    needed = {"quantiles.json", "quantiles_pca.safetensors", *trees}
    if manifest.get("refiner") is not None:
        needed.add(REFINER_FILE)
    if manifest.get("illumination") is not None:
        needed.add(ILLUMINATION_FILE)
    if manifest.get("capture_gate") is not None:
        needed.add(GATE_FILE)
    return needed


def _check_settings(manifest: dict) -> None:
    """Refuse nonsense settings (type, range, unknown keys) before any file is read or object built."""
    why = bundle_settings.manifest_problem(manifest)
    if why is None:
        try:  # the rules between settings (gain_full >= gain_off, ...) are the classes' own
            EnhancePolicy(**manifest.get("policy", {}))
            MappingConfig(**manifest["mapping"])
            if manifest.get("detail") is not None:
                DetailRule(**manifest["detail"])
            if manifest.get("exposure_offset") is not None:
                ExposureOffset(**manifest["exposure_offset"])
        except ValueError as exc:
            why = str(exc)
    if why is not None:
        raise BundleError(f"bundle file {MANIFEST}: setting {why}: refusing to load")


def _verified_files(directory: Path) -> tuple[dict, dict[str, bytes]]:
    """The manifest and the bytes of every file it lists, each checked against its hash.

    Names are checked before any file is opened; every file the model needs must be listed, so an
    emptied ``files`` list cannot switch the check off.
    """
    manifest = read_manifest(directory)
    if manifest.get("format") not in SUPPORTED_FORMATS:
        raise BundleError(
            f"bundle format {manifest.get('format')!r} is not supported (expected one of {SUPPORTED_FORMATS})"
        )
    _check_settings(manifest)
    hashes = manifest.get("files")
    if not isinstance(hashes, dict) or not hashes:
        raise BundleError(f"bundle file {MANIFEST} lists no model files: refusing to load")
    for name in hashes:  # all names first: nothing is read for a manifest that names a path out
        if not _plain_name(name) or name == MANIFEST:
            raise BundleError(
                f"bundle file {MANIFEST} names {name!r}, which is not a file of the bundle: refusing to load"
            )
    contents: dict[str, bytes] = {}
    for name, expected in hashes.items():
        data = _read_regular(directory, name)
        if hashlib.sha256(data).hexdigest() != expected:
            raise BundleError(f"bundle file {name} does not match the hash in its manifest: refusing to load")
        contents[name] = data
    if manifest_version(manifest) != manifest.get("model_version"):
        raise BundleError(
            f"bundle file {MANIFEST}: model_version does not match its file hashes and settings: refusing to load"
        )
    if "quantiles.json" not in contents:
        raise BundleError(
            f"bundle file quantiles.json is needed by the model but not listed in {MANIFEST}: refusing to load"
        )
    try:
        quantiles_config = json.loads(contents["quantiles.json"])
    except ValueError as exc:
        raise BundleError(f"bundle file quantiles.json is not valid JSON: {exc}") from None
    if why := bundle_settings.section_problem("quantiles.json", quantiles_config, bundle_settings.QUANTILES):
        raise BundleError(f"bundle setting {why}: refusing to load")
    for name in sorted(required_files(manifest, quantiles_config) - set(contents)):
        raise BundleError(f"bundle file {name} is needed by the model but not listed in {MANIFEST}: refusing to load")
    return manifest, contents


def verify_bundle(directory: str | Path) -> dict:
    """The manifest, after checking every model file against its recorded hash."""
    manifest, _ = _verified_files(Path(directory))
    return manifest


def check_new_bundle_folder(output: Path) -> None:
    """FileExistsError unless ``output`` is free for a new bundle: absent, or an empty folder."""
    if output.exists() and not (output.is_dir() and not any(output.iterdir())):
        raise FileExistsError(f"{output} already exists: choose a new folder for the bundle")


def derive_bundle(
    source: str | Path | None, output: str | Path, settings: dict, record: dict, expect_version: str | None = None
) -> dict:
    """Write ``output``: the bundle at ``source`` (None: the shipped one) with the behaviour ``settings``
    replaced (e.g. ``{"exposure_offset": {"stops": 0.5}}``) and ``record`` kept under ``metrics``. Its files
    are the checked bytes of the source's, its version is new and names the source's as previous; the
    source's evaluation is left out, since it scored another model. ``output`` appears whole or not at all
    and must not exist yet (an empty folder may). With ``expect_version`` the source must still be that
    model: settings fit to one model are not written onto another that replaced it meanwhile."""
    source = Path(source) if source is not None else default_bundle_path()
    output = Path(output)
    manifest, contents = _verified_files(source)
    if expect_version is not None and manifest["model_version"] != expect_version:
        raise BundleError(
            f"the bundle at {source} is now model {manifest['model_version']}, not {expect_version}: "
            "it changed since it was loaded; nothing was written"
        )
    manifest = {k: v for k, v in manifest.items() if k != "eval"}
    manifest |= json.loads(json.dumps(settings))
    manifest["metrics"] = {**manifest.get("metrics", {}), **json.loads(json.dumps(record))}
    manifest["previous_version"] = manifest["model_version"]
    manifest["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    manifest["format"] = BUNDLE_FORMAT  # format 1's version would not cover the new settings
    _check_settings(manifest)
    manifest["model_version"] = manifest_version(manifest)
    check_new_bundle_folder(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}-", dir=output.parent) as staging:
        folder = Path(staging) / "bundle"
        folder.mkdir()
        for name, data in contents.items():
            (folder / name).write_bytes(data)
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        os.replace(folder, output)  # a folder, or an empty one in its place, appears whole
    return manifest


def load_bundle(directory: str | Path | None = None, n_threads: int | None = None, refiner: bool = True) -> Bundle:
    """Load a bundle from the very bytes that were checked against its manifest; ``refiner=False``
    leaves its refiner (and torch) unloaded.

    They are copied into a private folder first and the model loads from there: a file swapped in
    after the check, or one the manifest does not list, is never read.
    """
    directory = Path(directory) if directory is not None else default_bundle_path()
    manifest, contents = _verified_files(directory)
    with tempfile.TemporaryDirectory(prefix="llie-bundle-") as private:
        folder = Path(private)
        for name, data in contents.items():
            (folder / name).write_bytes(data)
        try:
            quantile_model = QuantileModel.load(folder, n_threads=n_threads)
        except FileNotFoundError as exc:
            name = Path(exc.filename or "?").name
            raise BundleError(f"bundle file {name} is needed by the model but not listed in {MANIFEST}") from None
        except Exception as exc:
            names = ", ".join(sorted(n for n in contents if n.startswith("quantiles")))
            raise BundleError(f"bundle files {names} do not load as a quantile model: {exc}") from None
        wanted, refiner = refiner, None
        if wanted and manifest.get("refiner") is not None:
            from safetensors.torch import load_file

            from llie.method.refiner import Refiner, RefinerConfig

            # manifests from before the whole-image context or the detail head name no such field: those
            # refiners have neither
            try:
                refiner = Refiner(
                    RefinerConfig(**{"global_context": False, "detail_channels": 0, **manifest["refiner"]})
                )
                state = load_file(folder / REFINER_FILE)
                refiner.load_state_dict({k: v.float() for k, v in state.items()})
            except Exception as exc:
                raise BundleError(f"bundle file {REFINER_FILE} does not load as the refiner: {exc}") from None
            refiner.eval()
        illumination = _load_illumination(manifest, folder) if wanted else None
        capture_gate = _load_capture_gate(manifest, folder)
    # bundles from before the policy name none: their refiner always applies, unanchored
    policy = EnhancePolicy(**manifest.get("policy", {}))
    mapping = MappingConfig(**manifest["mapping"])
    detail = DetailRule(**manifest["detail"]) if manifest.get("detail") is not None else None
    offset = ExposureOffset(**manifest["exposure_offset"]) if manifest.get("exposure_offset") is not None else None
    return Bundle(quantile_model, mapping, refiner, manifest, policy, illumination, capture_gate, detail, offset)


def _load_capture_gate(manifest: dict, folder: Path) -> CaptureGate | None:
    """The bundle's capture gate, or None for bundles without one."""
    if manifest.get("capture_gate") is None:
        return None
    try:
        return CaptureGate.load(folder / GATE_FILE, GateSettings(**manifest["capture_gate"]))
    except Exception as exc:
        raise BundleError(f"bundle file {GATE_FILE} does not load as the capture gate: {exc}") from None


def _load_illumination(manifest: dict, folder: Path) -> IlluminationNet | None:
    """The bundle's illumination net, or None for bundles without one."""
    if manifest.get("illumination") is None:
        return None
    from safetensors.torch import load_file

    from llie.method.illumination import IlluminationConfig, IlluminationNet

    try:
        net = IlluminationNet(IlluminationConfig(**manifest["illumination"]))
        net.load_state_dict(load_file(folder / ILLUMINATION_FILE))
    except Exception as exc:
        raise BundleError(f"bundle file {ILLUMINATION_FILE} does not load as the illumination net: {exc}") from None
    return net.eval()
