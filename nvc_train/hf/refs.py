"""Read checkpoints from the Hugging Face Hub: ``hf://OWNER/NAME[@REVISION][/FILE]``.

The syntax is the Hub's own (``huggingface_hub.parse_hf_uri``). Files are fetched with
``hf_hub_download`` into the Hugging Face cache (``$HF_HOME/hub``), once; afterwards they
are read from there, also offline (``HF_HUB_OFFLINE=1``). A repository published by
``nvc-train publish`` holds a manifest, ``nvc-train.json``, naming its integer checkpoint
(what ``hf://OWNER/NAME`` without a file means) and the SHA-256 of every file it published;
a downloaded file is checked against it before use. An integer checkpoint is also checked
against its own header hash and the 8 hex digits in its name.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import NamedTuple

from nvc_train.io.digest import sha256_file
from nvc_train.errors import UserError

PREFIX = "hf://"
MANIFEST = "nvc-train.json"
MANIFEST_FORMAT = 1


class HubRef(NamedTuple):
    """A parsed ``hf://`` reference to a file in a model repository."""

    repo_id: str
    revision: str | None
    filename: str | None  # None: the checkpoint the manifest names

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{PREFIX}{self.repo_id}{rev}" + (f"/{self.filename}" if self.filename else "")


def is_hub_ref(text: str | Path) -> bool:
    return str(text).startswith(PREFIX)


def parse_hub_ref(text: str) -> HubRef:
    """``hf://OWNER/NAME[@REV][/FILE]`` → :class:`HubRef`; anything else is a one-line error."""
    from huggingface_hub import parse_hf_uri
    from huggingface_hub.errors import HfUriError

    try:
        uri = parse_hf_uri(text)
    except (HfUriError, ValueError) as exc:
        raise UserError(f"{text} is not a checkpoint on the Hub: use hf://OWNER/NAME[@REVISION][/FILE] "
                        f"({str(exc).splitlines()[0]})") from None
    if uri.type != "model":
        raise UserError(f"{text} is a {uri.type} repository; checkpoints live in model repositories: hf://OWNER/NAME")
    return HubRef(uri.id, uri.revision, uri.path_in_repo or None)


def hub_download(ref: HubRef, filename: str) -> Path:
    """``filename`` of ``ref``'s repository and revision, from the cache or the Hub."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{PREFIX}{ref.repo_id}{'@' + ref.revision if ref.revision else ''}/{filename}"
    try:
        return Path(hf_hub_download(ref.repo_id, filename, revision=ref.revision))
    except LocalEntryNotFoundError:
        raise UserError(f"{where} is not in the Hugging Face cache and the Hub cannot be reached (offline, or "
                        f"HF_HUB_OFFLINE=1): fetch it once with network access") from None
    except GatedRepoError:
        raise UserError(f"{where}: the repository is gated; accept its terms on the Hub and log in "
                        f"(`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise UserError(f"{where}: no such model repository on the Hub (or it is private: log in with "
                        f"`hf auth login`)") from None
    except RevisionNotFoundError:
        raise UserError(f"{where}: the repository has no revision {ref.revision!r}") from None
    except EntryNotFoundError:
        raise UserError(f"{where}: no such file in the repository") from None
    except (OfflineModeIsEnabled, HfHubHTTPError, OSError) as exc:
        raise UserError(f"cannot download {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def read_manifest(path: Path, where: str) -> dict:
    """The manifest ``nvc-train publish`` writes; a malformed one is a one-line error."""
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if not isinstance(files, dict) or not isinstance(manifest["checkpoint"], str):
            raise TypeError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise UserError(f"{where} is not an nvc-train manifest") from None
    if manifest.get("format", 0) > MANIFEST_FORMAT:
        raise UserError(f"{where} has manifest format {manifest['format']}; upgrade nvc-train")
    return manifest


def check_integer_name(path: Path, shown: str) -> None:
    """An integer checkpoint ``<name>-<sha8>.ckpt`` must carry its payload hash's first 8 hex
    digits in its name (the payload itself is checked against the header when it loads)."""
    with open(path, "rb") as f:
        head = f.read(56)
    if len(head) == 56 and head.startswith(b"NVCTRAIN-INT"):
        digest = struct.unpack(">12sIQ32s", head)[3].hex()
        named = Path(shown).name.removesuffix(".ckpt").rsplit("-", 1)[-1]
        if re.fullmatch(r"[0-9a-f]{8}", named) and named != digest[:8]:  # a name without a hash: no claim
            raise UserError(f"{shown}: its name says {named} but its payload hash starts {digest[:8]}: "
                            f"renamed or replaced; refusing it")


def resolve_checkpoint(text: str | Path) -> Path:
    """A local path for a checkpoint argument: itself, or an ``hf://`` file fetched and checked.

    ``hf://OWNER/NAME[@REV]`` means the integer checkpoint the repository's manifest names;
    ``…/FILE`` any file in it (e.g. the float parent). Every file the manifest lists must have
    the SHA-256 it records.
    """
    if not is_hub_ref(text):
        return Path(text)
    ref = parse_hub_ref(str(text))
    manifest = None
    if ref.filename != MANIFEST:
        try:
            manifest = read_manifest(hub_download(ref, MANIFEST), f"{ref} ({MANIFEST})")
        except UserError:
            if ref.filename is None:  # without a file name the manifest is the only guide
                raise
    filename = ref.filename or manifest["checkpoint"]
    path = hub_download(ref, filename)
    shown = f"{PREFIX}{ref.repo_id}{'@' + ref.revision if ref.revision else ''}/{filename}"
    want = (manifest or {}).get("files", {}).get(filename)
    if want is not None:
        got = sha256_file(path)
        if got != want:
            raise UserError(f"{shown} has SHA-256 {got[:16]}…, the repository's {MANIFEST} says {want[:16]}…: "
                            f"refusing it (delete it from the Hugging Face cache to fetch it again)")
    check_integer_name(path, shown)
    return path
