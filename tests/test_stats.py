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


# ---------------------------------------------------------------------------------------------------------------
# seed replicates: the two-level bootstrap and the two-level t-test
# ---------------------------------------------------------------------------------------------------------------
import numpy as np  # noqa: E402
from fractions import Fraction as F  # noqa: E402

from analysis.stats import (  # noqa: E402
    bootstrap_ci,
    paired_delta_with_ci,
    replicated_top1_with_ci,
    top1_with_ci,
    two_level_bootstrap,
    two_level_ci,
    two_level_t_test,
)


def test_two_level_bootstrap_of_one_run_is_the_plain_bootstrap():
    x = (np.random.default_rng(1).random(57) < 0.6).astype(float)
    for chunk in (4_000_000, 57 * 7):  # one chunk and several: the same draws as bootstrap_ci
        assert two_level_ci([x], n_boot=700, seed=4) == bootstrap_ci(x, n_boot=700, seed=4, chunk_elems=chunk)
    r = replicated_top1_with_ci(x[None, :], n_boot=700, seed=4)
    t = top1_with_ci(x, n_boot=700, seed=4)
    assert (r["top1"], r["ci_low"], r["ci_high"], r["correct"], r["n"]) == (t["top1"], t["ci_low"], t["ci_high"],
                                                                            t["correct"], t["n"])
    assert r["seeds"] == 1 and r["seed_sd"] is None


def test_two_level_ci_collapses_where_nothing_varies():
    # every run right on every image: no image and no seed can move the mean
    assert two_level_ci([np.ones((3, 40))], n_boot=300) == (1.0, 1.0)
    # three runs that agree image by image: the seed draw changes nothing, so the CI is the one-run bootstrap's
    # (within one chunk the image draws come first, as in bootstrap_ci)
    x = (np.random.default_rng(2).random(80) < 0.5).astype(float)
    assert two_level_ci([np.stack([x, x, x])], n_boot=400, seed=9) == pytest.approx(bootstrap_ci(x, n_boot=400, seed=9),
                                                                                  abs=1e-12)
    # a difference without seed variance: B's three runs are A's two runs' values shifted by 0.25 on every image
    # -> the shared image draw cancels the image variance and Delta's CI is (0.25, 0.25)
    a = np.repeat(np.random.default_rng(3).random((1, 30)), 2, axis=0)
    d = paired_delta_with_ci(a, np.repeat(a[:1] + 0.25, 3, axis=0), n_boot=300)
    assert d["delta"] == pytest.approx(0.25) and (d["ci_low"], d["ci_high"]) == pytest.approx((0.25, 0.25))
    # A and B identical (one run each): the paired image draw cancels exactly
    assert paired_delta_with_ci(a[0], a[0], n_boot=300) == {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0}


def test_two_level_ci_widens_with_between_seed_variance():
    # hand case: run 0 wrong on every image, run 1 right on every image. Images add no variance; resampling the
    # two seeds gives means 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4, so the 95% CI of 1000 draws is (0, 1).
    # The single-seed bootstrap of the run-averaged images (all 1/2) sees no variance at all: (1/2, 1/2).
    runs = np.stack([np.zeros(50), np.ones(50)])
    assert two_level_ci([runs], n_boot=1000, seed=0) == (0.0, 1.0)
    assert bootstrap_ci(runs.mean(axis=0), n_boot=1000, seed=0) == (0.5, 0.5)
    draws = two_level_bootstrap([runs], n_boot=4000, seed=1)
    assert set(np.unique(draws)) == {0.0, 0.5, 1.0} and np.mean(draws == 0.5) == pytest.approx(0.5, abs=0.03)
    # realistic: three restorer seeds at 40%, 55% and 70% top-1 on the same 200 images; the CI must be wider than
    # the one-level bootstrap of the pooled per-image accuracy, by about the seed term's share of the variance
    rng = np.random.default_rng(5)
    runs = np.stack([(rng.random(200) < p).astype(float) for p in (0.40, 0.55, 0.70)])
    lo2, hi2 = two_level_ci([runs], n_boot=2000, seed=0)
    lo1, hi1 = bootstrap_ci(runs.mean(axis=0), n_boot=2000, seed=0)
    assert hi2 - lo2 > 2 * (hi1 - lo1)
    cell = replicated_top1_with_ci(runs, n_boot=2000, seed=0)
    assert cell["top1"] == pytest.approx(100 * runs.mean()) and cell["seeds"] == 3
    assert cell["seed_sd"] == pytest.approx(np.std(runs.mean(axis=1) * 100, ddof=1))
    assert (cell["ci_low"], cell["ci_high"]) == pytest.approx((100 * lo2, 100 * hi2))


def test_two_level_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="same images"):
        two_level_bootstrap([np.ones((2, 5)), np.ones((1, 6))])
    with pytest.raises(ValueError, match="runs, images"):
        two_level_bootstrap([np.ones((2, 2, 2))])
    with pytest.raises(ValueError, match="coefficient"):
        two_level_bootstrap([np.ones(5)], coefs=(1, -1))
    with pytest.raises(ValueError, match="0/1"):
        replicated_top1_with_ci([[0, 2, 1]])


def test_two_level_t_test_is_scipys_paired_t_with_one_run_each():
    from scipy.stats import ttest_rel

    rng = np.random.default_rng(0)
    a = (rng.random(60) < 0.5).astype(float)
    b = (rng.random(60) < 0.65).astype(float)
    ref = ttest_rel(b, a)
    got = two_level_t_test(a, b)
    assert got["t"] == pytest.approx(ref.statistic, rel=1e-12) and got["df"] == pytest.approx(ref.df)
    assert got["p_value"] == pytest.approx(ref.pvalue, rel=1e-10) and got["delta"] == pytest.approx(b.mean() - a.mean())


def test_two_level_t_test_is_scipys_welch_test_when_only_seeds_vary():
    from scipy.stats import ttest_ind

    a_means, b_means = np.array([0.1, 0.3, 0.2]), np.array([0.5, 0.4, 0.6, 0.55])
    a, b = np.repeat(a_means[:, None], 12, axis=1), np.repeat(b_means[:, None], 12, axis=1)
    ref = ttest_ind(b_means, a_means, equal_var=False)
    got = two_level_t_test(a, b)
    assert got["t"] == pytest.approx(ref.statistic, rel=1e-12) and got["df"] == pytest.approx(ref.df, rel=1e-12)
    assert got["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)


def test_two_level_t_test_hand_case():
    from scipy.stats import t as student_t

    a = [[1, 0, 1, 1], [0, 0, 1, 1]]                 # two runs: 3/4 and 1/2 right
    b = [[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 1, 0]]   # three runs: 1, 3/4, 3/4
    # per image: mean of b's runs - mean of a's runs = 1 - 1/2, 2/3 - 0, 1 - 1, 2/3 - 1
    d = [F(1, 2), F(2, 3), F(0), F(-1, 3)]
    mean_d = sum(d) / 4                                              # (1/2 + 2/3 - 1/3) / 4
    assert mean_d == F(5, 24)
    v_img = sum((x - mean_d) ** 2 for x in d) / 3 / 4                # var(d, ddof 1) / N
    v_a = ((F(3, 4) - F(5, 8)) ** 2 + (F(1, 2) - F(5, 8)) ** 2) / 1 / 2   # var of a's run means / R_a
    mb = F(5, 6)
    v_b = ((1 - mb) ** 2 + 2 * (F(3, 4) - mb) ** 2) / 2 / 3               # var of b's run means / R_b
    se2 = v_img + v_a + v_b
    df = se2 ** 2 / (v_img ** 2 / 3 + v_a ** 2 / 1 + v_b ** 2 / 2)
    t = float(mean_d) / float(se2) ** 0.5
    got = two_level_t_test(a, b)
    assert got["delta"] == pytest.approx(float(mean_d)) and got["se"] == pytest.approx(float(se2) ** 0.5)
    assert got["t"] == pytest.approx(t) and got["df"] == pytest.approx(float(df))
    assert got["p_value"] == pytest.approx(2 * student_t.sf(t, float(df)))
    assert 0.4 < got["p_value"] < 0.6  # t = 0.76 on 4.7 degrees of freedom


def test_two_level_t_test_respects_between_seed_variance():
    # one lucky seed: B's runs score 50%, 50% and 90% against A's 50% on 200 images. Compared run by run, the
    # lucky run alone is overwhelming (paired t on those 200 images: p < 1e-10); over the seeds the mean gain of
    # 13 points is not distinguishable from the seed spread (df about 2)
    rng = np.random.default_rng(7)
    base = (rng.random(200) < 0.5).astype(float)
    lucky = np.maximum(base, (rng.random(200) < 0.8).astype(float))
    b = np.stack([base, np.roll(base, 1), lucky])
    single = two_level_t_test(base, lucky)
    pooled = two_level_t_test(base, b)
    assert single["p_value"] < 1e-10 and pooled["p_value"] > 0.05 and pooled["df"] < 3
    # degenerate: identical groups -> delta 0, p 1; a deterministic gap with no variance at all -> p 0
    assert two_level_t_test(np.ones((2, 5)), np.ones((3, 5)))["p_value"] == 1.0
    assert two_level_t_test(np.zeros((2, 5)), np.ones((3, 5)))["p_value"] == 0.0
