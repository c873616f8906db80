"""``nvc-train export-onnx``: an integer checkpoint's networks as ONNX graphs, in one folder.

Layout of ``DIR``::

    onnx.json                    what the folder holds (see below)
    entropy.json                 the entropy tables: per part, the medians and CompressAI's
                                 quantized CDFs, CDF lengths and offsets of z and y
    <part>.mean.onnx             (keyframe, motion, residual) z_int → means
    <part>.scale.onnx            z_int → CDF indexes
    synth.img|motion|res.onnx    pixel-exact checkpoints: latents → samples / motion
    pixels.predict|reconstruct|reference|levels.onnx
    layers/<decoder>.layer<i>.onnx   one layer's accumulators (conformance, self-test)

``onnx.json`` records the checkpoint's SHA-256 (each graph carries it too, in its metadata
``nvc_train.checkpoint_sha256``), the opset, the operators used, each graph's file, SHA-256,
inputs and outputs, and the constants a decoder needs (``input_frac_bits``, the scale-space
volume's levels, the flow reference). The folder is written beside its final place and
renamed into it, so an interrupted export leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import onnx

from nvc_train.portable import networks
from nvc_train.portable.graph import IR_VERSION, OPSET, float_values, operators

FOLDER_FORMAT = 1
MANIFEST = "onnx.json"
ENTROPY = "entropy.json"


def _io(values) -> list[dict]:
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        out.append({"name": v.name, "type": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims})
    return out


def checkpoint_graphs(ck, float_twin: bool = False):
    """(name, file, ModelProto) of every graph of an :class:`IntegerCheckpoint`, in order."""
    from nvc_train.quant.conformance import _decoders, layer_input_bound

    codec = ck.codec
    meta = {"nvc_train.checkpoint_sha256": ck.sha256, "nvc_train.float_twin": str(float_twin).lower()}
    for name, dec in _decoders(codec, synthesis=True):
        bound = layer_input_bound(codec, name, dec, 0)
        yield name, f"{name}.onnx", networks.decoder_graph(name, dec, bound, {**meta, "nvc_train.graph": name}, float_twin)
        for layer in range(dec.num_layers):
            lname = f"{name}.layer{layer}"
            yield lname, f"layers/{lname}.onnx", networks.layer_graph(name, dec, layer, bound,
                                                                      {**meta, "nvc_train.graph": lname})
    if codec.pixels is not None:
        px = codec.pixels
        steps = {
            "pixels.predict": lambda m: networks.predict_graph(px.num_levels, px.sigma0, px.flow_reference, m),
            "pixels.reconstruct": networks.reconstruct_graph,
            "pixels.reference": networks.reference_graph,
            "pixels.levels": networks.levels_graph,
        }
        for name, build in steps.items():
            yield name, f"{name}.onnx", build({**meta, "nvc_train.graph": name})


def entropy_tables(ck) -> dict:
    """Per part: ``median_q`` and CompressAI's tables for z (EntropyBottleneck, one per
    channel) and y (GaussianConditional, one per scale index), as plain integer lists."""
    out = {}
    for part, ihp in ck.codec.hyperpriors.items():
        eb, gc = ihp.hp.entropy_bottleneck, ihp.hp.gaussian_conditional
        out[part] = {"median_q": ihp.median_q.tolist(), **{
            name: {"quantized_cdf": m._quantized_cdf.tolist(), "cdf_length": m._cdf_length.reshape(-1).tolist(),
                   "offset": m._offset.reshape(-1).tolist()} for name, m in (("z", eb), ("y", gc))}}
    return out


def export_onnx(ck, out_dir: Path, overwrite: bool = False, float_twin: bool = False, progress=None) -> dict:
    """Write the ONNX folder of a loaded integer checkpoint; returns its manifest.

    ``float_twin`` writes the control instead: every convolution as a float32 ``Conv``
    (not exact; for tests that must see a float implementation differ).
    """
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "layers").mkdir(parents=True)
    graphs, used = {}, set()
    for name, file, model in checkpoint_graphs(ck, float_twin):
        data = model.SerializeToString()
        (staging / file).write_bytes(data)
        if not float_twin and float_values(model):
            raise AssertionError(f"graph {name} holds float values: {float_values(model)[:3]}")
        used.update(operators(model))
        graphs[name] = {"file": file, "sha256": hashlib.sha256(data).hexdigest(),
                        "inputs": _io(model.graph.input), "outputs": _io(model.graph.output)}
        if progress:
            progress(name)
    (staging / ENTROPY).write_text(json.dumps(entropy_tables(ck)))
    px = ck.codec.pixels
    manifest = {
        "format": FOLDER_FORMAT,
        "checkpoint_sha256": ck.sha256,
        "checkpoint_kind": "pixel-exact" if px is not None else "hyperprior-integer",
        "float_twin": float_twin,
        "opset": OPSET, "ir_version": IR_VERSION,
        "operators": sorted(used),
        "input_frac_bits": next(iter(ck.codec.hyperpriors.values())).input_frac_bits,
        "pixels": None if px is None else {"num_levels": px.num_levels, "sigma0": px.sigma0,
                                           "flow_reference": px.flow_reference},
        "entropy": {"file": ENTROPY, "sha256": hashlib.sha256((staging / ENTROPY).read_bytes()).hexdigest()},
        "graphs": graphs,
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    if out_dir.exists():
        if not overwrite:
            shutil.rmtree(staging)
            raise FileExistsError(out_dir)
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(staging, out_dir)
    return manifest
