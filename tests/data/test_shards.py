"""Clip shards: cut from the real PyAV-written footage, read back by tar offsets, checked
against the manifest, fetched over HTTP, trained on; bad input."""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from nvc_train.data.footage import FootageClips, FootageError, load_footage, prepare_footage
from nvc_train.data.shards import ShardClips, ShardOptions, has_cut, prepare_shards, read_shard_manifest
from nvc_train.lit.data import ShardDataModule
from tests.cli_runner import assert_one_line_error, cli
from tests.data.footage_fixtures import BROKEN, FOOTAGE, SINGLE_FRAME, write_footage

USABLE = {rel for rel, *_ in FOOTAGE}
SMALL = ShardOptions(window=(160, 128), windows_per_minute=200, val_fraction=0.34)
"""Windows smaller than most fixture frames (so their place varies), several per file."""


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> Path:
    return write_footage(tmp_path_factory.mktemp("footage"))


def _shards(src: Path, out: Path, options: ShardOptions = SMALL, **kwargs) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_shards(src, out, options, progress=False, **kwargs)


@pytest.fixture(scope="module")
def shards(footage, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "data"
    _shards(footage, out)
    return out


def _video_path_frames(footage: Path, downscale: float = 1.0):
    """The clip-index path over the same files: frames decoded by seeking, as the loader does."""
    out = footage.parent / f"index-{downscale}"
    if not out.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare_footage(footage, out, clip_len=3, val_fraction=0.34, downscale=downscale, progress=False)
    return FootageClips(load_footage(out), "train", 3, None, use_cache=False)


def _windows(root: Path, split: str = "train") -> list[tuple[dict, np.ndarray]]:
    manifest = read_shard_manifest(str(root))
    clips = ShardClips(str(root), manifest, split, 3, None)
    return [clips.window(i) for i in range(len(clips))]


@pytest.mark.parametrize("downscale", [1.0, 0.75])
def test_shard_windows_are_the_frames_the_video_path_reads(footage, tmp_path, downscale):
    """Lossless shards hold exactly the stored frames the seeking decoder gives for the same
    file, frames and rectangle (with and without resizing); lossy ones (the control) do not."""
    options = ShardOptions(window=(160, 128), windows_per_minute=200, val_fraction=0.34, downscale=downscale)
    _shards(footage, tmp_path / "lossless", options)
    _shards(footage, tmp_path / "lossy", ShardOptions(**{**options.__dict__, "quality": 90}))
    video = _video_path_frames(footage, downscale)
    windows = _windows(tmp_path / "lossless")
    assert len({m["source"] for m, _ in windows}) >= 3 and len({(m["top"], m["left"]) for m, _ in windows}) > 2
    for meta, frames in windows:
        rect = (meta["top"], meta["left"], meta["height"], meta["width"])
        assert np.array_equal(frames, video.frames({"source": meta["source"]}, meta["start"], 3, rect)), meta
    lossy = _windows(tmp_path / "lossy")
    assert [m for m, _ in lossy] == [m for m, _ in windows]
    assert not any(np.array_equal(a, b) for (_, a), (_, b) in zip(lossy, windows))


def test_prepare_splits_by_file_skips_bad_files_and_records_hashes(footage, shards):
    manifest = read_shard_manifest(str(shards))
    assert {f["source"] for f in manifest["files"]} == USABLE
    assert {s["source"] for s in manifest["skipped"]} == {BROKEN, SINGLE_FRAME}
    train = {f["source"] for f in manifest["files"] if f["split"] == "train"}
    val = {f["source"] for f in manifest["files"] if f["split"] == "validation"}
    assert not train & val and len(val) == round(0.34 * len(USABLE))
    for split, sources in (("train", train), ("validation", val)):
        metas = [m for m, _ in _windows(shards, split)]
        assert {m["source"] for m in metas} == sources
        assert len(metas) == manifest["windows"][split]
    assert all(m["start"] % 3 == 0 for m, _ in _windows(shards))  # on the grid: windows never overlap
    import hashlib

    for shard in manifest["shards"]:
        assert hashlib.sha256((shards / "shards" / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]


def test_cli_resumes_without_rewriting_finished_shards_and_in_parallel_writes_the_same(footage, tmp_path):
    out = tmp_path / "data"
    args = ["prepare-footage", str(footage), "--out-dir", str(out), "--shards", "--window", "160x128",
            "--windows-per-minute", "200", "--val-fraction", "0.34"]
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert f"skipped {BROKEN}" in result.stderr and "Traceback" not in result.stderr
    assert "windows in" in result.stdout and "finetune/footage_shards.yaml" in result.stdout
    manifest = json.loads((out / "shards.json").read_text())
    # An interruption: the manifest not yet written, one file's shards not yet complete.
    (out / "shards.json").unlink()
    lost = manifest["shards"][0]["name"]
    (out / "shards" / lost).unlink()
    kept = {s["name"]: os.stat(out / "shards" / s["name"]).st_mtime_ns for s in manifest["shards"][1:]}
    assert cli(*args, "-q").returncode == 0
    assert json.loads((out / "shards.json").read_text()) == manifest  # the same shards, byte for byte
    assert {n: os.stat(out / "shards" / n).st_mtime_ns for n in kept} == kept  # finished ones not rewritten
    assert (out / "shards" / lost).is_file()
    assert cli(*args, "-q").returncode == 2  # now complete: refuses to overwrite
    parallel = tmp_path / "parallel"
    assert cli(*args[:3], str(parallel), *args[4:], "--jobs", "2", "-q").returncode == 0
    assert json.loads((parallel / "shards.json").read_text())["shards"] == manifest["shards"]


def test_a_damaged_shard_is_refused_by_name(shards, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    data = ShardDataModule(str(copy), crop=128, num_workers=0)
    data.setup("fit")  # intact: passes, and leaves stamps so the next start reads nothing again
    assert list((copy / "shards" / ".verified").iterdir())
    name = read_shard_manifest(str(copy))["shards"][1]["name"]
    raw = bytearray((copy / "shards" / name).read_bytes())
    raw[700] ^= 1
    (copy / "shards" / name).write_bytes(bytes(raw))
    with pytest.raises(FootageError, match=f"shard .*{name} does not match its manifest"):
        ShardDataModule(str(copy), crop=128, num_workers=0).setup("fit")
    result = cli("fit", "--config", "configs/finetune/footage_shards.yaml", "--data.root", str(copy),
                 "--data.crop", "128", "--model.pretrained", "false", "--trainer.logger", "false",
                 "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.accelerator", "cpu")
    assert_one_line_error(result, name)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(shards, tmp_path):
    """The shard folder (a copy, so it can be tampered with) behind a real HTTP server."""
    import shutil

    served = tmp_path / "served"
    shutil.copytree(shards, served)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=served))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_shards_over_http_are_fetched_once_checked_and_read_like_local_ones(shards, http_root, tmp_path):
    served, url = http_root
    remote = ShardDataModule(url, crop=128, num_workers=0, cache_dir=str(tmp_path / "cache"))
    local = ShardDataModule(str(shards), crop=128, num_workers=0)
    remote.setup("fit")
    local.setup("fit")
    assert len(remote.train_set) == len(local.train_set) > 0
    for i in range(len(local.train_set)):
        torch.manual_seed(i)
        a = local.train_set[i]
        torch.manual_seed(i)
        assert torch.equal(remote.train_set[i], a)
    fetched = sorted(p.name for p in (tmp_path / "cache").rglob("*.tar"))
    assert fetched == sorted(s["name"] for s in local.train_set.shards)
    # A shard changed on the server after the manifest: refused, nothing of it kept.
    name = remote.val_set.shards[0]["name"]
    (served / "shards" / name).write_bytes(b"\0" * 1024)
    with pytest.raises(FootageError, match=f"shard {url}/shards/{name} does not match its manifest"):
        remote.val_set[0]
    assert not list((tmp_path / "cache").rglob(f"*{name}*"))


def test_scene_cut_detection_and_avoidance(tmp_path):
    from fractions import Fraction

    from tests.codec.video_fixtures import clip
    from tests.data.footage_fixtures import write_h264

    # Two shots, dark then bright, cut between frames 10 and 11: the grid window 9..11 straddles it.
    frames = torch.cat([clip(1, 11, 128, 160) * 0.3, clip(2, 13, 128, 160) * 0.3 + 0.7])
    write_h264(tmp_path / "src" / "cut.mp4", frames, Fraction(25))
    write_h264(tmp_path / "src" / "calm.mp4", clip(3, 24, 128, 160), Fraction(25))
    options = ShardOptions(window=(160, 128), windows_per_minute=500, val_fraction=0)  # every grid start
    plain = _shards(tmp_path / "src", tmp_path / "plain", options)
    avoid = _shards(tmp_path / "src", tmp_path / "avoid", ShardOptions(**{**options.__dict__, "avoid_cuts": 40.0}))
    plain_windows = {(m["source"], m["start"]): f for m, f in _windows(tmp_path / "plain")}
    assert len(plain_windows) == plain["windows"]["train"] == 16
    assert [k for k, f in plain_windows.items() if has_cut(f, 40.0)] == [("cut.mp4", 9)]
    assert {(m["source"], m["start"]) for m, _ in _windows(tmp_path / "avoid")} == set(plain_windows) - {("cut.mp4", 9)}
    assert {f["source"]: f["rejected_for_cuts"] for f in avoid["files"]} == {"cut.mp4": 1, "calm.mp4": 0}


def test_bad_input_gives_one_line_errors(footage, shards, tmp_path):
    base = ["prepare-footage", str(footage), "--out-dir", str(tmp_path / "o"), "--shards"]
    assert_one_line_error(cli(*base, "--shard-quality", "0"), "--shard-quality")
    assert_one_line_error(cli(*base, "--window", "448"), "--window")
    assert_one_line_error(cli(*base, "--windows-per-minute", "0"), "positive")
    assert_one_line_error(cli("prepare-footage", str(footage), "--out-dir", str(shards), "--shards"), "--overwrite")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.mp4").write_bytes(b"\0" * 100)
    assert_one_line_error(cli("prepare-footage", str(junk), "--out-dir", str(tmp_path / "o"), "--shards"),
                          "none of the 1 video files")
    assert not (tmp_path / "o").exists()
    with pytest.raises(FootageError, match="holds no clip shards"):
        ShardDataModule(str(tmp_path), crop=128)
    fit = ["fit", "--config", "configs/finetune/footage_shards.yaml", "--trainer.accelerator", "cpu"]
    assert_one_line_error(cli(*fit, "--data.root", str(tmp_path / "nothing")), "holds no clip shards (no shards.json)")
    unreachable = "http://127.0.0.1:9/shards"  # the discard port: nothing listens
    assert_one_line_error(cli(*fit, "--data.root", unreachable),
                          f"cannot read {unreachable}/shards.json (ConnectionRefusedError")


@pytest.mark.slow
def test_the_shards_preset_fine_tunes_from_shards(shards, tmp_path):
    """configs/finetune/footage_shards.yaml shrunk to CPU size, a DataLoader worker reading the
    shards; the batch log shows every step fed a batch."""
    result = cli("fit", "--config", "configs/finetune/footage_shards.yaml", "--data.root", str(shards),
                 "--model.pretrained", "false", "--data.crop", "128", "--data.num_frames", "2",
                 "--data.batch_size", "2", "--data.num_workers", "1", "--data.val_crop_limit", "128",
                 "--data.max_val_clips", "1", "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
                 "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
                 "--trainer.callbacks+=nvc_train.lit.batch_log.BatchDigestLog",
                 "--trainer.callbacks.dirpath", str(tmp_path / "log"), cwd=tmp_path)  # the preset's runs/ go here
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "runs" / "footage-shards" / "checkpoints" / "last.ckpt").is_file()
    from nvc_train.lit.batch_log import read_batch_log

    assert sorted(read_batch_log(tmp_path / "log" / "batches-rank0.tsv")) == [0, 1, 2]


def test_shards_in_an_s3_bucket_stream_through_fsspec(shards, tmp_path, monkeypatch):
    """An object store: moto's S3 server on loopback, the shards uploaded to a bucket, read by
    s3fs in a DataLoader worker, as a cluster node reads AWS S3 or MinIO (AWS_ENDPOINT_URL)."""
    s3fs = pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for name, value in (("AWS_ENDPOINT_URL", f"http://{host}:{port}"), ("AWS_ACCESS_KEY_ID", "test"),
                            ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(name, value)
        s3 = s3fs.S3FileSystem(skip_instance_cache=True)
        s3.mkdir("footage")
        s3.put(f"{shards}/", "footage/shards-v1", recursive=True)
        remote = ShardDataModule("s3://footage/shards-v1", crop=128, batch_size=2, num_workers=1,
                                 cache_dir=str(tmp_path / "cache"))
        local = ShardDataModule(str(shards), crop=128, batch_size=2, num_workers=1)
        for dm in (remote, local):
            dm.setup("fit")
        torch.manual_seed(0)
        got = list(remote.train_dataloader())
        torch.manual_seed(0)
        assert all(torch.equal(a, b) for a, b in zip(got, local.train_dataloader(), strict=True)) and got
        assert len(list((tmp_path / "cache").rglob("*.tar"))) == len(local.train_set.shards)
    finally:
        server.stop()
