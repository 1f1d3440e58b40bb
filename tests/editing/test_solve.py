"""The closed-form update (pure linear algebra, no model)."""

import torch

from app.editing.solve import nullspace_projector, solve_update


def _problem(f=24, d=12, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    k0 = torch.randn(f, 200, generator=g, dtype=torch.float64)
    c0 = k0 @ k0.T / 200
    keys = torch.randn(f, b, generator=g, dtype=torch.float64)
    residual = torch.randn(d, b, generator=g, dtype=torch.float64)
    prev_keys = torch.randn(f, 6, generator=g, dtype=torch.float64) * 3
    return c0, keys, residual, prev_keys


def test_update_solves_its_normal_equations():
    c0, keys, residual, prev_keys = _problem()
    previous = prev_keys @ prev_keys.T
    u, v = solve_update(residual, keys, c0, previous, lambda_p=5.0, lambda_n=2.0)
    delta = u @ v.T
    a = 5.0 * c0 + 2.0 * torch.eye(c0.shape[0], dtype=torch.float64) + previous + keys @ keys.T
    assert torch.allclose(delta @ a, residual @ keys.T, atol=1e-9)


def test_factors_have_batch_rank():
    c0, keys, residual, _ = _problem(b=3)
    u, v = solve_update(residual, keys, c0, None, lambda_p=1.0, lambda_n=1.0)
    assert u.shape == (12, 3) and v.shape == (24, 3)
    assert torch.linalg.matrix_rank(u @ v.T) == 3


def test_frobenius_constraint_shrinks_the_update_monotonically():
    c0, keys, residual, _ = _problem()
    norms = []
    for lam in [0.0, 1.0, 10.0, 100.0, 1e3, 1e4, 1e6]:
        u, v = solve_update(residual, keys, c0, None, lambda_p=1.0, lambda_n=lam)
        norms.append(float((u @ v.T).norm()))
    assert all(a > b for a, b in zip(norms, norms[1:], strict=False)), norms
    assert norms[-1] < 1e-3 * norms[0]


def test_preservation_sum_keeps_earlier_keys_outputs():
    c0, keys, residual, prev_keys = _problem()
    # Earlier edits' keys overlap the new ones, so an unconstrained update would move them.
    prev_keys = prev_keys + keys.repeat(1, 2)[:, :6]
    without = solve_update(residual, keys, c0, None, lambda_p=0.1, lambda_n=0.1)
    with_prev = solve_update(residual, keys, c0, prev_keys @ prev_keys.T * 100, lambda_p=0.1, lambda_n=0.1)
    moved = lambda uv: float((uv[0] @ uv[1].T @ prev_keys).norm())  # noqa: E731
    assert moved(with_prev) < 0.05 * moved(without)


def test_three_methods_are_configurations_of_one_solver():
    c0, keys, residual, prev_keys = _problem()
    previous = prev_keys @ prev_keys.T
    memit = solve_update(residual, keys, c0, previous, lambda_p=5.0, lambda_n=0.0)
    encore = solve_update(residual, keys, c0, previous, lambda_p=5.0, lambda_n=20.0)
    p = nullspace_projector(c0 + 1e-9, threshold=float(torch.linalg.eigvalsh(c0)[5]))
    alpha = solve_update(residual, keys, None, previous, lambda_p=0.0, lambda_n=10.0, projector=p)
    deltas = [u @ v.T for u, v in (memit, encore, alpha)]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.allclose(deltas[i], deltas[j], atol=1e-6)
    # AlphaEdit's update lives in the null space of C₀: it leaves the projected-out directions alone.
    assert torch.allclose(
        deltas[2] @ (torch.eye(24, dtype=torch.float64) - p), torch.zeros(12, 24, dtype=torch.float64), atol=1e-9
    )


def test_nullspace_projector_is_a_projection():
    c0, *_ = _problem()
    p = nullspace_projector(c0, threshold=float(torch.linalg.eigvalsh(c0)[8]))
    assert torch.allclose(p @ p, p, atol=1e-10)
    assert torch.allclose(p, p.T, atol=1e-12)
    assert round(float(torch.trace(p))) == 8


def test_energy_projector_is_scale_free_and_drops_at_most_that_energy():
    c0, *_ = _problem()
    p = nullspace_projector(c0, energy=0.05)
    assert torch.allclose(p, nullspace_projector(c0 * 1000.0, energy=0.05), atol=1e-9)  # any key scale
    eigvals = torch.linalg.eigvalsh(c0)
    kept = round(float(torch.trace(p)))
    assert kept >= 1
    assert float(eigvals[:kept].sum()) <= 0.05 * float(eigvals.sum()) < float(eigvals[: kept + 1].sum())


def test_sequential_updates_equal_one_solve_of_the_cumulative_objective():
    # With the preservation sum of earlier batches, batch-by-batch updates solve
    #   min_W  Σ_i ‖W k_i − v_i‖² + λp·tr((W−W₀) C₀ (W−W₀)ᵀ) + λn·‖W−W₀‖²
    # over all edits so far: λn constrains the cumulative change W − W₀, not each increment
    # (docs/method.md §3). One global solve must give the same weights.
    g = torch.Generator().manual_seed(3)
    c0, *_ = _problem()
    d, f, lp, ln = 12, 24, 2.0, 0.7
    w0 = torch.randn(d, f, generator=g, dtype=torch.float64)
    batches = [
        (torch.randn(f, 4, generator=g, dtype=torch.float64), torch.randn(d, 4, generator=g, dtype=torch.float64))
        for _ in range(3)
    ]
    w, previous = w0.clone(), torch.zeros(f, f, dtype=torch.float64)
    for keys, targets in batches:
        u, v = solve_update(targets - w @ keys, keys, c0, previous, lp, ln)
        w = w + u @ v.T
        previous = previous + keys @ keys.T
    k_all = torch.cat([k for k, _ in batches], 1)
    v_all = torch.cat([t for _, t in batches], 1)
    a = lp * c0 + ln * torch.eye(f, dtype=torch.float64) + k_all @ k_all.T
    w_global = w0 + torch.linalg.solve(a, ((v_all - w0 @ k_all) @ k_all.T).T).T
    assert torch.allclose(w, w_global, atol=1e-9)
