"""Checks of a ``fit``/``validate``/``test`` command line that need no Lightning.

Importing Lightning and torch takes about 10 s on a small machine; a typo in an option name
or a missing file should be reported before that, in well under 2 s. Only what can be judged
exactly without Lightning is checked here; everything else is left to LightningCLI:

- option names: the top-level ones (``--config``, ``--ckpt_path``, …), and the first name after
  ``--trainer.`` and ``--model.``, read from the *installed* Lightning's ``Trainer.__init__``
  and the ``__init__`` source of the LightningModule of the architecture the command line
  chooses (:mod:`nvc_train.models.architectures`) with :mod:`ast` (nothing imported, so the
  lists cannot go stale). ``--data.*``, ``--optimizer.*`` and ``--lr_scheduler.*`` depend
  on the class chosen and are not checked;
- files: every ``--config``, ``--ckpt_path`` (unless ``last``, ``best``, ``hpc``, ``registry``
  or a URL) and ``--model.init_weights`` named on the command line;
- a ``fit`` that starts from CompressAI's zoo (``model.pretrained`` and ``model.quality`` as the
  config files and options set them, no ``init_weights``, no ``ckpt_path``): the zoo name, and the
  cached file when downloads are off or when it is there (:mod:`nvc_train.models.zoo_files`).
  A command line this reading cannot follow (``--model FILE``, a ``--print_config``) is left
  to the check at the start of the run.

This module imports neither torch nor Lightning.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
from functools import lru_cache
from pathlib import Path

from nvc_train.errors import UserError, require_file

COMMANDS = ("fit", "validate", "test")
# LightningCLI's own top-level options; the rest are the arguments of Trainer.<command>
# but those LightningCLI fills itself (tests/test_precheck.py compares with the live parser).
CLI_OPTIONS = ("config", "print_config", "seed_everything", "trainer", "model", "data", "optimizer", "lr_scheduler",
               "help")
FILLED_BY_CLI = ("model", "train_dataloaders", "val_dataloaders", "dataloaders", "datamodule")
UNCHECKED_GROUPS = ("data", "optimizer", "lr_scheduler")
CKPT_PATH_WORDS = ("last", "best", "hpc", "registry", "null", "none")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def module_source(architecture_name: str) -> tuple[Path, str]:
    """(source file, class name) of the LightningModule that trains ``architecture_name``."""
    from nvc_train.models.architectures import architecture

    module, cls = architecture(architecture_name).lit_module.split(":")
    return PACKAGE_ROOT / (module.removeprefix("nvc_train.").replace(".", "/") + ".py"), cls


@lru_cache(maxsize=None)
def _module_tree(source: Path) -> ast.Module | None:
    """``source`` parsed once per process (Trainer's file serves its ``__init__`` and ``fit``)."""
    try:
        return ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None


def method_parameters(source: Path, class_name: str, method: str) -> frozenset[str] | None:
    """The parameter names of ``class_name.method`` in ``source`` (None if not found)."""
    tree = _module_tree(source)
    if tree is None:
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    a = item.args
                    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                    return frozenset(n for n in names if n != "self")
    return None


def _trainer_source() -> Path | None:
    spec = importlib.util.find_spec("lightning")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "pytorch" / "trainer" / "trainer.py"


@lru_cache(maxsize=None)
def group_parameters(architecture_name: str = "ssf2020") -> dict[str, frozenset[str]]:
    """``{"trainer": Trainer's parameters, "model": the architecture's LightningModule's}``; a
    group whose source cannot be read is absent (and so not checked)."""
    groups = {}
    source = _trainer_source()
    names = method_parameters(source, "Trainer", "__init__") if source else None
    if names:
        groups["trainer"] = names
    names = method_parameters(*module_source(architecture_name), "__init__")
    if names:
        groups["model"] = names
    return groups


@lru_cache(maxsize=None)
def top_level_options(command: str) -> frozenset[str] | None:
    """LightningCLI's top-level option names of ``command`` (None if Lightning's source
    cannot be read: then nothing is checked)."""
    source = _trainer_source()
    method = method_parameters(source, "Trainer", command) if source else None
    if method is None:
        return None
    return frozenset(CLI_OPTIONS) | (method - set(FILLED_BY_CLI))


def _unknown(option: str, known: list[str], command: str) -> UserError:
    close = difflib.get_close_matches(option, known, n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return UserError(f"{command}: unrecognized option {option}{hint} (see `nvc-train {command} --help`)")


def check_option(name: str, command: str, architecture_name: str = "ssf2020") -> None:
    """``name`` without its leading ``--`` (and without ``=value``)."""
    top, _, rest = name.removesuffix("+").partition(".")  # `--trainer.callbacks+=…` appends
    top_level = top_level_options(command)
    if top_level is None:
        return
    if top not in top_level:
        raise _unknown(f"--{name}", sorted(f"--{t}" for t in top_level), command)
    if not rest or top in UNCHECKED_GROUPS or rest.split(".")[-1] == "help":
        return
    params = group_parameters(architecture_name).get(top)
    if params is None:
        return
    first = rest.split(".")[0]
    if first not in params:
        raise _unknown(f"--{top}.{first}", [f"--{top}.{p}" for p in sorted(params)], command)


def _looks_like_inline_yaml(value: str) -> bool:
    return "\n" in value or value.lstrip().startswith(("{", "["))


def check_value(name: str, value: str) -> None:
    """Files named on the command line exist and are files."""
    if name == "config" and not _looks_like_inline_yaml(value):
        require_file(value, "--config")
    elif name == "ckpt_path" and value.lower() not in CKPT_PATH_WORDS and "://" not in value:
        require_file(value, "--ckpt_path")
    elif name == "model.init_weights" and value.lower() not in ("null", "none", "") and "://" not in value:
        require_file(value, "--model.init_weights")


def model_settings(args: list[str]) -> dict | None:
    """``{"pretrained", "quality", "init_weights", "ckpt_path"}`` as the ``--config`` files and
    the options after them set them (YAML values, later wins), or ``None`` where the command
    line uses a form this reading does not follow."""
    import yaml

    settings: dict = {}
    for name, value in command_line_options(args):
        if name in ("model", "print_config") or name.startswith("model.init_args"):
            return None
        if value is None:
            continue
        try:
            if name == "config":
                data = yaml.safe_load(value if _looks_like_inline_yaml(value) else Path(value).read_text()) or {}
                model = data.get("model") or {}
                if not isinstance(model, dict) or "class_path" in model or "init_args" in model:
                    return None
                settings.update({k: model[k] for k in ("pretrained", "quality", "init_weights") if k in model})
                if "ckpt_path" in data:
                    settings["ckpt_path"] = data["ckpt_path"]
            elif name in ("model.pretrained", "model.quality", "model.init_weights"):
                settings[name.removeprefix("model.")] = yaml.safe_load(value)
            elif name == "ckpt_path":
                settings["ckpt_path"] = value if value.lower() not in ("null", "none") else None
        except (OSError, yaml.YAMLError, AttributeError):
            return None  # LightningCLI reports it in its own words
    return settings


def check_zoo_start(args: list[str], architecture_name: str = "ssf2020") -> None:
    """A ``fit`` from CompressAI's zoo: the name is one CompressAI publishes, and its file is
    cached intact, or may be downloaded at the start."""
    from nvc_train.models.zoo_files import DEFAULT_QUALITY, check_cached_zoo_file, zoo_entry

    settings = model_settings(args)
    if settings is None or settings.get("init_weights") or settings.get("ckpt_path"):
        return  # a resume never reads the zoo file; init_weights replaces it
    quality = settings.get("quality")
    if quality is None:
        quality = DEFAULT_QUALITY
    if not isinstance(quality, int) or not 1 <= quality <= 9:
        return  # the module's own check says what is wrong with it
    entry = zoo_entry(settings.get("pretrained", False), quality, architecture_name)
    if entry is not None:
        check_cached_zoo_file(entry)


def command_line_options(args: list[str]) -> list[tuple[str, str | None]]:
    """``(name, value)`` of every option in ``args``, ``--`` dropped: ``--name=value``, or
    ``--name value`` when the next word is not an option, else no value; ``-c`` is ``config``,
    ``-h`` is ``help``. Words that are not options are skipped."""
    options, i = [], 0
    while i < len(args):
        arg = {"-c": "--config", "-h": "--help"}.get(args[i], args[i])
        i += 1
        if not arg.startswith("--"):
            continue
        name, has_value, value = arg[2:].partition("=")
        if not has_value and i < len(args) and not args[i].startswith("--"):
            value, has_value, i = args[i], True, i + 1
        options.append((name, value if has_value else None))
    return options


def precheck(argv: list[str]) -> None:
    """Raise a one-line :class:`UserError` for what is wrong in ``argv`` (``[command, *options]``,
    presets already resolved); return quietly where only LightningCLI can judge."""
    from nvc_train.models.architectures import architecture, architecture_in_arguments

    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        return
    chosen = architecture(architecture_in_arguments(args))
    for name, value in command_line_options(args):
        if name == "help":
            return  # LightningCLI prints the help; nothing to check
        check_option(name, command, chosen.name)
        if value is not None:
            check_value(name, value)
    if command == "fit":
        check_zoo_start(args, chosen.name)
