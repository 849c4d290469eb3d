"""Contact sheets: before, after and reference thumbnails of chosen images, one row per image.

Each photo is read by its ``rel_path`` under the run's own folders (``llie.audit.sources``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from llie.audit.figures import Plot, figure, png_bytes
from llie.audit.flagged import FlaggedImage
from llie.audit.sources import PhotoRoots
from llie.audit.summary import ImageScore
from llie.audit.text import DIGITS
from llie.batch import storage

THUMB = 192  # longest side of a contact-sheet thumbnail, pixels


def _thumbnail(data: bytes | None) -> tuple[np.ndarray | None, int | None]:
    """(uint8 thumbnail, file size) of an image's bytes, or (None, None) when it could not be read."""
    if data is None:
        return None, None
    try:
        from PIL import Image, ImageOps

        with Image.open(io.BytesIO(data)) as img:
            if img.mode in ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr"):
                img.draft("RGB", (THUMB * 2, THUMB * 2))  # JPEG: decode at a reduced scale
                thumb = ImageOps.exif_transpose(img).convert("RGB")
                thumb.thumbnail((THUMB, THUMB))
                return np.asarray(thumb), len(data)
        # 16-bit and other high-depth modes: llie's own decoder scales them right.
        from llie.batch.imageio import decode_image
        from llie.metrics import quantize8

        rgb = quantize8(decode_image(data).rgb)
        thumb = Image.fromarray(rgb)
        thumb.thumbnail((THUMB, THUMB))
        return np.asarray(thumb), len(data)
    except Exception:
        return None, len(data)


def _short(text: str, width: int = 34) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def flagged_sheet(
    flagged: list[FlaggedImage], roots: PhotoRoots, storage_options: storage.StorageOptions = None
) -> Plot | None:
    """Before and after of the images a run without references flagged, each titled with what flagged it."""
    labels = [f"after: {f.reason} ({f.image.value:.3f})" for f in flagged]
    title = "Photos to look at (no references: picked by no-reference statistics)"
    images = [f.image for f in flagged]
    return contact_sheet(images, Sheet(title, "contact_flagged", "psnr", tuple(labels)), roots, storage_options)


@dataclass(frozen=True)
class Sheet:
    """What a contact sheet is called, and what titles its after column."""

    title: str
    name: str  # the plot's name (its id in the report)
    rank_by: str = "psnr"  # the metric the after column names, with its value
    after_labels: tuple[str, ...] = ()  # one per image, in place of the metric's value


def contact_sheet(
    images: list[ImageScore], sheet: Sheet, roots: PhotoRoots, storage_options: storage.StorageOptions = None
) -> Plot | None:
    """One row per image: before (input), after (output) and, if known, the reference; each read by its
    rel_path under the run's own folders (``llie.audit.sources``), never from a path a row names."""
    if not images:
        return None
    columns = ["before", "after"] + (["reference"] if roots.reference else [])
    fig = figure(2.5 * len(columns) + 0.4, 2.3 * len(images) + 0.5)
    axes = np.atleast_2d(fig.subplots(len(images), len(columns)))
    title, rank_by, after_labels = sheet.title, sheet.rank_by, sheet.after_labels
    fig.suptitle(title, fontsize=11)
    d = DIGITS[rank_by]
    for k, (row, item) in enumerate(zip(axes, images)):
        for ax, col in zip(row, columns):
            thumb, size = _thumbnail(roots.read(col, item.rel_path, storage_options))
            ax.set_xticks([])
            ax.set_yticks([])
            if thumb is None:
                ax.text(
                    0.5, 0.5, "unavailable", ha="center", va="center", fontsize=9, color="gray", transform=ax.transAxes
                )
            else:
                ax.imshow(thumb, interpolation="antialiased")
            if col == "before":
                ax.set_title(f"before: {_short(item.rel_path)}", fontsize=8, loc="left")
            elif col == "after" and after_labels:
                ax.set_title(after_labels[k], fontsize=8, loc="left")
            elif col == "after":
                label = f"after: {rank_by} {item.value:.{d}f}"
                if item.ssim is not None and rank_by != "ssim":
                    label += f", ssim {item.ssim:.3f}"
                if size is not None and item.bytes_out is not None and size != item.bytes_out:
                    label += "\n(file rewritten since this run)"
                ax.set_title(label, fontsize=8, loc="left")
            else:
                ax.set_title("reference", fontsize=8, loc="left")
    return Plot(sheet.name, title, png_bytes(fig))
