"""A training loader whose order is a function of (seed, epoch) and that resumes mid-epoch where it stopped.

torch's shuffling ``DataLoader`` draws each epoch's order from the global random state, which a checkpoint
does not hold, and Lightning restarts an interrupted epoch with a fresh order. Here the order of epoch ``e``
is ``randperm`` seeded with ``seed + e`` (torch's ``DistributedSampler`` rule, so 1 and N processes shuffle
alike), and the loader is *stateful* in Lightning's sense (``state_dict`` / ``load_state_dict``): the fit
loop saves how many batches of the epoch were consumed and, on resume, the loader skips exactly those
(indices only: skipped images are never read).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def _seed() -> int:
    return int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by --seed_everything (Lightning's seed_everything)


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (padding, seeded per epoch) that can skip the first samples of one epoch.

    Also used by a single process (1 replica), so the order never depends on the global random state.
    Lightning keeps a sampler that is already a ``DistributedSampler`` and calls ``set_epoch`` every epoch.
    """

    def __init__(self, dataset: Dataset, seed: int | None = None) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(dataset, num_replicas=dist.get_world_size() if distributed else 1,
                         rank=dist.get_rank() if distributed else 0, shuffle=True,
                         seed=_seed() if seed is None else seed, drop_last=False)
        self._skip = 0

    def skip_next(self, samples: int) -> None:
        """The next iteration starts after ``samples`` samples of its epoch (a resumed epoch)."""
        self._skip = samples

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a ``ResumableSampler`` that Lightning checkpoints and restores (mid-epoch too).

    Lightning fetches sized loaders one batch at a time, so the batches this loader has yielded in the
    current epoch are the batches the fit loop has consumed when it saves a checkpoint.
    """

    def __init__(self, dataset: Dataset, *args: Any, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        self._yielded = 0
        self._resume: tuple[int, int] | None = None

    def _resumable_sampler(self) -> ResumableSampler | None:
        sampler = getattr(self.batch_sampler, "sampler", None) or self.sampler
        return sampler if isinstance(sampler, ResumableSampler) else None

    def __iter__(self) -> Iterator[Any]:
        sampler = self._resumable_sampler()
        resume, self._resume = self._resume, None
        self._yielded = 0
        if sampler is not None:
            if self.generator is not None:  # worker seeds follow (seed, epoch) too, not the loader's history
                self.generator.manual_seed(sampler.seed + sampler.epoch)
            if resume is not None and resume[0] == sampler.epoch and 0 < resume[1] < len(self):
                sampler.skip_next(resume[1] * (self.batch_size or 1))
                self._yielded = resume[1]
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        sampler = self._resumable_sampler()
        return {"epoch": sampler.epoch if sampler is not None else 0, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state.get("epoch", 0)), int(state.get("batches", 0)))


def resumable_train_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, seed: int | None = None,
                           **kwargs: Any) -> ResumableDataLoader:
    """The shuffled training loader: seeded per epoch, resumable mid-epoch, DDP-sharded when a group runs."""
    sampler = ResumableSampler(dataset, seed)
    return ResumableDataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                               generator=torch.Generator().manual_seed(sampler.seed), **kwargs)
