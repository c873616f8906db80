"""Footage from the Hugging Face Hub: ``hf://datasets/OWNER/NAME[@REVISION]``.

A Hub dataset repository holding video files is downloaded (video files only) into the
Hugging Face cache with ``huggingface_hub.snapshot_download`` and then goes through the same
clip logic as local footage (:mod:`nvc_train.data.footage`). Once downloaded it also works
offline (``HF_HUB_OFFLINE=1``); without network and without a cached copy the user gets one
line saying so.
"""

from __future__ import annotations

import re
from pathlib import Path

from nvc_train.data.footage import SOURCE_SUFFIXES
from nvc_train.errors import UserError

HUB_PREFIX = "hf://datasets/"
_REPO_ID = re.compile(r"^[\w.\-]+/[\w.\-]+$")


def is_hub_name(text: str) -> bool:
    return str(text).startswith(HUB_PREFIX)


def parse_hub_name(text: str) -> tuple[str, str | None]:
    """``hf://datasets/OWNER/NAME[@REV]`` → (``OWNER/NAME``, ``REV`` or None)."""
    repo_id, _, revision = str(text)[len(HUB_PREFIX):].partition("@")
    if not _REPO_ID.match(repo_id):
        raise UserError(f"{text} is not a Hugging Face dataset name: use hf://datasets/OWNER/NAME[@REVISION]")
    return repo_id, revision or None


def download_hub_footage(text: str) -> Path:
    """The local snapshot folder of a Hub dataset's video files (downloaded if needed)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    repo_id, revision = parse_hub_name(text)
    patterns = [f"*{s}" for s in SOURCE_SUFFIXES] + [f"*{s.upper()}" for s in SOURCE_SUFFIXES]
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        raise UserError(f"cannot reach the Hugging Face Hub for {text} and it is not in the local cache "
                        "(offline, or HF_HUB_OFFLINE=1): download it once with network access, "
                        "or prepare a local folder instead") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise UserError(f"{text}: no such dataset or revision on the Hugging Face Hub (or it is private: "
                        "log in with `hf auth login`)") from None
    except (HfHubHTTPError, OSError) as exc:
        raise UserError(f"cannot download {text} from the Hugging Face Hub: {str(exc).splitlines()[0]}") from None
