"""The training order: split between ranks, deterministic, and exactly resumable in Lightning."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from nvc_train.data.order import ResumableLoader, ResumableSampler
from nvc_train.lit.batch_log import BatchDigestLog, read_batch_log
from nvc_train.lit.data import SyntheticClipDataModule


def test_ranks_split_each_epoch_into_disjoint_equal_whole_batches():
    size, batch, world = 103, 4, 3
    parts = [ResumableSampler(size, batch, seed=7, num_replicas=world, rank=r).rank_part(2, r) for r in range(world)]
    assert [len(p) for p in parts] == [32, 32, 32]  # 103 // 3 = 34 → 8 whole batches of 4
    flat = [i for p in parts for i in p]
    assert len(set(flat)) == len(flat) and all(0 <= i < size for i in flat)
    one = ResumableSampler(size, batch, seed=7)
    assert one.rank_part(0, 0) != one.rank_part(1, 0)  # a new order every epoch
    assert one.rank_part(1, 0) == ResumableSampler(size, batch, seed=7).rank_part(1, 0)
    assert one.rank_part(1, 0) != ResumableSampler(size, batch, seed=8).rank_part(1, 0)


def test_blocks_keep_each_rank_on_about_its_share_of_the_shards():
    ends = list(range(10, 201, 10))  # 20 shards of 10 samples
    for rank in range(4):
        part = ResumableSampler(200, 5, seed=1, num_replicas=4, rank=rank, blocks=ends).rank_part(0, rank)
        shards = {i // 10 for i in part}
        assert len(shards) == 5, shards  # 50 samples = 5 whole shards (the cut falls on shard ends here)
        assert part != sorted(part)  # mixed within the part


def test_sample_seeds_follow_the_place_in_the_epoch_not_the_iteration():
    sampler = ResumableSampler(40, 4, seed=3)
    whole = list(sampler)
    sampler.start_batch = 6
    assert list(sampler) == whole[24:]
    assert list(sampler) == whole  # the skip applies once


class _Toy(L.LightningModule):
    """The smallest module that trains on clips: a learnable scale of their mean."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def training_step(self, batch, batch_idx):
        return (self.w * batch.mean() - 0.5) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(root, max_steps, workers, ckpt_path=None, every=4, **trainer_options):
    L.seed_everything(11, verbose=False)
    data = SyntheticClipDataModule(num_frames=2, crop=128, train_size=160, val_size=128, num_train_clips=14,
                                   num_val_clips=1, batch_size=2, num_workers=workers)
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=root,
                        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=every, save_top_k=-1),
                                   BatchDigestLog(root / "log")], **trainer_options)
    trainer.fit(_Toy(), datamodule=data, ckpt_path=ckpt_path)
    return read_batch_log(root / "log" / "batches-rank0.tsv")


@pytest.mark.parametrize("step", [4, 8, 12])  # mid-epoch 0, mid-epoch 1, mid-epoch 1 again (7 batches an epoch)
def test_a_resumed_run_is_fed_the_batches_an_uninterrupted_run_was(tmp_path, step, monkeypatch):
    whole = _fit(tmp_path / "whole", 16, workers=2)
    assert len(set(whole.values())) == 16  # batches differ from step to step (the check has teeth)
    ckpt = next((tmp_path / "whole" / "ckpt").glob(f"*step={step}.ckpt"))
    state = torch.load(ckpt, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (state["epoch"], state["batches"]) == divmod(step, 7)

    resumed = _fit(tmp_path / "resumed", 16, workers=1, ckpt_path=ckpt)  # other worker count, same batches
    assert min(resumed) == step and resumed == {s: d for s, d in whole.items() if s >= step}

    # Control: the same resume without the loader state starts its epoch over and differs.
    monkeypatch.setattr(ResumableLoader, "load_state_dict", lambda self, state: None)
    control = _fit(tmp_path / "control", 16, workers=1, ckpt_path=ckpt)
    assert control != resumed


def test_an_epoch_cut_short_by_limit_train_batches_resumes_into_the_next_epoch(tmp_path):
    """Saved after the last batch Lightning runs of a shortened epoch (5 of 7): the resumed run
    starts the next epoch's order, not the rest of the cut one."""
    whole = _fit(tmp_path / "whole", 12, workers=0, every=5, limit_train_batches=5)
    ckpt = next((tmp_path / "whole" / "ckpt").glob("*step=5.ckpt"))
    resumed = _fit(tmp_path / "resumed", 12, workers=0, ckpt_path=ckpt, every=5, limit_train_batches=5)
    assert resumed == {s: d for s, d in whole.items() if s >= 5}
