"""The model bundle: round trip, hashed manifest, refusal of tampered or incomplete bundles."""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_synthetic import pairs

import llie
from llie.method.bundle import (
    MANIFEST,
    REFINER_FILE,
    Bundle,
    BundleError,
    load_bundle,
    manifest_version,
    save_bundle,
    verify_bundle,
)
from llie.method.features import extract_features
from llie.method.mapping import MappingConfig
from llie.method.pipeline import Enhancer
from llie.method.policy import EnhancePolicy
from llie.method.quantiles import QuantileModel, QuantileModelConfig, augmented_rows
from llie.method.refiner import Refiner, RefinerConfig

MODEL_FILES = ["quantiles.json", "quantiles-0.ubj.gz", "quantiles_pca.safetensors", REFINER_FILE]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _quantile_model(seed: int = 0, n_estimators: int = 10) -> QuantileModel:
    cfg = QuantileModelConfig(n_estimators=n_estimators, augmentations=3, min_child_weight=2.0, seed=seed)
    lows, highs = pairs(8, seed=seed)
    rng = np.random.default_rng(seed)
    x, y = zip(*(augmented_rows(l, h, rng, cfg.augmentations) for l, h in zip(lows, highs)))
    return QuantileModel.fit(np.concatenate(x), np.concatenate(y), cfg, n_threads=1)


def _refiner(seed: int = 0) -> Refiner:
    """A non-identity refiner whose weights survive the bundle's fp16 storage exactly."""
    torch.manual_seed(seed)
    model = Refiner(RefinerConfig(dim=16, depth=1, heads=2))
    with torch.no_grad():
        model.head.weight.normal_(0, 0.05)
        for p in model.parameters():
            p.copy_(p.half().float())
    return model.eval()


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle(_quantile_model(), MappingConfig("kde", 0.02), _refiner())


@pytest.fixture
def saved(bundle, tmp_path) -> Path:
    save_bundle(bundle, tmp_path / "bundle", extra={"note": "test"})
    return tmp_path / "bundle"


def _inputs():
    lows, _ = pairs(1, 40, 56, seed=9)
    return lows


def test_round_trip_gives_identical_predictions(bundle, saved):
    loaded = load_bundle(saved, n_threads=1)
    assert loaded.mapping == bundle.mapping
    assert loaded.refiner.cfg == bundle.refiner.cfg
    assert loaded.manifest["note"] == "test"
    original = Enhancer(bundle, device="cpu")
    reloaded = Enhancer(loaded, device="cpu")
    for low in _inputs():
        f = extract_features(low)
        np.testing.assert_array_equal(loaded.quantile_model.predict(f), bundle.quantile_model.predict(f))
        for stages in ("hist", "full"):
            a = original.enhance(low, stages=stages).image
            b = reloaded.enhance(low, stages=stages).image
            np.testing.assert_array_equal(a, b, err_msg=stages)
    # the refiner is not the identity, so the full-pipeline comparison above really exercised it
    x = torch.rand(1, 3, 80, 80)
    with torch.no_grad():
        assert (loaded.refiner(x) - x).abs().max() > 1e-3


def test_manifest_records_files_versions_and_configs(saved):
    manifest = json.loads((saved / MANIFEST).read_text())
    assert sorted(manifest["files"]) == sorted(MODEL_FILES)
    assert len(manifest["model_version"]) == 12
    assert manifest["mapping"]["bandwidth"] == 0.02
    assert manifest["refiner"]["dim"] == 16
    assert {"python", "torch", "xgboost", "numpy", "scipy"} <= set(manifest["versions"])
    assert verify_bundle(saved)["model_version"] == manifest["model_version"]


@pytest.mark.parametrize("name", MODEL_FILES)
def test_flipped_byte_is_refused(saved, name):
    path = saved / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="hash"):
        load_bundle(saved)


def test_missing_manifest_is_refused(saved):
    (saved / MANIFEST).unlink()
    with pytest.raises(BundleError, match="manifest"):
        load_bundle(saved)


def test_missing_model_file_is_refused(saved):
    (saved / REFINER_FILE).unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(saved)


def test_edited_manifest_is_refused(saved):
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["model_version"] = "0" * 12
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError):
        load_bundle(saved)
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["format"] = 99
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format"):
        load_bundle(saved)


def test_not_a_bundle_is_refused(tmp_path):
    with pytest.raises(BundleError):
        load_bundle(tmp_path)


def test_model_version_changes_exactly_when_weights_or_settings_change(bundle, tmp_path):
    first = save_bundle(bundle, tmp_path / "a", extra={"note": "one"})["model_version"]
    # same weights, different metadata: same version
    again = save_bundle(bundle, tmp_path / "b", extra={"note": "two"})["model_version"]
    assert again == first
    # one refiner weight changed
    changed = Bundle(bundle.quantile_model, bundle.mapping, _refiner())
    with torch.no_grad():
        changed.refiner.head.bias[0] += 0.5
    assert save_bundle(changed, tmp_path / "c")["model_version"] != first
    # a different stage-2 model
    other = Bundle(_quantile_model(seed=1), bundle.mapping, bundle.refiner)
    assert save_bundle(other, tmp_path / "d")["model_version"] != first
    # the same files under another policy or mapping enhance differently: another version
    gated = Bundle(bundle.quantile_model, bundle.mapping, bundle.refiner, policy=EnhancePolicy(0.2, 0.3))
    assert save_bundle(gated, tmp_path / "e")["model_version"] != first
    bounded = Bundle(bundle.quantile_model, replace(bundle.mapping, max_slope=8.0), bundle.refiner)
    assert save_bundle(bounded, tmp_path / "f")["model_version"] != first
    versions = [load_bundle(tmp_path / d).model_version for d in "abcdef"]  # as read back, not as written
    assert versions[:2] == [first, first] and len(set(versions)) == 5


def test_a_bundle_from_before_the_slope_anchor_keeps_its_version_and_the_median_anchor(saved):
    """Manifests written before ``slope_anchor`` existed have no such key: they load as they enhanced
    (pinned at the median level) and keep their version; a mean-anchored copy is another model."""
    manifest = json.loads((saved / MANIFEST).read_text())
    del manifest["mapping"]["slope_anchor"]
    manifest["model_version"] = manifest_version(manifest)
    (saved / MANIFEST).write_text(json.dumps(manifest))
    older = load_bundle(saved)
    assert older.mapping.slope_anchor == "median" and older.model_version == manifest["model_version"]
    anchored = Bundle(older.quantile_model, replace(older.mapping, slope_anchor="mean"), older.refiner)
    assert save_bundle(anchored, saved.parent / "anchored")["model_version"] != older.model_version


def test_a_policy_edited_in_the_manifest_is_refused(saved):
    """The policy changes every output of the same files: an edit that keeps the version is caught."""
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["policy"]["anchor_exposure"] = not manifest["policy"]["anchor_exposure"]
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="model_version does not match"):
        load_bundle(saved)


def test_a_format_1_bundle_still_loads_with_its_files_only_version(saved):
    """Bundles written before the version covered the settings keep loading, by their own rule."""
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["format"] = 1
    manifest["model_version"] = manifest_version(manifest)
    (saved / MANIFEST).write_text(json.dumps(manifest))
    assert load_bundle(saved).model_version == manifest["model_version"] != manifest_version({**manifest, "format": 2})


def test_bundle_without_refiner_round_trips(bundle, tmp_path):
    save_bundle(Bundle(bundle.quantile_model, bundle.mapping, None), tmp_path)
    assert not (tmp_path / REFINER_FILE).exists()
    loaded = load_bundle(tmp_path)
    assert loaded.refiner is None
    low = _inputs()[0]
    enhancer = Enhancer(loaded, device="cpu")
    np.testing.assert_array_equal(enhancer.enhance(low, "full").image, enhancer.enhance(low, "hist").image)


def test_shipped_default_bundle_verifies():
    from llie.method.capture_gate import GATE_FILE

    manifest = verify_bundle(Path(llie.__file__).parent / "assets" / "default_model")
    assert manifest["model_version"]
    bag = load_bundle().quantile_model.config.bag
    members = [f"quantiles-{k}.ubj.gz" for k in range(bag)]
    shipped = ["quantiles.json", "quantiles_pca.safetensors", REFINER_FILE, GATE_FILE, *members]
    assert sorted(manifest["files"]) == sorted(shipped)


def _torch_load_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
            if name == "load" and owner == "torch":
                yield node


def _unsafe_loads(text: str) -> tuple[int, list[str]]:
    """(number of torch.load calls, problems) in one source file."""
    tree = ast.parse(text)
    problems, found = [], 0
    for call in _torch_load_calls(tree):
        found += 1
        flags = {kw.arg: kw.value for kw in call.keywords}
        value = flags.get("weights_only")
        if not (isinstance(value, ast.Constant) and value.value is True):
            problems.append(f"line {call.lineno}: torch.load without weights_only=True")
    if "from torch import load" in text:  # an alias the call check would miss
        problems.append("imports torch.load under another name")
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib") for n in names):
                problems.append(f"line {node.lineno}: imports a pickle library")
        if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
            if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                problems.append(f"line {node.value.lineno}: allow_pickle is not False")
    return found, problems


def test_unsafe_load_check_catches_unsafe_code():
    assert _unsafe_loads("import torch\nx = torch.load(p, weights_only=True)\n") == (1, [])
    for bad in (
        "torch.load(p)",
        "torch.load(p, weights_only=False)",
        "torch.load(p, weights_only=flag)",
        "import pickle",
        "from torch import load",
        "np.load(p, allow_pickle=True)",
    ):
        assert _unsafe_loads("import torch\n" + bad + "\n")[1], bad


def test_torch_load_always_uses_weights_only():
    """No ``torch.load`` in the package may unpickle arbitrary objects; nothing imports pickle."""
    package = Path(llie.__file__).parent
    sources = sorted(package.rglob("*.py"))
    assert len(sources) > 5
    total = 0
    for path in sources:
        found, problems = _unsafe_loads(path.read_text())
        assert not problems, f"{path.relative_to(package.parent)}: {problems}"
        total += found
    assert total >= 1  # the refiner checkpoints are loaded somewhere: the check did look at them


def test_bundle_from_before_the_context_option_loads_without_it(bundle, tmp_path):
    """Manifests written before ``global_context`` existed do not name it; their refiners have no context
    weights and must load as such, although new refiners have the context on by default."""
    torch.manual_seed(4)
    plain = Refiner(RefinerConfig(dim=16, depth=1, heads=2, global_context=False))
    with torch.no_grad():
        plain.head.weight.normal_(0, 0.05)
    save_bundle(Bundle(bundle.quantile_model, bundle.mapping, plain), tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    del manifest["refiner"]["global_context"]
    manifest["format"], manifest["model_version"] = 1, manifest_version({**manifest, "format": 1})
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    loaded = load_bundle(tmp_path)
    assert RefinerConfig().global_context and not loaded.refiner.cfg.global_context
    x = torch.rand(1, 3, 80, 80)
    with torch.no_grad():
        torch.testing.assert_close(loaded.refiner(x), plain.half().float()(x), atol=1e-3, rtol=0)


def test_bundle_from_before_the_detail_head_loads_without_it(bundle, tmp_path):
    """Manifests written before ``detail_channels`` existed do not name it: their refiners have no detail
    head and must load as such, although new refiners have one by default."""
    torch.manual_seed(5)
    plain = Refiner(RefinerConfig(dim=16, depth=1, heads=2, detail_channels=0))
    with torch.no_grad():
        plain.head.weight.normal_(0, 0.05)
    save_bundle(Bundle(bundle.quantile_model, bundle.mapping, plain), tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    del manifest["refiner"]["detail_channels"], manifest["refiner"]["detail_layers"]
    manifest["format"], manifest["model_version"] = 1, manifest_version({**manifest, "format": 1})
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    loaded = load_bundle(tmp_path)
    assert RefinerConfig().detail_channels > 0 and loaded.refiner.detail is None
    x = torch.rand(1, 3, 80, 80)
    with torch.no_grad():
        torch.testing.assert_close(loaded.refiner(x), plain.half().float()(x), atol=1e-3, rtol=0)


def _consistent_bundle(dest: Path, manifest_edit=None, quantiles_edit=None) -> Path:
    """The shipped bundle with settings edited and every hash and the version made to match again:
    what a careless (or hostile) tool would write."""
    import hashlib
    import shutil

    from llie.method.bundle import default_bundle_path

    shutil.copytree(default_bundle_path(), dest)
    manifest = json.loads((dest / MANIFEST).read_text())
    if quantiles_edit is not None:
        config = json.loads((dest / "quantiles.json").read_text())
        quantiles_edit(config)
        data = json.dumps(config).encode()
        (dest / "quantiles.json").write_bytes(data)
        manifest["files"]["quantiles.json"] = hashlib.sha256(data).hexdigest()
    if manifest_edit is not None:
        manifest_edit(manifest)
    manifest["model_version"] = manifest_version(manifest)
    (dest / MANIFEST).write_text(json.dumps(manifest))  # NaN is written as NaN, as Python's json does
    return dest


@pytest.mark.parametrize(
    "manifest_edit,quantiles_edit,reason",
    [
        (None, lambda q: q.update(bag=10**9), "quantiles.json.bag is 1000000000: not a finite number from 1 to 64"),
        (None, lambda q: q.update(bag="2"), "quantiles.json.bag is '2': not a whole number"),
        (lambda m: m["policy"].update(exposure_full=float("nan")), None, "policy.exposure_full is nan: not a finite"),
        (lambda m: m["policy"].update(gain_off=float("inf")), None, "policy.gain_off is inf: not a finite"),
        (lambda m: m["policy"].update(surprise=1), None, "policy has an unknown setting 'surprise'"),
        (lambda m: m["mapping"].update(grid="many"), None, "mapping.grid is 'many': not a whole number"),
        (lambda m: m["mapping"].update(method="magic"), None, "mapping.method is 'magic': not one of kde, interp"),
        (lambda m: m["mapping"].update(slope_anchor="black"), None, "mapping.slope_anchor is 'black': not one of"),
        (lambda m: m["refiner"].update(dim=10**9), None, "refiner.dim is 1000000000: not a finite number"),
        (lambda m: m["refiner"].update(dim=161), None, "refiner.dim 161 does not divide by refiner.heads 5"),
        (lambda m: m.update(policy=[1, 2]), None, "policy is not a JSON object"),
        (lambda m: m["policy"].update(gain_full=1.0, gain_off=2.0), None, "gain_full 1.0 is below gain_off 2.0"),
    ],
)
def test_a_consistent_bundle_with_nonsense_settings_is_refused_before_loading(
    tmp_path, manifest_edit, quantiles_edit, reason
):
    """Hashes that match say nothing of the settings: each is checked (type, finite, range, known key)."""
    bundle = _consistent_bundle(tmp_path / "b", manifest_edit, quantiles_edit)
    for load in (verify_bundle, load_bundle):
        with pytest.raises(BundleError) as caught:
            load(bundle)
        assert reason in str(caught.value) and "refusing to load" in str(caught.value)
