"""QAT step cost without the loop around it: float vs hyper-decoder QAT vs whole-decoder QAT.

Run (from the repository root)::

    .venv/bin/python benchmarks/qat_step.py                     # CPU, batch 4 x 3 frames x 128²
    .venv/bin/python benchmarks/qat_step.py --rounds 12 --batch-size 8 --crop 256
    python3 benchmarks/qat_step.py --device cuda --batch-size 8 --crop 256     # in make gpu-check

``benchmarks/train_step.py --qat`` times whole Lightning runs in separate processes, a few
steps each; on a shared 2-core machine their run-to-run spread (8–26 %) is larger than the
difference this asks about. Here the three models live in one process with the same
initial weights, and each *round* runs one step of each, in an order that rotates every
round, on the same batch. A step is what the Lightning module does per batch minus the
bookkeeping: ``SSFLitModule.forward`` (the same ``ssf_forward`` with the QAT hooks), the RD
loss, backward, gradient clipping, the network and aux Adam steps. The table gives each
loop's median ms per step over the rounds, the ratio to the float step, and the spread of
the per-round ratios (interquartile range), after ``--warmup`` rounds (the first includes
the QAT calibration).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop", type=int, default=128, help="square crop side, multiple of 128 (default 128)")
    p.add_argument("--rounds", type=int, default=10, help="measured rounds, one step of each loop (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first (default 2)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: leave torch's)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--profile", action="store_true",
                   help="after the table, torch.profiler over 3 steps of each loop: top ops by self device/CPU time")
    args = p.parse_args()
    if args.crop % 128 or args.rounds < 2:
        p.error("--crop must be a multiple of 128 and --rounds at least 2")

    warnings.filterwarnings("ignore")
    import torch

    from nvc_train.lit.module import SSFLitModule, is_aux_parameter
    from nvc_train.models.loss import rd_loss
    from nvc_train.quant.config import QuantConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        p.error(f"--device must be cpu or cuda (with CUDA available), got {args.device}")
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    loops = {"float": None, "QAT hyper-decoders": "hyperprior", "QAT whole decoder": "decoder"}
    modules, optimizers = {}, {}
    for name, scope in loops.items():
        torch.manual_seed(0)  # the same initial weights in every model
        m = SSFLitModule(quality=3, real_coding_clips=0, qat=QuantConfig(scope=scope) if scope else None).to(device).train()
        net = [q for n, q in m.named_parameters() if not is_aux_parameter(n) and q.requires_grad]
        aux = [q for n, q in m.named_parameters() if is_aux_parameter(n)]
        modules[name], optimizers[name] = m, (torch.optim.Adam(net, lr=1e-4), torch.optim.Adam(aux, lr=1e-3))
    g = torch.Generator().manual_seed(1)
    frames = [torch.rand(args.batch_size, 3, args.crop, args.crop, generator=g).to(device) for _ in range(3)]

    def step(name: str) -> float:
        m, (opt, aux_opt) = modules[name], optimizers[name]
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        aux_opt.zero_grad(set_to_none=True)
        rd = rd_loss(m(frames), frames, m.lmbda)
        rd.loss.backward()
        torch.nn.utils.clip_grad_norm_([q for group in opt.param_groups for q in group["params"]], 1.0)
        opt.step()
        torch.stack(m.model.aux_loss()).sum().backward()
        aux_opt.step()
        sync()
        return time.perf_counter() - t0

    names = list(loops)
    times: dict[str, list[float]] = {n: [] for n in names}
    print(f"batch {args.batch_size} x 3 frames x {args.crop}², {args.device}, {torch.get_num_threads()} threads, "
          f"{args.warmup} warm-up + {args.rounds} measured rounds", flush=True)
    for r in range(args.warmup + args.rounds):
        order = names[r % 3:] + names[:r % 3]  # rotate which loop goes first
        for n in order:
            t = step(n)
            if r >= args.warmup:
                times[n].append(t)
        if r >= args.warmup:
            print(f"round {r - args.warmup + 1}: " + ", ".join(f"{n} {1e3 * times[n][-1]:.0f} ms" for n in names), flush=True)

    base = statistics.median(times["float"])
    print("\n| loop | median ms/step | × float | per-round ratio, quartiles |")
    print("|---|---:|---:|---|")
    for n in names:
        ratios = sorted(t / f for t, f in zip(times[n], times["float"]))
        q = statistics.quantiles(ratios, n=4)
        print(f"| {n} | {1e3 * statistics.median(times[n]):.1f} | {statistics.median(times[n]) / base:.3f} "
              f"| {q[0]:.3f}–{q[2]:.3f} |")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        for n in names:
            with profile(activities=activities) as prof:
                for _ in range(3):
                    step(n)
            print(f"\n===== {n}: 3 steps, top 25 ops by {key} =====")
            print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60))
            if device.type == "cuda":
                print(f"===== {n}: top 15 by self_cpu_time_total =====")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
