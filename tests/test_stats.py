"""analysis.stats: multiple-comparison correction (Holm) against hand computations."""
from __future__ import annotations

import math

import pytest

from analysis.stats import P_ADJUST_METHODS, adjust_p_values, holm_adjust


def test_holm_hand_computation():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> running max 0.06)
    got = holm_adjust([0.01, 0.04, 0.03, 0.005])
    assert got == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    # capped at 1, and monotone in the raw p-values
    assert holm_adjust([0.5, 0.6]) == [1.0, 1.0]
    assert holm_adjust([0.2]) == [0.2]
    assert holm_adjust([]) == []
    # ties keep equal adjusted values
    assert holm_adjust([0.01, 0.01, 0.5]) == pytest.approx([0.03, 0.03, 0.5])


def test_holm_rejects_invalid_p_values():
    for bad in ([0.1, 1.5], [-0.1], [math.nan]):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            holm_adjust(bad)


def test_adjust_p_values_dispatch():
    assert P_ADJUST_METHODS == ("none", "holm")
    assert adjust_p_values([0.01, 0.04], "none") == [0.01, 0.04]
    assert adjust_p_values([0.01, 0.04], "holm") == pytest.approx([0.02, 0.04])
    with pytest.raises(ValueError, match="none, holm"):
        adjust_p_values([0.01], "bonferroni")
