"""Publishing to the Hub, offline parts: the model card parsed back by the Hub's own reader,
the manifest, the refusals, and ``hf://`` checkpoints read from a hand-made Hub cache with
``HF_HUB_OFFLINE=1`` by every command that reads a checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nvc_train.cli import main
from tests.cli_runner import assert_one_line_error
from tests.quant.test_export import rewrite_checkpoint

REPO = "me/ssf-q3-int"


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def nvc(*args, env: dict, cwd=None) -> subprocess.CompletedProcess:
    (result,) = nvc_session([args], env, cwd)
    return result


_SESSION = """
import contextlib, io, json, sys
from nvc_train.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def nvc_session(calls: list, env: dict, cwd=None) -> list[subprocess.CompletedProcess]:
    """Several `nvc-train` calls, in order, in one fresh interpreter with ``env`` (huggingface_hub
    reads HF_HOME/HF_HUB_OFFLINE/HF_ENDPOINT at import): one torch import instead of many."""
    argvs = [[str(a) for a in call] for call in calls]
    proc = subprocess.run([sys.executable, "-c", _SESSION, json.dumps(argvs)], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=cwd, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [subprocess.CompletedProcess(argv, code, out, err)
            for argv, (code, out, err) in zip(argvs, json.loads(proc.stdout.splitlines()[-1]))]


@pytest.fixture(scope="module")
def published(evaluation, int_checkpoint, float_weights, tmp_path_factory) -> Path:
    """``publish --dry-run``: the folder of exactly what would be uploaded."""
    code, out = evaluation
    assert code == 0
    folder = tmp_path_factory.mktemp("publish") / "repo"
    assert main(["publish", str(int_checkpoint), "--repo", REPO, "--float", str(float_weights), "--eval", str(out),
                 "--dry-run", str(folder), "--quiet"]) == 0
    return folder


def test_the_card_header_is_read_back_by_the_hub_and_matches_the_eval_json(published, evaluation, int_checkpoint):
    from huggingface_hub import ModelCard, metadata_load

    _, out = evaluation
    card = ModelCard.load(published / "README.md")
    data = card.data
    assert data.library_name == "nvc-train" and "video-compression" in data.tags
    assert data.license == "other"  # not started from CompressAI's zoo, and no --license given
    qat = json.loads((out / "qat.json").read_text())["results"]
    assert qat["model"] == [int_checkpoint.stem]
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results == {k: qat[k][0] for k in ("bpp", "psnr-rgb", "psnr-yuv", "ms-ssim-rgb")}
    assert {r.dataset_name for r in data.eval_results} == {"2 sequences: pan, walk"}
    raw = metadata_load(published / "README.md")
    assert raw["model-index"][0]["name"] == "ssf-q3-int"
    body = card.text
    digest = hashlib.sha256(int_checkpoint.read_bytes()[56:]).hexdigest()
    assert f"SHA-256 of the payload: `{digest}`" in body
    assert f"nvc-train conformance hf://{REPO}" in body
    assert "realistic (768×512, 3 frames IPP)" in body and "activations 8-bit" in body
    assert "| float parent | float |" in body  # the parent's point from float.json
    assert "BD-rate against the float parent: not known" in body  # one point per curve


def test_the_manifest_names_the_checkpoint_and_every_files_sha256(published, int_checkpoint, float_weights):
    manifest = json.loads((published / "nvc-train.json").read_text())
    assert manifest["checkpoint"] == int_checkpoint.name and manifest["float_parent"] == float_weights.name
    for name in (int_checkpoint.name, float_weights.name):
        assert manifest["files"][name] == hashlib.sha256((published / name).read_bytes()).hexdigest()
    assert sorted(p.name for p in published.iterdir()) == sorted(
        ["README.md", "nvc-train.json", int_checkpoint.name, float_weights.name])


def test_a_known_bd_rate_is_stated_as_bdrate_computes_it(tmp_path, int_checkpoint, capsys):
    """Four-point curves in an eval folder: the card's BD-rate is `nvc-train bdrate`'s."""
    from nvc_train.hf.card import read_eval

    names = [int_checkpoint.stem, "b", "c", "d"]
    float_curve = {"bpp": [0.1, 0.2, 0.4, 0.8], "psnr-rgb": [28.0, 30.5, 33.0, 35.2]}
    qat_curve = {"bpp": [0.11, 0.215, 0.43, 0.85], "psnr-rgb": [28.0, 30.4, 33.0, 35.1]}
    for family, curve, q in (("float", float_curve, ["f1", "f2", "f3", "f4"]), ("qat", qat_curve, names)):
        (tmp_path / f"{family}.json").write_text(json.dumps({"name": family, "results": {"model": q, **curve}}))
    summary = read_eval(tmp_path, int_checkpoint.stem, None)
    code, out, _ = run_cli(["bdrate", tmp_path / "float.json", tmp_path / "qat.json"], capsys)
    assert code == 0
    assert f"BD-rate {summary.bd_rate:+.2f} %" in out


def test_publish_refuses_a_checkpoint_whose_conformance_fails_here(int_checkpoint, tmp_path, capsys):
    def empty_realistic_record(payload):
        records = json.loads(payload["conformance"]["records"])
        records[1]["frames"] = []
        payload["conformance"]["records"] = json.dumps(records)

    bad = rewrite_checkpoint(int_checkpoint, tmp_path / "bad-00000000.ckpt", empty_realistic_record)
    code, _, err = run_cli(["publish", bad, "--repo", REPO, "--dry-run", tmp_path / "out", "--quiet"], capsys)
    assert code == 2 and "refusing to publish bad-00000000.ckpt: 1 of 30 conformance checks differ" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("repo,fragment", [("no-owner", "use OWNER/NAME"), ("a/b/c", "--repo 'a/b/c'"),
                                           ("me/bad name", "--repo 'me/bad name'")])
def test_bad_repository_names_are_one_line(int_checkpoint, tmp_path, capsys, repo, fragment):
    code, _, err = run_cli(["publish", int_checkpoint, "--repo", repo, "--dry-run", tmp_path, "--quiet"], capsys)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1


def place_in_hub_cache(hf_home: Path, repo_id: str, files: dict[str, Path], revision: str = "main") -> str:
    """The layout ``hf_hub_download`` leaves in ``$HF_HOME/hub``, made by hand: content-addressed
    blobs, a snapshot per commit linking to them, and a ref naming the commit."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode() + revision.encode()).hexdigest()
    for name, src in files.items():
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


@pytest.fixture(scope="module")
def hub_cache(published, tmp_path_factory) -> Path:
    hf_home = tmp_path_factory.mktemp("hf-home")
    place_in_hub_cache(hf_home, REPO, {p.name: p for p in published.iterdir()})
    return hf_home


OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.mark.slow  # over 9 s on the 2-core machine: `make test` runs it, `make test-fast` does not
def test_every_command_reads_hf_checkpoints_offline_from_the_cache(hub_cache, int_checkpoint, float_weights,
                                                                   sequences, tmp_path):
    env = {**OFFLINE, "HF_HOME": str(hub_cache)}
    clip, pinned = sequences / "pan.y4m", f"hf://{REPO}@main/{int_checkpoint.name}"
    conformance, encode, decode, verify, local, evaluation = nvc_session([
        ["conformance", f"hf://{REPO}"],
        ["encode", clip, "-o", tmp_path / "pan.nvc", "--checkpoint", f"hf://{REPO}", "--frames", "2", "--quiet"],
        ["decode", tmp_path / "pan.nvc", "-o", tmp_path / "pan-out.y4m", "--quiet", "--checkpoint", pinned],
        ["hashes", tmp_path / "pan.nvc", "--checkpoint", pinned],
        ["hashes", tmp_path / "pan.nvc", "--checkpoint", int_checkpoint],
        ["eval", "--checkpoint", f"hf://{REPO}", f"hf://{REPO}/{float_weights.name}", "--data", clip,
         "--out-dir", tmp_path / "eval", "--frames", "2", "--quiet"],
    ], env)
    for result in (conformance, encode, decode, verify, local, evaluation):
        assert result.returncode == 0, (result.args, result.stderr)
    assert f"conformance PASS: 34 checks in records small, realistic, stress of {int_checkpoint.name}" \
        in conformance.stdout
    # A bitstream names the checkpoint it needs by hash: the local file and the Hub one agree.
    assert local.stdout == verify.stdout and len(verify.stdout.splitlines()) == 2
    assert json.loads((tmp_path / "eval" / "qat.json").read_text())["results"]["model"] == [int_checkpoint.stem]
    assert json.loads((tmp_path / "eval" / "float.json").read_text())["results"]["model"] == ["ssf-float"]


@pytest.mark.slow  # over 9 s on the 2-core machine: `make test` runs it, `make test-fast` does not
def test_hf_checkpoints_that_are_absent_or_altered_are_one_line_errors(hub_cache, published, int_checkpoint, tmp_path):
    env = {**OFFLINE, "HF_HOME": str(hub_cache)}
    cases = [
        ("hf://me/elsewhere", "is not in the Hugging Face cache and the Hub cannot be reached"),
        (f"hf://{REPO}@v9", "is not in the Hugging Face cache"),
        (f"hf://{REPO}/missing.ckpt", "is not in the Hugging Face cache"),
        ("hf://datasets/me/footage", "is a dataset repository"),
        ("hf://me", "is not a checkpoint on the Hub"),
    ]
    for result, (_, fragment) in zip(nvc_session([["conformance", ref] for ref, _ in cases], env), cases):
        assert_one_line_error(result, fragment)
    # A cache whose checkpoint blob was altered: the manifest's SHA-256 refuses it.
    altered = tmp_path / "hf-home"
    shutil.copytree(hub_cache, altered, symlinks=True)
    (blob,) = [p for p in (altered / "hub").rglob("blobs/*") if p.stat().st_size == int_checkpoint.stat().st_size]
    data = bytearray(blob.read_bytes())
    data[-10] ^= 1
    blob.write_bytes(bytes(data))
    assert_one_line_error(nvc("conformance", f"hf://{REPO}", env={**OFFLINE, "HF_HOME": str(altered)}),
                          "the repository's nvc-train.json says")


# --- the upload: `nvc-train publish` against a local stand-in of the Hub (tests/hub_server.py) ---
def hub_env(server, hf_home: Path, **extra: str) -> dict:
    """The real huggingface_hub client pointed at the stand-in. Xet is off: the client sends
    large files through Xet when hf_xet is installed, and the stand-in speaks plain LFS only."""
    return {"HF_ENDPOINT": server.endpoint, "HF_HOME": str(hf_home), "HF_TOKEN": "dummy-write-token",
            "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0", **extra}


@pytest.mark.slow  # over 9 s on the 2-core machine: `make test` runs it, `make test-fast` does not
def test_publish_then_someone_else_decodes_from_hf_and_later_offline(int_checkpoint, float_weights, evaluation,
                                                                     sequences, tmp_path):
    from tests.hub_server import HubStandIn

    _, eval_out = evaluation
    clip, local = tmp_path / "clip.nvc", tmp_path / "local.y4m"
    assert main(["encode", str(sequences / "pan.y4m"), "-o", str(clip), "--checkpoint", str(int_checkpoint),
                 "--frames", "2", "--quiet"]) == 0
    assert main(["decode", str(clip), "-o", str(local), "--checkpoint", str(int_checkpoint), "--quiet"]) == 0
    publish = ["publish", int_checkpoint, "--repo", REPO, "--float", float_weights, "--eval", eval_out]
    relicensed = [*publish, "--license", "mit"]
    someone = tmp_path / "someone-else-hf-home"
    with HubStandIn(tmp_path / "hub") as server:
        first, refused, replaced, branch = nvc_session([
            publish,
            relicensed,  # a different card: refused without --overwrite
            [*relicensed, "--overwrite"],  # only the card changes, so only the card is sent
            # a branch (made from main): a card without results goes there, main keeps its own
            ["publish", int_checkpoint, "--repo", REPO, "--revision", "v2", "--license", "mit", "--overwrite"],
        ], hub_env(server, tmp_path / "publisher"))
        assert first.returncode == 0, first.stderr
        assert f"published {int_checkpoint.name}, {float_weights.name}, README.md, nvc-train.json to hf://{REPO}" \
            in first.stdout
        assert_one_line_error(refused, f"hf://{REPO} already holds a different README.md; pass --overwrite")
        assert replaced.returncode == 0 and f"published README.md to hf://{REPO}" in replaced.stdout, replaced.stderr
        assert branch.returncode == 0 and f"to hf://{REPO}@v2" in branch.stdout, branch.stderr
        assert server.file_bytes(REPO, int_checkpoint.name) == int_checkpoint.read_bytes()
        main_card = server.file_bytes(REPO, "README.md")
        assert b"library_name: nvc-train" in main_card and b"license: mit" in main_card
        assert b"Not measured at publication" in server.file_bytes(REPO, "README.md", revision="v2")
        assert b"Not measured at publication" not in main_card
        # Someone else, online with an empty cache, decodes with the Hub reference.
        out = tmp_path / "from-hub.y4m"
        result = nvc("decode", clip, "-o", out, "--checkpoint", f"hf://{REPO}", "--quiet",
                     env=hub_env(server, someone, HF_TOKEN=""))
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == local.read_bytes()
    # The stand-in is gone: offline, from the cache, the same reference still decodes.
    out2 = tmp_path / "offline.y4m"
    result = nvc("decode", clip, "-o", out2, "--checkpoint", f"hf://{REPO}", "--quiet",
                 env={**hub_env(server, someone, HF_TOKEN=""), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert out2.read_bytes() == local.read_bytes()


def test_publish_without_a_token_or_offline_is_one_line(int_checkpoint, tmp_path):
    from tests.hub_server import HubStandIn

    with HubStandIn(tmp_path / "hub") as server:
        # Both are known before the checkpoint's conformance run: they fail at once.
        assert_one_line_error(nvc("publish", int_checkpoint, "--repo", REPO, "--quiet",
                                  env=hub_env(server, tmp_path / "home", HF_TOKEN="")),
                              "needs a Hugging Face token with write access: log in with `hf auth login`")
        assert_one_line_error(nvc("publish", int_checkpoint, "--repo", REPO, "--quiet",
                                  env=hub_env(server, tmp_path / "home", HF_HUB_OFFLINE="1")),
                              "needs the network, and HF_HUB_OFFLINE is set")
        # A token the Hub refuses (the stand-in refuses none, so a read-only repository is not
        # modelled): the 401/403 path is exercised by no test here.
        assert not any(method == "POST" for method, _ in server.requests)


@pytest.mark.slow
def test_a_float_parent_on_the_hub_is_a_starting_point_for_training(hub_cache, float_weights):
    """``--model.init_weights hf://OWNER/NAME/FILE`` reads the published float parent from the cache."""
    code = ("import sys, torch; from nvc_train.lit.module import SSFLitModule; "
            "m = SSFLitModule(init_weights=sys.argv[1], real_coding_clips=0); "
            "torch.save(m.model.state_dict(), sys.argv[2])")
    out = hub_cache.parent / "loaded.pt"
    result = subprocess.run([sys.executable, "-c", code, f"hf://{REPO}/{float_weights.name}", str(out)],
                            capture_output=True, text=True, env={**os.environ, **OFFLINE, "HF_HOME": str(hub_cache)},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    import torch

    # export-float's format: the state dict beside the recorded quality, λ and flow reference
    loaded, want = torch.load(out, weights_only=True), torch.load(float_weights, weights_only=True)["state_dict"]
    assert all(torch.equal(loaded[k], want[k]) for k in want)


def test_an_integer_checkpoint_from_the_hub_must_carry_its_own_hash_in_its_name(int_checkpoint, tmp_path):
    from nvc_train.errors import UserError
    from nvc_train.hf.refs import check_integer_name

    check_integer_name(int_checkpoint, f"hf://{REPO}/{int_checkpoint.name}")
    check_integer_name(int_checkpoint, f"hf://{REPO}/ssf-int.ckpt")  # a name without a hash claims nothing
    with pytest.raises(UserError, match="its name says 00000000 but its payload hash starts"):
        check_integer_name(int_checkpoint, f"hf://{REPO}/ssf-int-00000000.ckpt")
