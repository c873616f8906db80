"""Rate-distortion of image models by real coding: ``nvc-train eval`` on folders of images.

Every image (PNG 8/16 bit, JPEG, PPM, BMP; a Kodak-style folder) is coded by every model —
an integer image checkpoint with nvc-train's codec (family ``qat``), a float CompressAI image
state dict with CompressAI's own ``compress``/``decompress`` (family ``float``) — padded to
multiples of 64 by repeating the last row and column and cropped back. Rate: the bits of the
entropy-coded strings over the source's pixels; distortion: PSNR-RGB and MS-SSIM-RGB of the
reconstruction rounded to the source's levels (what the decoded PNG holds), means over
images as CompressAI's ``eval_model`` aggregates them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from nvc_train.errors import UserError, require_file
from nvc_train.eval.metrics import bits_of, ms_ssim, psnr

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp")


class ImageEvalModel(NamedTuple):
    """A model under evaluation: ``code(x) → (bits, decoded, latents_match)`` on a padded image,
    ``decoded`` a :class:`~nvc_train.codec.image_codec.DecodedImage` (its ``levels`` are what
    ``decode`` writes: the integer rounding of a pixel-exact checkpoint's samples)."""

    name: str
    family: str
    quality: int | None
    series: str | None
    code: Callable[[Tensor], tuple[int, Tensor, bool | None]]


def is_image_model_file(path: Path) -> bool:
    """Whether ``path`` is an integer image checkpoint or a float image state dict."""
    from nvc_train.quant.header import MAGIC, read_checkpoint_header

    with open(path, "rb") as f:
        if f.read(len(MAGIC)) == MAGIC:
            return read_checkpoint_header(path).image
    try:
        state_dict = _float_state_dict(path)
    except UserError:
        return False
    return "g_a.6.weight" in state_dict and "h_s.4.weight" in state_dict


def _float_state_dict(path: Path) -> dict:
    from nvc_train.models.image import read_image_state_dict

    return read_image_state_dict(str(path))


def collect_images(paths: list[str | Path]) -> list[Path]:
    """Image files, and the images in folders (recursively, natural order), in the order given."""
    from nvc_train.io.video import natural_key

    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted((f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                            and not f.name.startswith(".")), key=lambda f: [natural_key(Path(s)) for s in f.relative_to(p).parts])
            if not files:
                raise UserError(f"{p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            found += files
        else:
            found.append(require_file(p, "image"))
    return found


def load_image_eval_model(path: Path, device: str) -> ImageEvalModel:
    from nvc_train.quant.header import MAGIC

    with open(path, "rb") as f:
        integer = f.read(len(MAGIC)) == MAGIC
    if integer:
        from nvc_train.quant.image_export import load_image_checkpoint

        ck = load_image_checkpoint(path, device=device)
        codec = ck.codec

        def code_integer(x: Tensor):
            coded, encoded = codec.compress(x)
            decoded = codec.decompress(coded, x.device)
            bits = 8 * (len(coded.y_string) + len(coded.z_string))
            return bits, decoded, decoded.latent_sha256 == encoded.latent_sha256

        return ImageEvalModel(path.stem, "qat", ck.metadata.get("quality"), None, code_integer)
    from compressai.models import MeanScaleHyperprior, ScaleHyperprior

    state_dict = _float_state_dict(path)
    m = state_dict["g_a.6.weight"].shape[0]
    # mbt2018-mean's hyper-decoder ends with 2M channels (scales and means), bmshj2018's with M.
    cls = MeanScaleHyperprior if state_dict["h_s.4.weight"].shape[0] == 2 * m else ScaleHyperprior
    model = cls.from_state_dict(state_dict).to(device).eval()
    model.update(force=True)

    def code_float(x: Tensor):
        from nvc_train.codec.image_codec import DecodedImage

        result = model.compress(x)
        x_hat = model.decompress(result["strings"], result["shape"])["x_hat"]
        return bits_of(result["strings"]), DecodedImage(x_hat, ""), None

    return ImageEvalModel(path.stem, "float", None, None, code_float)


def evaluate_image(model: ImageEvalModel, path: Path, device: str) -> dict:
    """One image with one model: CompressAI-style results and the reconstruction."""
    from nvc_train.codec.image_codec import pad_image
    from nvc_train.io.images import read_image, to_unit_float

    image = read_image(path)
    x = to_unit_float(image.levels, image.bits).unsqueeze(0).to(device)
    height, width = x.shape[-2:]
    with torch.no_grad():
        start = time.perf_counter()
        bits, decoded, latents_match = model.code(pad_image(x))
        seconds = time.perf_counter() - start
    peak = 2**image.bits - 1
    x_hat = torch.from_numpy(decoded.levels(image.bits, height, width).astype("float32")) / peak
    x_hat = x_hat.unsqueeze(0).to(device)
    results = {"bpp": bits / (height * width), "psnr-rgb": psnr(x_hat, x), "coding_time": seconds}
    value = ms_ssim(x_hat, x)
    if value is not None:
        results["ms-ssim-rgb"] = value
    if latents_match is not None:
        results["latents_match"] = float(latents_match)
    return {"name": model.name, "image": path.name, "family": model.family, "results": results}
