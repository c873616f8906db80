"""`nvc-train reproduce`: the paper's table in one job, at toy scale, from a stand-in zoo in the cache."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from nvc_train.eval import table as T
from tests.cli_runner import assert_one_line_error, cli


def _zoo(tmp: Path, monkeypatch, qualities=(1, 2)) -> Path:
    """CompressAI-published zoo files (``update_model``) of ``qualities``, placed by hand in an
    empty torch hub cache, with downloads off: the zoo path reads them as it reads the real ones."""
    from compressai.models.video import ScaleSpaceFlow
    from compressai.utils.update_model.__main__ import main as update_model
    from compressai.zoo import video

    from nvc_train.models import zoo

    cache = tmp / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    for q in qualities:
        torch.manual_seed(q)
        raw = tmp / "trained" / f"ssf2020-mse-{q}.pth.tar"
        raw.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": ScaleSpaceFlow().state_dict()}, raw)
        update_model([str(raw), "-a", "ssf2020", "-n", f"ssf2020-mse-{q}", "-d", str(tmp / "published")])
        (published,) = (tmp / "published").glob(f"ssf2020-mse-{q}-*.pth.tar")
        published.rename(cache / published.name)
        monkeypatch.setitem(video.model_urls["ssf2020"]["mse"], q, f"https://example.invalid/{published.name}")
    monkeypatch.setenv("TORCH_HOME", str(tmp / "torch-home"))
    monkeypatch.setenv(zoo.OFFLINE_VARIABLES[0], "1")
    return cache


def _test_set(folder: Path) -> Path:
    from nvc_train.io.video import open_writer
    from tests.codec.video_fixtures import clip

    folder.mkdir(parents=True)
    for i, name in enumerate(("Beauty_192x128_30fps", "Jockey_192x128_30fps")):
        with open_writer(folder / f"{name}.y4m", 192, 128, Fraction(30)) as w:
            for frame in clip(40 + i, 3, 128, 192):
                w.write(frame)
    return folder


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """The toy preset end to end: zoo q1 and q2 → float and QAT → eval → x264 → table."""
    tmp = tmp_path_factory.mktemp("reproduce")
    with pytest.MonkeyPatch.context() as monkeypatch:
        cache = _zoo(tmp, monkeypatch)
        data = _test_set(tmp / "uvg")
        out = tmp / "out"
        args = ("reproduce", "--preset", "toy", "--data", f"UVG={data}", "--out-dir", out)
        first = cli(*args, env={"WANDB_MODE": "offline"})
        listed = cli(*args, "--list-tasks")
        # Task 3 (QAT at q2) interrupted after its training: only the Lightning run folder is left.
        folder = out / "q2" / "qat"
        for p in (folder / "qat-q2.ckpt", folder / "verify.json"):
            p.unlink(missing_ok=True)
        shutil.rmtree(folder / "eval", ignore_errors=True)
        blocked = cli(*args, "--table")
        again = cli(*args, env={"WANDB_MODE": "offline"})
        yield {"first": first, "again": again, "listed": listed, "blocked": blocked, "out": out, "cache": cache,
               "args": args}


@pytest.mark.slow
def test_the_toy_run_writes_the_table_with_every_row(toy_run):
    first, out = toy_run["first"], toy_run["out"]
    assert first.returncode == 0, first.stderr[-3000:]
    table = (out / "table.md").read_text()
    for row in ("| float | — |", "| qat | ", "| x264 | — | — |"):
        assert row in table, row
    for method, q in (("float", 1), ("float", 2), ("qat", 1), ("qat", 2)):
        assert f"| {method} | {q} |" in table
    assert table.count("| x264 | CRF ") == 4
    assert (out / "rd-UVG.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The parents are the zoo files from the torch hub cache.
    zoo_names = sorted(p.name.removesuffix(".pth.tar") for p in toy_run["cache"].glob("*.pth.tar"))
    curve = json.loads((out / "results" / "UVG" / "float.json").read_text())
    assert curve["results"]["model"] == zoo_names and curve["results"]["q"] == [1, 2]


@pytest.mark.slow
def test_every_number_comes_from_the_eval_jsons(toy_run):
    out = toy_run["out"]
    data = json.loads((out / "table.json").read_text())["datasets"]["UVG"]
    for method, family in (("float", "float"), ("qat", "qat")):
        for i, q in enumerate((1, 2)):
            evaluated = json.loads((out / f"q{q}" / method / "eval" / "UVG" / f"{family}.json").read_text())["results"]
            for key in ("bpp", "psnr-rgb", "psnr-yuv", "bitrate"):
                assert data["curves"][method]["results"][key][i] == evaluated[key][0], (method, q, key)
    anchor = json.loads((out / "anchors" / "eval" / "UVG" / "x264.json").read_text())
    assert data["curves"]["x264"] == anchor
    assert json.loads((out / "results" / "UVG" / "qat.json").read_text()) == data["curves"]["qat"]


@pytest.mark.slow
def test_integer_models_were_decoded_again_on_a_second_setting(toy_run):
    out = toy_run["out"]
    for q in (1, 2):
        record = json.loads((out / f"q{q}" / "qat" / "verify.json").read_text())
        assert record["latents"][0] == record["latents"][1] == 6  # 2 sequences × 3 frames
        assert record["conformance"][0] == record["conformance"][1] > 0
        assert record["control_raw_differ"][0] > 0  # the control: the float decoders did change
        assert "ATen default" in record["setting"]
    verified = json.loads((out / "table.json").read_text())["datasets"]["UVG"]["verified"]
    assert verified["qat"].startswith("identical: latents 12/12")


@pytest.mark.slow
def test_the_float_parent_fails_on_the_second_setting(toy_run):
    """The same float streams decoded here and on the scalar-kernel setting: the float parent's
    output differs, or (as with these untrained stand-ins) CompressAI's range decoder crashes on
    the desynchronised stream (SIGSEGV: a native crash, reported as the result)."""
    out = toy_run["out"]
    for q in (1, 2):
        record = json.loads((out / f"q{q}" / "float" / "verify.json").read_text())
        assert record["integer"] is False
        assert "SIGSEGV" in record.get("crashed", "") or record["control_raw_differ"][0] > 0, record
    verified = json.loads((out / "table.json").read_text())["datasets"]["UVG"]["verified"]
    assert verified["float"].startswith("float:") and "ATen default" in verified["float"]


@pytest.mark.slow
def test_a_curve_that_dips_is_named_not_averaged(toy_run):
    """Untrained zoo stand-ins give no rising RD curve; the table says which and why."""
    bd = json.loads((toy_run["out"] / "table.json").read_text())["datasets"]["UVG"]["bd"]
    cell = bd["qat"]["vs float"]["psnr-rgb"]
    assert cell["bd_rate"] is None and "not a monotone RD curve" in cell["error"] and "float" in cell["error"]


@pytest.mark.slow
def test_a_second_run_skips_finished_stages_and_resumes_an_interrupted_training(toy_run):
    """The second run of the same command, after task 3 lost everything but its run folder:
    tasks 0-2 and 4 are skipped stage by stage, task 3 resumes its training from last.ckpt."""
    again, out = toy_run["again"], toy_run["out"]
    assert toy_run["listed"].stdout.splitlines() == ["0 float q1", "1 qat q1", "2 float q2", "3 qat q2",
                                                     "4 anchors x264"]
    assert_one_line_error(toy_run["blocked"], "not yet: task 3 (qat q2)")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "qat-q1.ckpt is there" in again.stdout and ": training from" not in again.stdout
    assert "q2 qat: resuming the training from" in again.stdout and "last.ckpt" in again.stdout
    evals = [line for line in again.stdout.splitlines() if "eval on" in line]
    assert evals == ["[reproduce] q2 qat: eval on UVG"]
    assert (out / "q2" / "qat" / "qat-q2.ckpt").is_file() and (out / "q2" / "qat" / "verify.json").is_file()
    result = cli("bdrate", out / "results" / "UVG" / "x264.json", out / "anchors" / "eval" / "UVG" / "x264.json")
    assert result.returncode == 0 and "BD-rate +0.00 %" in result.stdout


@pytest.mark.slow
def test_other_settings_in_the_same_folder_are_refused(toy_run):
    assert_one_line_error(cli(*toy_run["args"], "--frames", "2"), "other settings (frames)")


def test_bad_requests_are_one_line_before_any_training(tmp_path, monkeypatch):
    data = _test_set(tmp_path / "set")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-cache"))
    monkeypatch.setenv("NVC_TRAIN_OFFLINE", "1")
    base = ("reproduce", "--preset", "toy", "--out-dir", out)
    cases = [((*base, "--data", empty), "holds no video files"),
             ((*base, "--data", data, "--methods", "qat", "magic"), "unknown method 'magic'"),
             ((*base, "--data", data, "--anchor", "vvc"), "unknown anchor 'vvc'"),
             ((*base, "--data", data, "--task", "9"), "tasks 0..4"),
             ((*base, "--data", data, "--qualities", "0"), "from 1 to 9"),
             ((*base, "--data", data), "not in the torch hub cache and downloads are off"),
             ((*base, "--data", data, "--parents", tmp_path), "no float model of quality 1, 2")]
    for args, fragment in cases:
        assert_one_line_error(cli(*args), fragment)
    assert not out.exists()


def test_bd_cells_against_the_float_parent_and_the_anchor_on_known_curves():
    """The table's BD values are bdrate's on the same lists; an anchor row has none against itself."""
    from nvc_train.eval.bdrate import bd_rate

    def curve(name, bpp, psnr):
        return {"name": name, "family": name, "results": {"bpp": bpp, "psnr-rgb": psnr, "psnr-yuv": psnr}}

    curves = {"float": curve("float", [0.1, 0.2, 0.4], [30.0, 32.0, 34.0]),
              "qat": curve("qat", [0.11, 0.22, 0.44], [30.0, 32.0, 34.0]),
              "x265": curve("x265", [0.15, 0.3, 0.6], [30.0, 32.0, 34.0])}
    rows = T.dataset_table(curves, "x265", {"qat": "identical"})
    assert rows["qat"]["bd"]["vs float"]["psnr-rgb"].rate == pytest.approx(10.0)
    assert rows["qat"]["bd"]["vs x265"]["psnr-rgb"].rate == pytest.approx(
        bd_rate([0.15, 0.3, 0.6], [30, 32, 34], [0.11, 0.22, 0.44], [30, 32, 34]))
    assert "vs float" not in rows["float"]["bd"] and rows["x265"]["bd"] == {}
    average = T.average({"A": rows, "B": rows}, "vs float")
    assert average["qat"].rate == pytest.approx(10.0)
