"""``nvc-train publish``: an integer checkpoint (and its float parent) to a Hub model repository.

What is uploaded, in one commit: the integer checkpoint, the float parent if given, a
README.md model card (:mod:`nvc_train.hf.card`) and ``nvc-train.json``, the manifest that
``hf://OWNER/NAME`` resolves through (:mod:`nvc_train.hf.refs`). Before anything is sent:
the checkpoint must load (hash, self-test) and pass every conformance record on this
machine, and a file already in the repository under the same name must have the same
content unless ``overwrite`` is set. Unchanged files are not uploaded again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import NamedTuple

from nvc_train.io.digest import sha256_file
from nvc_train.errors import UserError, require_file
from nvc_train.hf.card import EvalSummary, model_card, read_eval
from nvc_train.hf.refs import MANIFEST, MANIFEST_FORMAT


class PublishPlan(NamedTuple):
    """The files of one publication: repository path → local file or bytes."""

    repo_id: str
    revision: str | None
    files: dict[str, Path | bytes]
    checkpoint: str
    conformance_checks: int
    file_sha256: dict[str, str]  # of the local files, hashed once for the manifest


def prepare(
    checkpoint: Path,
    repo_id: str,
    revision: str | None = None,
    float_parent: Path | None = None,
    eval_dir: Path | None = None,
    license: str | None = None,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    cross_check: Path | None = None,
) -> PublishPlan:
    """Check the checkpoint on this machine and build every file of the publication."""
    from nvc_train.quant.header import read_checkpoint_header

    _check_repo_id(repo_id)
    checkpoint = require_file(checkpoint, "checkpoint")
    image = read_checkpoint_header(checkpoint).image
    if image and cross_check is not None:
        raise UserError("--cross-check: `nvc-train cross-check` does not cover image checkpoints yet")
    # Before the conformance run: a report of another checkpoint, or with a difference, is refused at once.
    verified = read_cross_check(cross_check, checkpoint) if cross_check is not None else None
    verify = _verify_image if image else _verify_video
    metadata, digest, n_checks, conformance = verify(checkpoint)
    files: dict[str, Path | bytes] = {checkpoint.name: checkpoint}
    parent_name = None
    if float_parent is not None:
        float_parent = require_file(float_parent, "float parent")
        _check_float_parent(float_parent, metadata if image else None)  # readable, or a one-line error now
        parent_name = float_parent.name
        files[parent_name] = float_parent
    evaluation: EvalSummary | None = None
    if eval_dir is not None:
        parent_stem = parent_name.removesuffix(".tar").removesuffix(".pth") if parent_name else None
        evaluation = read_eval(Path(eval_dir), checkpoint.stem, parent_stem)
    hub_datasets = list(datasets or []) + _hub_datasets(metadata)
    card = model_card(repo_id=repo_id, checkpoint=checkpoint.name, digest=digest, metadata=metadata,
                      conformance=conformance, float_parent=parent_name, evaluation=evaluation,
                      license=license, base_model=base_model, datasets=sorted(set(hub_datasets)), verified=verified)
    file_sha256 = {name: sha256_file(p) for name, p in files.items()}
    manifest = {"format": MANIFEST_FORMAT, "checkpoint": checkpoint.name, "float_parent": parent_name,
                "payload_sha256": digest, "files": file_sha256}
    files["README.md"] = card.encode()
    files[MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    return PublishPlan(repo_id, revision, files, checkpoint.name, n_checks, file_sha256)


def _refuse_failures(checkpoint: Path, failed: int, total: int) -> None:
    if failed:
        raise UserError(f"refusing to publish {checkpoint.name}: {failed} of {total} conformance checks "
                        f"differ on this machine (`nvc-train conformance {checkpoint}` lists them)")


def _verify_video(checkpoint: Path) -> tuple[dict, str, int, str]:
    """(metadata, payload SHA-256, checks run, records described) of a video checkpoint whose
    every conformance record decodes exactly here."""
    from nvc_train.quant.conformance import run_checks
    from nvc_train.quant.export import load_integer_checkpoint

    ck = load_integer_checkpoint(checkpoint, device="cpu")
    checks = list(run_checks(ck.codec, ck.conformance, "cpu"))
    _refuse_failures(checkpoint, sum(not c.ok for c in checks), len(checks))
    return ck.metadata, ck.sha256, len(checks), ck.conformance.describe()


def _verify_image(checkpoint: Path) -> tuple[dict, str, int, str]:
    """The same for an integer image checkpoint (loading runs its self-test)."""
    from nvc_train.quant.image_export import SMALL_SIZE, load_image_checkpoint, run_records

    ck = load_image_checkpoint(checkpoint, device="cpu")
    results = run_records(ck.codec, ck.records, "cpu")
    _refuse_failures(checkpoint, sum(not ok for _, ok in results), len(results))
    pixels = "latent SHA-256 and image MD5" if ck.codec.pixel_exact else "latent SHA-256"
    described = (f"small (a generated {SMALL_SIZE}x{SMALL_SIZE} image: {pixels}) and stress (every layer's "
                 f"accumulators at the input bound and at ordinary inputs), {len(results)} checks")
    return ck.metadata, ck.sha256, len(results), described


def _check_float_parent(path: Path, image_metadata: dict | None) -> None:
    """A float parent must load as the checkpoint's architecture (one-line error otherwise)."""
    if image_metadata is None:
        from nvc_train.models.ssf import load_ssf

        load_ssf(path)
        return
    from nvc_train.models.image import build_image_model, load_image_state_dict, read_image_state_dict

    model = build_image_model(image_metadata["architecture"], tuple(image_metadata["channels"]))
    load_image_state_dict(model, read_image_state_dict(str(path)), f"--float {path}")


def read_cross_check(report: Path, checkpoint: Path) -> dict:
    """The entry of an ``nvc-train cross-check --report`` file for ``checkpoint`` (matched by the
    file's SHA-256); one-line refusals for another checkpoint's report or one with a difference."""
    report = require_file(report, "cross-check report")
    try:
        entries = json.loads(report.read_text())
        digests = [e["checkpoint_file_sha256"] for e in entries]
    except (ValueError, TypeError, KeyError):
        raise UserError(f"--cross-check {report}: not an `nvc-train cross-check --report` file") from None
    digest = sha256_file(checkpoint)
    if digest not in digests:
        raise UserError(f"--cross-check {report} covers other checkpoints, not {checkpoint.name}: "
                        f"run `nvc-train cross-check {checkpoint} --report FILE`")
    entry = entries[digests.index(digest)]
    bad = [r["environment"] for r in entry["rows"] if not r["identical"]] + list(entry.get("failed", []))
    if bad:
        raise UserError(f"refusing to publish {checkpoint.name}: its cross-check report shows differences or failures "
                        f"in {', '.join(bad[:3])}")
    return entry


def write_folder(plan: PublishPlan, folder: Path, overwrite: bool = False) -> list[Path]:
    """The publication as a local folder (``--dry-run``): exactly the files that would be sent."""
    from nvc_train.io.atomic import atomic_write_bytes

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise UserError(f"{folder} is not empty; choose another folder or pass --overwrite")
    written = []
    for name, content in plan.files.items():
        target = folder / name
        if isinstance(content, Path):
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(content, target)
        else:
            atomic_write_bytes(target, content)
        written.append(target)
    return written


def preflight(repo_id: str, revision: str | None) -> None:
    """What can be known without the network, checked before the (slow) conformance run:
    downloads are not switched off, and there is a token to write with."""
    from huggingface_hub import constants, get_token

    target = f"hf://{repo_id}{'@' + revision if revision else ''}"
    _check_repo_id(repo_id)
    if constants.is_offline_mode():
        raise UserError(f"publishing to {target} needs the network, and HF_HUB_OFFLINE is set")
    if not get_token():
        raise UserError(f"publishing to {target} needs a Hugging Face token with write access: "
                        f"log in with `hf auth login` or set HF_TOKEN")


def upload(plan: PublishPlan, private: bool = False, overwrite: bool = False) -> tuple[str, list[str]]:
    """Create the repository (and branch) if needed and commit the changed files.

    Returns the commit URL (or "" when nothing changed) and the names uploaded.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi()
    target = f"hf://{plan.repo_id}{'@' + plan.revision if plan.revision else ''}"
    try:
        api.create_repo(plan.repo_id, private=private, exist_ok=True)
        if plan.revision and plan.revision != "main":
            api.create_branch(plan.repo_id, branch=plan.revision, exist_ok=True)
        remote = {info.path: info for info in api.get_paths_info(plan.repo_id, list(plan.files),
                                                                 revision=plan.revision)}
        changed = []
        for name, content in plan.files.items():
            info = remote.get(name)
            if info is None:
                changed.append(name)
            elif not _same_content(info, content, plan.file_sha256.get(name)):
                if not overwrite:
                    raise UserError(f"{target} already holds a different {name}; pass --overwrite to replace it")
                changed.append(name)
        if not changed:
            return "", []
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=_fileobj(plan.files[name]))
                      for name in changed]
        info = api.create_commit(plan.repo_id, operations=operations, revision=plan.revision,
                                 commit_message=f"nvc-train publish {plan.checkpoint}")
        return info.commit_url, changed
    except OfflineModeIsEnabled:
        raise UserError(f"publishing to {target} needs the network, and HF_HUB_OFFLINE is set") from None
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        if status in (401, 403):
            raise UserError(f"the Hub refused {target} ({status}): log in with `hf auth login` or set HF_TOKEN to a "
                            f"token with write access") from None
        raise UserError(f"publishing to {target} failed: {str(exc).splitlines()[0]}") from None
    except (OSError, ValueError) as exc:  # connection errors, no token
        raise UserError(f"publishing to {target} failed: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None


def _same_content(info, content: Path | bytes, known_sha256: str | None) -> bool:
    """Compare with what the Hub reports: SHA-256 for LFS files, the git blob id otherwise.
    ``known_sha256``: the local file's hash when already computed (large files are LFS)."""
    lfs = getattr(info, "lfs", None)
    if lfs is not None and known_sha256 is not None:
        return lfs.sha256 == known_sha256
    data = content.read_bytes() if isinstance(content, Path) else content
    if lfs is not None:
        return lfs.sha256 == hashlib.sha256(data).hexdigest()
    return info.blob_id == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _fileobj(content: Path | bytes):
    return str(content) if isinstance(content, Path) else content


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except ValueError as exc:
        raise UserError(f"--repo {repo_id!r}: {str(exc).splitlines()[0]}") from None
    if repo_id.count("/") != 1:
        raise UserError(f"--repo {repo_id!r}: use OWNER/NAME")


def _hub_datasets(metadata: dict) -> list[str]:
    """Hub datasets the checkpoint was trained on (a ``--data.root hf://datasets/…`` run)."""
    data = (metadata.get("config") or {}).get("data") or {}
    root = str(data.get("root") or "")
    if root.startswith("hf://datasets/"):
        return [root.removeprefix("hf://datasets/").split("@")[0]]
    return []
