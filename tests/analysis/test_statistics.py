"""Paired statistics of method comparisons, checked against closed forms, tables and hand computations."""

from __future__ import annotations

import math

import pytest

from msadkit.analysis.statistics import (
    compare_to_baseline,
    holm_bonferroni,
    paired_differences,
    t_cdf,
    t_quantile,
    t_test,
    t_two_sided_p,
)
from msadkit.errors import MsadkitError

# t_{0.975, df}: the two-sided 95 % critical values (published tables give the first 3-7 digits; these
# are the 16-digit values of standard statistical libraries).
T_975 = {
    1: 12.706204736174698,
    2: 4.302652729749464,
    4: 2.7764451051977987,
    5: 2.5705818356363146,
    10: 2.2281388519862744,
    30: 2.0422724563012373,
    100: 1.9839715185235556,
}
# Other quantiles from printed tables (to their 3 decimals): t_{0.995,3}, t_{0.9,20}, t_{0.9995,60}.
TABLE_3_DECIMALS = [(0.995, 3, 5.841), (0.9, 20, 1.325), (0.9995, 60, 3.460), (0.99, 15, 2.602)]


def _cdf_by_integration(t: float, df: float, steps: int = 20_000) -> float:
    """An independent t CDF: Simpson's rule on the density from 0 to t (plus 1/2)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(x: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))

    h = t / steps
    total = density(0.0) + density(t)
    total += 4 * sum(density((2 * i - 1) * h) for i in range(1, steps // 2 + 1))
    total += 2 * sum(density(2 * i * h) for i in range(1, steps // 2))
    return 0.5 + total * h / 3


@pytest.mark.parametrize("df", sorted(T_975))
def test_t_quantile_matches_reference_values(df):
    assert t_quantile(0.975, df) == pytest.approx(T_975[df], abs=1e-9)
    assert t_quantile(0.025, df) == pytest.approx(-T_975[df], abs=1e-9)


@pytest.mark.parametrize("p, df, expected", TABLE_3_DECIMALS)
def test_t_quantile_matches_printed_tables(p, df, expected):
    assert round(t_quantile(p, df), 3) == expected


@pytest.mark.parametrize("p", [1e-10, 0.001, 0.025, 0.2, 0.5, 0.7, 0.975, 0.999, 1 - 1e-9])
def test_t_quantile_matches_closed_forms_for_one_two_and_four_df(p):
    # df = 1 (Cauchy): tan(pi (p - 1/2)), written as 1 / tan(pi min(p, 1 - p)) to stay exact in the tails.
    cauchy = 0.0 if p == 0.5 else math.copysign(1 / math.tan(math.pi * min(p, 1 - p)), p - 0.5)
    assert t_quantile(p, 1) == pytest.approx(cauchy, rel=1e-11, abs=1e-14)
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-11, abs=1e-14)
    # df = 4 (Hill 1970): q = 4p(1-p), t = sign * 2 sqrt(cos(arccos(sqrt q) / 3) / sqrt q - 1).
    q = 4 * p * (1 - p)
    four = math.copysign(2 * math.sqrt(math.cos(math.acos(math.sqrt(q)) / 3) / math.sqrt(q) - 1), p - 0.5)
    assert t_quantile(p, 4) == pytest.approx(four, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("df", [1, 3, 7.5, 29, 250])
@pytest.mark.parametrize("t", [0.1, 1.0, 2.3, 6.0])
def test_t_cdf_matches_numerical_integration_and_quantile_inverts_it(df, t):
    assert t_cdf(t, df) == pytest.approx(_cdf_by_integration(t, df), abs=1e-11)
    assert t_cdf(-t, df) == pytest.approx(1 - t_cdf(t, df), abs=1e-15)
    assert t_quantile(t_cdf(t, df), df) == pytest.approx(t, rel=1e-9)


def test_two_sided_p_values_match_known_values():
    # df = 1 (Cauchy): 1 - 2/pi atan|t|; df = 2: 1 - |t| / sqrt(2 + t^2).
    for t in (0.5, 1.0, 3.0, 40.0):
        assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-12)
        assert t_two_sided_p(-t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-12)
    # df = 4, closed form F(t) = 1/2 + 3/8 * t / sqrt(1 + t^2/4) * (1 - t^2 / (12 (1 + t^2/4))).
    t = 3 / math.sqrt(0.5)
    cdf4 = 0.5 + 3 / 8 * t / math.sqrt(1 + t * t / 4) * (1 - t * t / (12 * (1 + t * t / 4)))
    assert t_two_sided_p(t, 4) == pytest.approx(2 * (1 - cdf4), rel=1e-12)
    assert t_two_sided_p(2.0, 10) == pytest.approx(0.07338803477074, abs=1e-13)  # 2 * pt(-2, 10)
    assert t_two_sided_p(2.228138851986274, 10) == pytest.approx(0.05, abs=1e-14)
    # Many degrees of freedom: the normal's two-sided tail plus its first 1/df correction,
    # 2 phi(z) (z^3 + z) / (4 df) (the next term is of order 1/df^2).
    z, df = 1.959963984540054, 10**5
    phi = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    expected = math.erfc(z / math.sqrt(2)) + 2 * phi * (z**3 + z) / (4 * df)
    assert t_two_sided_p(z, df) == pytest.approx(expected, abs=1e-10)
    assert t_two_sided_p(0.0, 3) == 1.0 and t_two_sided_p(math.inf, 3) == 0.0
    assert math.isnan(t_two_sided_p(math.nan, 3))


def test_t_quantile_refuses_bad_arguments():
    for p in (0.0, 1.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="0 < p < 1"):
            t_quantile(p, 3)
    for df in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError, match="degrees of freedom"):
            t_quantile(0.9, df)


def test_t_test_of_one_to_five_by_hand():
    result = t_test([1, 2, 3, 4, 5])
    half_width = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
    assert result.n == 5 and result.mean == 3.0
    assert result.std == pytest.approx(math.sqrt(2.5), rel=1e-15)
    assert result.low == pytest.approx(3 - half_width, abs=1e-12)
    assert result.high == pytest.approx(3 + half_width, abs=1e-12)
    # t = 3 / sqrt(0.5), df 4: two-sided p from the closed form above.
    t = 3 / math.sqrt(0.5)
    cdf4 = 0.5 + 3 / 8 * t / math.sqrt(1 + t * t / 4) * (1 - t * t / (12 * (1 + t * t / 4)))
    assert result.p == pytest.approx(2 * (1 - cdf4), rel=1e-12)


def test_t_test_of_two_values_and_other_confidence():
    # n = 2: mean 1, sd sqrt(2) * 0.5 * 2 = |a - b| / sqrt 2, interval mean -/+ t_{.95,1} * sd / sqrt 2.
    result = t_test([0.5, 1.5], confidence=0.9)
    sd = 1 / math.sqrt(2)
    half = math.tan(math.pi * 0.45) * sd / math.sqrt(2)
    assert (result.mean, result.std) == pytest.approx((1.0, sd), rel=1e-15)
    assert (result.low, result.high) == pytest.approx((1 - half, 1 + half), rel=1e-12)
    # t = 1 / 0.5 = 2 with one df: p = 1 - 2/pi atan 2.
    assert result.p == pytest.approx(1 - 2 / math.pi * math.atan(2), rel=1e-12)


def test_t_test_without_spread():
    zero = t_test([0.0, 0.0, 0.0])
    assert (zero.std, zero.low, zero.high, zero.p) == (0.0, 0.0, 0.0, 1.0)
    same = t_test([0.4, 0.4])
    assert same.p == 0.0 and same.low == same.high == pytest.approx(0.4)


def test_t_test_refuses_too_few_or_non_finite_values():
    with pytest.raises(MsadkitError, match="at least 2"):
        t_test([1.0])
    with pytest.raises(MsadkitError, match="finite"):
        t_test([1.0, math.nan])
    with pytest.raises(ValueError, match="confidence"):
        t_test([1.0, 2.0], confidence=95)


def test_holm_bonferroni_by_hand():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06.
    assert holm_bonferroni([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    # Capped at 1; a single p-value is unchanged; an empty family is empty.
    assert holm_bonferroni([0.3, 0.6, 0.5]) == pytest.approx([0.9, 1.0, 1.0])
    assert holm_bonferroni([0.2]) == [0.2]
    assert holm_bonferroni([]) == []
    # Ties get equal adjusted values.
    assert holm_bonferroni([0.02, 0.02, 0.5]) == pytest.approx([0.06, 0.06, 0.5])


def test_holm_bonferroni_is_monotone_and_never_below_the_raw_value():
    import random

    rng = random.Random(3)
    for _ in range(50):
        raw = [rng.random() ** 3 for _ in range(rng.randint(1, 9))]
        adjusted = holm_bonferroni(raw)
        assert all(a >= r and a <= 1 for a, r in zip(adjusted, raw))
        pairs = sorted(zip(raw, adjusted))
        assert all(a1 <= a2 for (_, a1), (_, a2) in zip(pairs, pairs[1:]))


def test_holm_bonferroni_refuses_values_outside_zero_one():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_bonferroni([0.1, math.nan])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_bonferroni([1.2])


def test_paired_differences_keep_shared_seeds_only():
    baseline = {0: 30.0, 1: 31.0, 2: 29.5, 5: 40.0}
    method = {2: 30.5, 1: 32.5, 0: 30.25, 7: 10.0}
    assert paired_differences(baseline, method) == {0: 0.25, 1: 1.5, 2: 1.0}
    assert list(paired_differences(baseline, method)) == [0, 1, 2]


def test_paired_differences_refuse_fewer_than_two_pairs_and_nan():
    with pytest.raises(MsadkitError, match=r"mgd: .*at least 2 seeds.*got 1"):
        paired_differences({0: 1.0, 1: 2.0}, {1: 3.0, 4: 2.0}, name="mgd")
    with pytest.raises(MsadkitError, match="got 0"):
        paired_differences({}, {0: 1.0})
    with pytest.raises(MsadkitError, match="seed 1 .*finite"):
        paired_differences({0: 1.0, 1: 2.0}, {0: 1.0, 1: math.nan})


def test_compare_to_baseline_pairs_each_method_and_adjusts_across_the_family():
    baseline = {0: 20.0, 1: 21.0, 2: 22.0, 3: 20.5, 4: 21.5}
    methods = {
        "msad": {s: baseline[s] + d for s, d in zip(range(5), [1, 2, 3, 4, 5])},
        "fitnet": {s: baseline[s] + d for s, d in zip(range(5), [0.5, -0.5, 0.25, -0.25, 0.0])},
        "gid": {0: 25.0, 2: 23.0, 9: 1.0},
    }
    results = compare_to_baseline(baseline, methods)
    assert list(results) == ["msad", "fitnet", "gid"]
    msad, fitnet, gid = results.values()
    reference = t_test([1, 2, 3, 4, 5])
    assert (msad.n, msad.mean, msad.low, msad.high, msad.p) == pytest.approx(
        (5, 3.0, reference.low, reference.high, reference.p), abs=1e-9
    )
    assert msad.excludes_zero and not fitnet.excludes_zero
    assert fitnet.mean == pytest.approx(0.0, abs=1e-12) and fitnet.p == pytest.approx(1.0, abs=1e-12)
    assert gid.seeds == (0, 2) and gid.n == 2 and gid.mean == pytest.approx(3.0)
    raw = [msad.p, fitnet.p, gid.p]
    assert [msad.p_holm, fitnet.p_holm, gid.p_holm] == pytest.approx(holm_bonferroni(raw))
    assert msad.p_holm == pytest.approx(min(1.0, 3 * msad.p))  # the smallest of three p-values
    with pytest.raises(MsadkitError, match="gid"):
        compare_to_baseline(baseline, {"gid": {0: 1.0}})
