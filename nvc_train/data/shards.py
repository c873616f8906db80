"""Footage as clip shards: windows of K frames cut once from every video, streamed to every node.

``prepare_shards(SRC, OUT)`` decodes each video file once and keeps a seeded choice of its
windows: K consecutive frames (at the stored size, after ``downscale``), a ``window`` rectangle
at a seeded random place, ``windows_per_minute`` per minute of footage on a grid of
non-overlapping starts (optionally avoiding scene cuts). It writes::

    OUT/shards/<split>-<key>-<n>.tar   WebDataset layout: ``<window>.<frame>.webp`` (RGB, lossless
                                       unless a quality is given) and ``<window>.json`` (source,
                                       start frame, place); plain tar, read with any tar reader
    OUT/shards/<key>.json              one record per finished source file (its shards and hashes):
                                       an interrupted run skips those files
    OUT/shards.json                    manifest: options, files, every shard with windows, bytes, SHA-256

Files are split whole between train and validation as ``prepare-footage`` does (a folder of
one file is split by time). Validation keeps ``val_windows`` evenly spaced clips per file
as whole frames, so validation sees the same centred windows as the video path.

A shard's windows are read by tar offsets (no extraction); remote shards (an ``http(s)://``,
``s3://`` … URL that ``fsspec`` opens) are copied on first use into a per-node cache and
checked against the manifest's SHA-256 before any is read, local ones once per change.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from nvc_train.data.clips import centre_window, maybe_flip, random_window, validation_size
from nvc_train.data.footage import (
    FootageError,
    SkippedFilesWarning,
    scan_sources,
    stored_frame,
    stored_size,
    time_split,
    validation_files,
)
from nvc_train.io.atomic import AtomicOutput, remove_path
from nvc_train.io.colour import crop
from nvc_train.io.video import PyAVReader, VideoError, open_video
from nvc_train.errors import UserError, first_line

MANIFEST = "shards.json"
FORMAT = "nvc-train-shards"
FORMAT_VERSION = 1
SHARD_WINDOWS = 256
"""Windows per shard at most: 448×256×3 frames of WebP lossless are ≈ 0.4 MB, so ≈ 100 MB shards."""
CUT_LEVELS = 40.0
"""Default scene-cut threshold of ``--avoid-cuts``: mean absolute difference of consecutive
frames' luma, in 8-bit levels (camera motion stays far below it, a cut to another shot above)."""


def is_remote(root: str) -> bool:
    """A URL (``scheme://``, ``file://`` included: fsspec opens it) rather than a local folder path."""
    return "://" in root


def frame_bytes(frame: np.ndarray, quality: int | None) -> bytes:
    """(H, W, 3) uint8 → WebP: lossless (``quality`` None, the fast-decoding method 0) or lossy
    at ``quality`` 1–100 (4:2:0)."""
    from PIL import Image

    out = io.BytesIO()
    options = {"lossless": True, "method": 0} if quality is None else {"quality": quality, "method": 4}
    Image.fromarray(frame).save(out, "WEBP", **options)
    return out.getvalue()


def decode_frame(data: bytes) -> np.ndarray:
    """WebP bytes → (H, W, 3) uint8."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


# --------------------------------------------------------------------------- choosing windows

@dataclass(frozen=True)
class ShardOptions:
    """How windows are chosen and stored (recorded in the manifest)."""

    num_frames: int = 3
    window: tuple[int, int] = (448, 256)
    """(width, height) of a training window in stored pixels; a smaller frame gives its whole size."""
    windows_per_minute: float = 30.0
    downscale: float = 1.0
    quality: int | None = None
    """WebP quality 1–100, None: lossless."""
    avoid_cuts: float | None = None
    """Scene-cut threshold in 8-bit luma levels (None: windows may contain cuts)."""
    val_fraction: float = 0.1
    val_windows: int = 2
    seed: int = 0


def window_starts(frames: int, fps: Fraction, k: int, per_minute: float, rng: np.random.Generator,
                  spare: bool) -> tuple[list[int], int]:
    """(candidate starts, windows wanted): starts on the grid 0, k, 2k, … in a seeded random
    order, as many as ``per_minute`` asks for ``frames`` at ``fps`` (at least one), twice that
    with ``spare`` (replacements for windows rejected for a cut)."""
    grid = np.arange(0, frames - k + 1, k)
    wanted = max(1, round(per_minute * frames / float(fps) / 60))
    return [int(s) for s in rng.permutation(grid)[:min(len(grid), wanted * (2 if spare else 1))]], wanted


def has_cut(frames: np.ndarray, threshold: float) -> bool:
    """Whether consecutive frames of (K, H, W, 3) uint8 differ by more than ``threshold`` levels
    of luma (BT.601 weights), on average over the window."""
    luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return bool(len(frames) > 1 and np.abs(np.diff(luma, axis=0)).mean(axis=(1, 2)).max() > threshold)


def _file_key(path: Path, rel: str, options: ShardOptions) -> str:
    st = path.stat()
    ident = f"{rel}|{st.st_size}|{st.st_mtime_ns}|{options}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _rng(seed: int, rel: str) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(int(hashlib.sha256(f"{seed}:{rel}".encode()).hexdigest()[:16], 16)))


# --------------------------------------------------------------------------- writing

class _ShardWriter:
    """Windows into tar shards of at most SHARD_WINDOWS each, every shard renamed into place
    when complete; returns the shard records."""

    def __init__(self, folder: Path, stem: str, quality: int | None):
        self.folder, self.stem, self.quality = folder, stem, quality
        self.records: list[dict] = []
        self._out: AtomicOutput | None = None
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def add(self, meta: dict, frames: np.ndarray) -> None:
        if self._tar is None:
            name = f"{self.stem}-{len(self.records):04d}.tar"
            self._out = AtomicOutput(self.folder / name)
            self._tar = tarfile.open(self._out.tmp, "w", format=tarfile.USTAR_FORMAT)
            self._count = 0
        key = f"{self._count:06d}"
        self.size = (frames.shape[2], frames.shape[1])  # one file's windows of one split share a size
        for f, frame in enumerate(frames):
            self._member(f"{key}.{f}.webp", frame_bytes(np.ascontiguousarray(frame), self.quality))
        self._member(f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        self._count += 1
        if self._count == SHARD_WINDOWS:
            self.close()

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644  # no time stamps: same input, same bytes
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._out.commit()
        path = self._out.path
        from nvc_train.io.digest import sha256_file

        self.records.append({"name": path.name, "windows": self._count, "width": self.size[0],
                             "height": self.size[1], "bytes": path.stat().st_size, "sha256": sha256_file(path)})
        self._tar = self._out = None

    def abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._out.abort()
        for record in self.records:
            remove_path(self.folder / record["name"])


def _finished(folder: Path, key: str) -> dict | None:
    """The record of a file an earlier run finished, if all its shards are in place."""
    try:
        record = json.loads((folder / f"{key}.json").read_text())
        if all((folder / s["name"]).is_file() and (folder / s["name"]).stat().st_size == s["bytes"]
               for s in record["shards"]):
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _probe_file(task: tuple) -> tuple[int | None, str | None]:
    """(frames, None) of one source file, counted by decoding it (container headers can be
    wrong), or (None, reason) if it is unusable. Runs in a worker process with ``--jobs``."""
    path, key, folder, k = task
    record = _finished(folder, key)
    if record is not None:
        return record["frames"], None
    try:
        with open_video(path) as reader:
            frames = len(reader.frame_pts()) if isinstance(reader, PyAVReader) else sum(1 for _ in reader.source_frames())
    except (VideoError, OSError) as exc:
        return None, str(exc).splitlines()[0]
    if frames < k:
        return None, f"{frames} frame(s), fewer than the window length {k}"
    return frames, None


def _cut_file(task: tuple) -> tuple[dict | None, str | None]:
    """Decode one source file and write its shards; (file record, None) or (None, reason).
    Runs in a worker process with ``--jobs``."""
    path, rel, key, frames, split, val_start, options, folder = task
    record = _finished(folder, key)
    if record is not None and (record["split"], record["val_start"]) == (split, val_start):
        return record, None  # finished by an earlier run, for the same split
    try:
        with open_video(path) as reader:
            return _cut_open_file(reader, frames, rel, key, split, val_start, options, folder), None
    except (VideoError, OSError) as exc:
        return None, str(exc).splitlines()[0]


def _cut_open_file(reader, frames: int, rel: str, key: str, split: str, val_start: int | None, o: ShardOptions,
                   folder: Path) -> dict:
    info = reader.info
    width, height = stored_size(info.width, info.height, o.downscale)
    rng = _rng(o.seed, rel)
    k = o.num_frames
    # Which frames go where: (window index, place) per frame index.
    plan: dict[int, tuple[int, int]] = {}
    places: list[dict] = []
    train_frames = frames if split == "train" and val_start is None else (val_start or 0)
    if split == "train" or val_start is not None:
        starts, wanted = window_starts(train_frames, info.fps, k, o.windows_per_minute, rng, o.avoid_cuts is not None)
        win_w, win_h = min(o.window[0], width), min(o.window[1], height)
        for s in starts:
            top, left = int(rng.integers(0, height - win_h + 1)), int(rng.integers(0, width - win_w + 1))
            places.append({"split": "train", "start": s, "top": top, "left": left, "width": win_w, "height": win_h})
    else:
        wanted = 0
    val_first = 0 if split == "validation" else val_start
    if val_first is not None:  # evenly spaced whole-frame clips of the held-out frames
        span = frames - val_first - k
        count = min(o.val_windows, span // k + 1)
        for j in range(count):
            s = val_first + (round(j * span / (count - 1)) if count > 1 else 0)
            places.append({"split": "validation", "start": s, "top": 0, "left": 0, "width": width, "height": height})
    for w, place in enumerate(places):
        for f in range(place["start"], place["start"] + k):
            plan[f] = (w, f - place["start"])
    pixels = [np.empty((k, p["height"], p["width"], 3), np.uint8) for p in places]
    resized = (width, height) != (info.width, info.height)
    index = 0
    for frame in _frames(reader, plan):
        if frame is not None:
            w, f = plan[index]
            p = places[w]
            rect = (p["top"], p["left"], p["height"], p["width"])
            if resized:  # the whole frame is resized, then cut (as the frame cache stores it)
                pixels[w][f] = stored_frame(frame.rgb, width, height)[p["top"]:p["top"] + p["height"],
                                                                      p["left"]:p["left"] + p["width"]]
            else:
                pixels[w][f] = stored_frame(crop(frame.rgb, rect), p["width"], p["height"])
        index += 1
    if index != frames:
        raise VideoError(f"{rel} gave {index} frames on the second pass, {frames} on the first")

    candidates = [w for w, p in enumerate(places) if p["split"] == "train"]
    keep_train = candidates
    if o.avoid_cuts is not None:
        keep_train = [w for w in candidates if not has_cut(pixels[w], o.avoid_cuts)]
    keep = sorted(keep_train[:wanted], key=lambda w: places[w]["start"])
    keep += [w for w, p in enumerate(places) if p["split"] == "validation"]
    records = []
    for part in ("train", "validation"):
        writer = _ShardWriter(folder, f"{part}-{key}", o.quality)
        try:
            for w in keep:
                if places[w]["split"] == part:
                    writer.add({"source": rel, **{n: v for n, v in places[w].items() if n != "split"}}, pixels[w])
            writer.close()
        except BaseException:
            writer.abort()
            raise
        records += [{**r, "split": part} for r in writer.records]
    record = {"source": rel, "frames": frames, "fps": str(info.fps), "width": width, "height": height,
              "split": split, "val_start": val_start,
              "rejected_for_cuts": len(candidates) - len(keep_train), "shards": records}
    with AtomicOutput(folder / f"{key}.json") as out:
        out.tmp.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _frames(reader, plan: dict[int, tuple[int, int]]):
    """Every frame of the file in display order, converted only where ``plan`` wants it (None elsewhere)."""
    if isinstance(reader, PyAVReader):
        import av

        try:
            for i, frame in enumerate(reader.container.decode(reader.stream)):
                yield reader.convert(frame) if i in plan else None
        except av.error.FFmpegError as exc:
            raise VideoError(f"cannot decode {reader.path}: {exc}") from None
    else:  # .y4m and the like convert as they read
        for i, frame in enumerate(reader.source_frames()):
            yield frame if i in plan else None


def prepare_shards(src: str | Path, out: str | Path, options: ShardOptions = ShardOptions(), jobs: int = 1,
                   overwrite: bool = False, progress: bool = True) -> dict:
    """Cut every video under ``src`` into clip shards in ``out`` (see the module doc); returns
    the manifest. Unreadable or too short files are skipped and named in a warning; an
    interrupted run keeps the files it finished."""

    src, out = Path(src), Path(out)
    o = options
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    if o.num_frames < 1 or min(o.window) < 1 or o.windows_per_minute <= 0 or o.val_windows < 1:
        raise UserError("--num-frames, --window sides, --windows-per-minute and --val-windows must be positive")
    if o.quality is not None and not 1 <= o.quality <= 100:
        raise UserError(f"--shard-quality must be lossless or 1..100, got {o.quality}")
    if not 0 < o.downscale <= 1:
        raise UserError(f"--downscale must be in (0, 1], got {o.downscale}")
    if not 0 <= o.val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {o.val_fraction}")
    if not src.exists():
        raise UserError(f"footage not found: {src}")
    if (out / MANIFEST).exists() and not overwrite:
        raise UserError(f"{out} already holds clip shards; pass --overwrite to replace them")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents and not src.is_file():
        raise UserError(f"--out-dir {out} is inside the footage folder {src}; choose a folder outside it")
    paths = scan_sources(src)
    if not paths:
        raise UserError(f"no video files under {src}")
    root = src.parent if src.is_file() else src
    rels = [p.relative_to(root).as_posix() for p in paths]
    folder = out / "shards"
    created = not out.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {folder}: {exc.strerror}") from None
    keys = [_file_key(path, rel, o) for path, rel in zip(paths, rels)]
    with _mapper(jobs, len(paths), progress) as run:
        probes = run(_probe_file, [(path, key, folder, o.num_frames) for path, key in zip(paths, keys)],
                     "counting frames")
        usable = [rel for rel, (frames, _) in zip(rels, probes) if frames is not None]
        val = validation_files(usable, o.val_fraction, o.seed)
        tasks = []
        for path, rel, key, (frames, _) in zip(paths, rels, keys, probes):
            if frames is not None:
                val_start = (time_split(frames, o.num_frames, o.val_fraction)
                             if len(usable) == 1 and o.val_fraction else None)
                tasks.append((path, rel, key, frames, "validation" if rel in val else "train", val_start, o, folder))
        results = run(_cut_file, tasks, "cutting shards")
    skipped = [{"source": rel, "reason": reason} for rel, (frames, reason) in zip(rels, probes) if frames is None]
    files = []
    for task, (record, reason) in zip(tasks, results):
        if reason is not None:
            skipped.append({"source": task[1], "reason": reason})
        else:
            files.append(record)
    if not files:
        if created:
            remove_path(out)
        raise UserError(f"none of the {len(paths)} video files under {src} is usable: "
                        + "; ".join(f"{s['source']}: {s['reason']}" for s in skipped[:3]))
    shards = [s for f in files for s in f["shards"]]
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "source_root": str(root.resolve()),
        "options": {**o.__dict__, "window": list(o.window)},
        "windows": {split: sum(s["windows"] for s in shards if s["split"] == split) for split in ("train", "validation")},
        "shards": shards, "files": [{n: v for n, v in f.items() if n != "shards"} for f in files],
        "skipped": skipped,
    }
    with AtomicOutput(out / MANIFEST) as handle:
        handle.tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    if skipped:
        warnings.warn(f"skipped {len(skipped)} of {len(paths)} files: "
                      + "; ".join(f"{s['source']} ({s['reason']})" for s in skipped), SkippedFilesWarning, stacklevel=2)
    return manifest


@contextlib.contextmanager
def _mapper(jobs: int, count: int, progress: bool):
    """A ``map(function, tasks, what)`` over ``jobs`` spawned processes of one torch thread each
    (one pool for every pass: starting a worker costs seconds of imports), or in this process."""
    from tqdm.auto import tqdm

    def bar(results, tasks, what):
        return tqdm(results, total=len(tasks), unit=" files", disable=not progress, desc=what)

    if jobs > 1 and count > 1:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(min(jobs, count), mp_context=get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(1,)) as pool:
            yield lambda function, tasks, what: list(bar(pool.map(function, tasks), tasks, f"{what} ({jobs} jobs)"))
    else:
        yield lambda function, tasks, what: [function(t) for t in bar(tasks, tasks, what)]


# --------------------------------------------------------------------------- reading

def _remote_bytes(url: str) -> bytes:
    """The bytes at ``url`` through fsspec; any failure (a missing object, a refused connection,
    missing credentials: each backend has its own exceptions) is a FootageError naming the URL."""
    import fsspec

    try:
        with fsspec.open(url, "rb") as f:
            return f.read()
    except Exception as exc:  # noqa: BLE001 - every fsspec backend has its own exception tree
        detail = exc
        while detail.__cause__ or detail.__context__:  # fsspec's http turns a refused connection into "not found"
            detail = detail.__cause__ or detail.__context__
        what = "not found" if detail is exc and isinstance(exc, FileNotFoundError) else (
            f"{type(detail).__name__}: {str(detail).splitlines()[0] if str(detail) else 'no detail'}")
        raise FootageError(f"cannot read {url} ({what})") from None


def read_shard_manifest(root: str) -> dict:
    """The manifest of a shard folder or URL, checked for format and version."""
    url = f"{root.rstrip('/')}/{MANIFEST}"
    try:
        manifest = json.loads(_remote_bytes(url) if is_remote(root) else (Path(root) / MANIFEST).read_text())
    except FileNotFoundError:
        raise FootageError(f"{root} holds no clip shards (no {MANIFEST}): write them with "
                           f"`nvc-train prepare-footage SRC --out-dir {root} --shards`") from None
    except (OSError, ValueError) as exc:
        raise FootageError(f"cannot read {url}: {str(exc).splitlines()[0]}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise FootageError(f"{url} is not nvc-train clip shards format {FORMAT_VERSION}")
    return manifest


def verify_local_shards(root: Path, shards: list[dict], progress: bool = False) -> None:
    """Check every shard's size and SHA-256 against the manifest; a stamp beside each (size and
    mtime at its last check) spares re-reading unchanged shards at the next start."""
    from tqdm.auto import tqdm

    from nvc_train.io.digest import sha256_file

    stamps = root / "shards" / ".verified"
    for shard in tqdm(shards, unit=" shards", desc="checking shards", disable=not progress):
        path = root / "shards" / shard["name"]
        try:
            st = path.stat()
        except OSError:
            raise FootageError(f"shard {path} is missing") from None
        stamp = stamps / f"{shard['name']}.{shard['sha256'][:16]}"
        mark = f"{st.st_size} {st.st_mtime_ns}"
        try:
            if stamp.read_text() == mark:
                continue
        except OSError:
            pass
        if st.st_size != shard["bytes"] or sha256_file(path) != shard["sha256"]:
            raise FootageError(f"shard {path} does not match its manifest (SHA-256 differs): "
                               "it was changed or damaged; prepare the footage again")
        try:
            stamps.mkdir(exist_ok=True)
            stamp.write_text(mark)
        except OSError:
            pass  # a read-only archive: checked again next time


def fetch_shard(root: str, shard: dict, cache: Path) -> Path:
    """A remote shard's local copy in ``cache``, downloaded and checked against its SHA-256 on first use."""
    path = cache / shard["sha256"][:16] / shard["name"]
    if path.is_file():
        return path
    import fsspec

    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    url = f"{root.rstrip('/')}/shards/{shard['name']}"
    with AtomicOutput(path, tmp_suffix=f"-{os.getpid()}") as out:
        try:
            with fsspec.open(url, "rb") as src, open(out.tmp, "wb") as dst:
                for block in iter(lambda: src.read(1 << 22), b""):
                    digest.update(block)
                    dst.write(block)
        except Exception as exc:  # noqa: BLE001 - transport and credential errors of any fsspec backend
            raise FootageError(f"cannot fetch shard {url}: {type(exc).__name__}: {first_line(str(exc), 'no detail')}") from None
        if digest.hexdigest() != shard["sha256"]:
            raise FootageError(f"shard {url} does not match its manifest (SHA-256 differs): refusing it")
    return path


class ShardClips(Dataset):
    """The windows of one split of clip shards as uint8 clips (num_frames, 3, H, W).

    Training (``crop`` set): a random ``num_frames`` run of each window's frames, a random
    (crop × crop) place and a random temporal flip. Validation (``crop`` None): the first
    ``num_frames`` frames, centred window of :func:`validation_size` (``val_crop_limit``).

    Windows are located by a scan of each shard's tar headers on first use in each process.
    """

    def __init__(self, root: str, manifest: dict, split: str, num_frames: int, crop: int | None,
                 temporal_flip: bool = True, val_crop_limit: int | None = None, max_clips: int | None = None,
                 cache_dir: Path | None = None):
        k = manifest["options"]["num_frames"]
        if not 1 <= num_frames <= k:
            raise ValueError(f"num_frames must be in 1..{k} (the window length {root} was cut with), got {num_frames}")
        self.root, self.num_frames, self.crop = root, num_frames, crop
        self.temporal_flip, self.val_crop_limit, self.cache_dir = temporal_flip, val_crop_limit, cache_dir
        self.window_frames = k
        self.shards = [s for s in manifest["shards"] if s["split"] == split]
        if crop is not None:
            small = [s for s in self.shards if min(s["width"], s["height"]) < crop]
            if small:
                warnings.warn(f"{len(small)} {split} shard(s) hold windows smaller than the {crop}px crop and are "
                              "left out: " + ", ".join(s["name"] for s in small[:5]), stacklevel=2)
            self.shards = [s for s in self.shards if s not in small]
        self.ends = list(np.cumsum([s["windows"] for s in self.shards]).tolist())
        self.keys = [(i, j) for i, s in enumerate(self.shards) for j in range(s["windows"])]
        if max_clips is not None and len(self.keys) > max_clips:
            self.keys = [self.keys[round(j * (len(self.keys) - 1) / max(1, max_clips - 1))] for j in range(max_clips)]
        self._members: dict[int, dict[str, tuple[int, int]]] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def _path(self, shard: dict) -> Path:
        if is_remote(self.root):
            return fetch_shard(self.root, shard, self.cache_dir)
        return Path(self.root) / "shards" / shard["name"]

    def _index(self, i: int) -> dict[str, tuple[int, int]]:
        members = self._members.get(i)
        if members is None:
            path = self._path(self.shards[i])
            with tarfile.open(path, "r:") as tar:
                members = {m.name: (m.offset_data, m.size) for m in tar.getmembers()}
            self._members[i] = members
        return members

    def window(self, index: int) -> tuple[dict, np.ndarray]:
        """(metadata, frames (K, H, W, 3) uint8) of window ``index``."""
        i, j = self.keys[index]
        members = self._index(i)
        key = f"{j:06d}"
        with open(self._path(self.shards[i]), "rb") as f:
            def read(name: str) -> bytes:
                offset, size = members[name]
                f.seek(offset)
                return f.read(size)
            meta = json.loads(read(f"{key}.json"))
            frames = [decode_frame(read(f"{key}.{n}.webp")) for n in range(self.window_frames)]
        return meta, np.stack(frames)

    def __getitem__(self, index: int) -> Tensor:
        _, frames = self.window(index)
        k, h, w = frames.shape[:3]
        if self.crop is not None:
            offset = int(torch.randint(0, k - self.num_frames + 1, ()))
            top, left = random_window(h, w, self.crop)
            ch = cw = self.crop
        else:
            offset = 0
            ch, cw = validation_size(h, w, self.val_crop_limit)
            top, left = centre_window(h, w, ch, cw)
        clip = frames[offset:offset + self.num_frames, top:top + ch, left:left + cw]
        clip = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2)
        return maybe_flip(clip, self.temporal_flip and self.crop is not None).contiguous()
