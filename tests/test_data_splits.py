"""Seeded splits: the PCG32 generator, Fisher–Yates, train/val/test and k-fold assignment."""

from __future__ import annotations

import itertools

import pytest

from pipeline.data.splits import Pcg32, apply_split, fisher_yates, kfold, split_cases
from pipeline.errors import DataError


def test_pcg32_matches_the_reference_demo_output():
    # pcg32-demo (pcg-c-basic) seeds with initstate=42, initseq=54 and prints these words.
    rng = Pcg32(42, 54)
    assert [rng.next_u32() for _ in range(6)] == [
        0xA15C02B7,
        0x7B47F409,
        0xBA1D3330,
        0x83D2F293,
        0xBFA4784B,
        0xCBED606E,
    ]


def test_bounded_draws_stay_in_range_and_reject_bad_bounds():
    rng = Pcg32(7)
    draws = [rng.below(3) for _ in range(3000)]
    assert set(draws) == {0, 1, 2}
    assert abs(draws.count(0) - 1000) < 120
    with pytest.raises(ValueError, match=r"bound must be in \[1, 2\*\*32\], got 0"):
        rng.below(0)
    with pytest.raises(ValueError, match="seed must be a non-negative int, got -1"):
        Pcg32(-1)


def test_fisher_yates_is_a_fixed_permutation_for_a_fixed_seed():
    assert fisher_yates(list(range(10)), 42) == [0, 3, 7, 1, 2, 9, 8, 5, 6, 4]
    assert fisher_yates(list("abcdefgh"), 0) == ["a", "d", "b", "h", "e", "g", "c", "f"]
    items = list(range(50))
    assert fisher_yates(items, 3) == fisher_yates(items, 3)
    assert fisher_yates(items, 3) != fisher_yates(items, 4)
    assert sorted(fisher_yates(items, 3)) == items
    assert items == list(range(50))  # the input is not shuffled in place


def _naive_shuffle(items, seed):
    """The classic mistake: swap with any j in [0, n), which favours some orders."""
    out, rng = list(items), Pcg32(seed)
    for i in range(len(out)):
        j = rng.below(len(out))
        out[i], out[j] = out[j], out[i]
    return out


def _chi2_over_permutations(shuffle, seeds: int) -> float:
    counts = dict.fromkeys(itertools.permutations(range(4)), 0)
    for seed in range(seeds):
        counts[tuple(shuffle(range(4), seed))] += 1
    expected = seeds / 24
    return sum((c - expected) ** 2 / expected for c in counts.values())


def test_fisher_yates_gives_every_permutation_of_four_items_equally_often():
    # 23 degrees of freedom: P(chi2 > 49.7) = 0.001 for a uniform shuffle
    assert _chi2_over_permutations(fisher_yates, 24 * 500) < 49.7
    # and the test has the power to see a biased shuffle
    assert _chi2_over_permutations(_naive_shuffle, 24 * 500) > 200


def test_split_cases_partitions_deterministically():
    cases = [f"case{i:02d}" for i in range(20)]
    split = split_cases(cases, val_fraction=0.2, test_fraction=0.1, seed=5)
    assert [len(split[k]) for k in ("train", "val", "test")] == [14, 4, 2]
    assert sorted(split["train"] + split["val"] + split["test"]) == cases
    # listing order does not matter, the seed does
    assert split == split_cases(list(reversed(cases)), val_fraction=0.2, test_fraction=0.1, seed=5)
    assert split != split_cases(cases, val_fraction=0.2, test_fraction=0.1, seed=6)


def test_small_fractions_still_give_one_case():
    split = split_cases(["a", "b", "c"], val_fraction=0.05, seed=0)
    assert len(split["val"]) == 1 and len(split["train"]) == 2


def test_folds_cover_the_pool_once_and_keep_the_test_set():
    cases = [f"c{i}" for i in range(23)]
    splits = [split_cases(cases, test_fraction=0.2, seed=1, num_folds=5, fold=f) for f in range(5)]
    tests = {tuple(s["test"]) for s in splits}
    assert len(tests) == 1 and len(splits[0]["test"]) == 5
    vals = [v for s in splits for v in s["val"]]
    assert sorted(vals) == sorted(set(cases) - set(splits[0]["test"]))
    assert sorted(len(s["val"]) for s in splits) == [3, 3, 4, 4, 4]
    for s in splits:
        assert not set(s["train"]) & set(s["val"])


def test_kfold_sizes_and_errors():
    folds = kfold([str(i) for i in range(10)], 3, seed=0)
    assert [len(f) for f in folds] == [4, 3, 3]
    with pytest.raises(ValueError, match="num_folds must be an int >= 2, got 1"):
        kfold(["a", "b"], 1)
    with pytest.raises(DataError, match="2 cases cannot be split into 3 folds"):
        kfold(["a", "b"], 3)


def test_split_errors_name_the_problem():
    with pytest.raises(DataError, match="duplicate case ids: a"):
        split_cases(["a", "a", "b"])
    with pytest.raises(DataError, match="leave no training case"):
        split_cases(["a", "b"], val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.5"):
        split_cases(["a", "b"], val_fraction=1.5)
    with pytest.raises(ValueError, match=r"fold must be in \[0, 5\), got 5"):
        split_cases(["a"] * 1, fold=5)


def test_apply_split_selects_items_by_case():
    items = [{"case": c, "image": f"{c}.png"} for c in "abcd"]
    out = apply_split(items, {"train": ["c", "a"], "val": ["d"], "test": []})
    assert [d["image"] for d in out["train"]] == ["c.png", "a.png"]
    assert out["val"][0]["case"] == "d" and out["test"] == []
