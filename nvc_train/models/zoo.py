"""CompressAI's pretrained ``ssf2020`` weights in, and CompressAI's zoo format out.

In: a zoo name (``ssf2020-mse-3``, or ``True`` with a quality) is looked up in CompressAI's
own URL table (``compressai.zoo.video.model_urls``) and fetched with ``torch.hub`` into its
cache, ``$TORCH_HOME/hub/checkpoints`` (by default ``~/.cache/torch/hub/checkpoints``). The
file name carries the first 8 hex digits of the file's SHA-256 (``ssf2020-mse-3-9c8b998d``);
``torch.hub`` checks them when it downloads, and :func:`zoo_weights` checks them again on
every load, because ``torch.hub`` trusts a cached file blindly. Keys go through CompressAI's
``load_pretrained`` renaming, exactly as ``compressai.zoo.ssf2020(pretrained=True)`` does.

Out: :func:`write_zoo_file` writes what CompressAI's ``update_model`` writes: the plain
state dict of an updated model (entropy tables computed), named ``<name>-<sha8>.pth.tar``,
so the file drops into CompressAI's zoo loader and ``eval_model`` unchanged.

No network is touched when the file is cached; with ``HF_HUB_OFFLINE=1`` or
``NVC_TRAIN_OFFLINE=1`` none is touched at all, and a missing file is one line saying which
file, where to put it and where it comes from.
"""

from __future__ import annotations

import hashlib
import io
import socket
from pathlib import Path
from urllib.error import URLError

import torch
from torch import Tensor

from nvc_train.errors import UserError
from nvc_train.models.zoo_files import (  # noqa: F401  (the zoo's names, re-exported for callers)
    ARCHITECTURE,
    OFFLINE_VARIABLES,
    ZooEntry,
    check_cached_zoo_file,
    where_to_put,
    zoo_cache_dir,
    zoo_entry,
)

DOWNLOAD_TIMEOUT_S = 60
"""Socket timeout of a zoo download: a firewall that drops packets fails in a minute, not hours."""


ZOO_FLOW_REFERENCE = 256
"""The flow reference a run starting from a zoo model takes unless one is set: 256, the crop
of CompressAI's video training example (``examples/train_video.py``), so that the zoo model's
motion is unchanged at that size and means the same pixel motion at every other."""


def fetch_zoo_file(entry: ZooEntry, progress: bool = True) -> Path:
    """The cached zoo file of ``entry``, downloaded by ``torch.hub`` if it is not there yet.

    The cached file's SHA-256 must start with the 8 hex digits of its name; a file that
    does not is refused (and left in place for the user to inspect or delete).
    """
    path = check_cached_zoo_file(entry)
    if path is None:
        path = zoo_cache_dir() / entry.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            torch.hub.download_url_to_file(entry.url, str(path), hash_prefix=entry.sha8, progress=progress)
        except (URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise UserError(f"{entry.name}: cannot download {entry.url} ({reason}); offline, "
                            f"{where_to_put(entry, path)}") from None
        except RuntimeError as exc:  # torch.hub's hash check
            raise UserError(f"{entry.name}: the download of {entry.url} failed its SHA-256 check ({exc})") from None
        finally:
            socket.setdefaulttimeout(previous)
        check_cached_zoo_file(entry)
    return path


def zoo_weights(entry: ZooEntry, progress: bool = True) -> dict[str, Tensor]:
    """The state dict of a zoo file, keys renamed as CompressAI's zoo loader renames them."""
    from compressai.zoo.pretrained import load_pretrained

    path = fetch_zoo_file(entry, progress)
    try:
        # torch.hub's own loader reads the cached file (no network: it exists now).
        state_dict = torch.hub.load_state_dict_from_url(entry.url, map_location="cpu", progress=False,
                                                        weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise UserError(f"{path} is not a readable state dict ({type(exc).__name__}); delete it to download "
                        f"it again") from None
    return load_pretrained(state_dict)


def zoo_filename(name: str, payload: bytes) -> str:
    """``<name>-<sha8>.pth.tar``: CompressAI's ``update_model`` naming, from the file's bytes."""
    return f"{name}-{hashlib.sha256(payload).hexdigest()[:8]}.pth.tar"


def zoo_file_bytes(model) -> bytes:
    """What ``update_model`` saves: the entropy tables computed, then the plain state dict."""
    model.update(force=True)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def write_zoo_file(model, out_dir: Path, metric: str, quality: int) -> Path:
    """Write ``out_dir/ssf2020-<metric>-<quality>-<sha8>.pth.tar`` atomically.

    The name depends on the content, so an existing file of that name holds the same bytes
    and is left as it is.
    """
    from nvc_train.io.atomic import atomic_write_bytes

    payload = zoo_file_bytes(model)
    path = Path(out_dir) / zoo_filename(f"{ARCHITECTURE}-{metric}-{quality}", payload)
    if not path.exists():
        atomic_write_bytes(path, payload)
    return path
