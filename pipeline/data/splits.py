"""Reproducible train/val/test splits and k-fold assignment.

The seed's shuffle (swap element ``i`` with a uniformly chosen ``j >= i``) is Fisher–Yates,
which gives every permutation the same probability only if ``j`` is drawn without bias. Python's
``random`` and NumPy's generators may change their streams between versions, so a split made with
them today could differ next year; here the generator is PCG32 (O'Neill 2014, the reference
``pcg32_random_r``) written in plain Python, with the reference's rejection sampling for bounded
integers (``pcg32_boundedrand_r``), so a split depends only on the seed and the case ids.

Example:
    >>> split_cases([f"case{i}" for i in range(10)], val_fraction=0.2, seed=0)["val"]
    ['case8', 'case0']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, TypeVar

from pipeline.errors import DataError, list_some

__all__ = ["Pcg32", "fisher_yates", "split_cases", "kfold", "apply_split"]

T = TypeVar("T")

_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1
_MULT = 6364136223846793005


class Pcg32:
    """PCG-XSH-RR 32-bit generator with a 64-bit state (the reference ``pcg32``).

    Args:
        seed: initial state (any non-negative int; reduced modulo 2**64).
        stream: stream selector; generators with different streams are independent.

    Example:
        >>> rng = Pcg32(42, 54)
        >>> hex(rng.next_u32())  # first output of the reference pcg32-demo
        '0xa15c02b7'
    """

    def __init__(self, seed: int, stream: int = 0) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if not isinstance(stream, int) or isinstance(stream, bool) or stream < 0:
            raise ValueError(f"stream must be a non-negative int, got {stream!r}")
        self._inc = ((stream << 1) | 1) & _MASK64
        self._state = 0
        self.next_u32()
        self._state = (self._state + seed) & _MASK64
        self.next_u32()

    def next_u32(self) -> int:
        """Return the next uniformly distributed integer in ``[0, 2**32)``."""
        old = self._state
        self._state = (old * _MULT + self._inc) & _MASK64
        xorshifted = (((old >> 18) ^ old) >> 27) & _MASK32
        rot = old >> 59
        return ((xorshifted >> rot) | (xorshifted << ((-rot) & 31))) & _MASK32

    def below(self, bound: int) -> int:
        """Return an unbiased integer in ``[0, bound)`` (rejection of the short last block).

        Raises:
            ValueError: if ``bound`` is not in ``[1, 2**32]``.
        """
        if not 1 <= bound <= 1 << 32:
            raise ValueError(f"bound must be in [1, 2**32], got {bound!r}")
        # 2**32 % bound values at the bottom would be drawn once more often than the others.
        threshold = (1 << 32) % bound
        while True:
            r = self.next_u32()
            if r >= threshold:
                return r % bound


def fisher_yates(items: Sequence[T], seed: int) -> list[T]:
    """Return a shuffled copy of ``items``: swap each position ``i`` with a uniform ``j >= i``.

    Every one of the ``n!`` orders is equally likely, and the result depends only on ``seed``.
    """
    out = list(items)
    rng = Pcg32(seed)
    n = len(out)
    for i in range(n - 1):
        j = i + rng.below(n - i)
        out[i], out[j] = out[j], out[i]
    return out


def _count(n: int, fraction: float, name: str) -> int:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {fraction!r}")
    if fraction == 0.0 or n == 0:
        return 0
    return max(1, round(n * fraction))


def kfold(cases: Sequence[str], num_folds: int, seed: int = 0) -> list[list[str]]:
    """Assign cases to ``num_folds`` folds of sizes differing by at most one.

    Cases are sorted first, so the folds do not depend on the order a directory was listed in.

    Raises:
        ValueError: if ``num_folds < 2``.
        DataError: if there are fewer cases than folds.
    """
    if not isinstance(num_folds, int) or num_folds < 2:
        raise ValueError(f"num_folds must be an int >= 2, got {num_folds!r}")
    order = fisher_yates(sorted(cases), seed)
    if len(order) < num_folds:
        raise DataError(f"{len(order)} cases cannot be split into {num_folds} folds")
    base, extra = divmod(len(order), num_folds)
    folds, start = [], 0
    for f in range(num_folds):
        size = base + (1 if f < extra else 0)
        folds.append(order[start : start + size])
        start += size
    return folds


def split_cases(
    cases: Sequence[str],
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    num_folds: int = 5,
    fold: int | None = None,
) -> dict[str, list[str]]:
    """Split case ids into ``train``, ``val`` and ``test`` by a seeded Fisher–Yates shuffle.

    The sorted ids are shuffled once; the first ``round(n * test_fraction)`` (at least one when
    the fraction is positive) form the test set. Without ``fold`` the next
    ``round(n * val_fraction)`` form the validation set; with ``fold`` the remaining cases are
    cut into ``num_folds`` folds and fold ``fold`` is the validation set, so the test set is the
    same for every fold.

    Args:
        cases: unique case ids.
        val_fraction: fraction of all cases for validation (ignored when ``fold`` is set).
        test_fraction: fraction of all cases held out for testing.
        seed: split seed.
        num_folds: number of folds for cross-validation.
        fold: which fold is validation, in ``[0, num_folds)``; ``None`` uses ``val_fraction``.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` with case ids in shuffled order.

    Raises:
        ValueError: for fractions outside ``[0, 1)`` or a fold out of range.
        DataError: for duplicate ids or when no training case would remain.
    """
    if fold is not None and not (isinstance(fold, int) and 0 <= fold < num_folds):
        raise ValueError(f"fold must be in [0, {num_folds}), got {fold!r}")
    dups = sorted(c for c, k in Counter(cases).items() if k > 1)
    if dups:
        raise DataError(f"duplicate case ids: {list_some(dups)}")
    n = len(cases)
    n_test = _count(n, test_fraction, "test_fraction")
    order = fisher_yates(sorted(cases), seed)
    test, pool = order[:n_test], order[n_test:]
    if fold is not None:
        if len(pool) < num_folds:
            raise DataError(f"{len(pool)} cases (after the test set) cannot be split into {num_folds} folds")
        folds = kfold(pool, num_folds, seed)
        val = folds[fold]
        chosen = set(val)
        train = [c for c in pool if c not in chosen]
    else:
        n_val = _count(n, val_fraction, "val_fraction")
        val, train = pool[:n_val], pool[n_val:]
    if not train:
        raise DataError(
            f"{n} cases leave no training case (test {len(test)}, val {len(val)}); "
            "lower data.val_fraction / data.test_fraction or add cases"
        )
    return {"train": train, "val": val, "test": test}


def apply_split(items: Sequence[dict[str, Any]], split: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """Select datalist items by their ``case`` id for each part of ``split``."""
    by_case = {item["case"]: item for item in items}
    return {part: [by_case[c] for c in ids] for part, ids in split.items()}
