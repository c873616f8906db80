"""Training-step benchmark: nvc-train's Lightning loop vs a bare PyTorch loop.

Run (from the repository root)::

    .venv/bin/python benchmarks/train_step.py                  # CPU, defaults
    .venv/bin/python benchmarks/train_step.py --threads 2 --steps 40
    .venv/bin/python benchmarks/train_step.py --device cuda --bf16 --batch-size 8 --crop 256
    .venv/bin/python benchmarks/train_step.py --profile        # cProfile both loops, no table

What it measures, for the same model architecture (a freshly initialised
``compressai.models.video.ScaleSpaceFlow``, same seed), the same batch size, crop and
number of frames (3), and the same random clips pre-generated in host memory, each side in
the layout its own collation produces (decoding video is excluded from both; fetching the
batch from a DataLoader and moving it to the device are included in both):

(a) ``bare``: CompressAI's ``examples/train_video.py::train_one_epoch``, written inline: a
    DataLoader yielding what CompressAI's collation of ``VideoFolder`` samples yields (a
    list of T contiguous (N, 3, H, W) frames), each frame moved to the device, two Adam
    optimizers (parameters whose name ends with "quantiles" go to the aux
    optimizer), ``model(frames)``, the RD loss λ·255²·MSE + bpp computed like CompressAI's
    ``RateDistortionLoss``, backward, ``clip_grad_norm_(1.0)``, step, then ``aux_loss``
    backward and the aux step, and every 10 iterations its progress print (which reads the
    losses with ``.item()``).
(b) ``lightning``: ``lightning.Trainer(accelerator=..., max_steps=..., logger=False, ...)``
    fitting ``SSFLitModule(quality=3, real_coding_clips=0)`` on a DataLoader that yields the
    same clips as our DataModules collate them, one (N, T, 3, H, W) tensor (no workers on
    either side; Lightning moves it to the device).
(c) ``lightning-bf16`` (only with ``--bf16``): as (b) with ``SSFLitModule(autocast="bf16")``.
(d) ``lightning-qat`` and ``lightning-qat-decoder`` (only with ``--qat``): as (b) with QAT of
    the hyper-decoders (``qat.scope: hyperprior``) and of the whole decoder (``decoder``),
    from the first step (the warm-up steps include the calibration pass).

The headline is the **iteration** time: the time between the starts of two consecutive
steps, so everything a loop does once per step is inside (fetching the next batch, moving it
to the device, forward, loss, backward, clipping, both optimizer steps, logging and
Lightning's bookkeeping between hooks). Both sides stamp the same point of the cycle, when a
step begins with its batch on the device: the bare loop after ``next(loader)`` and
``.to(device)``, Lightning in ``on_train_batch_start``, which it calls after the same two.
"step" is the narrower window from there to the end of the optimizer steps (bare: the loop
body; Lightning: ``on_train_batch_start`` → ``on_train_batch_end``). Times are taken after ``--warmup`` iterations, with
``torch.cuda.synchronize()`` on both ends on CUDA. On CPU the table also gives the process CPU
time (all threads, ``time.process_time``) per iteration, which is less sensitive than wall
time to other processes competing for the cores.

Every run is a fresh subprocess of this script (``--worker``), so each one's peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``; and ``torch.cuda.max_memory_allocated`` on
CUDA) is its own. Runs alternate (a, b, b, a, ... for ``--rounds`` rounds; the order flips
each round); ``--steps`` measured steps per loop are split over the rounds, and each run
first does its own ``--warmup`` steps. The table shows the median over all measured steps
of a loop and the largest peak memory of its runs; "overhead" is ours vs bare on those
medians. The spread between the bare loop's per-run medians is printed as a noise floor:
an overhead smaller than it is not resolved. ``--profile`` instead runs both loops (and the QAT
loops with ``--qat``) in this process under cProfile (measured steps only) and prints the top
functions and own time per package.

On a 2-core CPU one step of the defaults (batch 4, 3 frames of 128×128) takes a few
seconds, so the default run (2 rounds × 2 loops × (3 + 10) steps) takes ~3–4 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

NUM_FRAMES = 3
QUALITY = 3
LAMBDA = 0.0067  # nvc_train.models.loss.QUALITY_LAMBDAS[3]; hard-coded so the bare run never imports nvc_train
SEED = 0
DISTINCT_BATCHES = 4  # batches are cycled so larger --steps do not grow memory


# --------------------------------------------------------------------------------------------
# shared helpers (run in the workers)
# --------------------------------------------------------------------------------------------
def _quiet() -> None:
    import logging

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_batches(args, frames_list: bool = False):
    """``args.warmup + args.steps + 1`` batches in host memory, values in [0, 1], cycling over a few
    distinct ones: (N, T, 3, H, W) as our DataModules collate clips, or with ``frames_list`` a
    list of T contiguous (N, 3, H, W) frames as CompressAI's collation of VideoFolder samples
    (the same numbers either way). One batch more than the measured iterations, so the last
    iteration's end (the next step's start) is stamped too."""
    import torch

    gen = torch.Generator().manual_seed(SEED)
    distinct = [torch.rand(args.batch_size, NUM_FRAMES, 3, args.crop, args.crop, generator=gen)
                for _ in range(DISTINCT_BATCHES)]
    if frames_list:
        distinct = [[frame.contiguous() for frame in clip.unbind(1)] for clip in distinct]
    total = args.warmup + args.steps + 1
    return [distinct[i % DISTINCT_BATCHES] for i in range(total)]


def _rss_mb() -> float:
    """Peak RSS of this process so far, MB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_memory(device) -> dict:
    import torch

    out = {"peak_rss_mb": _rss_mb()}
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


# --------------------------------------------------------------------------------------------
# (a) bare PyTorch loop, as CompressAI's examples/train_video.py::train_one_epoch
# --------------------------------------------------------------------------------------------
def _compressai_rd_loss(output: dict, target: list, lmbda: float) -> dict:
    """CompressAI's RateDistortionLoss (bitdepth 8, fixed λ), inlined."""
    import torch

    _, _, h, w = target[0].size()
    num_frames = len(target)
    num_pixels = h * w * num_frames
    scaled, mses = [], []
    for x_hat, x in zip(output["x_hat"], target):
        nc = x_hat.size(1)
        per_channel = [torch.nn.functional.mse_loss(a.float(), b.float(), reduction="none").mean(dim=(1, 2, 3))
                       for a, b in zip(x_hat.chunk(nc, dim=1), x.chunk(nc, dim=1))]
        mse = torch.stack(per_channel).transpose(1, 0).sum(dim=1) / nc  # (N,)
        mses.append(mse)
        scaled.append(255**2 * mse)
    scaled_distortion = sum(scaled) / num_frames
    bpp = 0
    for frame_likelihoods in output["likelihoods"]:
        for likelihoods in frame_likelihoods.values():
            for v in likelihoods.values():
                bpp = bpp + torch.log(v).sum(dim=(1, 2, 3)) / (-math.log(2) * num_pixels)
    lambdas = torch.full_like(bpp, lmbda)
    bpp = bpp.mean()
    return {"loss": (lambdas * scaled_distortion).mean() + bpp, "mse_loss": torch.stack(mses).mean(), "bpp_loss": bpp}


def run_bare(args, device, profiler=None) -> dict:
    import torch
    from compressai.models.video import ScaleSpaceFlow

    from torch.utils.data import DataLoader

    import_rss_mb = _rss_mb()
    loader = DataLoader(_make_batches(args, frames_list=True), batch_size=None, shuffle=False, num_workers=0)
    torch.manual_seed(SEED)
    model = ScaleSpaceFlow().to(device)
    model.train()
    lmbda = LAMBDA
    # compressai.optimizers.net_aux_optimizer's split
    net_params = [p for n, p in model.named_parameters() if not n.endswith("quantiles") and p.requires_grad]
    aux_params = [p for n, p in model.named_parameters() if n.endswith("quantiles") and p.requires_grad]
    optimizer = torch.optim.Adam(net_params, lr=1e-4)
    aux_optimizer = torch.optim.Adam(aux_params, lr=1e-3)
    clip_max_norm = 1.0

    starts, ends, cpu_starts, first_loss = [], [], [], None
    for i, batch in enumerate(loader):
        d = [frame.to(device) for frame in batch]  # train_video.py: d = [frames.to(device) for frames in batch]
        if profiler is not None and i == args.warmup:
            profiler.enable()
        _sync(device)
        starts.append(time.perf_counter())
        cpu_starts.append(time.process_time())
        if i == args.warmup + args.steps:
            break  # this start closes the last measured iteration

        optimizer.zero_grad()
        aux_optimizer.zero_grad()
        out_net = model(d)
        out_criterion = _compressai_rd_loss(out_net, d, lmbda)
        out_criterion["loss"].backward()
        if clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
        optimizer.step()
        aux_loss = 0
        for a in model.aux_loss():
            aux_loss = aux_loss + a
            a.backward()
        aux_optimizer.step()

        _sync(device)
        ends.append(time.perf_counter())
        if i % 10 == 0:  # train_one_epoch's progress line
            print(f"Train epoch 0: [{i}] Loss: {out_criterion['loss'].item():.3f} | "
                  f"MSE loss: {out_criterion['mse_loss'].item():.5f} | Bpp loss: {out_criterion['bpp_loss'].item():.4f} "
                  f"| Aux loss: {aux_loss.item():.2f}")
        if i == 0:
            first_loss = float(out_criterion["loss"].detach() + aux_loss.detach())
    if profiler is not None:
        profiler.disable()
    return {"starts": starts, "ends": ends, "cpu_starts": cpu_starts, "first_loss": first_loss,
            "import_rss_mb": import_rss_mb}


# --------------------------------------------------------------------------------------------
# (b) our Lightning loop
# --------------------------------------------------------------------------------------------
def run_lightning(args, device, autocast: str = "none", profiler=None, qat_scope: str | None = None) -> dict:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from nvc_train.lit.module import SSFLitModule

    import_rss_mb = _rss_mb()

    class StepTimer(L.Callback):
        def __init__(self):
            self.starts, self.ends, self.cpu_starts, self.first_loss = [], [], [], None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if profiler is not None and batch_idx == args.warmup:
                profiler.enable()
            _sync(device)
            self.starts.append(time.perf_counter())
            self.cpu_starts.append(time.process_time())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync(device)
            self.ends.append(time.perf_counter())
            if batch_idx == 0:
                self.first_loss = float(outputs["loss"].detach())

        def on_train_end(self, trainer, pl_module):
            if profiler is not None:
                profiler.disable()

    torch.manual_seed(SEED)
    from nvc_train.quant.config import QuantConfig

    qat = QuantConfig(scope=qat_scope) if qat_scope else None
    module = SSFLitModule(quality=QUALITY, real_coding_clips=0, autocast=autocast, qat=qat)
    assert module.lmbda == LAMBDA, (module.lmbda, LAMBDA)
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cuda" if device.type == "cuda" else "cpu",
        devices=1,
        max_steps=args.warmup + args.steps + 1,  # the last step's start closes the last measured iteration
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    # batch_size=None: the loader yields the pre-collated batches as they are; Lightning moves them to the device
    loader = DataLoader(_make_batches(args), batch_size=None, shuffle=False, num_workers=0)
    trainer.fit(module, train_dataloaders=loader)
    return {"starts": timer.starts, "ends": timer.ends, "cpu_starts": timer.cpu_starts,
            "first_loss": timer.first_loss, "import_rss_mb": import_rss_mb}


LOOPS = {
    "bare": ("bare PyTorch (CompressAI train_video.py)", lambda a, d, p=None: run_bare(a, d, p)),
    "lightning": ("nvc-train SSFLitModule + Lightning", lambda a, d, p=None: run_lightning(a, d, "none", p)),
    "lightning-bf16": ("nvc-train SSFLitModule + Lightning, bf16 autocast",
                       lambda a, d, p=None: run_lightning(a, d, "bf16", p)),
    "lightning-qat": ("nvc-train, QAT of the hyper-decoders",
                      lambda a, d, p=None: run_lightning(a, d, "none", p, "hyperprior")),
    "lightning-qat-decoder": ("nvc-train, QAT of the whole decoder (pixel-exact)",
                              lambda a, d, p=None: run_lightning(a, d, "none", p, "decoder")),
}


def worker(args) -> None:
    _quiet()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = LOOPS[args.worker][1](args, device)
    w = args.warmup
    n = args.steps
    result["step_s"] = [e - s for s, e in zip(result["starts"][w:w + n], result["ends"][w:w + n])]
    result["iter_s"] = [b - a for a, b in zip(result["starts"][w:w + n], result["starts"][w + 1:w + n + 1])]
    result["cpu_iter_s"] = [b - a for a, b in zip(result["cpu_starts"][w:w + n], result["cpu_starts"][w + 1:w + n + 1])]
    assert len(result["iter_s"]) == n == len(result["step_s"]), (args.worker, len(result["starts"]), n)
    result.update(_peak_memory(device))
    result["torch_threads"] = torch.get_num_threads()
    Path(args.result_file).write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------
def _worker_argv(args, loop: str, result_file: str) -> list[str]:
    argv = [sys.executable, os.path.abspath(__file__), "--worker", loop, "--result-file", result_file,
            "--batch-size", str(args.batch_size), "--crop", str(args.crop), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--device", args.device]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return argv


def _run_worker(args, loop: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "result.json")
        t0 = time.perf_counter()
        proc = subprocess.run(_worker_argv(args, loop, result_file), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            sys.exit(f"worker {loop!r} failed (exit {proc.returncode}):\n{proc.stdout}")
        result = json.loads(Path(result_file).read_text())
    print(f"  {loop:<15} median iteration {1e3 * statistics.median(result['iter_s']):8.1f} ms, "
          f"peak RSS {result['peak_rss_mb']:7.0f} MB, run {time.perf_counter() - t0:5.1f} s", flush=True)
    return result


def profile(args) -> None:
    """cProfile the measured steps of both loops (in this process, one after the other)."""
    import cProfile
    import pstats

    _quiet()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    by_package = {}
    loops = ("bare", "lightning") + (("lightning-qat", "lightning-qat-decoder") if args.qat else ())
    for loop in loops:
        prof = cProfile.Profile()
        LOOPS[loop][1](args, device, prof)
        print(f"\n===== {loop}: {args.steps} measured steps, top {args.profile_top} by own time =====")
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(args.profile_top)
        print(f"===== {loop}: top {args.profile_top} by cumulative time =====")
        stats.sort_stats("cumulative").print_stats(args.profile_top)
        by_package[loop] = _own_time_by_package(stats)

    print("\n===== own (tottime) ms per measured step, by where the Python function lives =====")
    packages = sorted(set().union(*by_package.values()) - {"TOTAL"}, key=lambda k: -max(d.get(k, 0) for d in by_package.values()))
    print("| package | " + " | ".join(loops) + " |")
    print("|---|" + "---:|" * len(loops))
    for pkg in packages + ["TOTAL"]:
        ms = [1e3 * by_package[loop].get(pkg, 0.0) / args.steps for loop in loops]
        if pkg == "TOTAL" or max(ms) >= 0.05:
            print(f"| {pkg} | " + " | ".join(f"{v:.2f}" for v in ms) + " |")


def _own_time_by_package(stats) -> dict[str, float]:
    """Sum of own time per package: 'torch (C ops)', 'torch (Python)', 'lightning', 'nvc_train', ..."""
    out: dict[str, float] = {}
    for (filename, _, funcname), (_, _, tottime, _, _) in stats.stats.items():
        if filename == "~":  # builtins and C functions
            key = "torch (C ops, autograd, optimizer kernels)" if "torch" in funcname else "Python builtins"
        elif "site-packages/" in filename:
            key = filename.split("site-packages/", 1)[1].split("/", 1)[0]
            key = "torch (Python)" if key == "torch" else key
        elif "/nvc_train/" in filename:
            key = "nvc_train"
        elif filename.endswith("train_step.py"):
            key = "this benchmark"
        else:
            key = "Python stdlib"
        out[key] = out.get(key, 0.0) + tottime
    out["TOTAL"] = sum(out.values())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop", type=int, default=128, help="square crop side, multiple of 128 (default 128)")
    p.add_argument("--steps", type=int, default=20,
                   help="measured steps per loop, split over the rounds (default 20)")
    p.add_argument("--warmup", type=int, default=3,
                   help="unmeasured steps at the start of each run (default 3)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of runs per loop (default 2)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--bf16", action="store_true", help="also measure SSFLitModule(autocast='bf16') (CUDA)")
    p.add_argument("--qat", action="store_true",
                   help="also measure QAT steps: hyper-decoders (qat.scope=hyperprior) and whole decoder "
                        "(qat.scope=decoder); the warm-up steps include their calibration")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: leave torch's)")
    p.add_argument("--profile", action="store_true", help="cProfile the measured steps instead of the table")
    p.add_argument("--profile-top", type=int, default=30)
    p.add_argument("--worker", choices=sorted(LOOPS), help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.crop % 128:
        p.error(f"--crop must be a multiple of 128, got {args.crop}")
    if args.steps < 2 or args.warmup < 0 or args.rounds < 1:
        p.error("need --steps >= 2, --warmup >= 0, --rounds >= 1")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda requested but CUDA is not available")
    elif args.device != "cpu":
        p.error(f"--device must be cpu or cuda, got {args.device}")
    if args.bf16 and not args.device.startswith("cuda"):
        print("note: --bf16 without CUDA measures CPU bfloat16 autocast (its speed depends on the CPU's bf16 support)",
              flush=True)

    if args.worker:
        return worker(args)
    if args.profile:
        return profile(args)

    loops = ["bare", "lightning"] + (["lightning-bf16"] if args.bf16 else [])
    loops += ["lightning-qat", "lightning-qat-decoder"] if args.qat else []
    results: dict[str, list[dict]] = {loop: [] for loop in loops}
    # --steps measured steps per loop in total, split over the rounds (each run also does --warmup steps)
    total_steps = args.steps
    args.steps = max(2, math.ceil(total_steps / args.rounds))
    cuda = args.device.startswith("cuda")
    load_before = os.getloadavg()
    print(f"batch {args.batch_size} x {NUM_FRAMES} frames x {args.crop}x{args.crop}, device {args.device}; "
          f"{args.rounds} rounds x ({args.warmup} warm-up + {args.steps} measured steps) per loop; "
          f"load average {load_before[0]:.2f}", flush=True)
    t0 = time.perf_counter()
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        for loop in (loops if r % 2 == 0 else loops[::-1]):
            results[loop].append(_run_worker(args, loop))
    load_after = os.getloadavg()

    summary = {}
    for loop, runs in results.items():
        pooled = {key: [x for run in runs for x in run[key]] for key in ("step_s", "iter_s", "cpu_iter_s")}
        summary[loop] = {
            "iter_ms": 1e3 * statistics.median(pooled["iter_s"]),
            "cpu_ms": 1e3 * statistics.median(pooled["cpu_iter_s"]),
            "step_ms": 1e3 * statistics.median(pooled["step_s"]),
            "n": len(pooled["iter_s"]),
            "rss": max(run["peak_rss_mb"] for run in runs),
            "import_rss": max(run["import_rss_mb"] for run in runs),
            "cuda": max(run.get("peak_cuda_mb", 0.0) for run in runs),
            "run_medians": [1e3 * statistics.median(run["iter_s"]) for run in runs],
            "first_loss": runs[0]["first_loss"],
            "threads": runs[0]["torch_threads"],
        }
    base = summary["bare"]

    def pct(loop: str, key: str) -> str:
        return f"{100 * (summary[loop][key] / base[key] - 1):+.1f} %"

    cols = ["loop", "median ms/iteration", "iterations/s"]
    cols += ["median CPU ms/iteration"] if not cuda else []
    cols += ["median ms/step", "peak RSS MB"]
    cols += ["peak CUDA MB"] if cuda else []
    cols += ["overhead vs bare: iteration" + ("" if cuda else " / CPU") + " / step"]
    print(f"\ntorch {__import__('torch').__version__}, {summary['bare']['threads']} torch threads (bare), "
          f"{os.cpu_count()} CPUs; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          f"total {time.perf_counter() - t0:.0f} s\n")
    print("| " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * (len(cols) - 1))
    for loop, s in summary.items():
        row = [LOOPS[loop][0], f"{s['iter_ms']:.1f}", f"{1e3 / s['iter_ms']:.3f}"]
        row += [f"{s['cpu_ms']:.1f}"] if not cuda else []
        row += [f"{s['step_ms']:.1f}", f"{s['rss']:.0f}"]
        row += [f"{s['cuda']:.0f}"] if cuda else []
        if loop == "bare":
            row += ["—"]
        else:
            row += [" / ".join([pct(loop, "iter_ms")] + ([pct(loop, "cpu_ms")] if not cuda else [])
                               + [pct(loop, "step_ms")])]
        print("| " + " | ".join(row) + " |")
    print()
    for loop, s in summary.items():
        print(f"{loop}: {s['n']} measured iterations, {s['threads']} torch threads; per-run median ms/iteration "
              f"{', '.join(f'{m:.1f}' for m in s['run_medians'])}; first-step loss {s['first_loss']:.4f}; "
              f"peak RSS after imports, before data and model {s['import_rss']:.0f} MB")
    for loop, s in summary.items():
        if len(s["run_medians"]) > 1:
            spread = 100 * (max(s["run_medians"]) / min(s["run_medians"]) - 1)
            print(f"run-to-run spread of the {loop} loop's median iteration (noise floor): {spread:.1f} %")
    if args.bf16:
        ratio = summary["lightning"]["iter_ms"] / summary["lightning-bf16"]["iter_ms"]
        print(f"bf16 vs fp32 (SSFLitModule): bf16 runs at {ratio:.2f}x the fp32 steps/s")


if __name__ == "__main__":
    main()
