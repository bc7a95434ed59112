"""Tests of objective.py: (2), its Jensen bound and NT-Xent against float64 loops, the streamed
form against the dense one, and the bound against NT-Xent; `pytest test_all.py` runs them.

Float64 throughout: a sum of n <= (B K)^2 = 400 terms of size <= beta = 50 rounds by 2e-12 at
worst (n u |terms|), sqrt(n) u |terms| = 1e-13 as rounding errors add up at random: tolerances
1e-12 absolute and 1e-10 relative; measured 1.4e-14 at most.
"""
import math

import pytest
import torch

import objective
from fixtures import mi_loop, random_inputs, two_view_loops
from objective import alignment, exact_mi, nt_xent, simclr_bound, uniformity, worked_example


@pytest.mark.parametrize("seed", range(6))
def test_estimators_match_loops_and_bound_below_mi_below_log_batch(seed):
    z, logp = random_inputs(B=3 + seed % 3, seed=seed, peak=[0.1, 10.0][seed // 3])
    beta = [0.5, 5.0, 50.0][seed % 3]
    mi, bound = exact_mi(z, logp, beta).item(), simclr_bound(z, logp, beta).item()
    assert mi == pytest.approx(mi_loop(z, logp, beta), rel=1e-10)
    assert bound == pytest.approx(mi_loop(z, logp, beta, jensen=True), rel=1e-10)
    assert bound <= mi + 1e-12 and mi <= math.log(len(z)) + 1e-12  # Jensen; InfoNCE's ceiling
    shares = [exact_mi(z, logp, beta, slice(i, i + 2)).item() for i in range(0, len(z), 2)]
    assert sum(shares) == pytest.approx(mi, rel=1e-12)  # the processes' rows add up to the MI
    same = torch.nn.functional.normalize(torch.ones_like(z), dim=-1)  # every code equal: MI 0
    assert exact_mi(same, logp, beta).item() == pytest.approx(0.0, abs=1e-12)
    apart = torch.eye(8, dtype=z.dtype)[:len(z), None].expand(*z.shape[:2], 8)  # image i: axis i
    assert exact_mi(apart, logp, 60.0).item() == pytest.approx(math.log(len(z)), abs=1e-9)
    z1, z2 = z[:, 0], z[:, 1]  # two views of each image
    loss, aligned, uniform = two_view_loops(z1.numpy(), z2.numpy(), beta=2.0)
    assert nt_xent(z1, z2, 2.0).item() == pytest.approx(loss, rel=1e-10)
    assert alignment(z1, z2).item() == pytest.approx(aligned, rel=1e-10)
    assert uniformity(torch.cat([z1, z2])).item() == pytest.approx(uniform, rel=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_streamed_equals_dense_in_value_and_gradient(seed, monkeypatch):
    """The streamed den (a hand-written backward) against the dense formula's autograd, and
    against finite differences (gradcheck), also on a share of the rows."""
    z, logp = random_inputs(B=4, K=3 + seed, seed=seed, peak=2.0)
    beta = [0.5, 5.0, 50.0][seed]
    dense = {}
    for streamed in (False, True):
        if streamed:
            monkeypatch.setattr(objective, "DENSE_ROWS", 0)
            monkeypatch.setitem(objective.CHUNK_ELEMENTS, "cpu", 60)  # 3 to 5 rows, the last fewer
        for estimator in (exact_mi, simclr_bound):
            for rows in (slice(None), slice(2, 4)):
                inputs = (z.clone().requires_grad_(), logp.clone().requires_grad_())
                value = estimator(*inputs, beta, rows)
                result = (value, *torch.autograd.grad(value, inputs))
                key = (estimator, rows.start)
                if not streamed:
                    dense[key] = result
                    continue
                torch.testing.assert_close(result, dense[key], rtol=1e-10, atol=1e-12)
                function = (lambda z, logp: estimator(z, logp, beta, rows))
                assert torch.autograd.gradcheck(function, inputs)


def test_bound_on_two_uniform_crops_is_nt_xent_but_for_two_terms():
    """On K = 2 crops weighted 1/2, -simclr_bound + log 2B is the cross-entropy of each of the
    2B codes a against all 2B (itself included), its target half on itself and half on its other
    view a+; NT-Xent leaves a out of both. Exactly:
        -simclr_bound = nt_xent - log 2B + mean_a [ beta/2 (<z_a, z_a+> - 1)
                                                   + log(1 + e^beta / sum_{b != a} e^{s_ab}) ]
    the first term <= 0 (half the target sits on a itself, whose similarity is 1), the second
    >= 0 (the self-similarity e^beta stays in the denominator)."""
    z, _ = random_inputs(B=6, K=2, d=5, seed=1)
    beta = 3.0
    bound = simclr_bound(z, torch.full((6, 2), -math.log(2), dtype=z.dtype), beta)
    z1, z2 = z[:, 0], z[:, 1]
    v = torch.cat([z1, z2])  # (2B, d) the codes a
    s = beta * v @ v.T  # (2B, 2B)
    a = torch.arange(12)  # (2B,)
    positive = (a + 6) % 12  # (2B,) a+
    others = s.clone().fill_diagonal_(float("-inf")).logsumexp(1)  # (2B,) log sum_{b != a}
    half_target = beta / 2 * (s[a, positive] / beta - 1)  # (2B,)
    self_in_denominator = torch.log1p(torch.exp(beta - others))  # (2B,)
    extra = (half_target + self_in_denominator).mean()
    expected = nt_xent(z1, z2, beta) - math.log(12) + extra
    assert -bound.item() == pytest.approx(expected.item(), rel=1e-12)
    target = torch.zeros_like(s).index_put_((a, a), torch.tensor(0.5, dtype=s.dtype))
    target[a, positive] = 0.5  # (2B, 2B)
    cross_entropy = torch.nn.functional.cross_entropy(s, target)
    assert -bound.item() + math.log(12) == pytest.approx(cross_entropy.item(), rel=1e-12)


def test_worked_example_is_the_hand_computation():
    """objective.py's example, computed by hand: e.g. at P(T|x) = (0.4, 0.4, 0.1, 0.1) a digit
    crop of image 1 has E_T' e^s = 0.8 x 4 + 0.2 x 1 = 3.4 and E_T'',X~ e^s = (3.4 + 1) / 2 = 2.2,
    a blank crop 1.6 and (1.6 + 1.6) / 2 = 1.6, so MI = 0.8 log(3.4 / 2.2) + 0.2 log 1 = 0.3483:
    the blank crops, coded alike in both images, carry nothing of X."""
    rows = worked_example()
    hand = {(0.25, 0.25, 0.25, 0.25): (2.5, 1.75, 2.5, 2.5, 0.5 * math.log(2.5 / 1.75)),
            (0.4, 0.4, 0.1, 0.1): (3.4, 2.2, 1.6, 1.6, 0.8 * math.log(3.4 / 2.2)),
            (0.5, 0.5, 0.0, 0.0): (4.0, 2.5, 1.0, 1.0, math.log(4.0 / 2.5))}
    assert rows.keys() == hand.keys()
    for p, row in rows.items():
        assert row == pytest.approx(hand[p], rel=1e-12)
