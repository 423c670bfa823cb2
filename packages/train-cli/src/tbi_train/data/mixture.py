"""Mixtures of datasets with fixed ratios (seed 000 section 4.1: 40% Korean / 60% English; seed 003 D1:
55% video / 30% image / 15% text), grouping by a field, and the fixed validation split."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping

from torch.utils.data import Dataset

from tbi_train.data.bad import BadSampleReport
from tbi_train.data.dataset import ConversationDataset
from tbi_train.data.errors import DataError
from tbi_train.data.sample import Sample, SampleInfo

GROUP_KEYS = ("language", "task", "modality", "source")


def split_by(dataset: ConversationDataset, key: str = "language") -> dict[str, ConversationDataset]:
    """Views of `dataset` grouped by a sample field: language, task, modality (video/image/text) or source."""
    if key not in GROUP_KEYS:
        raise DataError(f"cannot group by {key!r}; use one of {GROUP_KEYS}.")
    groups: dict[str, list[int]] = {}
    for i in range(len(dataset)):
        groups.setdefault(str(getattr(dataset.describe(i), key)), []).append(i)
    return {name: dataset.select(idx) for name, idx in sorted(groups.items())}


class MixtureDataset(Dataset):
    """Samples drawn from named components in fixed proportions, in a seeded order.

    With ratios r_c (normalised to sum 1) and `num_samples` = N, component c contributes
    n_c = N * r_c samples rounded by largest remainder (so the counts sum to N exactly). Inside a
    component, samples are taken in a seeded permutation, cycling with a fresh permutation when
    n_c exceeds its size (oversampling); the whole list is then shuffled by the seed. Default N is
    the largest total that needs no repetition: min over c of len(c) / r_c.
    """

    def __init__(
        self,
        components: Mapping[str, ConversationDataset],
        ratios: Mapping[str, float],
        num_samples: int | None = None,
        seed: int = 0,
    ):
        unknown = set(ratios) - set(components)
        if unknown:
            raise DataError(
                f"mixture ratios name {sorted(unknown)}, but the components are {sorted(components)}."
            )
        if any(r < 0 for r in ratios.values()) or sum(ratios.values()) <= 0:
            raise DataError(f"mixture ratios {dict(ratios)} must be >= 0 with a positive sum.")
        total = sum(ratios.values())
        weights = {name: r / total for name, r in ratios.items() if r > 0}
        for name in weights:
            if len(components[name]) == 0:
                raise DataError(
                    f"mixture component {name!r} is empty but has ratio {ratios[name]}; drop it or add data."
                )
        if num_samples is None:
            num_samples = min(math.floor(len(components[c]) / w + 1e-9) for c, w in weights.items())
        self.components = dict(components)
        self.counts = _largest_remainder(weights, num_samples)
        index: list[tuple[str, int]] = []
        for name, count in self.counts.items():
            rng = random.Random(f"tbi-mix:{seed}:{name}")
            size = len(components[name])
            taken: list[int] = []
            while len(taken) < count:
                order = list(range(size))
                rng.shuffle(order)
                taken.extend(order[: count - len(taken)])
            index.extend((name, i) for i in taken)
        random.Random(f"tbi-mix-order:{seed}").shuffle(index)
        self._index = index

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> Sample:
        name, j = self._index[i]
        return self.components[name][j]

    def describe(self, i: int) -> SampleInfo:
        """Sample i's text and media shape without decoding pixels."""
        name, j = self._index[i]
        return self.components[name].describe(j)

    def component_of(self, i: int) -> str:
        """The component sample i comes from."""
        return self._index[i][0]

    @property
    def bad_report(self) -> BadSampleReport:
        """The components' bad-sample reports merged."""
        # Groups made by split_by share their parent's report: count each report once.
        reports = list({id(c.bad_report): c.bad_report for c in self.components.values()}.values())
        merged = reports[0]
        for report in reports[1:]:
            merged = merged.merge(report)
        return merged


def train_val_split(
    dataset: ConversationDataset, val_size: int | float, seed: int = 0
) -> tuple[ConversationDataset, ConversationDataset]:
    """A fixed validation split: the `val_size` samples with the smallest SHA-1 of (seed, id).

    `val_size` is a count (int) or a fraction (float in (0, 1)). The split depends only on the
    ids and the seed, not on file order, so appending data keeps earlier validation samples
    unless a new id hashes lower.
    """
    n = len(dataset)
    count = round(n * val_size) if isinstance(val_size, float) else int(val_size)
    if isinstance(val_size, float) and not 0 < val_size < 1:
        raise DataError(f"val_size={val_size}: a fraction must be in (0, 1); or pass a count.")
    if not 0 <= count < n:
        raise DataError(f"val_size={val_size} leaves no training data in a dataset of {n} samples.")

    def key(i: int) -> str:
        return hashlib.sha1(f"{seed}:{dataset.describe(i).id}".encode()).hexdigest()

    val = set(sorted(range(n), key=key)[:count])
    return dataset.select(i for i in range(n) if i not in val), dataset.select(sorted(val))


def _largest_remainder(weights: Mapping[str, float], n: int) -> dict[str, int]:
    exact = {k: n * w for k, w in weights.items()}
    counts = {k: math.floor(v + 1e-9) for k, v in exact.items()}
    order = sorted(exact, key=lambda k: (counts[k] - exact[k], k))
    for k in order[: n - sum(counts.values())]:
        counts[k] += 1
    return counts
