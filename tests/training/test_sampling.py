"""Sampling weights: hard-negative (tumour-free) cases get their share of every batch."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from lungtumor.training.sampling import EpochBatchSampler, negative_case_weights, oversample_weights


def _cache_and_table(tumour_slices: dict[str, list[int]], n_slices: int = 10):
    names = list(tumour_slices)
    cases = {n: SimpleNamespace(tumour_slices=t) for n, t in tumour_slices.items()}
    case_of = np.repeat(np.arange(len(names)), n_slices)
    tumour = np.zeros(len(case_of), dtype=bool)
    for i, n in enumerate(names):
        tumour[i * n_slices + np.asarray(tumour_slices[n], dtype=np.int64)] = True
    return SimpleNamespace(cases=cases), SimpleNamespace(names=names, case_of=case_of), tumour


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_hard_negatives_get_the_asked_share_and_the_rest_keeps_its_proportions(fraction: float) -> None:
    cache, table, tumour = _cache_and_table({"a": [2, 3, 4], "b": [], "c": [0], "d": []})
    ids = np.arange(len(tumour))
    base, _ = oversample_weights(tumour)
    w = negative_case_weights(cache, table, ids, base, fraction)
    neg = np.isin(table.case_of, [1, 3])
    assert w[neg].sum() / w.sum() == pytest.approx(fraction)
    assert np.allclose(w[neg], w[neg][0])  # spread evenly over the negatives' slices
    assert np.allclose(w[~neg] / w[~neg].sum(), base[~neg] / base[~neg].sum())
    # and the sampler draws them at that rate
    sampler = EpochBatchSampler(ids, w, 8, 400, seed=0, rank=0, world=1)
    drawn = np.concatenate([np.asarray(b) for b in sampler])
    assert abs(np.isin(table.case_of[drawn], [1, 3]).mean() - fraction) < 0.03


def test_no_change_without_fraction_or_without_both_kinds_of_case() -> None:
    cache, table, tumour = _cache_and_table({"a": [1], "b": []})
    ids = np.arange(len(tumour))
    base, _ = oversample_weights(tumour)
    assert negative_case_weights(cache, table, ids, base, 0.0) is base
    cache, table, tumour = _cache_and_table({"a": [1], "c": [2]})
    base, _ = oversample_weights(tumour)
    assert negative_case_weights(cache, table, ids, base, 0.3) is base
