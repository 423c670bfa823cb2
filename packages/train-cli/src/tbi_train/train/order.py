"""The data order: which samples each micro-batch holds, derived from (seed, micro-step) alone.

The stream is the concatenation of per-epoch permutations; micro-batch k is the slice
[k * B * W, (k + 1) * B * W) of it, and rank r of W processes takes its r-th B-sized part.
Because the position is a pure function of k, resuming at optimizer step s (micro-step s * accum)
reads exactly the samples the uninterrupted run would have read, with no sampler state to save.
"""

from __future__ import annotations

import torch

__all__ = ["DataOrder"]


class DataOrder:
    """Deterministic micro-batch indices over `n` samples.

    Args:
        n: dataset length.
        batch_size: samples per process per micro-batch (B).
        seed: permutation seed (epoch e uses seed * 1_000_003 + e).
        world_size: number of processes (W).
        rank: this process's index.
    """

    def __init__(self, n: int, batch_size: int, seed: int, world_size: int = 1, rank: int = 0):
        if n <= 0:
            raise ValueError("DataOrder needs at least one sample")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.world_size, self.rank = world_size, rank
        self._epoch = -1
        self._perm: list[int] = []

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.n, generator=gen).tolist()
            self._epoch = epoch
        return self._perm

    def indices(self, micro_step: int) -> list[int]:
        """Sample indices of micro-batch `micro_step` for this rank (B of them)."""
        global_size = self.batch_size * self.world_size
        pos = micro_step * global_size
        out: list[int] = []
        while len(out) < global_size:
            epoch, offset = divmod(pos, self.n)
            take = min(global_size - len(out), self.n - offset)
            out.extend(self._permutation(epoch)[offset : offset + take])
            pos += take
        return out[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def epoch_of(self, micro_step: int) -> float:
        """Fractional epoch reached after `micro_step` micro-batches."""
        return micro_step * self.batch_size * self.world_size / self.n
