"""Company footage as training data: clips of video files, split by file, optional frame cache.

``prepare_footage(SRC, OUT)`` scans a folder tree of .mp4/.mov/.mkv/.avi/.webm/.y4m files,
decodes each once (this proves it decodes and counts its frames exactly; container headers
can be wrong) and writes::

    OUT/dataset/        Hugging Face DatasetDict ("train", "validation"): one row per clip
                        (source, start, num_frames, start_pts, width, height, fps, ...)
    OUT/footage.json    manifest: options, every file (split, frames, size, fps), skipped files
    OUT/cache/          with cache=True: each file's frames as RGB uint8 (frames, H, W, 3),
                        raw, after downscaling; memory-mapped by the loader, which then reads
                        only the crop it needs

Files are split whole between train and validation (no file contributes to both), by a
seeded hash of their path, so the split does not depend on scan order. Sources are only
read. Clips are identical whether they come from the cache or from the video file: both
convert colour with :mod:`nvc_train.io.colour`, downscale with the same antialiased
bilinear filter and round to 8 bits.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import islice, pairwise
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from nvc_train.io.atomic import AtomicOutput, remove_path, replace_path
from nvc_train.io.colour import Window, crop, rgb_to_uint8
from nvc_train.io.video import InputOptions, PyAVReader, VideoError, open_video
from nvc_train.data.clips import centre_window, random_window, validation_size
from nvc_train.errors import UserError

SOURCE_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".y4m")
MANIFEST = "footage.json"
FORMAT = "nvc-train-footage"
FORMAT_VERSION = 1
SPLITS = ("train", "validation")


class FootageError(UserError):
    """A prepared footage folder that cannot be used as asked."""


class SkippedFilesWarning(UserWarning):
    """Some source files were not usable (``PrepareReport.skipped`` lists them)."""


# --------------------------------------------------------------------------- frames

def stored_size(width: int, height: int, downscale: float) -> tuple[int, int]:
    """(width, height) after downscaling by ``downscale`` in (0, 1], rounded, at least 1 px."""
    return max(1, round(width * downscale)), max(1, round(height * downscale))


def stored_frame(rgb: Tensor, width: int, height: int) -> np.ndarray:
    """RGB (3, H, W) float in [0, 1] → (height, width, 3) uint8, resized with an antialiased
    bilinear filter when the size differs. The one definition of a stored frame, shared by
    the cache and the video path."""
    if rgb.shape[-2:] != (height, width):
        rgb = F.interpolate(rgb[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]
    return rgb_to_uint8(rgb)


# --------------------------------------------------------------------------- preparing

@dataclass
class SourceFile:
    """One usable source file of a prepared folder (sizes in pixels, after downscaling)."""

    source: str
    """Path relative to the source root, with / separators."""
    frames: int
    width: int
    height: int
    source_width: int
    source_height: int
    fps: str
    """Frame rate as a fraction, e.g. ``30000/1001``."""
    split: str
    pts: list[int] | None
    """Presentation timestamps of every frame (stream time base), or None if the file has
    none usable for seeking (then clips are read from the start of the file)."""
    cache: str | None = None
    """Cache file name under OUT/cache, if cached."""
    description: str = ""
    val_start: int | None = None
    """A file split by time (the only file of its folder): clips from this frame on are
    validation clips, clips ending before it training clips (``split`` is then "train")."""

    def splits(self) -> dict[str, int]:
        """Frames of this file in each split it serves."""
        if self.val_start is None:
            return {self.split: self.frames}
        return {"train": self.val_start, "validation": self.frames - self.val_start}


@dataclass
class PrepareReport:
    """What ``prepare_footage`` did: usable files, clips per split, skipped files with reasons."""

    out: Path
    files: list[SourceFile]
    clips: dict[str, int]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def scan_sources(root: Path) -> list[Path]:
    """Video files under ``root`` (recursively, hidden folders skipped), sorted by path."""
    if root.is_file():
        return [root]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if Path(f).suffix.lower() in SOURCE_SUFFIXES and not f.startswith(".")]
    return sorted(found)


def validation_files(sources: list[str], fraction: float, seed: int) -> set[str]:
    """The sources that form the validation split: ``round(fraction × n)`` of them (at least
    one and at most n − 1 when 0 < fraction and n ≥ 2), ranked by SHA-256 of seed and path."""
    if not 0 <= fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    n = len(sources)
    k = round(fraction * n)
    if fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    elif n < 2:
        k = 0
    ranked = sorted(sources, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    return set(ranked[:k])


def time_split(frames: int, clip_len: int, fraction: float) -> int | None:
    """First validation frame when one file is split by time: the last ``fraction`` of its
    frames (at least one clip's worth), if at least one training clip remains before it."""
    val_frames = max(clip_len, round(fraction * frames))
    start = frames - val_frames
    return start if start >= clip_len else None


def clip_starts(frames: int, clip_len: int, stride: int) -> range:
    """Start frames of the clips a file of ``frames`` frames gives."""
    return range(0, frames - clip_len + 1, stride)


class _CacheFile(AtomicOutput):
    """A raw RGB uint8 frame cache, written frame by frame, renamed into place when complete.

    A failed write (disk full, no permission) stops the whole run with a UserError: unlike
    an unreadable source, it would fail for every file."""

    def __init__(self, path: Path):
        super().__init__(path)
        try:
            self.file = open(self.tmp, "wb")
        except OSError as exc:
            raise UserError(f"cannot write the frame cache in {path.parent}: {exc.strerror}") from None

    def write(self, frame: np.ndarray) -> None:
        try:
            self.file.write(np.ascontiguousarray(frame).tobytes())
        except OSError as exc:
            raise UserError(f"cannot write the frame cache {self.tmp.parent}: {exc.strerror} "
                            "(free space, or use --downscale, or drop --use-cache)") from None

    def _finish(self) -> None:
        self.file.close()

    def _close(self) -> None:
        self.file.close()


def _cache_key(path: Path, downscale: float) -> str:
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{downscale}"
    return hashlib.sha256(ident.encode()).hexdigest()[:20]


def _decode_source(path: Path, downscale: float, cache: Path | None, progress) -> dict:
    """Decode one file completely: its frame count, pts and size; frames into ``cache``."""
    with open_video(path) as reader:
        info = reader.info
        width, height = stored_size(info.width, info.height, downscale)
        pts: list[int | None] = []
        if cache is None and isinstance(reader, PyAVReader):
            pts = reader.frame_pts()
            progress.update(len(pts))
        else:
            timed = reader.timed_frames() if isinstance(reader, PyAVReader) else ((None, f) for f in reader.source_frames())
            with _CacheFile(cache) if cache is not None else contextlib.nullcontext() as out:
                for frame_pts, frame in timed:
                    pts.append(frame_pts)
                    if out is not None:
                        out.write(stored_frame(frame.rgb, width, height))
                    progress.update(1)
    seekable = bool(pts) and all(p is not None for p in pts) and all(a < b for a, b in pairwise(pts))
    return {"frames": len(pts), "width": width, "height": height, "source_width": info.width,
            "source_height": info.height, "fps": str(info.fps), "pts": pts if seekable else None,
            "description": info.description}


def prepare_footage(src: str | Path, out: str | Path, clip_len: int = 3, stride: int | None = None,
                    val_fraction: float = 0.1, seed: int = 0, cache: bool = False, downscale: float = 1.0,
                    overwrite: bool = False, progress: bool = True, jobs: int = 1) -> PrepareReport:
    """Index the clips of every video file under ``src`` into ``out`` (see the module doc).

    Args:
        clip_len: frames per clip (the DataModule's ``num_frames`` may be smaller).
        stride: frames between clip starts (default ``clip_len``: clips do not overlap).
        val_fraction: share of *files* held out for validation; a folder of one file holds
            out the last ``val_fraction`` of its frames instead (split by time).
        cache: also store every frame, downscaled, as raw RGB uint8 (fast loading).
        downscale: factor in (0, 1] applied to every frame (e.g. 0.5: 1080p → 540p).
        jobs: files decoded in parallel (worker processes).

    A file that cannot be opened or decoded, or has fewer than ``clip_len`` frames, is skipped
    and named in a warning. An interrupted run resumes: finished cache files are reused.
    """
    from tqdm.auto import tqdm

    src, out = Path(src), Path(out)
    stride = clip_len if stride is None else stride
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    if clip_len < 1 or stride < 1:
        raise UserError(f"--num-frames and --stride must be at least 1, got {clip_len} and {stride}")
    if not 0 < downscale <= 1:
        raise UserError(f"--downscale must be in (0, 1], got {downscale}")
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if not src.exists():
        raise UserError(f"footage not found: {src}")
    if (out / MANIFEST).exists() and not overwrite:
        raise UserError(f"{out} already holds prepared footage; pass --overwrite to replace it (its frame cache is reused)")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents and not src.is_file():
        raise UserError(f"--out-dir {out} is inside the footage folder {src}; choose a folder outside it")
    paths = scan_sources(src)
    if not paths:
        raise UserError(f"no video files ({', '.join(SOURCE_SUFFIXES)}) under {src}")
    root = src.parent if src.is_file() else src
    cache_dir = out / "cache"
    created = not out.exists()
    if cache:
        cache_dir.mkdir(parents=True, exist_ok=True)

    decoded: dict[str, dict] = {}
    skipped: list[tuple[str, str]] = []
    tasks = [(path, downscale, cache_dir if cache else None) for path in paths]
    if jobs > 1:
        # One file per process; spawned (not forked) workers with one torch thread each.
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(min(jobs, len(paths)), mp_context=get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(1,)) as pool:
            results = tqdm(pool.map(_file_facts, tasks), total=len(paths), unit=" files", disable=not progress,
                           desc=f"decoding ({jobs} jobs)")
            outcomes = list(zip(paths, results))
    else:
        bar = tqdm(total=None, unit=" frames", disable=not progress, desc="decoding")
        outcomes = []
        for i, task in enumerate(tasks):
            bar.set_description(f"decoding file {i + 1} of {len(paths)} ({task[0].name})")
            outcomes.append((task[0], _file_facts(task, bar)))
        bar.close()
    for path, (facts, reason) in outcomes:
        rel = path.relative_to(root).as_posix()
        if facts is not None and facts["frames"] < clip_len:
            reason = f"{facts['frames']} frame(s), fewer than the clip length {clip_len}"
        if reason is not None:
            skipped.append((rel, reason))
        else:
            decoded[rel] = facts
    if not decoded:
        if created:
            remove_path(out)
        raise UserError(f"none of the {len(paths)} video files under {src} is usable: "
                        + "; ".join(f"{s}: {r}" for s, r in skipped[:3]))

    out.mkdir(parents=True, exist_ok=True)
    val = validation_files(sorted(decoded), val_fraction, seed)
    files = [SourceFile(source=rel, split="validation" if rel in val else "train", **facts)
             for rel, facts in decoded.items()]
    if len(files) == 1 and val_fraction > 0:
        files[0].val_start = time_split(files[0].frames, clip_len, val_fraction)
        if files[0].val_start is None:
            warnings.warn(f"{files[0].source} alone has {files[0].frames} frames, too few to hold out "
                          f"{val_fraction:.0%} for validation in clips of {clip_len}: no validation clips",
                          stacklevel=2)
    clips = _write_dataset(out, files, clip_len, stride)
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "source_root": str(root.resolve()),
        "clip_len": clip_len, "stride": stride, "val_fraction": val_fraction, "seed": seed,
        "downscale": downscale, "cache": cache, "clips": clips,
        "files": [f.__dict__ for f in files],
        "skipped": [{"source": s, "reason": r} for s, r in skipped],
    }
    _write_json(out / MANIFEST, manifest)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} of {len(paths)} files: "
                      + "; ".join(f"{s} ({r})" for s, r in skipped), SkippedFilesWarning, stacklevel=2)
    return PrepareReport(out, files, clips, skipped)


def _file_facts(task: tuple[Path, float, Path | None], progress=None) -> tuple[dict | None, str | None]:
    """(facts, None) of one source file, decoding it (into the cache) unless an earlier run
    cached it; (None, reason) if it cannot be read. Runs in a worker process with ``--jobs``."""
    from tqdm.auto import tqdm

    path, downscale, cache_dir = task
    progress = progress if progress is not None else tqdm(disable=True)
    key = _cache_key(path, downscale) if cache_dir is not None else None
    facts = _read_cache_facts(cache_dir, key) if key else None
    if facts is None:
        try:
            facts = _decode_source(path, downscale, cache_dir / f"{key}.rgb" if key else None, progress)
        except (VideoError, OSError) as exc:
            return None, str(exc).splitlines()[0]
        if key:
            _write_json(cache_dir / f"{key}.json", facts)
    return {**facts, "cache": f"{key}.rgb" if key else None}, None


def _read_cache_facts(cache_dir: Path, key: str) -> dict | None:
    """Facts of a file cached by an earlier (possibly interrupted) run, if complete."""
    facts_path, data_path = cache_dir / f"{key}.json", cache_dir / f"{key}.rgb"
    try:
        facts = json.loads(facts_path.read_text())
        if data_path.stat().st_size == facts["frames"] * facts["height"] * facts["width"] * 3:
            return facts
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _write_json(path: Path, obj: dict) -> None:
    with AtomicOutput(path) as out:
        out.tmp.write_text(json.dumps(obj, indent=1) + "\n")


def _write_dataset(out: Path, files: list[SourceFile], clip_len: int, stride: int) -> dict[str, int]:
    """The clip index as a Hugging Face DatasetDict at OUT/dataset (written atomically)."""
    import datasets

    features = datasets.Features({
        "source": datasets.Value("string"), "start": datasets.Value("int32"),
        "num_frames": datasets.Value("int32"), "start_pts": datasets.Value("int64"),
        "width": datasets.Value("int32"), "height": datasets.Value("int32"),
        "fps": datasets.Value("float64"), "file_frames": datasets.Value("int32"),
    })
    columns = {split: {name: [] for name in features} for split in SPLITS}
    for f in files:
        for start in clip_starts(f.frames, clip_len, stride):
            split = f.split
            if f.val_start is not None:  # split by time: no clip straddles the boundary
                split = "validation" if start >= f.val_start else "train" if start + clip_len <= f.val_start else None
                if split is None:
                    continue
            row = {"source": f.source, "start": start, "num_frames": clip_len,
                   "start_pts": f.pts[start] if f.pts else -1, "width": f.width, "height": f.height,
                   "fps": float(Fraction(f.fps)), "file_frames": f.frames}
            for name, value in row.items():
                columns[split][name].append(value)
    # An empty split is left out: datasets 4.x cannot load an empty split back from disk.
    dd = datasets.DatasetDict({split: datasets.Dataset.from_dict(columns[split], features=features)
                               for split in SPLITS if columns[split]["source"]})
    tmp = out / f".dataset.partial-{os.getpid()}"
    remove_path(tmp)
    datasets.disable_progress_bars()  # a bar per split for a few rows is noise beside ours
    try:
        dd.save_to_disk(str(tmp))
    finally:
        datasets.enable_progress_bars()
    replace_path(tmp, out / "dataset")
    return {split: len(columns[split]["source"]) for split in SPLITS}


# --------------------------------------------------------------------------- loading

@dataclass
class PreparedFootage:
    """A prepared folder, loaded: the manifest, its files by source path, the clip rows."""

    root: Path
    manifest: dict
    files: dict[str, SourceFile]
    rows: dict[str, dict[str, list]]
    """split → column → values (plain lists: cheap to index in DataLoader workers)."""
    source_root: Path


def not_prepared_message(root: str | Path) -> str:
    """What to say of a --data.root without a manifest: prepare it into a folder of its own
    (``prepare-footage`` refuses to write inside its source)."""
    root = Path(root)
    if not root.exists():
        return (f"--data.root {root} does not exist (give the folder `nvc-train prepare-footage … --out-dir` "
                "wrote, or an hf://datasets/OWNER/NAME)")
    if not root.is_dir():
        return f"--data.root {root} is a file, not a folder prepared by `nvc-train prepare-footage`"
    out = root.with_name(f"{root.name}-prepared")
    return (f"{root} is not prepared footage (no {MANIFEST}): if it holds your videos, run "
            f"`nvc-train prepare-footage {root} --out-dir {out}` and train with `--data.root {out}`")


def read_manifest(root: Path) -> dict:
    """The manifest of a prepared folder, checked for format and version."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise FootageError(not_prepared_message(root)) from None
    except (OSError, ValueError) as exc:
        raise FootageError(f"cannot read {root / MANIFEST}: {exc}") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise FootageError(f"{root / MANIFEST} is not nvc-train footage format {FORMAT_VERSION} "
                           f"(found {manifest.get('format')!r} version {manifest.get('version')!r}): prepare it again")
    return manifest


def load_footage(root: str | Path, source_root: str | Path | None = None) -> PreparedFootage:
    """Open a folder written by :func:`prepare_footage`; ``source_root`` overrides where the
    video files are (when the footage moved since it was prepared)."""
    import datasets

    root = Path(root)
    manifest = read_manifest(root)
    try:
        dd = datasets.load_from_disk(str(root / "dataset"))
        empty = {name: [] for name in next(iter(dd.values())).column_names}
        rows = {split: dd[split].to_dict() if split in dd else dict(empty) for split in SPLITS}
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise FootageError(f"cannot read the clip index {root / 'dataset'}: {str(exc).splitlines()[0]}") from None
    files = {f["source"]: SourceFile(**f) for f in manifest["files"]}
    return PreparedFootage(root, manifest, files, rows, Path(source_root or manifest["source_root"]))


class _OpenSources:
    """The last few opened video files of this process (closed before a fork, see below)."""

    def __init__(self, capacity: int = 4, hwaccel: str | None = None):
        self.capacity, self.hwaccel, self.open = capacity, hwaccel, OrderedDict()
        _ALL_OPEN_SOURCES.add(self)

    def __getstate__(self) -> dict:  # a spawned worker opens its own files
        return {"capacity": self.capacity, "hwaccel": self.hwaccel}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def close_all(self) -> None:
        while self.open:
            self.open.popitem()[1].close()

    def get(self, path: Path):
        reader = self.open.pop(path, None)
        if reader is None:
            reader = open_video(path, InputOptions(hwaccel=self.hwaccel) if path.suffix.lower() != ".y4m" else InputOptions())
            if isinstance(reader, PyAVReader) and torch.utils.data.get_worker_info() is not None:
                # Workers already decode in parallel; FFmpeg threads on top only oversubscribe.
                reader.stream.thread_type, reader.stream.thread_count = "SLICE", 1
        self.open[path] = reader
        while len(self.open) > self.capacity:
            self.open.popitem(last=False)[1].close()
        return reader

    def drop(self, path: Path) -> None:
        reader = self.open.pop(path, None)
        if reader is not None:
            reader.close()


_ALL_OPEN_SOURCES: weakref.WeakSet[_OpenSources] = weakref.WeakSet()


def _close_sources_before_fork() -> None:
    """Free every PyAV decoder in the parent before DataLoader workers fork.

    A decoder opened with frame threads cannot be freed in a forked child: the child has no
    copies of those threads, and ``avcodec_free_context`` waits for them for ever. PyAV's
    containers and streams reference each other, so even closed ones linger as cyclic garbage
    until the collector runs, which in a child is whenever it likes (we saw workers hang in
    their first ``torch.manual_seed``). So: close the cached readers, then collect here.
    """
    for sources in list(_ALL_OPEN_SOURCES):
        sources.close_all()
    gc.collect()


os.register_at_fork(before=_close_sources_before_fork)


class FootageClips(Dataset):
    """Clips of prepared footage as uint8 (num_frames, 3, H, W).

    Training (``crop`` set): a random ``num_frames`` window of each indexed clip, a random
    (crop × crop) window, random temporal flip. Validation (``crop`` None): the clip's first
    ``num_frames`` frames, centred window of :func:`validation_size` (``val_crop_limit``).

    With ``clips_per_decode`` N > 1 an item is N clips (N, num_frames, 3, H, W) that follow each
    other in one file, each with its own random frames, crop and flip, decoded in one run from
    the keyframe before the first: the seek is paid once for N clips. Each clip is the one the
    single-clip path gives for the same frames and window.

    Args:
        use_cache: read frames from OUT/cache when the folder has one (else decode the file).
        max_clips: keep this many evenly spaced clips (deterministic), e.g. for validation.
        clips_per_decode: clips per item, cut from one decoded run (training only).
        hwaccel: FFmpeg hardware device type to decode on (``cuda``: NVDEC); None: the CPU.
    """

    def __init__(self, footage: PreparedFootage, split: str, num_frames: int, crop: int | None,
                 temporal_flip: bool = True, val_crop_limit: int | None = None, max_clips: int | None = None,
                 use_cache: bool = True, clips_per_decode: int = 1, hwaccel: str | None = None):
        clip_len = footage.manifest["clip_len"]
        if not 1 <= num_frames <= clip_len:
            raise ValueError(f"num_frames must be in 1..{clip_len} (the clip length {footage.root} was prepared with), got {num_frames}")
        self.footage, self.num_frames, self.crop = footage, num_frames, crop
        self.temporal_flip, self.val_crop_limit = temporal_flip, val_crop_limit
        self.use_cache = use_cache and footage.manifest["cache"]
        columns = footage.rows[split]
        keep = range(len(columns["source"]))
        if crop is not None:
            small = sorted({s for s, w, h in zip(columns["source"], columns["width"], columns["height"]) if min(w, h) < crop})
            if small:
                warnings.warn(f"{len(small)} {split} file(s) are smaller than the {crop}px crop and are left out: "
                              + ", ".join(small[:5]), stacklevel=2)
            keep = [i for i in keep if min(columns["width"][i], columns["height"][i]) >= crop]
        if max_clips is not None and len(keep) > max_clips:
            keep = [keep[round(j * (len(keep) - 1) / max(1, max_clips - 1))] for j in range(max_clips)]
        self.rows = [{name: values[i] for name, values in columns.items()} for i in keep]
        if clips_per_decode < 1 or clips_per_decode > 1 and crop is None:
            raise ValueError(f"clips_per_decode must be at least 1 (and 1 for validation), got {clips_per_decode}")
        self.clips_per_decode = clips_per_decode
        self.groups = clip_groups([r["source"] for r in self.rows], clips_per_decode)
        self._sources = _OpenSources(hwaccel=hwaccel)
        self._caches: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict:  # for spawned workers: no open files or memory maps
        return {**self.__dict__, "_caches": {}}

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> Tensor:
        group = self.groups[index]
        # All random draws first, clip by clip, in the single-clip path's order.
        draws = [(self.rows[i], *self._draw(self.rows[i])) for i in group]
        if len(group) == 1:
            frames = [self.frames(row, start, self.num_frames, window) for row, start, window, _ in draws]
        else:
            frames = self.frames_of_one_file([(row, start, self.num_frames, window) for row, start, window, _ in draws])
        clips = [torch.from_numpy(np.ascontiguousarray(f)).permute(0, 3, 1, 2) for f in frames]
        clips = [(c.flip(0) if flip else c).contiguous() for c, (*_, flip) in zip(clips, draws)]
        return clips[0] if self.clips_per_decode == 1 else torch.stack(clips)

    def _draw(self, row: dict) -> tuple[int, Window, bool]:
        """(first frame, window, flip?) of a clip of ``row``: random in training, fixed in validation."""
        h, w = row["height"], row["width"]
        if self.crop is None:
            ch, cw = validation_size(h, w, self.val_crop_limit)
            return row["start"], (*centre_window(h, w, ch, cw), ch, cw), False
        offset = int(torch.randint(0, row["num_frames"] - self.num_frames + 1, ()))
        window = (*random_window(h, w, self.crop), self.crop, self.crop)
        return row["start"] + offset, window, self.temporal_flip and bool(torch.rand(()) < 0.5)

    def frames_of_one_file(self, requests: list[tuple[dict, int, int, Window]]) -> list[np.ndarray]:
        """``frames(row, start, count, window)`` for several requests on one source file, decoded
        in one run from the first start (the cache and .y4m files read each request alone)."""
        info = self.footage.files[requests[0][0]["source"]]
        if (self.use_cache and info.cache) or info.source.lower().endswith(".y4m"):
            return [self.frames(*request) for request in requests]
        first = min(start for _, start, _, _ in requests)
        end = max(start + count for _, start, count, _ in requests)
        reader, decoded = self._decoded_run(info, first, end - first)
        return [self._stored(reader, info, decoded[start - first:start - first + count], window)
                for _, start, count, window in requests]

    def frames(self, row: dict, start: int, count: int, window: Window | None = None) -> np.ndarray:
        """Frames ``start … start+count−1`` of a row's source file as (count, H, W, 3) uint8,
        or only their ``window`` (top, left, height, width) in stored pixels."""
        info = self.footage.files[row["source"]]
        if self.use_cache and info.cache:
            frames = self._cache(info)[start:start + count]
            if window is not None:
                top, left, height, width = window
                frames = frames[:, top:top + height, left:left + width]
            return np.asarray(frames)
        return self._decode(info, start, count, window)

    def _cache(self, info: SourceFile) -> np.ndarray:
        array = self._caches.get(info.cache)
        if array is None:
            path = self.footage.root / "cache" / info.cache
            try:
                array = np.memmap(path, np.uint8, "r", shape=(info.frames, info.height, info.width, 3))
            except (OSError, ValueError) as exc:
                raise FootageError(f"frame cache {path} of {info.source} is missing or damaged ({exc}): "
                                   "prepare the footage again or set --data.use_cache false") from None
            self._caches[info.cache] = array
        return array

    def _decode(self, info: SourceFile, start: int, count: int, window: Window | None) -> np.ndarray:
        path = self._source_path(info)
        if path.suffix.lower() == ".y4m":
            resized = (info.width, info.height) != (info.source_width, info.source_height)
            convert_window = None if resized else window
            try:
                reader = self._sources.get(path)
                reader.seek(start)
                rgb = [crop(f.rgb, convert_window) for f in islice(reader.source_frames(), count)]
            except VideoError as exc:
                self._sources.drop(path)
                raise FootageError(f"cannot read frames {start}–{start + count - 1} of {path}: {exc}") from None
            self._check_count(path, rgb, start, count)
            return self._stored_rgb(rgb, info, window, converted=convert_window is not None)
        reader, decoded = self._decoded_run(info, start, count)
        return self._stored(reader, info, decoded, window)

    def _source_path(self, info: SourceFile) -> Path:
        path = self.footage.source_root / info.source
        if not path.exists():
            raise FootageError(f"source {path} is missing: point --data.source_root at the footage if it moved")
        return path

    def _check_count(self, path: Path, frames: list, start: int, count: int) -> None:
        if len(frames) != count:
            self._sources.drop(path)
            raise FootageError(f"{path} ends before frame {start + count - 1} (it changed since it was prepared?)")

    def _decoded_run(self, info: SourceFile, start: int, count: int) -> tuple[PyAVReader, list]:
        """(reader, PyAV frames ``start … start+count−1``), not yet converted."""
        path = self._source_path(info)
        try:
            reader = self._sources.get(path)
            if info.pts is not None:
                run = list(islice(reader.decoded_frames(info.pts[start]), count))
                if run and run[0][0] == info.pts[start]:
                    self._check_count(path, run, start, count)
                    return reader, [f for _, f in run]
            # No usable timestamps, or the seek landed after the clip: decode from the start.
            self._sources.drop(path)
            reader = self._sources.get(path)
            run = list(islice(reader.decoded_frames(None), start, start + count))
        except VideoError as exc:
            self._sources.drop(path)
            raise FootageError(f"cannot read frames {start}–{start + count - 1} of {path}: {exc}") from None
        self._check_count(path, run, start, count)
        return reader, [f for _, f in run]

    def _stored(self, reader: PyAVReader, info: SourceFile, decoded: list, window: Window | None) -> np.ndarray:
        """Decoded frames as stored frames (count, H, W, 3) uint8, or only their ``window``.
        Without downscaling only the window is converted (exactly the crop of the whole frame's
        conversion; 1080p: 0.4 ms instead of 26 ms a frame); a resize needs the whole frame."""
        resized = (info.width, info.height) != (info.source_width, info.source_height)
        convert_window = None if resized else window
        rgb = [reader.convert(frame, convert_window).rgb for frame in decoded]
        return self._stored_rgb(rgb, info, window, converted=convert_window is not None)

    @staticmethod
    def _stored_rgb(rgb: list[Tensor], info: SourceFile, window: Window | None, converted: bool) -> np.ndarray:
        if converted:
            return np.stack([stored_frame(f, window[3], window[2]) for f in rgb])
        stored = np.stack([stored_frame(f, info.width, info.height) for f in rgb])
        if window is None:
            return stored
        top, left, height, width = window
        return stored[:, top:top + height, left:left + width]


def clip_groups(sources: list[str], size: int) -> list[list[int]]:
    """Rows grouped ``size`` at a time along each file (rows are in file order): runs of
    consecutive clips, so one decode from a keyframe serves the group. A file's last group
    overlaps the one before to keep ``size``; a file of fewer clips repeats its last."""
    if size == 1:
        return [[i] for i in range(len(sources))]
    groups, start = [], 0
    while start < len(sources):
        end = start
        while end < len(sources) and sources[end] == sources[start]:
            end += 1
        rows = list(range(start, end))
        rows += [rows[-1]] * (size - len(rows))
        firsts = list(range(0, len(rows) - size + 1, size))
        if firsts[-1] + size < len(rows):
            firsts.append(len(rows) - size)
        groups.extend(rows[f:f + size] for f in firsts)
        start = end
    return groups
