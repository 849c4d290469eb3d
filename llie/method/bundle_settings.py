"""Every setting of a model bundle checked (type, finite, range) before anything is built from it.

The hashes of a manifest say that its files are the ones it names, not that its settings make sense: a
bundle can be consistent and still say ``bag: 1000000000`` (a billion file names, then MemoryError), a NaN
exposure gate (every comparison false: enhancement silently off), or an unknown key (a TypeError deep in
loading). The ranges are wide, far beyond any trained bundle; they keep out what no model can mean.
"""

from __future__ import annotations

import math
from typing import Any

# name -> ("int" | "float", low, high) | ("bool",) | ("choice", options)
Rule = tuple[Any, ...]

POLICY: dict[str, Rule] = {
    "exposure_full": ("float", 0.0, 1.0),
    "exposure_off": ("float", 0.0, 1.0),
    "anchor_exposure": ("bool",),
    "gain_off": ("float", 0.0, 1000.0),
    "gain_full": ("float", 0.0, 1000.0),
    "hue_guard": ("float", 0.0, 179.0),
    "black_point_knee": ("float", 0.0, 99.0),
}
MAPPING: dict[str, Rule] = {
    "method": ("choice", ("kde", "interp")),
    "bandwidth": ("float", 1e-6, 1.0),
    "grid": ("int", 2, 1 << 16),
    "dense_points": ("int", 2, 1 << 16),
    "max_slope": ("float", 0.0, 1e6),
    "min_slope": ("float", 0.0, 1e6),
    "slope_anchor": ("choice", ("mean", "median")),
    "colour": ("choice", ("channels", "hue", "bounded")),
    "hue_mix": ("float", 0.0, 1.0),
    "max_hue_turn": ("float", 0.0, 180.0),
}
REFINER: dict[str, Rule] = {
    "patch": ("int", 1, 64),
    "dim": ("int", 1, 4096),
    "depth": ("int", 1, 64),
    "heads": ("int", 1, 64),
    "window": ("int", 1, 64),
    "mlp_ratio": ("float", 0.01, 64.0),
    "global_context": ("bool",),
    "detail_channels": ("int", 0, 1024),
    "detail_layers": ("int", 0, 64),
}
QUANTILES: dict[str, Rule] = {  # quantiles.json
    "n_components": ("int", 1, 1024),
    "n_estimators": ("int", 1, 1_000_000),
    "max_depth": ("int", 1, 64),
    "learning_rate": ("float", 0.0, 10.0),
    "subsample": ("float", 0.0, 1.0),
    "colsample_bytree": ("float", 0.0, 1.0),
    "min_child_weight": ("float", 0.0, 1e9),
    "reg_lambda": ("float", 0.0, 1e9),
    "augmentations": ("int", 0, 1_000_000),
    "seed": ("int", 0, 2**63 - 1),
    "error_weighting": ("bool",),
    "bag": ("int", 1, 64),
    "harmless": ("int", 0, 1_000_000),
    "features": ("int", 1, 2),
}
ILLUMINATION: dict[str, Rule] = {
    "grid": ("int", 4, 1024),
    "width": ("int", 1, 256),
    "max_log_gain": ("float", 0.01, 10.0),
}
CAPTURE_GATE: dict[str, Rule] = {
    "neutral_luma": ("float", 0.01, 0.99),
    "ramp": ("float", 0.001, 1.0),
}
EXPOSURE_OFFSET: dict[str, Rule] = {
    "stops": ("float", -4.0, 4.0),
    "gamma": ("float", 0.5, 2.0),
}
DETAIL: dict[str, Rule] = {
    "bias": ("float", -100.0, 100.0),
    "luma": ("float", -100.0, 100.0),
    "texture": ("float", -100.0, 100.0),
    "keep": ("float", -100.0, 100.0),
    "lowest": ("float", -1.0, 1.0),
    "highest": ("float", -1.0, 1.0),
}


def _value_problem(value: Any, rule: Rule) -> str | None:
    kind = rule[0]
    if kind == "bool":
        return None if isinstance(value, bool) else "not true or false"
    if kind == "choice":
        return None if value in rule[1] else f"not one of {', '.join(rule[1])}"
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind == "int" and not isinstance(value, int)):
        return "not a whole number" if kind == "int" else "not a number"
    if not math.isfinite(value) or not rule[1] <= value <= rule[2]:
        return f"not a finite number from {rule[1]} to {rule[2]}"
    return None


def section_problem(section: str, values: Any, rules: dict[str, Rule]) -> str | None:
    """Why the settings ``values`` of ``section`` are refused, or None: a mapping of known keys, each in range."""
    if not isinstance(values, dict):
        return f"{section} is not a JSON object"
    for key, value in values.items():
        if key not in rules:
            return f"{section} has an unknown setting {key!r}"
        why = _value_problem(value, rules[key])
        if why:
            return f"{section}.{key} is {value!r}: {why}"
    return None


def manifest_problem(manifest: dict[str, Any]) -> str | None:
    """Why the manifest's behaviour settings (mapping, policy, refiner, illumination, capture gate, detail,
    exposure offset) are refused, or None."""
    if "mapping" not in manifest:
        return "mapping is missing"
    sections = [("mapping", manifest["mapping"], MAPPING), ("policy", manifest.get("policy", {}), POLICY)]
    if manifest.get("refiner") is not None:
        sections.append(("refiner", manifest["refiner"], REFINER))
    if manifest.get("illumination") is not None:
        sections.append(("illumination", manifest["illumination"], ILLUMINATION))
    if manifest.get("capture_gate") is not None:
        sections.append(("capture_gate", manifest["capture_gate"], CAPTURE_GATE))
    if manifest.get("detail") is not None:
        sections.append(("detail", manifest["detail"], DETAIL))
    if manifest.get("exposure_offset") is not None:
        sections.append(("exposure_offset", manifest["exposure_offset"], EXPOSURE_OFFSET))
    for section, values, rules in sections:
        if why := section_problem(section, values, rules):
            return why
    refiner = manifest.get("refiner") or {}
    if "dim" in refiner and "heads" in refiner and refiner["dim"] % refiner["heads"]:
        return f"refiner.dim {refiner['dim']} does not divide by refiner.heads {refiner['heads']}"
    return None
