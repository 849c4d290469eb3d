"""How much the refiner's result depends on how a photo is turned, on a paired set.

Archives hold photos upright, on their side and mirrored (scans, phones without EXIF rotation), and
users expect one scene to come out the same whichever way it was stored. For each of the eight
rotations and flips, stage 3 of the photo is turned, refined, turned back and scored against the
reference; the report gives each orientation's mean PSNR/SSIM, the spread between them, the largest
swing of one image, and the self-ensembles (``llie.method.refine.refine(..., ensemble=N)``: the average over
2, 4 or 8 orientations). Stage 3 is a function of the histogram alone and does not depend on orientation.
About a minute for eval15 on two cores; not part of ``make bench``:

    python -m benchmarks.orientation [--data ../shared/datasets/LOL-v1/eval15] [--model BUNDLE] [--json F]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .common import REPO

EVAL15 = REPO.parent / "shared" / "datasets" / "LOL-v1" / "eval15"
ORIENTATIONS = (
    "as stored",
    "rotated 90",
    "rotated 180",
    "rotated 270",
    "mirrored",
    "rotated 90, mirrored",
    "rotated 180, mirrored",
    "rotated 270, mirrored",
)


def orientation_report(
    data: Path, model: str | None = None, max_pairs: int | None = None, progress: bool = True
) -> dict:
    from llie.method.features import extract_features
    from llie.method.mapping import infer_levels
    from llie.method.pipeline import Enhancer
    from llie.method.policy import AfterRefiner, finish_under_policy, map_under_policy, refine_under_policy
    from llie.method.refine import ENSEMBLE_TRANSFORMS, dihedral, undo_dihedral
    from llie.training.data import find_pairs, load_rgb
    from llie.training.evaluate import score

    enhancer = Enhancer.load(model)
    if enhancer.bundle.refiner is None:
        raise SystemExit("this bundle has no refiner: nothing depends on orientation")
    pairs = find_pairs(data)[:max_pairs]
    psnr = np.zeros((len(pairs), 8))
    ssim = np.zeros((len(pairs), 8))
    ensembles = {n: {"psnr": [], "ssim": []} for n in ENSEMBLE_TRANSFORMS if n > 1}
    for i, pair in enumerate(tqdm(pairs, desc="orientation", disable=not progress)):
        low, high = load_rgb(pair.low), load_rgb(pair.high)
        bundle, policy = enhancer.bundle, enhancer.bundle.policy
        quantiles, keep = bundle.predict_quantiles(extract_features(low, None, bundle.quantile_model.config.features))
        after = AfterRefiner(keep, bundle.detail)
        # stages 3 and 4 under the bundle's rules, as the pipeline runs them, the refiner on a turned copy
        mapped, _ = map_under_policy(low, quantiles, bundle.mapping, policy, infer_levels(low))
        outputs = []
        for k in range(8):
            turned = lambda m, k=k: np.ascontiguousarray(undo_dihedral(enhancer.refine_mapped(dihedral(m, k)), k))
            refined = np.clip(refine_under_policy(low, mapped, turned, policy, after=after), 0.0, 1.0)
            outputs.append(finish_under_policy(low, refined, policy))
            s = score(outputs[-1], high)
            psnr[i, k], ssim[i, k] = s["psnr"], s["ssim"]
        for n, ks in ENSEMBLE_TRANSFORMS.items():
            if n > 1:  # the same average refine(..., ensemble=n) computes, from the passes above
                s = score(np.mean([outputs[k] for k in ks], axis=0), high)
                ensembles[n]["psnr"].append(s["psnr"])
                ensembles[n]["ssim"].append(s["ssim"])
    swing = psnr.max(axis=1) - psnr.min(axis=1)
    return {
        "data": str(data),
        "pairs": len(pairs),
        "model_version": enhancer.model_version,
        "orientations": [
            {"orientation": ORIENTATIONS[k], "psnr": float(psnr[:, k].mean()), "ssim": float(ssim[:, k].mean())}
            for k in range(8)
        ],
        "spread_psnr": float(psnr.mean(axis=0).max() - psnr.mean(axis=0).min()),
        "largest_swing": {"image": pairs[int(swing.argmax())].name, "psnr": float(swing.max())} if pairs else None,
        "mean_swing_psnr": float(swing.mean()) if pairs else 0.0,
        "ensembles": [
            {"copies": n, "psnr": float(np.mean(v["psnr"])), "ssim": float(np.mean(v["ssim"]))}
            for n, v in ensembles.items()
        ],
        "per_image_psnr": {pair.name: [float(p) for p in row] for pair, row in zip(pairs, psnr)},
    }


def table(report: dict) -> str:
    lines = [
        f"model {report['model_version']}, {report['pairs']} pairs of {report['data']}; stage-4 PSNR/SSIM",
        "",
        "| refiner input | PSNR dB | SSIM |",
        "|---|---|---|",
    ]
    lines += [f"| {r['orientation']} | {r['psnr']:.2f} | {r['ssim']:.3f} |" for r in report["orientations"]]
    lines += [
        f"| average of {r['copies']} orientations | {r['psnr']:.2f} | {r['ssim']:.3f} |" for r in report["ensembles"]
    ]
    if report["largest_swing"]:
        lines += [
            "",
            f"Spread of the orientations' means: {report['spread_psnr']:.2f} dB. One image's best and worst "
            f"orientation differ by {report['mean_swing_psnr']:.2f} dB on average, by "
            f"{report['largest_swing']['psnr']:.2f} dB at most ({report['largest_swing']['image']}).",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", type=Path, default=EVAL15, help="paired set: DATA/low and DATA/high (default: eval15)"
    )
    parser.add_argument("--model", default=None, help="bundle directory (default: the shipped model)")
    parser.add_argument("--max-pairs", type=int, default=None, help="only the first N pairs")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    a = parser.parse_args()
    if not (a.data / "low").is_dir() or not (a.data / "high").is_dir():
        raise SystemExit(f"{a.data} has no low/ and high/ folders")
    report = orientation_report(a.data, a.model, a.max_pairs)
    print(table(report))
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
