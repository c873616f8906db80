"""Exactness under changes that really alter the arithmetic, each with a float32 control.

Every test changes how the transposed convolutions are computed — the order of the
input-channel sum, the memory layout, a split of the sum, the BLAS kernel (GEMV vs GEMM), the
device — and checks that the integer path still equals the numpy int64 reference, while a
float32 twin under the *same* change gives different numbers. A test whose control does not
move would prove nothing, so the control is asserted too.

Not here, because they do not alter float32 results of the CPU kernels either (measured:
identical float32 outputs), so they cannot show anything: thread count and batch size.

Inputs reach the clamp limits: the stress record's per-layer patterns (symbols ±2**15 for
layer 0, the activation ceiling for layers 1-2) and random symbols of every magnitude up to
±2**15.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nvc_train.models.ssf import PARTS
from nvc_train.quant import arith
from nvc_train.data.synthetic import synthetic_clip
from nvc_train.quant.conformance import run_checks, stress_input, stress_pattern
from nvc_train.quant.export import load_integer_checkpoint
from nvc_train.quant.fake_quant import ROLES, integer_hyper_input
from tests.quant import reference
from tests.quant.switches_probe import SETTINGS

ROOT = Path(__file__).resolve().parents[2]

DECODERS = [(part, role) for part in PARTS for role in ROLES]


@pytest.fixture(scope="module")
def loaded(int_checkpoint):
    return load_integer_checkpoint(int_checkpoint)


def decoder(loaded, part, role):
    ihp = loaded.codec.hyperpriors[part]
    return ihp, ihp.mean_decoder if role == "mean" else ihp.scale_decoder


_cache: dict = {}


def layer_cases(loaded, part, role) -> list[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
    """(x_int, weight_int, reference accumulator without bias) for each layer and input kind:
    the layer's stress input, and random ±2**15 symbols carried through the decoder."""
    key = (id(loaded), part, role)
    if key not in _cache:
        ihp, dec = decoder(loaded, part, role)
        rng = np.random.default_rng(PARTS.index(part))
        shape = (2, 192, 3, 4)
        symbols = np.floor(2.0 ** rng.uniform(0, 15, shape)) * rng.choice([-1, 1], shape)
        symbols[rng.random(shape) < 0.2] = 2**15
        x = integer_hyper_input(torch.from_numpy(symbols.astype(np.int64)), ihp.median_q, ihp.input_frac_bits)
        cases = []
        for i in range(3):
            w = dec.layer_weight(i)
            pattern = stress_pattern(w, dec.layer_bias(i), signed=i == 0)
            for xi in (stress_input(loaded.codec, f"{part}.{role}", dec, i, pattern), x):
                cases.append((xi, w, reference.conv_transpose(xi.numpy(), w.numpy().astype(np.int64))))
            if i < 2:
                x = arith.requantize(dec.layer_accumulator(i, x), dec._fixed_point(i), *dec.activation_range(i))
        _cache[key] = cases
    return _cache[key]


def float32_twin(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The exact path's algorithm (GEMM, then fold) in float32: the control."""
    n, c_in, h, wd = x.shape
    c_out = w.shape[1]
    cols = torch.matmul(w.float().reshape(c_in, c_out * 25).t(), x.float().reshape(n, c_in, h * wd))
    return torch.round(F.fold(cols, (2 * h, 2 * wd), kernel_size=5, stride=2, padding=2)).long()


def stock_float32(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """PyTorch's own float32 transposed convolution, as a float hyper-decoder runs it."""
    return torch.round(F.conv_transpose2d(x.float(), w.float().to(x.device), stride=2, padding=2, output_padding=1)).long()


def check_variant(loaded, part, role, variant, control=float32_twin) -> None:
    """``variant(conv, x, w)`` → (changed, baseline) accumulators; exact equals the reference,
    and the control's changed result differs from its baseline somewhere."""
    control_moved = 0
    for x, w, want in layer_cases(loaded, part, role):
        changed, baseline = variant(arith.conv_transpose_exact, x, w)
        np.testing.assert_array_equal(changed.numpy(), want)
        np.testing.assert_array_equal(baseline.numpy(), want)
        c_changed, c_baseline = variant(control, x, w)
        control_moved += int((c_changed != c_baseline).sum())
    assert control_moved > 0, "the float32 control must be altered by the same change"


@pytest.mark.parametrize("part,role", DECODERS)
def test_permuted_input_channels(loaded, part, role):
    perm = torch.randperm(192, generator=torch.Generator().manual_seed(1))
    check_variant(loaded, part, role, lambda conv, x, w: (conv(x[:, perm], w[perm]), conv(x, w)))


@pytest.mark.parametrize("part,role", DECODERS)
def test_input_channel_sum_split_in_two(loaded, part, role):
    def split(conv, x, w):
        return conv(x[:, :77], w[:77]) + conv(x[:, 77:], w[77:]), conv(x, w)

    check_variant(loaded, part, role, split)


@pytest.mark.parametrize("part,role", DECODERS)
def test_channels_last_memory_format(loaded, part, role):
    """Control: PyTorch's native float32 kernel (oneDNN off) sums in another order for a
    channels-last input; the exact path hands the GEMM a transposed operand instead."""
    def channels_last(conv, x, w):
        return conv(x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)), conv(x, w)

    with torch.backends.mkldnn.flags(enabled=False):
        check_variant(loaded, part, role, channels_last, control=stock_float32)


@pytest.mark.parametrize("part,role", DECODERS)
def test_gemv_for_a_single_position_vs_gemm_inside_a_frame(loaded, part, role):
    """A 1×1 input (a 128×128 frame's hyper-latent) makes the GEMM a matrix-vector product,
    which BLAS computes with another kernel; the same position inside a larger zero frame
    goes through the GEMM kernel. Both must give the same 2×2 output."""
    def single_position(conv, x, w):
        alone = x[..., :1, :1]
        framed = torch.zeros_like(x)
        framed[..., :1, :1] = alone
        return conv(alone, w), conv(framed, w)[..., :2, :2]

    for x, w, _ in layer_cases(loaded, part, role):
        framed = torch.zeros_like(x)
        framed[..., :1, :1] = x[..., :1, :1]
        np.testing.assert_array_equal(arith.conv_transpose_exact(x[..., :1, :1], w).numpy(),
                                      reference.conv_transpose(framed.numpy(), w.numpy().astype(np.int64))[..., :2, :2])
    moved = sum(int((a != b).sum()) for x, w, _ in layer_cases(loaded, part, role)
                for a, b in [single_position(float32_twin, x, w)])
    assert moved > 0, "the float32 control must be altered by the same change"


@pytest.mark.gpu
@pytest.mark.parametrize("part,role", DECODERS)
def test_cuda_with_cudnn_enabled_equals_reference(loaded, part, role, cuda_flags_restored):
    """On the GPU with cuDNN enabled (benchmark on: autotuned algorithms, TF32 allowed): the
    exact path equals the reference; PyTorch's float32 convolution differs from the CPU's."""
    torch.backends.cudnn.enabled = True
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    moved = 0
    for x, w, want in layer_cases(loaded, part, role):
        got = arith.conv_transpose_exact(x.cuda(), w.cuda())
        np.testing.assert_array_equal(got.cpu().numpy(), want)
        moved += int((stock_float32(x.cuda(), w.cuda()).cpu() != stock_float32(x, w)).sum())
    assert moved > 0, "the float32 control must differ between CPU and GPU"


def probe_switches(checkpoint: Path, device: str) -> list[str]:
    result = subprocess.run([sys.executable, "-m", "tests.quant.switches_probe", str(checkpoint), "--device", device],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(SETTINGS) + 1, result.stdout
    return lines


@pytest.mark.slow  # over 9 s on the 2-core machine: `make test` runs it, `make test-fast` does not
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_every_precision_switch_decodes_the_same(int_checkpoint, device):
    """Legacy allow_tf32, the fp32_precision APIs, cudnn.benchmark/deterministic,
    use_deterministic_algorithms, cudnn off — applied one after another in one process:
    every conformance check (small and stress records) passes and nothing raises.
    Control: under the same settings, the cudnn.flags() context manager that the exact
    path used before raises (PyTorch refuses to read the legacy TF32 flag)."""
    lines = probe_switches(int_checkpoint, device)
    assert [line for line in lines[:-1] if not line.endswith(" OK")] == []
    assert lines[-1].startswith("legacy cudnn.flags() raises"), lines[-1]


def test_exact_path_touches_no_process_global_flag(loaded, monkeypatch):
    """Another thread may change a global flag at any time, so the exact path must not
    depend on one, nor set one: every setter and context manager of cuDNN refuses here."""
    def refuse(*args, **kwargs):
        raise AssertionError("the exact path touched a process-global backend flag")

    for name in ("flags", "set_flags"):
        monkeypatch.setattr(torch.backends.cudnn, name, refuse)
    monkeypatch.setattr(torch.backends.mkldnn, "flags", refuse)
    monkeypatch.setattr(torch.backends.mkldnn, "set_flags", refuse)
    for name in ("_set_cudnn_enabled", "_set_cudnn_allow_tf32", "_set_cudnn_benchmark", "_set_cudnn_deterministic"):
        monkeypatch.setattr(torch._C, name, refuse)
    before = global_flags()
    checks = list(run_checks(loaded.codec, loaded.conformance._replace(
        records=[r for r in loaded.conformance.records if r["name"] in ("small", "stress")])))
    assert checks and all(c.ok for c in checks)
    assert global_flags() == before  # nothing set and left behind through a property setter either


def global_flags() -> tuple:
    """Every process-global precision/algorithm switch a decode could change."""
    b = torch.backends
    return (b.cudnn.enabled, b.cudnn.benchmark, b.cudnn.deterministic, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32,
            b.mkldnn.enabled, b.cudnn.conv.fp32_precision, b.cuda.matmul.fp32_precision, b.mkldnn.fp32_precision,
            torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())


def test_four_threads_decode_different_streams_at_once(loaded):
    streams, want = [], []
    for seed in range(4):
        coded, recon = loaded.codec.compress([f.unsqueeze(0) for f in synthetic_clip(500 + seed, 2, 128, 256)])
        streams.append(coded)
        want.append([r.latent_sha256 for r in recon])
    assert len({tuple(w) for w in want}) == 4, "the four streams must differ"
    start = threading.Barrier(4)

    def decode(i):
        start.wait()
        return [f.latent_sha256 for f in loaded.codec.decompress_iter(streams[i])]

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(decode, range(4))) == want


def test_torch_compile_stays_out_of_the_integer_path(loaded):
    """The integer decoders run eagerly under torch.compile: no graph is captured from them
    (a captured graph could be fused or reordered). Control: the same recording backend
    captures an ordinary function."""
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    ihp, dec = decoder(loaded, "keyframe", "scale")
    z = integer_hyper_input(torch.full((1, 192, 2, 3), 2**15), ihp.median_q, ihp.input_frac_bits)
    assert torch.equal(torch.compile(dec, backend=recording_backend)(z), dec(z))
    assert graphs == []
    torch.compile(lambda t: t * 2 + 1, backend=recording_backend)(torch.ones(3))
    assert len(graphs) == 1
    torch._dynamo.reset()


@pytest.mark.gpu
def test_decoders_cpu_vs_cuda_on_symbols_up_to_2_15(int_checkpoint, cuda_flags_restored):
    """Whole decoders, z of shape (2, 192, 8, 15), cuDNN enabled with benchmark and TF32:
    identical outputs on CPU and GPU. Control: the float32 hyper-decoders differ."""
    cpu, gpu = load_integer_checkpoint(int_checkpoint), load_integer_checkpoint(int_checkpoint, device="cuda")
    torch.backends.cudnn.enabled = torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    symbols = (torch.rand(2, 192, 8, 15, generator=torch.Generator().manual_seed(3)) * 2 - 1).mul(2**15).round().long()
    control = 0
    for part, role in DECODERS:
        (a, dec_a), (b, dec_b) = decoder(cpu, part, role), decoder(gpu, part, role)
        z = integer_hyper_input(symbols, a.median_q, a.input_frac_bits)
        assert torch.equal(dec_a(z), dec_b(z.cuda()).cpu())
        float_a, float_b = (getattr(h.hp, f"hyper_decoder_{role}") for h in (a, b))
        with torch.no_grad():
            z_hat = z.float() * 2.0**-a.input_frac_bits
            control += int((float_a(z_hat) != float_b(z_hat.cuda()).cpu()).sum())
    assert control > 0, "the float32 hyper-decoders must differ between CPU and GPU"
