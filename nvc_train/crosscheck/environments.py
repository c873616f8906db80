"""The environments of ``nvc-train cross-check``: how each row of the matrix starts a decoder.

An :class:`Environment` is a command prefix (which Python), environment variables and
decoder options; every row runs :mod:`nvc_train.crosscheck.decode` as a fresh process.

* **this machine**: the running Python, with PyTorch's CPU kernel level forced
  (``ATEN_CPU_CAPABILITY=default|avx2|avx512``: a CPU without vector units or without
  AVX-512, on this one), one thread, oneDNN off; CUDA where there is a device.
* **another PyTorch release** (:func:`release_environment`): a venv under the cache with
  ``torch==VERSION`` and CompressAI from the registry; nvc-train from this source tree.
* **ONNX Runtime** (:func:`onnx_environments`): this machine's Python with the integer
  networks in ONNX Runtime (``--runtime onnx``), default threads and one.
* **aarch64** (:func:`aarch64_environment`): a Debian arm64 userland (``debootstrap
  --foreign``: packages unpacked, nothing configured, no chroot, no binfmt), PyTorch's CPU
  wheel for aarch64, CompressAI's two C++ extensions cross-compiled from its sdist with
  Debian's aarch64 g++, run by ``qemu-aarch64-static`` with ``QEMU_LD_PREFIX``.

Set-up happens once and lives under ``$XDG_CACHE_HOME/nvc-train/cross-check`` (default
``~/.cache/…``); a finished set-up leaves a ``ready.json`` that records what was installed and
how big it is. Everything comes from the Debian mirror and the Python package index.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from nvc_train.errors import UserError

# PyTorch's aarch64 wheels on the index are CPU-only up to 2.10.0; from 2.11 they need CUDA 13
# libraries (nvidia-cudnn-cu13 …) that the index does not carry for aarch64 (checked
# 2026-12-04), so 2.10.0 is the newest release an aarch64 CPU can install from the index alone.
AARCH64_TORCH = "2.10.0"
DEBIAN_SUITE = "bookworm"  # Python 3.11, as the supported range's middle; glibc 2.36 ≥ manylinux_2_28
DEBIAN_MIRROR = "http://deb.debian.org/debian"
COMPRESSAI = "1.2.8"
NUMPY = "1.26.4"  # CompressAI 1.2.8 needs numpy<2


def torchvision_for(torch_version: str) -> str:
    """The torchvision release paired with ``torch_version`` (2.M.P ↔ 0.(M+15).P since torch
    2.0: 2.4.1 ↔ 0.19.1, 2.14.1 ↔ 0.29.1); CompressAI needs it, and an unpinned one would pull
    the newest torch."""
    major, minor, patch = (int(x) for x in torch_version.split("."))
    return f"0.{minor + 15}.{patch}"


_AARCH64_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64",
                      "manylinux2014_aarch64", "linux_aarch64")
# Installed without dependencies: pip evaluates markers such as platform_machine for the host
# even with --platform, and torch's x86-only CUDA requirements would follow.
_NO_DEPS = ("pytorch-msssim",)
_WITH_DEPS = ("einops", "scipy", "pandas", "matplotlib", "torch-geometric", "tqdm", "typing-extensions", "filelock",
              "sympy", "networkx", "jinja2", "fsspec", "pillow", "pybind11")


@dataclass
class Environment:
    """One row: ``command`` + ``python -m nvc_train.crosscheck.decode`` + ``options``."""

    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    options: list[str] = field(default_factory=list)
    skip: str = ""  # why the row does not run ("" = it runs)
    short: bool = False  # decode only the short stream (and the conformance records): slow rows


def cache_root() -> Path:
    return Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "nvc-train" / "cross-check"


def source_root() -> Path:
    """The folder that holds the ``nvc_train`` package this process imported (PYTHONPATH for
    the other environments, so they decode with exactly this source)."""
    import nvc_train

    return Path(nvc_train.__file__).resolve().parent.parent


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def host_environments(cuda: bool) -> list[Environment]:
    """The rows this machine's Python can run: the reference first, then each setting.

    A CPU kernel row stands for a CPU with fewer vector units than this one: PyTorch's own
    kernels (``ATEN_CPU_CAPABILITY``) and oneDNN's convolutions and GEMMs (``ONEDNN_MAX_CPU_ISA``,
    which ATen's setting does not reach) are both held to that level."""
    python = [sys.executable]
    rows = [Environment("this machine (default)", python)]
    flags = _cpu_flags()
    levels = [("default", "SSE41")]  # no AVX: ATen's scalar kernels, oneDNN's lowest x86 level
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        levels.append(("avx2", "AVX2"))  # a CPU without AVX-512 (most desktops, AMD before Zen 4)
    for aten, onednn in levels:
        rows.append(Environment(f"ATen {aten} + oneDNN {onednn}", python,
                                {"ATEN_CPU_CAPABILITY": aten, "ONEDNN_MAX_CPU_ISA": onednn}))
    rows.append(Environment("1 thread", python, options=["--threads", "1"]))
    # oneDNN off sends every convolution to ATen's reference loops (slow), so the short stream.
    rows.append(Environment("oneDNN off", python, options=["--onednn", "off"], short=True))
    rows.append(Environment("CUDA", python, options=["--device", "cuda"],
                            skip="" if cuda else "no CUDA device on this machine"))
    return rows


def onnx_environments() -> list[Environment]:
    """The rows whose integer networks run in ONNX Runtime (CPU provider) from the checkpoint's
    `export-onnx` graphs, made afresh by the worker: the runtime's default threads, and one.
    Their float control runs the checkpoint's float synthesis decoders in ONNX Runtime too
    (float32 ``ConvTranspose`` graphs of the same weights), the warp in PyTorch."""
    from nvc_train.portable import missing_packages

    skip = missing_packages()
    python = [sys.executable]
    return [Environment("ONNX Runtime", python, options=["--runtime", "onnx"], skip=skip),
            Environment("ONNX Runtime, 1 thread", python, options=["--runtime", "onnx", "--threads", "1"], skip=skip)]


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _run(cmd: list[str], what: str, **kwargs) -> None:
    """Run a set-up step; a failure is one line naming the step and the command's last line."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1][:200]
        raise UserError(f"cross-check set-up failed while {what}: {last}")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n < 2**30 else f"{n / 2**30:.1f} GB"


def _ready(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "ready.json").read_text())
    except (OSError, ValueError):
        return None


def _finish(folder: Path, record: dict) -> None:
    record["bytes_on_disk"] = _size(folder)
    tmp = folder / "ready.json.part"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, folder / "ready.json")


def _pip(python: list[str], *args: str, what: str) -> None:
    _run([*python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], what)


def release_environment(version: str, quiet: bool = False) -> Environment:
    """A venv with ``torch==version`` (x86-64 here: the index's build, CUDA libraries and all)
    and CompressAI; nvc-train runs from this source tree."""
    name = f"PyTorch {version} (own venv)"
    folder = cache_root() / f"venv-torch{version}"
    python = [str(folder / "bin" / "python")]
    if _ready(folder) is None:
        vision = torchvision_for(version)
        _say(quiet, f"cross-check: setting up {name} in {folder}: downloads torch=={version} with its CUDA libraries "
                    f"(about 2–3 GB on x86-64) and CompressAI {COMPRESSAI}; once, then cached")
        start = time.perf_counter()
        shutil.rmtree(folder, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(folder)], f"creating the venv {folder}")
        _pip(python, f"torch=={version}", f"torchvision=={vision}", f"numpy=={NUMPY}", f"compressai=={COMPRESSAI}",
             what=f"installing torch=={version} into {folder}")
        _finish(folder, {"torch": version, "torchvision": vision, "compressai": COMPRESSAI,
                         "seconds": round(time.perf_counter() - start)})
        _say(quiet, f"cross-check: {name} ready ({_mb(_size(folder))} on disk, "
                    f"{time.perf_counter() - start:.0f} s)")
    return Environment(name, python, {"PYTHONPATH": str(source_root())})


def aarch64_missing() -> str:
    """"" when this machine can set up and run the aarch64 row, else one line saying what to install."""
    tools = {"qemu-aarch64-static": "qemu-user-static", "debootstrap": "debootstrap",
             "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu", "dpkg-deb": "dpkg"}
    missing = [(tool, pkg) for tool, pkg in tools.items() if shutil.which(tool) is None]
    if missing:
        return (f"the aarch64 row needs {', '.join(t for t, _ in missing)}: "
                f"apt-get install {' '.join(p for _, p in missing)}")
    if os.geteuid() != 0:
        return "the aarch64 row's set-up needs root (debootstrap); run it once as root or with sudo"
    return ""


def _aarch64_userland(root: Path, quiet: bool) -> None:
    """Debian arm64 with Python 3.11, unpacked (``debootstrap --foreign`` downloads and unpacks;
    the packages it only downloads — Python among them — are unpacked here). Nothing runs
    inside it, so neither binfmt_misc nor a chroot is needed."""
    _say(quiet, f"cross-check: aarch64 [1/3] Debian {DEBIAN_SUITE} arm64 userland with Python 3.11 "
                f"from {DEBIAN_MIRROR} (about 55 MB of packages)")
    _run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
          "--include=python3.11,libpython3.11-dev", DEBIAN_SUITE, str(root), DEBIAN_MIRROR],
         "downloading the Debian arm64 userland (debootstrap)")
    for deb in sorted((root / "var/cache/apt/archives").glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"unpacking {deb.name}")


def _aarch64_wheels(site: Path, quiet: bool) -> None:
    torch, vision = AARCH64_TORCH, torchvision_for(AARCH64_TORCH)
    _say(quiet, f"cross-check: aarch64 [2/3] PyTorch {torch} (CPU wheel for aarch64, about 150 MB) and "
                f"CompressAI's dependencies from the package index (about 100 MB more)")
    platform = [x for p in _AARCH64_PLATFORMS for x in ("--platform", p)]
    common = ["--target", str(site), *platform, "--python-version", "3.11", "--implementation", "cp",
              "--abi", "cp311", "--only-binary=:all:"]
    _pip([sys.executable], *common, "--no-deps", f"torch=={torch}", f"torchvision=={vision}", *_NO_DEPS,
         what=f"downloading torch=={torch} for aarch64")
    _pip([sys.executable], *common, "--upgrade", f"numpy=={NUMPY}", *_WITH_DEPS,
         what="downloading CompressAI's dependencies for aarch64")
    _aarch64_onnxruntime(site, quiet)


AARCH64_ONNXRUNTIME = "1.19.2"
ONNX_PACKAGES = ("onnx", f"onnxruntime=={AARCH64_ONNXRUNTIME}")
"""What the aarch64 userland needs for its ONNX Runtime row (aarch64 wheels on the index).
onnxruntime 1.32.0's aarch64 wheel dies with SIGSEGV on import under Debian bookworm's
qemu-user 7.2 (with -cpu max, cortex-a72 and neoverse-n1 alike; 2026-12-07); 1.19.2 imports and
runs there, and it is another release than this venv's besides (opset 17 needs ≥ 1.12)."""


def _aarch64_onnxruntime(site: Path, quiet: bool) -> None:
    """ONNX Runtime and onnx for aarch64 (about 40 MB), with numpy held at CompressAI's."""
    _say(quiet, f"cross-check: aarch64 ONNX Runtime {AARCH64_ONNXRUNTIME} and onnx (aarch64 wheels, about 40 MB)")
    platform = [x for p in _AARCH64_PLATFORMS for x in ("--platform", p)]
    _pip([sys.executable], "--target", str(site), *platform, "--python-version", "3.11", "--implementation", "cp",
         "--abi", "cp311", "--only-binary=:all:", "--upgrade", f"numpy=={NUMPY}", *ONNX_PACKAGES,
         what="downloading ONNX Runtime for aarch64")


def _aarch64_compressai(root: Path, site: Path, work: Path, quiet: bool) -> None:
    """CompressAI from its sdist: the Python package copied, its two pybind11 extensions (rANS
    and the CDF helper) cross-compiled as its setup.py builds them (-O3, C++17)."""
    _say(quiet, f"cross-check: aarch64 [3/3] CompressAI {COMPRESSAI} from its source (0.2 MB), "
                f"C++ extensions cross-compiled with aarch64-linux-gnu-g++")
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
          f"compressai=={COMPRESSAI}", "-d", str(work)], "downloading CompressAI's sdist")
    sdist = next(work.glob(f"compressai-{COMPRESSAI}.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    src = work / f"compressai-{COMPRESSAI}"
    shutil.copytree(src / "compressai", site / "compressai", dirs_exist_ok=True)
    includes = [f"-I{site / 'pybind11' / 'include'}", f"-I{root / 'usr/include/python3.11'}", f"-I{root / 'usr/include'}"]
    flags = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fvisibility=hidden", *includes]
    for name, sources, extra in (
            ("ans", sorted((src / "compressai/cpp_exts/rans").glob("*.cpp")),
             [f"-I{src / 'third_party/ryg_rans'}", f"-I{src / 'compressai/cpp_exts/rans'}"]),
            ("_CXX", sorted((src / "compressai/cpp_exts/ops").glob("*.cpp")), [])):
        out = site / "compressai" / f"{name}.cpython-311-aarch64-linux-gnu.so"
        _run(["aarch64-linux-gnu-g++", *flags, *extra, *map(str, sources), "-o", str(out)],
             f"cross-compiling CompressAI's {name} extension")


def aarch64_onnx_environment(base: Environment, quiet: bool = False) -> Environment:
    """The aarch64 row with the integer networks in ONNX Runtime: ``base``'s userland, ONNX
    Runtime added to a set-up that predates it."""
    name = base.name.replace("(qemu-user)", "(qemu-user), ONNX Runtime")
    if base.skip:
        return Environment(name, base.command, base.env, skip=base.skip, short=True)
    folder = cache_root() / f"aarch64-{DEBIAN_SUITE}-torch{AARCH64_TORCH}"
    ready = _ready(folder) or {}
    if ready.get("onnxruntime") != AARCH64_ONNXRUNTIME:
        _aarch64_onnxruntime(folder / "site", quiet)
        _finish(folder, {**ready, "onnxruntime": AARCH64_ONNXRUNTIME})
    return Environment(name, base.command, base.env, options=["--runtime", "onnx"], short=True)


def aarch64_environment(quiet: bool = False) -> Environment:
    """The aarch64 row (set up on first use); ``skip`` says why it cannot run here."""
    torch = AARCH64_TORCH
    name = f"aarch64 (qemu-user), PyTorch {torch}"
    missing = aarch64_missing()
    folder = cache_root() / f"aarch64-{DEBIAN_SUITE}-torch{torch}"
    root, site = folder / "root", folder / "site"
    command = ["qemu-aarch64-static", str(root / "usr/bin/python3.11")]
    env = {"QEMU_LD_PREFIX": str(root), "PYTHONPATH": f"{site}{os.pathsep}{source_root()}"}
    if _ready(folder) is None:
        if missing:
            return Environment(name, command, env, skip=missing, short=True)
        start = time.perf_counter()
        shutil.rmtree(folder, ignore_errors=True)
        work = folder / "build"
        for path in (root, site, work):
            path.mkdir(parents=True)
        _aarch64_userland(root, quiet)
        _aarch64_wheels(site, quiet)
        _aarch64_compressai(root, site, work, quiet)
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        _finish(folder, {"debian": DEBIAN_SUITE, "torch": torch, "compressai": COMPRESSAI,
                         "onnxruntime": AARCH64_ONNXRUNTIME, "seconds": round(time.perf_counter() - start)})
        _say(quiet, f"cross-check: aarch64 ready in {folder} ({_mb(_size(folder))} on disk, "
                    f"{time.perf_counter() - start:.0f} s)")
    elif shutil.which("qemu-aarch64-static") is None:
        return Environment(name, command, env, skip="qemu-aarch64-static is missing: apt-get install qemu-user-static",
                           short=True)
    return Environment(name, command, env, short=True)
