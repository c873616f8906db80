"""ONNX Runtime decoding: a folder from ``nvc-train export-onnx`` in place of the PyTorch decoders.

:func:`load_onnx_folder` checks the folder against its checkpoint (the checkpoint's SHA-256,
every file's SHA-256, integer-only graphs, the opset); its sessions open on first use;
:func:`onnx_codec` returns the checkpoint's :class:`IntegerSSF` with every integer network
replaced by its ONNX Runtime session. The entropy decoding stays CompressAI's rANS with the
checkpoint's tables, so everything but the networks is shared with ``--runtime torch`` and
the decoded latents, frame MD5s and conformance hashes compare one to one.

Then a self-test, as loading a checkpoint does for PyTorch (:func:`onnx_codec`): every layer
graph at a stress input built from its weights against the host's float64 reference, and the
small conformance record against the stored hashes. A runtime whose integer convolution
saturates is refused with one line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from nvc_train.errors import UserError
from nvc_train.portable.export import MANIFEST

OPSET_RUNTIME = {17: (1, 12)}
"""Oldest ONNX Runtime (major, minor) that runs each opset the graphs may carry."""


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("--runtime onnx needs ONNX Runtime: pip install 'nvc-train[onnx]' (or onnxruntime)") from None
    return onnxruntime


_SHARED_ARENA: list[bool] = []


def _shared_arena(ort) -> bool:
    """One CPU memory arena for every session of this process (registered once). With an
    arena per session, each keeps its own peak: the 43 sessions of a pixel-exact folder held
    4.6 GB after a 768×512 conformance run; three decoders shared 505 MB instead of 1350 MB,
    and ran faster (BENCHMARKS.md, "ONNX Runtime decoding")."""
    if not _SHARED_ARENA:
        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _SHARED_ARENA.append(True)
        except Exception:  # noqa: BLE001 (already registered by the host program, or an old runtime)
            _SHARED_ARENA.append(False)
    return _SHARED_ARENA[0]


class OnnxFolder:
    """The sessions of one export folder, opened lazily (layer graphs are needed only by
    conformance and the self-test)."""

    def __init__(self, path: Path, manifest: dict, threads: int | None = None):
        self.path = path
        self.manifest = manifest
        self.threads = threads
        self._sessions: dict[str, object] = {}
        self.temporary = None  # a TemporaryDirectory holding the folder, if any

    def session(self, name: str):
        if name not in self._sessions:
            ort = _import_onnxruntime()
            options = ort.SessionOptions()
            options.log_severity_level = 3  # errors only: no per-session warnings on stderr
            if self.threads:
                options.intra_op_num_threads = self.threads
            # Memory patterns pre-plan every intermediate of a run: synth.res at 768×512 peaked at
            # 0.9 GB with them, 0.5 GB without, and ran no faster with them.
            options.enable_mem_pattern = False
            if _shared_arena(ort):
                options.add_session_config_entry("session.use_env_allocators", "1")
            if ".layer" in name:  # run once by the self-test: optimizing them took 6× longer than running
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            file = self.path / self.manifest["graphs"][name]["file"]
            try:
                self._sessions[name] = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # noqa: BLE001 (ONNX Runtime raises its own exception types)
                raise UserError(f"ONNX Runtime {ort.__version__} cannot load {file} "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        return self._sessions[name]

    def run(self, name: str, *inputs: Tensor | np.ndarray) -> list[np.ndarray]:
        sess = self.session(name)
        feeds = {}
        for meta, value in zip(sess.get_inputs(), inputs):
            if isinstance(value, Tensor):
                value = value.detach().cpu().numpy()
            feeds[meta.name] = np.ascontiguousarray(value, dtype=np.int64)
        return sess.run(None, feeds)

    def tensor(self, name: str, *inputs) -> Tensor:
        return torch.from_numpy(self.run(name, *inputs)[0])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_onnx_folder(folder: str | Path, checkpoint_sha256: str, require_integer: bool = True,
                     threads: int | None = None) -> OnnxFolder:
    """Open an export folder for the checkpoint of ``checkpoint_sha256``; every problem is a
    one-line :class:`UserError`: not a folder, another checkpoint's folder, an edited file,
    a float graph, an ONNX Runtime too old for the opset."""
    import onnx

    from nvc_train.portable.graph import float_values

    path = Path(folder)
    if not (path / MANIFEST).is_file():
        raise UserError(f"{path} is not an ONNX folder of nvc-train (no {MANIFEST}): "
                        "write one with `nvc-train export-onnx CKPT --out-dir DIR`")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        graphs = manifest["graphs"]
        opset = int(manifest["opset"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path / MANIFEST} is not a valid manifest ({exc})") from None
    if manifest.get("checkpoint_sha256") != checkpoint_sha256:
        raise UserError(f"{path} holds the graphs of checkpoint {str(manifest.get('checkpoint_sha256'))[:8]}, "
                        f"not of this checkpoint ({checkpoint_sha256[:8]}): export it again with "
                        "`nvc-train export-onnx CKPT --out-dir DIR`")
    ort = _import_onnxruntime()
    have = tuple(int(p) for p in ort.__version__.split(".")[:2] if p.isdigit())
    need = OPSET_RUNTIME.get(opset)
    if need is None or have < need:
        wanted = f"{need[0]}.{need[1]}" if need else "a release that knows it"
        raise UserError(f"{path}: its graphs use ONNX opset {opset}; ONNX Runtime {ort.__version__} is too old "
                        f"for it: install onnxruntime >= {wanted}")
    for name, entry in {**graphs, "entropy tables": manifest["entropy"]}.items():
        file = path / entry["file"]
        if not file.is_file() or _sha256(file) != entry["sha256"]:
            raise UserError(f"{file} is missing or differs from what {MANIFEST} records (edited or damaged): "
                            "export the folder again")
        if require_integer and name != "entropy tables":
            model = onnx.load(str(file))
            if model.metadata_props and {p.key: p.value for p in model.metadata_props}.get(
                    "nvc_train.checkpoint_sha256") != checkpoint_sha256:
                raise UserError(f"{file} was exported from another checkpoint")
            floats = float_values(model)
            if floats:
                raise UserError(f"{file} computes with floats ({', '.join(floats[:3])}): not an integer graph")
    return OnnxFolder(path, manifest, threads)


class OnnxDecoder(nn.Module):
    """A frozen integer decoder whose computation runs in ONNX Runtime; the stored integer
    tensors (for the conformance stress inputs) stay those of ``frozen``."""

    def __init__(self, frozen, folder: OnnxFolder, name: str):
        super().__init__()
        self.frozen = frozen
        self.folder = folder
        self.graph = name

    def __getattr__(self, key: str):
        # Everything but the computation is the frozen decoder's: ``num_layers``,
        # ``layer_weight``, ``activation_range``, its buffers (``layer0_acc_bound`` …).
        try:
            return super().__getattr__(key)
        except AttributeError:
            return getattr(self.__dict__["_modules"]["frozen"], key)

    def forward(self, x: Tensor) -> Tensor:
        return self.folder.tensor(self.graph, x)

    def layer_accumulator(self, i: int, x: Tensor, path: str | None = None) -> Tensor:
        return self.folder.tensor(f"{self.graph}.layer{i}", x)


class OnnxPixelDecoder(nn.Module):
    """:class:`IntegerPixelDecoder`'s three steps in ONNX Runtime."""

    def __init__(self, frozen, folder: OnnxFolder):
        super().__init__()
        self.decoders = nn.ModuleDict({name: OnnxDecoder(dec, folder, f"synth.{name}")
                                       for name, dec in frozen.decoders.items()})
        self.folder = folder
        self.flow_reference, self.num_levels, self.sigma0 = frozen.flow_reference, frozen.num_levels, frozen.sigma0

    def keyframe(self, y_int: Tensor) -> Tensor:
        return self.folder.tensor("pixels.reference", self.decoders["img"](y_int))

    def predict(self, ref: Tensor, y_motion_int: Tensor) -> Tensor:
        return self.folder.tensor("pixels.predict", ref, self.decoders["motion"](y_motion_int))

    def reconstruct(self, pred: Tensor, y_res_int: Tensor, y_motion_int: Tensor) -> Tensor:
        residual = self.decoders["res"](torch.cat((y_res_int, y_motion_int), dim=1))
        return self.folder.tensor("pixels.reconstruct", pred, residual)


def onnx_codec(codec, folder: OnnxFolder, source: str = "ONNX folder", self_check: bool = True, conformance=None):
    """``codec`` (an :class:`IntegerSSF`) with its networks replaced by ``folder``'s sessions.

    With ``self_check``, before anything is decoded (a few seconds): every layer graph at a
    stress input built from its weights (accumulators at the proven bound) against the
    host's float64 reference, and the ``small`` conformance record (128×128, I P P: every
    decoder and pixel graph on real latents) against the hashes the exporting machine stored
    in ``conformance``. A runtime or folder that computes any of them differently is refused
    with one line naming them. (Each decoder at its stress input is a conformance check.)
    """
    from nvc_train.quant.conformance import _bitstream_checks, path_problems

    for part, ihp in codec.hyperpriors.items():
        ihp.mean_decoder = OnnxDecoder(ihp.mean_decoder, folder, f"{part}.mean")
        ihp.scale_decoder = OnnxDecoder(ihp.scale_decoder, folder, f"{part}.scale")
    if codec.pixels is not None:
        codec.pixels = OnnxPixelDecoder(codec.pixels, folder)
    if self_check:
        problems = [f"{p.removesuffix(' on the onnx path')}" for p in path_problems(codec, torch.device("cpu"), ["onnx"])]
        for rec in (conformance.records if conformance is not None else []):
            if rec["name"] == "small":  # a 128×128 I P P stream: every graph on real latents
                problems += [f"the small record's {c.item}" for c in
                             _bitstream_checks(codec, conformance, rec, torch.device("cpu")) if not c.ok]
        if problems:
            raise UserError(f"{source}: refused: ONNX Runtime computes {', '.join(problems)} differently from the "
                            "contract's integers — it would mis-decode; `nvc-train conformance --onnx DIR` shows every check")
    return codec


def run_in_onnx_runtime(ck, folder=None, threads: int | None = None, self_check: bool = True):
    """Put a loaded :class:`IntegerCheckpoint`'s networks in ONNX Runtime; returns ``ck``.

    ``folder``: its `export-onnx` folder (checked against the checkpoint); None exports one
    to a temporary folder that lives as long as the sessions. Then :func:`onnx_codec`, with
    the load-time self-test unless ``self_check`` is False."""
    temporary = None
    if folder is None:
        import tempfile

        from nvc_train.portable.export import export_onnx

        temporary = tempfile.TemporaryDirectory(prefix="nvc-onnx-")
        folder = Path(temporary.name) / "onnx"
        export_onnx(ck, folder)
    loaded = load_onnx_folder(folder, ck.sha256, threads=threads)
    loaded.temporary = temporary  # removed when the sessions go
    onnx_codec(ck.codec, loaded, str(folder), self_check, ck.conformance)
    return ck
