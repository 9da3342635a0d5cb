"""Label quality you can see before training: LABELS/report.json and LABELS/contact_sheet.png.

report.json: per sample its valid share (trusted pixels) and left-right disagreement (mean |d_L - d_R| over the
pixels whose match lies inside the right view, and the share of those over --lr-threshold), the samples with
the lowest valid share first in `lowest_valid_share`, and which samples the contact sheet shows.

contact_sheet.png: one row per sample, left image | teacher disparity (turbo colour map, its own scale per row,
black = no value) | valid mask (white = trusted), with the sample's name and figures above the row. Its size is
bounded for big sets: at most `max_rows` rows (label --sheet-rows, default 32), each tile at most TILE_HEIGHT
pixels high (larger images are shrunk, smaller ones kept). When there are more samples than rows, the first
half of the rows shows the samples with the lowest valid share (the ones to look at) and the rest an even spread
over the remaining samples in name order, so that the sheet also shows what typical labels look like.

Everything is computed from what LABELS holds on disk, so a resumed run writes the same bytes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stereo_depth_ros.atomic_io import atomic_write_json

REPORT = "report.json"
SHEET = "contact_sheet.png"
TILE_HEIGHT = 160
CAPTION = 18  # pixels of caption strip above each row
LOWEST_LISTED = 10


def sheet_selection(records: dict[str, dict], max_rows: int) -> list[str]:
    """Names for the contact sheet: all (name order) when they fit, else the worst valid shares + a spread."""
    names = sorted(records)
    if len(names) <= max_rows:
        return names
    worst = sorted(names, key=lambda n: (records[n]["valid_share"], n))[: max_rows // 2]
    rest = [n for n in names if n not in set(worst)]
    spread_count = max_rows - len(worst)
    picks = np.linspace(0, len(rest) - 1, spread_count).round().astype(int) if spread_count else []
    return worst + [rest[i] for i in dict.fromkeys(int(i) for i in picks)]


def write_report(out: Path, manifest: dict[str, Any], dataset: Any, max_rows: int) -> dict[str, Any]:
    """Write LABELS/report.json and (when any sample is labelled and max_rows > 0) contact_sheet.png."""
    records: dict[str, dict] = manifest["samples"]
    shown = sheet_selection(records, max_rows) if max_rows else []
    sheet_path = out / SHEET
    if shown:
        samples = {sample.name: sample for sample in dataset}
        _write_sheet(sheet_path, [(name, samples[name], out / name, records[name]) for name in shown])
    else:
        sheet_path.unlink(missing_ok=True)
    report = {
        "teacher": {k: manifest["teacher"].get(k) for k in ("kind", "model", "checkpoint")},
        "thresholds": manifest["thresholds"],
        "summary": manifest["summary"],
        "lowest_valid_share": sorted(records, key=lambda n: (records[n]["valid_share"], n))[:LOWEST_LISTED],
        "contact_sheet": SHEET if shown else None,  # beside this report; relative, so moved LABELS stay right
        "contact_sheet_samples": shown,
        "samples": {name: {k: v for k, v in record.items() if k not in ("height", "width")}
                    for name, record in sorted(records.items())},
        "failures": manifest["failures"],
    }
    atomic_write_json(out / REPORT, report)
    return report


def _caption(name: str, record: dict) -> str:
    text = f"{name}  valid {record['valid_share']:.0%}"
    if record.get("lr_mean_px") is not None:
        text += f"  L-R {record['lr_mean_px']:.2f} px, {record['lr_inconsistent_share']:.0%} > thr"
    return text


def _row(sample: Any, label_dir: Path, record: dict) -> np.ndarray:
    """uint8 RGB: caption strip over left | disparity | valid, each tile shrunk to at most TILE_HEIGHT."""
    import cv2

    from stereo_devkit.outputs import colourise

    left, _ = sample.load_pair()
    disparity = np.load(label_dir / "disparity.npy")
    mask = cv2.imread(str(label_dir / "valid.png"), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise OSError(f"cannot read {label_dir / 'valid.png'}")
    valid = mask > 127
    trusted = disparity[valid & np.isfinite(disparity)]
    vmax = float(np.percentile(trusted, 99)) if trusted.size else None
    shown = np.where(disparity > 0, disparity, np.nan)  # 0 = the teacher had no value: black
    mask_rgb = np.repeat(np.where(valid, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
    tiles = [left, colourise(shown, 0.0, vmax), mask_rgb]
    height, width = left.shape[:2]
    if height > TILE_HEIGHT:
        size = (max(1, round(width * TILE_HEIGHT / height)), TILE_HEIGHT)
        tiles = [cv2.resize(t, size, interpolation=cv2.INTER_AREA if i == 0 else cv2.INTER_NEAREST)
                 for i, t in enumerate(tiles)]
    row = np.concatenate(tiles, axis=1)
    caption = np.full((CAPTION, row.shape[1], 3), 255, np.uint8)
    cv2.putText(caption, _caption(sample.name, record), (3, CAPTION - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([caption, row], axis=0)


def _write_sheet(path: Path, entries: list[tuple[str, Any, Path, dict]]) -> None:
    import cv2

    from stereo_depth_ros.dataset_layout import write_image

    rows = [_row(sample, label_dir, record) for _, sample, label_dir, record in entries]
    width = max(row.shape[1] for row in rows)
    tile_width = rows[0].shape[1] // 3
    # Samples of different sizes: pad each row on the right with grey.
    rows = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=96) for row in rows]
    header = np.full((CAPTION + 4, width, 3), 220, np.uint8)
    for column, text in enumerate(("left", "teacher disparity", "valid (white)")):
        cv2.putText(header, text, (column * tile_width + 3, CAPTION - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
    write_image(path, np.concatenate([header, *rows], axis=0))


__all__ = ["sheet_selection", "write_report"]
