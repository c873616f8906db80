"""Company footage: prepare-footage over real PyAV-written files, the clip index and its split,
clip reading by seeking vs the frame cache, the DataModule, the Hub path, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from nvc_train.io.video import open_video
from nvc_train.data.footage import (FootageClips, FootageError, load_footage, prepare_footage, stored_frame,
                                    validation_files)
from tests.codec.video_fixtures import clip
from tests.data.footage_fixtures import BROKEN, FOOTAGE, SINGLE_FRAME, clips_per_file, write_footage
from tests.cli_runner import assert_one_line_error, cli

USABLE = {rel: (frames, height, width, fps) for rel, frames, height, width, fps in FOOTAGE}


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> Path:
    return write_footage(tmp_path_factory.mktemp("footage"))


def _prepare(src: Path, out: Path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_footage(src, out, progress=False, **kwargs)


@pytest.fixture(scope="module")
def prepared(footage, tmp_path_factory) -> Path:
    """Prepared with the frame cache; the same index serves the decode path (use_cache=False)."""
    out = tmp_path_factory.mktemp("prepared") / "data"
    _prepare(footage, out, clip_len=3, val_fraction=0.34, cache=True)
    return out


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _sequential_frames(path: Path, width: int, height: int) -> np.ndarray:
    """Every frame of a file decoded front to back (no seeking), as stored frames."""
    with open_video(path) as reader:
        return np.stack([stored_frame(rgb, width, height) for rgb in reader])


# --- prepare-footage -------------------------------------------------------------------


def test_cli_prepares_skips_bad_files_and_leaves_sources_untouched(footage, tmp_path):
    before = _tree_digest(footage)
    result = cli("prepare-footage", str(footage), "--out-dir", str(tmp_path / "data"), "--num-frames", "3",
                 "--val-fraction", "0.34")
    assert result.returncode == 0, result.stderr
    assert f"skipped {BROKEN}" in result.stderr and f"skipped {SINGLE_FRAME}: 1 frame(s)" in result.stderr
    assert "Traceback" not in result.stderr
    assert _tree_digest(footage) == before
    manifest = json.loads((tmp_path / "data" / "footage.json").read_text())
    assert {f["source"] for f in manifest["files"]} == set(USABLE)
    assert {s["source"] for s in manifest["skipped"]} == {BROKEN, SINGLE_FRAME}
    assert "validation:" in result.stdout and "nvc-train fit --config configs/finetune/footage.yaml" in result.stdout


def test_index_rows_split_by_file_without_leakage(prepared):
    import datasets

    dd = datasets.load_from_disk(str(prepared / "dataset"))
    assert set(dd) == {"train", "validation"}
    train, val = set(dd["train"]["source"]), set(dd["validation"]["source"])
    assert train and val and not train & val
    assert train | val == set(USABLE)
    assert len(val) == round(0.34 * len(USABLE))
    for split in dd.values():
        for row in split:
            frames, height, width, fps = USABLE[row["source"]]
            assert (row["width"], row["height"], row["file_frames"]) == (width, height, frames)
            assert row["fps"] == pytest.approx(float(fps))
            assert row["num_frames"] == 3 and row["start"] % 3 == 0 and row["start"] + 3 <= frames
    for rel, (frames, *_rest) in USABLE.items():
        rows = [r for split in dd.values() for r in split if r["source"] == rel]
        assert len(rows) == clips_per_file(frames, 3, 3)


@pytest.mark.slow
def test_parallel_jobs_prepare_the_same_dataset(footage, prepared, tmp_path):
    report = _prepare(footage, tmp_path / "data", clip_len=3, val_fraction=0.34, cache=True, jobs=2)
    assert len(report.files) == len(USABLE) and {s for s, _ in report.skipped} == {BROKEN, SINGLE_FRAME}
    serial, parallel = (json.loads((d / "footage.json").read_text()) for d in (prepared, tmp_path / "data"))
    assert parallel["files"] == serial["files"] and parallel["clips"] == serial["clips"]
    for f in serial["files"]:
        assert (prepared / "cache" / f["cache"]).read_bytes() == (tmp_path / "data" / "cache" / f["cache"]).read_bytes()


def test_split_does_not_depend_on_scan_order_and_follows_the_seed():
    names = [f"cam/{i:03d}.mp4" for i in range(40)]
    val = validation_files(names, 0.25, seed=0)
    assert len(val) == 10
    assert validation_files(list(reversed(names)), 0.25, seed=0) == val
    assert validation_files(names, 0.25, seed=1) != val
    assert validation_files(names, 0.0, seed=0) == set()
    assert len(validation_files(names[:2], 0.01, seed=0)) == 1  # a requested split is never empty
    assert validation_files(names[:1], 0.5, seed=0) == set()  # one file cannot be split


def test_a_single_file_is_split_by_time(tmp_path, capsys):
    """One file cannot be split by file: its last val_fraction of frames become validation
    clips, training clips end before them (no frame in both), and the summary says so.
    Control: val_fraction 0 keeps every clip for training."""
    from nvc_train.cli import main
    from nvc_train.data.footage import time_split
    from tests.data.footage_fixtures import write_h264

    from fractions import Fraction

    src = tmp_path / "one"
    src.mkdir()
    write_h264(src / "take.mp4", clip(3, 20, 128, 160), Fraction(25))
    assert main(["prepare-footage", str(src / "take.mp4"), "--out-dir", str(tmp_path / "p"), "--num-frames", "3",
                 "--stride", "1", "--val-fraction", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "validation: 1 file (the last frames of the one file), 5 frames, 3 clips" in out, out
    assert "train: 1 file, 15 frames, 13 clips" in out, out
    data = load_footage(tmp_path / "p")
    assert time_split(20, 3, 0.25) == 15
    train_frames = {s + k for s in data.rows["train"]["start"] for k in range(3)}
    val_frames = {s + k for s in data.rows["validation"]["start"] for k in range(3)}
    assert train_frames == set(range(15)) and val_frames == set(range(15, 20))
    assert main(["prepare-footage", str(src), "--out-dir", str(tmp_path / "all"), "--num-frames", "3",
                 "--stride", "1", "--val-fraction", "0"]) == 0
    assert "validation: 0 files, 0 frames, 0 clips" in capsys.readouterr().out
    assert time_split(5, 3, 0.5) is None  # too short to hold out a clip and keep one


def test_stride_overlapping_clips_and_downscale(footage, tmp_path):
    report = _prepare(footage, tmp_path / "data", clip_len=4, stride=2, val_fraction=0.0, cache=True, downscale=0.5)
    assert report.clips["validation"] == 0
    assert report.clips["train"] == sum(clips_per_file(f, 4, 2) for f, *_ in USABLE.values())
    files = {f.source: f for f in report.files}
    rel = "cam_a/day2.mov"
    assert (files[rel].width, files[rel].height) == (144, 80)
    data = load_footage(tmp_path / "data")
    cached = FootageClips(data, "train", 4, None, use_cache=True)
    decoded = FootageClips(data, "train", 4, None, use_cache=False)
    row = next(r for r in cached.rows if r["source"] == rel and r["start"] == 6)
    assert np.array_equal(cached.frames(row, 6, 4), decoded.frames(row, 6, 4))
    assert cached.frames(row, 6, 4).shape == (4, 80, 144, 3)


# --- reading clips ---------------------------------------------------------------------


def test_seeking_reads_the_same_frames_as_sequential_decoding_and_the_cache(footage, prepared):
    data = load_footage(prepared)
    for split in ("train", "validation"):
        cached = FootageClips(data, split, 3, None, use_cache=True)
        decoded = FootageClips(data, split, 3, None, use_cache=False)
        # Backwards, so every read seeks behind the decoder's position.
        for row in reversed(decoded.rows):
            frames, height, width, _ = USABLE[row["source"]]
            reference = _sequential_frames(footage / row["source"], width, height)
            assert len(reference) == frames
            got = decoded.frames(row, row["start"], 3)
            assert np.array_equal(got, reference[row["start"]:row["start"] + 3]), row
            assert np.array_equal(cached.frames(row, row["start"], 3), got), row


@pytest.mark.parametrize("split", ["train", "validation"])
def test_windows_converted_alone_equal_windows_of_the_cache(prepared, split):
    """The decode path converts only the crop window; the cache holds whole converted frames."""
    data = load_footage(prepared)
    crop = 128 if split == "train" else None
    decoded = FootageClips(data, split, 3, crop, val_crop_limit=128, use_cache=False)
    cached = FootageClips(data, split, 3, crop, val_crop_limit=128, use_cache=True)
    for i in range(len(decoded)):
        torch.manual_seed(i)
        a = decoded[i]
        torch.manual_seed(i)
        assert torch.equal(a, cached[i]), (split, decoded.rows[i])


@pytest.mark.parametrize("per_decode", [2, 3])
def test_clips_cut_from_one_decoded_run_equal_the_cache_and_the_single_clip_path(prepared, per_decode):
    """clips_per_decode: one decode from the keyframe serves several consecutive clips, each
    with its own random frames, crop and flip; each equals the frame cache's clip (no decoding)
    and the single-clip path's clip for the same draws."""
    from nvc_train.data.footage import clip_groups

    data = load_footage(prepared)
    grouped = FootageClips(data, "train", 2, 128, use_cache=False, clips_per_decode=per_decode)
    cached = FootageClips(data, "train", 2, 128, use_cache=True, clips_per_decode=per_decode)
    single = FootageClips(data, "train", 2, 128, use_cache=False)
    assert grouped.groups == clip_groups([r["source"] for r in single.rows], per_decode)
    assert len({single.rows[i]["source"] for i in grouped.groups[0]}) == 1
    spans = [single.rows[g[-1]]["start"] - single.rows[g[0]]["start"] for g in grouped.groups]
    assert max(spans) >= 3 * (per_decode - 1)  # some groups span several clips of a file
    for i in range(len(grouped)):
        torch.manual_seed(i)
        item = grouped[i]
        assert item.shape == (per_decode, 2, 3, 128, 128)
        torch.manual_seed(i)
        assert torch.equal(item, cached[i]), grouped.groups[i]
        torch.manual_seed(i)
        for clip_, row_index in zip(item, grouped.groups[i]):
            row = single.rows[row_index]
            start, window, flip = single._draw(row)
            alone = torch.from_numpy(single.frames(row, start, 2, window)).permute(0, 3, 1, 2)
            assert torch.equal(clip_, alone.flip(0) if flip else alone), (i, row)


def test_datamodule_joins_clip_groups_into_batches_of_clips(prepared):
    from nvc_train.lit.data import FootageDataModule

    with pytest.raises(ValueError, match="divide batch_size"):
        FootageDataModule(str(prepared), crop=128, batch_size=4, clips_per_decode=3)
    dm = FootageDataModule(str(prepared), num_frames=2, crop=128, batch_size=4, num_workers=0, use_cache=False,
                           clips_per_decode=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.batch_size == 2 and len(loader) == len(dm.train_set) // 2
    assert next(iter(loader)).shape == (4, 2, 3, 128, 128)


def test_decode_device_cuda_without_a_cuda_decoder_is_one_line(prepared):
    from nvc_train.lit.data import FootageDataModule

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the gpu test below decodes on it")
    dm = FootageDataModule(str(prepared), crop=128, num_workers=0, use_cache=False, decode_device="cuda")
    with pytest.raises(FootageError, match="--data.decode_device cuda: cannot read frames .* on the cuda decoder"):
        dm.setup("fit")


@pytest.mark.gpu
def test_nvdec_decodes_the_clips_the_cpu_decodes(prepared):
    """FFmpeg's CUDA decoder (NVDEC) gives the software decoder's frames bit for bit (H.264
    decoding is exactly specified); spawned workers decode on it."""
    from nvc_train.lit.data import FootageDataModule

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    batches = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        dm = FootageDataModule(str(prepared), num_frames=2, crop=128, batch_size=2, num_workers=1, use_cache=False,
                               decode_device=device)
        dm.setup("fit")
        batches[device] = list(dm.train_dataloader())
    assert all(torch.equal(a, b) for a, b in zip(batches["cpu"], batches["cuda"], strict=True))


def test_decoded_footage_matches_the_pixels_that_were_encoded(footage):
    from nvc_train.io.video import InputOptions

    # day1.mp4 is seed 0 of the fixture, BT.709. 4:2:0 alone limits these saturated synthetic
    # textures to 37.1 dB and H.264 at CRF 16 to about 34 dB; the control, read with the wrong
    # matrix (BT.601, FFmpeg's default), loses another 2 dB.
    frames, height, width, _ = USABLE["cam_a/day1.mp4"]
    source = clip(0, frames, height, width)

    def psnr(matrix: str | None) -> float:
        with open_video(footage / "cam_a/day1.mp4", InputOptions(matrix=matrix)) as reader:
            decoded = torch.stack([torch.from_numpy(stored_frame(rgb, width, height)) for rgb in reader])
        return float(-10 * torch.log10(((decoded.permute(0, 3, 1, 2) / 255 - source) ** 2).mean()))

    assert psnr(None) > 33.5
    assert psnr(None) > psnr("bt601") + 1


def test_training_clips_are_random_crops_reproducible_by_seed(prepared):
    data = load_footage(prepared)
    train = FootageClips(data, "train", 2, 128, temporal_flip=True, use_cache=False)
    torch.manual_seed(3)
    a = [train[i] for i in range(len(train))]
    torch.manual_seed(3)
    b = [train[i] for i in range(len(train))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(x.shape == (2, 3, 128, 128) and x.dtype == torch.uint8 for x in a)
    torch.manual_seed(4)
    assert not all(torch.equal(x, train[i]) for i, x in enumerate(a))
    # Each training clip is a window of two consecutive source frames (in either order).
    row, sample = train.rows[0], a[0].permute(0, 2, 3, 1).numpy()
    full = train.frames(row, row["start"], 3)
    hits = [(t, y, x) for t in range(3) for y in range(full.shape[1] - 127) for x in range(full.shape[2] - 127)
            if np.array_equal(full[t, y:y + 128, x:x + 128], sample[0])]
    assert hits, "the first frame is not a window of the clip"
    t, y, x = hits[0]
    neighbours = [full[u, y:y + 128, x:x + 128] for u in (t - 1, t + 1) if 0 <= u < 3]
    assert any(np.array_equal(n, sample[1]) for n in neighbours)


def test_validation_is_deterministic_centred_and_capped(prepared):
    data = load_footage(prepared)
    val = FootageClips(data, "validation", 3, None, temporal_flip=True, val_crop_limit=128, max_clips=3)
    assert len(val) == 3
    torch.manual_seed(0)
    first = [val[i] for i in range(len(val))]
    torch.manual_seed(1)
    assert all(torch.equal(x, val[i]) for i, x in enumerate(first))
    row = val.rows[0]
    full = val.frames(row, row["start"], 3)
    top, left = (row["height"] - 128) // 2, (row["width"] - 128) // 2
    assert np.array_equal(first[0].permute(0, 2, 3, 1).numpy(), full[:, top:top + 128, left:left + 128])


def _read_a_clip_and_collect_garbage(worker_id: int) -> None:
    import gc

    torch.utils.data.get_worker_info().dataset[0]
    gc.collect()


def test_workers_start_after_the_main_process_read_clips(footage, prepared):
    """Regression: a decoder opened (with frame threads) in the parent and freed in a forked
    worker hung that worker for ever. The timeout turns a hang into a failure."""
    import gc

    data = FootageClips(load_footage(prepared), "train", 3, 128, use_cache=False)
    gc.disable()  # keep the garbage below alive until the fork, as a busy parent may
    try:
        for i in range(3):
            data[i]  # opens files in this process, with FFmpeg's frame threads
        with open_video(footage / "cam_a/day1.mp4") as reader:
            next(iter(reader))  # closed, but cyclic garbage until collected
        # Each worker reads a clip and collects garbage at once, as a long-running worker
        # eventually does.
        loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=2, timeout=60,
                                             worker_init_fn=_read_a_clip_and_collect_garbage)
        batches = list(loader)
    finally:
        gc.enable()
    assert sum(len(b) for b in batches) == len(data)
    assert data[0].shape == (3, 3, 128, 128)  # and the parent still reads after the fork


def test_files_smaller_than_the_crop_are_left_out_with_a_warning(prepared):
    data = load_footage(prepared)
    with pytest.warns(UserWarning, match="smaller than the 256px crop"):
        train = FootageClips(data, "train", 3, 256)
    assert all(min(r["width"], r["height"]) >= 256 for r in train.rows)
    with pytest.raises(ValueError, match="num_frames must be in 1..3"):
        FootageClips(data, "train", 4, 128)


def test_moved_footage_needs_source_root(footage, prepared, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(footage, moved)
    data = load_footage(prepared, source_root=moved)
    clips = FootageClips(data, "train", 3, None, use_cache=False)
    row = clips.rows[0]
    assert clips.frames(row, row["start"], 3).shape[0] == 3
    gone = FootageClips(load_footage(prepared, source_root=tmp_path / "nowhere"), "train", 3, None, use_cache=False)
    with pytest.raises(FootageError, match="source_root"):
        gone.frames(row, row["start"], 3)


def test_interrupted_prepare_resumes_from_the_cache(footage, tmp_path):
    out = tmp_path / "data"
    _prepare(footage, out, cache=True)
    caches = sorted((out / "cache").glob("*.rgb"))
    stamps = {p: p.stat().st_mtime_ns for p in caches}
    # As if the run died after caching: no manifest, no index, one cache file half written.
    (out / "footage.json").unlink()
    shutil.rmtree(out / "dataset")
    with open(caches[0], "r+b") as f:
        f.truncate(caches[0].stat().st_size // 2)
    report = _prepare(footage, out, cache=True)
    assert len(report.files) == len(USABLE)
    assert caches[0].stat().st_size > 0 and caches[0].stat().st_mtime_ns != stamps[caches[0]]  # redone
    assert all(p.stat().st_mtime_ns == stamps[p] for p in caches[1:])  # reused
    data = load_footage(out)
    cached, decoded = FootageClips(data, "train", 3, None), FootageClips(data, "train", 3, None, use_cache=False)
    for row in cached.rows:
        assert np.array_equal(cached.frames(row, row["start"], 3), decoded.frames(row, row["start"], 3))


# --- bad input -------------------------------------------------------------------------


def test_bad_input_gives_one_line_errors(footage, prepared, tmp_path):
    assert_one_line_error(cli("prepare-footage", str(tmp_path / "missing"), "--out-dir", str(tmp_path / "o")), "not found")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("prepare-footage", str(tmp_path / "empty"), "--out-dir", str(tmp_path / "o")),
                          "no video files")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.mp4").write_bytes(b"\0" * 100)
    assert_one_line_error(cli("prepare-footage", str(junk), "--out-dir", str(tmp_path / "o")), "none of the 1 video files")
    assert_one_line_error(cli("prepare-footage", str(footage), "--out-dir", str(prepared)), "--overwrite")
    assert_one_line_error(cli("prepare-footage", str(footage), "--out-dir", str(footage / "data")), "inside")
    assert_one_line_error(cli("prepare-footage", str(footage), "--out-dir", str(tmp_path / "o"), "--downscale", "2"),
                          "--downscale")
    assert_one_line_error(cli("prepare-footage", str(footage), "--out-dir", str(tmp_path / "o"), "--val-fraction", "1"),
                          "--val-fraction")
    assert not (tmp_path / "o").exists()
    with pytest.raises(FootageError, match="not prepared footage"):
        load_footage(tmp_path)


@pytest.mark.slow
def test_a_cache_that_cannot_be_written_stops_the_run(footage, tmp_path):
    """Disk full (here: a 100 kB file-size limit) must not turn into 'skipped' for every file."""
    import resource
    import signal

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    result = subprocess.run([sys.executable, "-m", "nvc_train.cli", "prepare-footage", str(footage), "--out-dir",
                             str(tmp_path / "data"), "--use-cache", "--quiet"], capture_output=True, text=True,
                            preexec_fn=limit_file_size, timeout=300)
    assert_one_line_error(result, "cannot write the frame cache")
    assert "skipped" not in result.stderr
    assert not list((tmp_path / "data").rglob("*.rgb*"))  # neither a cache file nor its temporary


# --- the Hugging Face Hub --------------------------------------------------------------


def _hub_cache(root: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """A Hugging Face cache holding one snapshot of a dataset repo, as huggingface_hub lays it out."""
    repo = root / f"datasets--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    for rel, src in files.items():
        target = repo / "snapshots" / commit / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return root


@pytest.mark.slow
def test_hub_name_offline_without_cache_is_a_clear_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-m", "nvc_train.cli", "prepare-footage", "hf://datasets/acme/footage",
                             "--out-dir", str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=300)
    assert_one_line_error(result, "cannot reach the Hugging Face Hub")
    assert_one_line_error(cli("prepare-footage", "hf://datasets/no-owner", "--out-dir", str(tmp_path / "o")),
                          "not a Hugging Face dataset name")


def test_hub_dataset_from_the_local_cache_goes_through_the_same_clip_logic(footage, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    from nvc_train.lit.data import FootageDataModule

    cache = _hub_cache(tmp_path / "hf", "acme/footage", {rel: footage / rel for rel in list(USABLE)[:3]})
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    dm = FootageDataModule("hf://datasets/acme/footage", crop=128, hub_cache=str(tmp_path / "prepared"),
                           val_fraction=0.34, num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.prepare_data()
        dm.setup("fit")
    manifest = json.loads((dm.prepared_root() / "footage.json").read_text())
    assert {f["source"] for f in manifest["files"]} == set(list(USABLE)[:3])
    assert dm.train_set[0].shape == (3, 3, 128, 128)
    assert len(dm.val_set) > 0


# --- training on footage ---------------------------------------------------------------


@pytest.mark.slow
def test_fit_on_footage_with_ddp_decoding_in_workers(prepared, tmp_path):
    """The company recipe, shrunk: configs/finetune/footage.yaml on 2 DDP ranks (gloo), each with
    a DataLoader worker decoding the files with PyAV; each rank trains on its own shard."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "NVC_TEST_SHARDS": str(tmp_path), "PYTHONPATH": str(root), "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, "-m", "nvc_train.cli", "fit", "--config", str(root / "configs/finetune/footage.yaml"),
         "--model.pretrained", "false",  # the preset starts from CompressAI's zoo; sharding is what is tested here
         "--data.root", str(prepared), "--data.use_cache", "false", "--data.crop", "128", "--data.batch_size", "1",
         "--data.num_workers", "1", "--data.val_crop_limit", "128", "--data.max_val_clips", "3",
         "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.accelerator", "cpu",
         "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false",
         "--trainer.default_root_dir", str(tmp_path / "run"),
         "--trainer.callbacks+=tests.data.footage_fixtures.RecordShards"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "`max_steps=2` reached" in result.stderr
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(2)]
    assert all(r["world"] == 2 and r["sampler"] == "ResumableSampler" for r in ranks)
    n_train, n_val = ranks[0]["train_len"], ranks[0]["val_len"]
    a, b = ({index for index, _seed in r["train"]} for r in ranks)
    assert len(a) == len(b) == n_train // 2 and not a & b  # equal parts, no clip on both ranks
    assert a | b == set(range(n_train)) or n_train % 2  # an odd one out is left for the next epoch
    # Validation is not shuffled: rank k takes every other clip of the fixed list, padded
    # with the first clip when the count is odd.
    padded = list(range(n_val)) + list(range(n_val))[: n_val % 2]
    assert ranks[0]["val"] == padded[0::2] and ranks[1]["val"] == padded[1::2]
    # --trainer.default_root_dir moved the preset's whole run folder, W&B files included
    assert list(tmp_path.glob("run/wandb/offline-run-*/run-*.wandb")) and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_footage_to_pixel_exact_recipe_from_an_empty_folder(prepared, tmp_path):
    """The README's footage → pixel-exact lines, shrunk, run from an empty folder and from a
    float parent as `export-float` writes it (random weights, recorded as q5 trained on 128²
    crops): `fit` keeps the parent's quality and flow reference and says so, says the QAT scope
    at its start, `export-integer` says it writes a pixel-exact checkpoint, and the checkpoint
    is one (format 4, whole decoder integer) of the parent's λ."""
    from nvc_train.lit.checkpoints import save_float_state_dict
    from nvc_train.models.loss import quality_to_lambda
    from nvc_train.models.ssf import build_ssf

    save_float_state_dict(build_ssf(128), tmp_path / "footage-float.pth.tar", 5, quality_to_lambda(5))
    fit = cli("fit", "--config", "configs/finetune/footage_qat_decoder.yaml", "--model.init_weights",
              "footage-float.pth.tar", "--data.root", str(prepared), "--data.use_cache", "false", "--data.crop", "128",
              "--data.batch_size", "1", "--data.num_workers", "0", "--data.val_crop_limit", "128",
              "--data.max_val_clips", "1", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
              "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", cwd=tmp_path,
              env={"WANDB_MODE": "offline"})
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "QAT: qat.scope=decoder: hyper-decoders and image/motion/residual decoders integer" in fit.stderr + fit.stdout
    assert (f"training at quality 5 (λ={quality_to_lambda(5)}), the parent's (footage-float.pth.tar); "
            "flow_reference 128, the parent's") in fit.stderr + fit.stdout
    assert "records flow_reference" not in fit.stderr and "as set, but the parent" not in fit.stderr
    assert re.search(r"validation after step 2: [\d.]+ bpp, PSNR [\d.]+ dB", fit.stderr + fit.stdout)
    last = tmp_path / "runs/footage-qat-decoder/checkpoints/last.ckpt"
    export = cli("export-integer", str(last), "--out-dir", "checkpoints", "--name", "ssf-footage-pixel", cwd=tmp_path)
    assert export.returncode == 0, export.stderr[-3000:]
    assert "(qat.scope=decoder: the whole decoder integer" in export.stdout
    assert "(pixel-exact checkpoint)" in export.stdout
    from nvc_train.quant.export import FORMAT_VERSION, load_integer_checkpoint

    (written,) = (tmp_path / "checkpoints").glob("ssf-footage-pixel-*.ckpt")
    assert load_integer_checkpoint(written).codec.pixel_exact
    assert load_integer_checkpoint(written).metadata["lmbda"] == quality_to_lambda(5)
    assert int.from_bytes(written.read_bytes()[12:16], "big") == FORMAT_VERSION  # header: magic (12), version u32


def test_eval_takes_the_held_out_files_of_prepared_footage(prepared):
    from nvc_train.eval.evaluate import collect_sequences

    manifest = json.loads((prepared / "footage.json").read_text())
    held_out = {f["source"] for f in manifest["files"] if f["split"] == "validation"}
    found = collect_sequences([prepared])
    assert {p.relative_to(manifest["source_root"]).as_posix() for p in found} == held_out
    assert all(p.is_file() for p in found)


def test_a_model_card_names_data_and_parent_by_absolute_path_and_hash(prepared, tmp_path, monkeypatch):
    """Started from relative paths (as the README's recipes are), the export's training-data
    and parent lines still identify both: absolute folder, the manifest's and the parent's
    SHA-256. Control: a run started with an absolute data path records the same."""
    from nvc_train.lit.checkpoints import _describe_data, describe_parent, save_float_state_dict
    from nvc_train.lit.data import FootageDataModule
    from nvc_train.lit.module import SSFLitModule

    save_float_state_dict(SSFLitModule(real_coding_clips=0).model, tmp_path / "parent.pth.tar")
    monkeypatch.chdir(prepared.parent)
    data = FootageDataModule("data", crop=128)
    monkeypatch.chdir(tmp_path)
    child = SSFLitModule(init_weights="parent.pth.tar", real_coding_clips=0)

    manifest = hashlib.sha256((prepared / "footage.json").read_bytes()).hexdigest()
    described = _describe_data({"datamodule_hyper_parameters": dict(data.hparams)})
    assert f"root={prepared.resolve()} (footage.json SHA-256 {manifest})" in described
    assert not any(item.startswith("_") for item in described.split(", "))
    parent = hashlib.sha256((tmp_path / "parent.pth.tar").read_bytes()).hexdigest()
    assert describe_parent(dict(child.hparams)) == f"{(tmp_path / 'parent.pth.tar').resolve()} (SHA-256 {parent})"
    absolute = FootageDataModule(str(prepared), crop=128)
    assert _describe_data({"datamodule_hyper_parameters": dict(absolute.hparams)}) == described
