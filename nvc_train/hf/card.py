"""The Hub model card of a published integer checkpoint (README.md with a YAML header).

The header is written with ``huggingface_hub``'s own ``ModelCardData``/``EvalResult`` so it
follows the Hub's conventions (``license``, ``library_name``, ``tags``, ``base_model``,
``datasets``, ``model-index``); the body states what a user needs to trust and use the
checkpoint: the integer contract, bit widths, quality and λ, the payload SHA-256, the
conformance records and the command that checks them, the training data, and the RD results
and BD-rate that ``nvc-train eval`` measured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

from nvc_train.errors import UserError

LIBRARY = "nvc-train"
TAGS = ["video-compression", "learned-video-compression", "scale-space-flow", "compressai", "nvc-train",
        "integer-hyperprior", "deterministic-decoding"]
TASK = "video-compression"
IMAGE_TAGS = ["image-compression", "learned-image-compression", "compressai", "nvc-train", "integer-hyperprior",
              "deterministic-decoding"]
IMAGE_TASK = "image-compression"
METRICS = ("bpp", "psnr-rgb", "psnr-yuv", "ms-ssim-rgb")
"""Results copied into ``model-index``, as ``nvc-train eval`` names them (CompressAI's keys)."""
ZOO_LICENSE = "bsd-3-clause-clear"
"""CompressAI's licence, under which its pretrained weights are published."""


class EvalPoint(NamedTuple):
    """One model's aggregated RD results from an ``nvc-train eval`` folder."""

    family: str  # "qat", "ptq" or "float"
    results: dict[str, float]  # METRICS present in the eval JSON
    sequences: list[str]  # the sequences it was measured on


class EvalSummary(NamedTuple):
    """What an eval folder says about the published checkpoint (and its float parent)."""

    point: EvalPoint
    parent: EvalPoint | None
    bd_rate: float | None  # % of the checkpoint's family against the float family, BD over psnr-rgb
    folder: Path


def read_eval(folder: Path, model: str, parent: str | None) -> EvalSummary:
    """The checkpoint's point (and the parent's) from ``nvc-train eval --out-dir FOLDER``.

    ``model``/``parent`` are file names without suffix, as eval names its models.
    """
    from nvc_train.eval.bdrate import bd_rate

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--eval {folder}: not a folder (give the --out-dir folder of `nvc-train eval`)")
    curves = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            results = data["results"]
            names = results["model"] if "model" in results else results["q"]  # "q" held names before 0.2
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            continue  # not a results file of eval
        curves[data.get("name", path.stem)] = (names, results)

    def point(name: str) -> EvalPoint | None:
        for family, (names, results) in curves.items():
            if name in names:
                i = names.index(name)
                values = {k: float(results[k][i]) for k in METRICS if k in results}
                sequences = sorted(p.name.removesuffix(f"-{name}.json")
                                   for p in (folder / "sequences").glob(f"*-{name}.json"))
                return EvalPoint(family, values, sequences)
        return None

    ours = point(model)
    if ours is None:
        known = sorted(n for names, _ in curves.values() for n in names)
        raise UserError(f"--eval {folder} has no results for {model} (it has: {', '.join(known) or 'none'}); "
                        f"run `nvc-train eval --checkpoint {model}.ckpt …` into it")
    rate = None
    if "float" in curves and ours.family != "float":
        (_, anchor), (_, test) = curves["float"], curves[ours.family]
        try:
            rate = bd_rate(anchor["bpp"], anchor["psnr-rgb"], test["bpp"], test["psnr-rgb"])
        except (ValueError, KeyError):
            rate = None  # too few points or a non-monotone curve: no BD-rate is stated
    return EvalSummary(ours, point(parent) if parent else None, rate, folder)


def model_card(
    *,
    repo_id: str,
    checkpoint: str,
    digest: str,
    metadata: dict,
    conformance: str,
    float_parent: str | None,
    evaluation: EvalSummary | None,
    license: str | None,
    base_model: str | None,
    datasets: list[str],
    verified: dict | None = None,
) -> str:
    """README.md text: YAML header (Hub conventions) + body."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    zoo_name = (metadata.get("config") or {}).get("model", {}).get("pretrained") or None
    architecture = metadata.get("architecture", "ssf2020")
    image = architecture != "ssf2020"
    eval_results = None
    if evaluation is not None:
        sequences = evaluation.point.sequences
        dataset = f"{len(sequences)} sequences: {', '.join(sequences)}" if sequences else "nvc-train eval sequences"
        eval_results = [EvalResult(task_type=IMAGE_TASK if image else TASK,
                                   task_name="Image compression" if image else "Video compression",
                                   dataset_type="nvc-train-eval", dataset_name=dataset, metric_type=metric,
                                   metric_name=metric, metric_value=value)
                        for metric, value in evaluation.point.results.items()]
    data = ModelCardData(
        license=license or (ZOO_LICENSE if zoo_name else "other"), library_name=LIBRARY,
        tags=[*IMAGE_TAGS, architecture] if image else TAGS,
        base_model=base_model, datasets=datasets or None, model_name=repo_id.split("/")[-1],
        eval_results=eval_results, metrics=list(evaluation.point.results) if evaluation else None,
    )
    quant = metadata.get("quant") or {}
    if image:
        intro, use, widths = _image_lines(repo_id, architecture, metadata, quant)
    else:
        intro, use, widths = _video_lines(repo_id, metadata, quant)
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        *intro,
        "",
        "## Use",
        "",
        "```bash",
        "pip install nvc-train",
        f"nvc-train conformance hf://{repo_id}            # check this machine decodes it exactly",
        *use,
        "```",
        "",
        "## Checkpoint",
        "",
        f"- file: `{checkpoint}`",
        f"- SHA-256 of the payload: `{digest}`",
        f"- integer contract: checkpoint format {metadata.get('format_version')}; "
        f"{_contract_line(metadata.get('contract') or {})}",
        *widths,
        f"- quality: {metadata.get('quality')}, λ: {metadata.get('lmbda')}",
        f"- conformance records: {conformance}; `nvc-train conformance hf://{repo_id}` decodes them all "
        "(exit status 0 only if every hash matches)",
        f"- training data: {metadata.get('training_data')}",
        f"- started from: {_origin_line(zoo_name, base_model, metadata.get('init_weights'))}",
        f"- float parent: {f'`{float_parent}` in this repository' if float_parent else 'not published'}",
        f"- packages: {metadata.get('packages')}",
        "",
        "## Rate-distortion",
        "",
    ]
    lines += _results_lines(evaluation)
    lines += ["", "## Verified environments", ""] + _environment_lines(verified, repo_id, image)
    lines += ["", "## Resolved training config", "", "```json",
              json.dumps(metadata.get("config"), indent=2, sort_keys=True, default=str), "```"]
    # Parsed back by the Hub's own reader: a header it cannot read is an error here, not on the Hub.
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n").content


def _video_lines(repo_id: str, metadata: dict, quant: dict) -> tuple[list[str], list[str], list[str]]:
    """(introduction, usage commands, bit-width lines) of an SSF checkpoint's card."""
    intro = (["Scale-Space Flow video codec (CompressAI's `ssf2020` architecture) whose whole decoder is exact",
              "integer arithmetic: a bitstream decodes to identical frames (MD5) on every machine, CPU or GPU,",
              "under nvc-train's integer contract (`docs/integer-contract.md` in the nvc-train repository,",
              "\"Pixel path\"). `nvc-train decode --md5` prints each frame's MD5."]
             if quant.get("scope") == "decoder" else
             ["Scale-Space Flow video codec (CompressAI's `ssf2020` architecture) whose hyperprior decoding",
              "is exact integer arithmetic: a bitstream decodes to bit-identical latents on every machine,",
              "CPU or GPU, under nvc-train's integer contract (`docs/integer-contract.md` in the nvc-train",
              "repository)."])
    use = [f"nvc-train encode clip.mp4 -o clip.nvc --checkpoint hf://{repo_id}",
           f"nvc-train decode clip.nvc -o clip.y4m --checkpoint hf://{repo_id}"]
    widths = [f"- bit widths: weights int8 per output channel, activations {quant.get('activation_bits', '?')}-bit, "
              f"hyper-latent inputs with {quant.get('input_frac_bits', '?')} fractional bits"
              + (f"; synthesis decoders int8 weights, {quant.get('decoder_activation_bits')}-bit activations"
                 if quant.get("scope") == "decoder" else ""),
              f"- flow reference: {metadata.get('flow_reference') or 'none (CompressAI flow units)'}"]
    return intro, use, widths


def _image_lines(repo_id: str, architecture: str, metadata: dict, quant: dict) -> tuple[list[str], list[str], list[str]]:
    """(introduction, usage commands, bit-width lines) of an image checkpoint's card."""
    pixel_exact = quant.get("scope") == "decoder"
    intro = ([f"CompressAI's `{architecture}` image codec whose whole decoder is exact integer arithmetic (its",
              "inverse GDN included): a `.nvc` image stream decodes to the same image (MD5) on every machine,",
              "CPU or GPU, under nvc-train's integer contract (`docs/integer-contract.md` in the nvc-train",
              "repository, \"Pixel-exact images\"). `nvc-train decode --md5` prints the image's MD5."]
             if pixel_exact else
             [f"CompressAI's `{architecture}` image codec whose hyper-decoder is exact integer arithmetic: a `.nvc`",
              "image stream decodes to bit-identical latents on every machine, CPU or GPU, under nvc-train's",
              "integer contract (`docs/integer-contract.md` in the nvc-train repository, \"Image",
              "architectures\"). The synthesis is CompressAI's float one: pixels may differ in the last level."])
    use = [f"nvc-train encode photo.png -o photo.nvc --checkpoint hf://{repo_id}",
           f"nvc-train decode photo.nvc -o photo-decoded.png --checkpoint hf://{repo_id}"]
    channels = metadata.get("channels") or ["?", "?"]
    widths = [f"- architecture: `{architecture}`, N={channels[0]}, M={channels[1]}",
              f"- bit widths: weights int8 per output channel, hyper-decoder activations "
              f"{quant.get('activation_bits', '?')}-bit, hyper-latent inputs with {quant.get('input_frac_bits', '?')} "
              "fractional bits"
              + (f"; synthesis int8 weights, {quant.get('decoder_activation_bits')}-bit signed activations, "
                 "inverse GDN with γ in [0, 2047] and exact integer square roots" if pixel_exact else
                 "; synthesis: CompressAI's float `g_s`")]
    return intro, use, widths


def _environment_lines(verified: dict | None, repo_id: str, image: bool = False) -> list[str]:
    """Where this checkpoint was shown to decode identically: the rows of an ``nvc-train
    cross-check --report`` entry, or only the publishing machine."""
    if image:
        return ["Every conformance record decoded exactly on the publishing machine (the load-time self-test",
                "runs every layer on every GEMM path the machine has). `nvc-train cross-check` does not cover",
                "image checkpoints yet; `nvc-train hashes photo.nvc --checkpoint …` on two machines, compared",
                "with `nvc-train compare`, shows them identical."]
    if verified is None:
        return ["Every conformance record decoded exactly on the publishing machine. No cross-check report was",
                f"given: `nvc-train cross-check {repo_id.split('/')[-1]}.ckpt --report R.json` runs the matrix (CPU "
                "kernel levels, threads, oneDNN, another PyTorch release, aarch64 under qemu-user, CUDA) and",
                "`nvc-train publish --cross-check R.json` lists it here."]
    lines = [f"`{verified['command']}` on {verified['date']}: the same latents"
             + (" and frames" if any(r["frames"] for r in verified["rows"]) else "")
             + " as the reference row in every environment below, conformance records included.", "",
             "| environment | decoder reported | conformance | latents | frames | float control |",
             "|---|---|---|---|---|---|"]
    for r in verified["rows"]:
        frames = f"{r['frames'][0]}/{r['frames'][1]}" if r["frames"] else "n/a"
        control = ("reference" if r is verified["rows"][0] else
                   f"differs ({r['control_raw_differ'][0]}/{r['control_raw_differ'][1]} frames)"
                   if r["control_discriminates"] else "identical (did not discriminate)")
        lines.append(f"| {r['environment']} | {r['described']} | {r['conformance'][0]}/{r['conformance'][1]} | "
                     f"{r['latents'][0]}/{r['latents'][1]} | {frames} | {control} |")
    lines += [f"| {s['environment']} | not run: {s['why']} | | | | |" for s in verified.get("skipped", [])]
    return lines


def _contract_line(contract: dict) -> str:
    return "; ".join(f"{k}: {v}" for k, v in sorted(contract.items())) or "see the checkpoint metadata"


def _origin_line(zoo_name: str | None, base_model: str | None, init_weights: str | None = None) -> str:
    parts = [f"the float weights {init_weights}"] if init_weights else []
    if zoo_name:
        parts.append(f"CompressAI's pretrained `{zoo_name}` (model zoo, torch hub)")
    if base_model:
        parts.append(f"[{base_model}](https://huggingface.co/{base_model})")
    return ", ".join(parts) or "random initialisation (see the config)"


def _results_lines(evaluation: EvalSummary | None) -> list[str]:
    if evaluation is None:
        return ["Not measured at publication (publish with `--eval OUT`, the folder of `nvc-train eval`)."]
    cols = [k for k in METRICS if k in evaluation.point.results]
    rows = [("this checkpoint", evaluation.point)]
    if evaluation.parent is not None:
        rows.append(("float parent", evaluation.parent))
    lines = ["| model | family | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for label, p in rows:
        lines.append(f"| {label} | {p.family} | " + " | ".join(_cell(p.results.get(c)) for c in cols) + " |")
    seqs = evaluation.point.sequences
    lines += ["", f"Measured by real encoding and decoding (`nvc-train eval`) on {len(seqs)} sequence(s): "
                  f"{', '.join(seqs) or 'unnamed'}."]
    if evaluation.bd_rate is not None:
        lines.append(f"BD-rate of the {evaluation.point.family} models against their float parents (PSNR-RGB): "
                     f"{evaluation.bd_rate:+.2f} %.")
    else:
        lines.append("BD-rate against the float parent: not known (the eval folder holds no float curve with "
                     "enough points).")
    return lines


def _cell(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
