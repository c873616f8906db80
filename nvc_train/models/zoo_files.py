"""CompressAI's zoo by name, and its files in torch.hub's cache, without importing torch.

``fit`` checks a zoo start before Lightning and torch are imported (about 10 s on a small
machine), so that a missing or damaged file is one line within a second or two. Everything
here uses the standard library alone:

- CompressAI's URL table (``compressai.zoo.video.model_urls``) is read from the installed
  package's source with :mod:`ast` when CompressAI is not imported yet (the live table, with
  whatever a program changed in it, once it is);
- torch.hub's cache folder follows ``torch.hub.get_dir()``'s rule (``$TORCH_HOME/hub``, else
  ``$XDG_CACHE_HOME/torch/hub``, else ``~/.cache/torch/hub``), or asks torch once it is imported;
- the cached file's SHA-256 must begin with the 8 hex digits of its name (a file already checked
  in this process, unchanged since, is not read again).

:mod:`nvc_train.models.zoo` downloads and loads the files.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import NamedTuple

from nvc_train.errors import UserError

ARCHITECTURE = "ssf2020"
_HASHED_NAME = re.compile(r"-([0-9a-f]{8})\.")
_FILE_NAME = re.compile(r"^ssf2020-(mse|ms-ssim)-([1-9])(?:-[0-9a-f]{8})?(?:\.pth)?(?:\.tar)?$")
OFFLINE_VARIABLES = ("NVC_TRAIN_OFFLINE", "HF_HUB_OFFLINE")
DEFAULT_QUALITY = 3
"""The quality of a run that neither sets one nor has a parent's to keep, and so the zoo model
that ``pretrained: true`` means then."""


class ZooEntry(NamedTuple):
    """One file of CompressAI's model zoo."""

    name: str  # "ssf2020-mse-3"
    metric: str  # "mse" or "ms-ssim"
    quality: int  # 1..9
    url: str  # CompressAI's download address, its file name ends in -<sha8>.pth.tar

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha8(self) -> str:
        return _HASHED_NAME.search(self.filename).group(1)


def zoo_name_parts(name: str) -> tuple[str, int] | None:
    """``(metric, quality)`` of a zoo model named as CompressAI names them, with or without the
    hash and extension of its file (``ssf2020-mse-3``, ``ssf2020-mse-3-9c8b998d.pth.tar``)."""
    match = _FILE_NAME.match(name)
    return (match.group(1), int(match.group(2))) if match else None


ZOO_MODULES = {"ssf2020": "video", "bmshj2018-hyperprior": "image", "mbt2018-mean": "image"}
"""Which of CompressAI's zoo modules (``compressai.zoo.video`` or ``.image``) lists each architecture."""

QUALITIES = {"video": 9, "image": 8}
"""How many qualities CompressAI's zoo publishes per architecture kind."""


def compressai_model_urls(module: str = "video") -> dict:
    """``compressai.zoo.<module>.model_urls``: the live table when CompressAI is imported, else
    the table as its source writes it (``root_url`` f-strings resolved), else by importing it."""
    import importlib

    live = sys.modules.get(f"compressai.zoo.{module}")
    if live is not None:
        return live.model_urls
    table = _model_urls_from_source(module)
    if table is not None:
        return table
    return importlib.import_module(f"compressai.zoo.{module}").model_urls


def _model_urls_from_source(module: str = "video") -> dict | None:
    spec = importlib.util.find_spec("compressai")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(list(spec.submodule_search_locations)[0]) / "zoo" / f"{module}.py"
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    names: dict[str, object] = {}

    def value(node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return names[node.id]
        if isinstance(node, ast.JoinedStr):
            return "".join(str(value(part.value if isinstance(part, ast.FormattedValue) else part))
                           for part in node.values)
        if isinstance(node, ast.Dict):
            return {value(k): value(v) for k, v in zip(node.keys, node.values)}
        raise ValueError(ast.dump(node))

    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target = node.targets[0].id
            if target in ("root_url", "model_urls"):
                try:
                    names[target] = value(node.value)
                except (KeyError, ValueError):
                    return None
    table = names.get("model_urls")
    return table if isinstance(table, dict) else None


def zoo_entry(pretrained: bool | str | None, quality: int, architecture: str = ARCHITECTURE) -> ZooEntry | None:
    """The zoo file that ``--model.pretrained`` names, or ``None`` when it is off.

    Args:
        pretrained: ``False``/``None`` (off), ``True`` (the MSE model of ``quality``), or a
            name ``<architecture>-<metric>-<quality>`` (``ssf2020-mse-3``,
            ``bmshj2018-hyperprior-mse-3``).
        quality: the quality (1..9 for ssf2020, 1..8 for the image models) ``True`` refers to.
        architecture: CompressAI's architecture name.
    """
    if pretrained is None or pretrained is False:
        return None
    kind = ZOO_MODULES.get(architecture)
    if kind is None:
        raise UserError(f"CompressAI's zoo has no architecture {architecture!r} that nvc-train trains")
    top = QUALITIES[kind]
    if pretrained is True:
        name = f"{architecture}-mse-{quality}"
    elif isinstance(pretrained, str):
        name = pretrained.strip().lower()
    else:
        raise UserError(f"--model.pretrained must be true, false or a zoo name like {architecture}-mse-3, "
                        f"got {pretrained!r}")
    match = re.match(rf"^{re.escape(architecture)}-(mse|ms-ssim)-([1-9])$", name)
    if not match or int(match.group(2)) > top:
        raise UserError(f"--model.pretrained {pretrained!r}: not a CompressAI zoo name of {architecture}; use true "
                        f"(with --model.quality) or {architecture}-mse-Q with Q in 1..{top}")
    metric, q = match.group(1), int(match.group(2))
    model_urls = compressai_model_urls(kind)
    url = model_urls.get(architecture, {}).get(metric, {}).get(q)
    if url is None or not _HASHED_NAME.search(url.rsplit("/", 1)[-1]):
        available = ", ".join(f"{architecture}-{m}-{k}" for m, table in model_urls.get(architecture, {}).items()
                              for k in sorted(table))
        raise UserError(f"CompressAI publishes no weights named {name} (available: {available or 'none'})")
    return ZooEntry(name, metric, q, url)


def hub_dir() -> Path:
    """``torch.hub.get_dir()``: asked of torch when it is imported (``set_dir`` may have moved
    it), else by its documented rule from the environment."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "hub"):
        return Path(torch.hub.get_dir())
    return hub_dir_from_environment()


def hub_dir_from_environment() -> Path:
    """torch.hub's documented default: ``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``,
    else ``~/.cache/torch/hub``."""
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub"


def zoo_cache_dir() -> Path:
    """Where ``torch.hub`` keeps downloaded weights: ``$TORCH_HOME/hub/checkpoints``."""
    return hub_dir() / "checkpoints"


def downloads_disabled() -> bool:
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on") for var in OFFLINE_VARIABLES)


def where_to_put(entry: ZooEntry, path: Path) -> str:
    return f"put {entry.filename} into {path.parent} (from {entry.url})"


def check_cached_zoo_file(entry: ZooEntry) -> Path | None:
    """The cached file of ``entry`` once its SHA-256 matches its name; ``None`` when it is not
    cached and may be downloaded. One-line :class:`UserError` when it is not cached and
    downloads are off, or when its content does not match its name (the file is left in
    place for the user to inspect or delete)."""
    path = zoo_cache_dir() / entry.filename
    if not path.is_file():
        if downloads_disabled():
            set_vars = " or ".join(v for v in OFFLINE_VARIABLES if os.environ.get(v))
            raise UserError(f"{entry.name}: {entry.filename} is not in the torch hub cache and downloads are off "
                            f"({set_vars}): {where_to_put(entry, path)}")
        return None
    actual = _sha256_once(path)
    if not actual.startswith(entry.sha8):
        raise UserError(f"{path} has SHA-256 {actual[:8]}…, its name says {entry.sha8}: the file is corrupt or "
                        f"not CompressAI's; delete it to download it again")
    return path


_checked: dict[tuple, str] = {}


def _sha256_once(path: Path) -> str:
    """SHA-256 of ``path``, read again only when its size or modification time changed (the
    pre-start check and the load read the same 100-MB file in one process)."""
    from nvc_train.io.digest import sha256_file

    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _checked:
        _checked[key] = sha256_file(path)
    return _checked[key]
