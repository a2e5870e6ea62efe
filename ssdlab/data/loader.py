"""Batches for training (iteration-based, resumable, sharded per rank) and for evaluation.

Every training sample carries its own seed, derived from (SOLVER.SEED, iteration, slot, rank),
so the data order *and* the augmentation of iteration k are the same whether the run
started at 0 or resumed at k, and whatever the number of loader workers.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ssdlab.config import CfgNode
from ssdlab.data.base import ConcatDetectionDataset, DetectionDataset
from ssdlab.errors import ConfigError


def sample_seed(seed: int, iteration: int, slot: int, rank: int) -> int:
    """A well-mixed 32-bit seed for one sample of one iteration on one rank."""
    return int(np.random.SeedSequence([seed, iteration, slot, rank]).generate_state(1)[0])


class IterationBatchSampler(Sampler):
    """Yields batches [(index, seed), ...] for iterations start_iter..max_iter-1.

    Each epoch is a DistributedSampler permutation (this rank's share, reshuffled with
    set_epoch); incomplete last batches are dropped so every step sees BATCH_SIZE images.
    """

    def __init__(self, dataset: Dataset, batch_size: int, max_iter: int, start_iter: int = 0,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        self.sampler: DistributedSampler[int] = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                          shuffle=True, seed=seed, drop_last=True)
        self.per_epoch = len(self.sampler) // batch_size
        if self.per_epoch == 0:
            name = getattr(dataset, "name", "the training set")
            raise ConfigError(f"SOLVER.BATCH_SIZE = {batch_size} is larger than the {len(self.sampler)} images of "
                              f"{name} this process sees per epoch; lower SOLVER.BATCH_SIZE or add images")
        self.batch_size, self.max_iter, self.start_iter = batch_size, max_iter, start_iter
        self.seed, self.rank = seed, rank

    def __len__(self) -> int:
        return max(0, self.max_iter - self.start_iter)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        iteration = self.start_iter
        while iteration < self.max_iter:
            epoch, position = divmod(iteration, self.per_epoch)
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)
            for batch in range(position, self.per_epoch):
                if iteration >= self.max_iter:
                    return
                indices = order[batch * self.batch_size:(batch + 1) * self.batch_size]
                yield [(i, sample_seed(self.seed, iteration, slot, self.rank)) for slot, i in enumerate(indices)]
                iteration += 1


class SeededSamples(Dataset):
    """Wraps a dataset so that item (index, seed) is augmented with np.random.default_rng(seed)."""

    def __init__(self, dataset: DetectionDataset | ConcatDetectionDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        return self.dataset.get_item(index, rng=np.random.default_rng(seed))


def train_collate(batch: list) -> tuple[torch.Tensor, dict, list[int]]:
    """Stack images and per-prior targets of a training batch."""
    images, targets, indices = zip(*batch)
    stacked = {key: torch.stack([torch.as_tensor(t[key]) for t in targets]) for key in targets[0]}
    return torch.stack(images), stacked, list(indices)


def test_collate(batch: list) -> tuple[torch.Tensor, list[dict], list[int]]:
    """Stack images of an evaluation batch; targets stay per image."""
    images, targets, indices = zip(*batch)
    return torch.stack(images), list(targets), list(indices)


def make_train_loader(cfg: CfgNode, dataset: DetectionDataset | ConcatDetectionDataset, start_iter: int = 0, rank: int = 0,
                      world_size: int = 1) -> DataLoader:
    """The training loader for iterations start_iter..SOLVER.MAX_ITER of this rank."""
    sampler = IterationBatchSampler(dataset, cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.MAX_ITER, start_iter,
                                    cfg.SOLVER.SEED, rank, world_size)
    workers = cfg.DATA_LOADER.NUM_WORKERS
    return DataLoader(SeededSamples(dataset), batch_sampler=sampler, num_workers=workers,
                      collate_fn=train_collate, pin_memory=cfg.DATA_LOADER.PIN_MEMORY and torch.cuda.is_available(),
                      persistent_workers=False, prefetch_factor=4 if workers else None)


def make_test_loader(cfg: CfgNode, dataset: DetectionDataset | ConcatDetectionDataset, rank: int = 0,
                     world_size: int = 1) -> DataLoader:
    """An in-order loader over this rank's share (indices rank, rank+world, ...) of the dataset."""
    shard = list(range(rank, len(dataset), world_size))
    return DataLoader(torch.utils.data.Subset(dataset, shard), batch_size=cfg.TEST.BATCH_SIZE,
                      shuffle=False, num_workers=min(cfg.DATA_LOADER.NUM_WORKERS, 2),
                      collate_fn=test_collate)
