"""A resumable, data-parallel order of training samples.

The order is an endless stream: the concatenation of one seeded permutation of the data set per epoch. A
global micro-batch takes the next B·W stream positions (B = per-process batch, W = processes) and process r
takes its r-th slice of B. The stream is a pure function of (seed, data set size), so resuming needs only the
number of samples consumed so far: no sampler state, no skipping through a data loader; data sets smaller
than one global batch still work (they wrap into the next epoch), and so does resuming with another W.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from rgbd_portrait.training.seeding import derive_seed


class SampleStream:
    """Sample indices, epoch after epoch, each epoch a permutation seeded by (seed, epoch).

    With `weights` (one non-negative number per sample), an epoch is instead `num_samples` draws with
    replacement in proportion to the weights, seeded the same way: mixed data sources get their shares.
    """

    def __init__(self, num_samples: int, *, seed: int, weights: torch.Tensor | None = None):
        if num_samples <= 0:
            raise ValueError("the sample stream needs at least one sample")
        if weights is not None and (weights.shape != (num_samples,) or weights.min() < 0 or weights.sum() <= 0):
            raise ValueError(f"the sample stream needs {num_samples} non-negative weights, not all zero")
        self.num_samples = num_samples
        self.seed = seed
        self.weights = weights
        self._permutations: dict[int, list[int]] = {}

    def permutation(self, epoch: int) -> list[int]:
        if epoch not in self._permutations:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "data-order", epoch))
            # Older epochs are never needed again once the stream has moved on.
            self._permutations = {key: value for key, value in self._permutations.items() if key >= epoch - 1}
            if self.weights is None:
                order = torch.randperm(self.num_samples, generator=generator)
            else:
                order = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)
            self._permutations[epoch] = order.tolist()
        return self._permutations[epoch]

    def at(self, position: int) -> tuple[int, int]:
        """(sample index, epoch) at a stream position."""
        epoch, offset = divmod(position, self.num_samples)
        return self.permutation(epoch)[offset], epoch


class StreamBatchSampler:
    """`batch_sampler` for a DataLoader: this process's (index, epoch) micro-batches, forever.

    `start_position` is the number of samples all processes together consumed before (0 for a fresh run).
    """

    def __init__(self, stream: SampleStream, *, rank: int, world_size: int, batch_size: int, start_position: int = 0):
        self.stream = stream
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size
        self.start_position = start_position

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        start = self.start_position + self.rank * self.batch_size
        while True:
            yield [self.stream.at(position) for position in range(start, start + self.batch_size)]
            start += self.world_size * self.batch_size
