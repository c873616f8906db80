"""The reproduction table: every method's RD curve per dataset, its BD-rate against its float
parent and against a classical anchor, and whether its decoding was verified on a second setting.

Input is what ``eval`` wrote, never a number typed again: per dataset, one CompressAI results
curve per method (its points are the per-quality ``eval`` results of that method's models) and
one per anchor codec (``eval --anchor``). Output: Markdown for people, JSON for programs (each
curve in CompressAI's results format), one RD plot per dataset.

BD-rate (Bjøntegaard, :mod:`nvc_train.eval.bdrate`) needs curves whose quality rises with rate;
a curve that dips is named in its cell with the offending points, never averaged in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nvc_train.eval.bdrate import bd_psnr, bd_rate

METHOD_LABELS = {
    "float": "float parent",
    "ptq": "PTQ (best of the observer × scheme search)",
    "qat": "QAT, integer hyperprior",
    "pixel-exact": "QAT, whole decoder integer (pixel-exact)",
    "float-control": "float, fine-tuned the same steps (control)",
}
"""What each method of ``nvc-train reproduce`` is, in the table's words."""

BD_METRICS = ("psnr-rgb", "psnr-yuv")


@dataclass(frozen=True)
class BD:
    """One BD comparison: rate difference (%) and quality difference (dB), or why there is none."""

    rate: float | None
    psnr: float | None
    error: str = ""

    def cell(self) -> str:
        if self.error:
            return f"n/a: {self.error}"
        return f"{self.rate:+.2f} % / {self.psnr:+.3f} dB"

    def as_dict(self) -> dict:
        return {"bd_rate": self.rate, "bd_psnr": self.psnr, "error": self.error or None}


def compare_curves(anchor: dict, test: dict, metric: str = "psnr-rgb") -> BD:
    """BD-rate and BD-PSNR of ``test`` against ``anchor`` (CompressAI curves, ``bpp`` as rate)."""
    ra, qa = anchor["results"]["bpp"], anchor["results"][metric]
    rt, qt = test["results"]["bpp"], test["results"][metric]
    labels = (anchor["name"], test["name"])
    try:
        return BD(bd_rate(ra, qa, rt, qt, labels), bd_psnr(ra, qa, rt, qt, labels))
    except ValueError as exc:
        return BD(None, None, str(exc))


def method_curve(method: str, points: list[tuple[int, str, dict]], description: str) -> dict:
    """A CompressAI results curve of one method: ``points`` are (quality, model name, the
    model's aggregated ``eval`` results), sorted here by quality."""
    points = sorted(points, key=lambda p: p[0])
    keys = [k for k in points[0][2] if all(k in p[2] for p in points)] if points else []
    results = {"q": [q for q, _, _ in points], "model": [name for _, name, _ in points]}
    results.update({k: [p[2][k] for p in points] for k in keys})
    return {"name": method, "description": description, "family": method, "results": results}


def dataset_table(curves: dict[str, dict], anchor: str | None, verification: dict[str, str]) -> dict:
    """BD comparisons of one dataset: ``{method: {"vs float": {metric: BD}, "vs <anchor>": …}}``."""
    rows = {}
    for name, curve in curves.items():
        row = {}
        if "float" in curves and name != "float" and curve.get("family") in METHOD_LABELS:
            row["vs float"] = {m: compare_curves(curves["float"], curve, m) for m in BD_METRICS}
        if anchor and anchor in curves and name != anchor:
            row[f"vs {anchor}"] = {m: compare_curves(curves[anchor], curve, m) for m in BD_METRICS}
        rows[name] = {"bd": row, "verified": verification.get(name, "")}
    return rows


def average(per_dataset: dict[str, dict], key: str, metric: str = "psnr-rgb") -> dict[str, BD]:
    """Each method's BD (``key``: "vs float" or "vs <anchor>") averaged over datasets, as papers
    average per-dataset BD-rates; a method with a failed comparison on any dataset has none."""
    out = {}
    for method in dict.fromkeys(m for rows in per_dataset.values() for m in rows):
        cells = [rows[method]["bd"].get(key, {}).get(metric) for rows in per_dataset.values() if method in rows]
        if not cells or any(c is None for c in cells):
            continue
        bad = [c for c in cells if c.error]
        if bad:
            out[method] = BD(None, None, f"{len(bad)} of {len(cells)} datasets have no BD value")
        else:
            out[method] = BD(float(np.mean([c.rate for c in cells])), float(np.mean([c.psnr for c in cells])))
    return out


def _fmt(v, digits: int) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def markdown(title: str, settings: list[str], datasets: dict[str, dict], anchor: str | None) -> str:
    """The table file. ``datasets``: name → {"curves", "rows" (:func:`dataset_table`), "about"}."""
    lines = [f"# {title}", ""] + [f"- {s}" for s in settings] + [""]
    keys = ["vs float"] + ([f"vs {anchor}"] if anchor else [])
    if len(datasets) > 1:
        lines += ["## Average over datasets (BD-rate / BD-PSNR, PSNR-RGB)", "",
                  "| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        per = {name: d["rows"] for name, d in datasets.items()}
        avgs = {k: average(per, k) for k in keys}
        for method in dict.fromkeys(m for d in per.values() for m in d):  # the datasets' own row order
            cells = [avgs[k][method].cell() if method in avgs[k] else "" for k in keys]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    for name, d in datasets.items():
        curves, rows = d["curves"], d["rows"]
        lines += [f"## {name}", "", d.get("about", ""), "",
                  "BD-rate / BD-PSNR at equal PSNR-RGB (PSNR-YUV in table.json); negative BD-rate: fewer bits.", "",
                  "| method | " + " | ".join(keys) + " | decoded on a second setting |",
                  "|---|" + "---|" * (len(keys) + 1)]
        for method, row in rows.items():
            cells = [row["bd"][k]["psnr-rgb"].cell() if k in row["bd"] else "—" for k in keys]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {row['verified'] or '—'} |")
        lines += ["", "| method | q | model | bpp | PSNR-RGB (dB) | PSNR-YUV (dB) | MS-SSIM-RGB | latents match | frames match |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for method, curve in curves.items():
            r = curve["results"]
            for i, model in enumerate(r["model"]):
                def get(key, digits):
                    return _fmt(r[key][i], digits) if key in r else "n/a"
                q = r["q"][i] if r.get("q") and r["q"][i] is not None else (f"CRF {int(r['crf'][i])}" if "crf" in r else "")
                lines.append(f"| {method} | {q} | {model} | {get('bpp', 4)} | {get('psnr-rgb', 2)} | {get('psnr-yuv', 2)} "
                             f"| {get('ms-ssim-rgb', 4)} | {get('latents_match', 3)} | {get('frames_match', 3)} |")
        lines += ["", f"RD plot: `{d['plot']}`" if d.get("plot") else "", ""]
    return "\n".join(lines).rstrip() + "\n"


def as_json(title: str, settings: list[str], datasets: dict[str, dict], anchor: str | None) -> dict:
    keys = ["vs float"] + ([f"vs {anchor}"] if anchor else [])
    per = {name: d["rows"] for name, d in datasets.items()}
    return {
        "title": title, "settings": settings, "anchor": anchor,
        "datasets": {name: {"about": d.get("about", ""), "curves": d["curves"],
                            "bd": {m: {k: {metric: bd.as_dict() for metric, bd in v.items()} for k, v in row["bd"].items()}
                                   for m, row in d["rows"].items()},
                            "verified": {m: row["verified"] for m, row in d["rows"].items()}}
                     for name, d in datasets.items()},
        "average": {k: {m: bd.as_dict() for m, bd in average(per, k).items()} for k in keys},
    }
