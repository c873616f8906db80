"""Random-number state in checkpoints, so a resumed run draws what the uninterrupted run would.

SSF's training forward draws its quantization noise (uniform noise on every latent) from
torch's global generator. ``nvc-train fit`` seeds that generator at every (re)start, so
without this a resumed run would draw the noise of step 0 again at step k. Lightning's own
checkpoints do not carry generator states.

Only rank 0 writes checkpoints, so only its states are stored. On resume rank 0 gets them
back exactly; every other rank derives its own state from them and its rank, so ranks keep
drawing different noise (as they did, seeded apart by Lightning) and a resume is still
reproducible.
"""

from __future__ import annotations

import random

import numpy as np
import torch

KEY = "nvc_train_rng_states"


def collect_rng_states() -> dict:
    """The generators this process draws from: torch (CPU, every CUDA device), numpy, Python."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # Plain tensors, ints and tuples only: Lightning loads checkpoints with weights_only=True.
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
            "python": random.getstate()}


def restore_rng_states(states: dict, rank: int = 0) -> None:
    """Put back what :func:`collect_rng_states` stored (rank 0), or a state derived from it and
    ``rank`` (other ranks); CUDA states only where the device count matches."""
    if rank == 0:
        torch.set_rng_state(states["torch"])
        cuda = states.get("cuda") or []
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        kind, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(states["python"])
        return
    generator = torch.Generator().manual_seed(0)
    generator.set_state(states["torch"])
    seed = int(torch.randint(0, 2**62, (1,), generator=generator)) + rank
    torch.manual_seed(seed)  # also every CUDA device
    np.random.seed(seed % 2**32)
    random.seed(seed)
