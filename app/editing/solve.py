"""Step 2 of ENCORE: the closed-form update of one layer, in float64.

    ΔW = R Kᵀ (λp·C₀ + λn·I + Σ K_prev K_prevᵀ + K Kᵀ)⁻¹

R (d×B): the residual each fact still needs at this layer; K (f×B): this batch's keys;
C₀ = E[k kᵀ] over generic text (keeps unrelated inputs' outputs in place);
Σ K_prev K_prevᵀ keeps earlier edits in place; λn·I is ENCORE's Frobenius-norm
constraint. The matrix is symmetric, so ΔW = U Vᵀ with U = R and V = A⁻¹ K.

AlphaEdit is the same solve with the keys projected onto the null space of C₀
(P = eigenvectors of C₀ with small eigenvalues):
    ΔW = R Kᵀ P (P (Σ K_prev K_prevᵀ + K Kᵀ) + λn·I)⁻ᵀ   →   V = (P S + λn·I)⁻¹ P K.
"""

from __future__ import annotations

import torch


def nullspace_projector(c0: torch.Tensor, threshold: float | None = None, energy: float | None = None) -> torch.Tensor:
    """P = Û Ûᵀ over the eigenvectors of C₀ that generic text barely uses (float64): those whose
    eigenvalue is below `threshold`, or the smallest ones that together hold at most `energy` of tr(C₀).
    The absolute threshold depends on the scale of the keys (AlphaEdit's 0.02 was set for
    Llama-3-8B); the energy fraction means the same for any model."""
    eigvals, eigvecs = torch.linalg.eigh(c0.double())  # ascending
    if energy is not None:
        keep = torch.cumsum(eigvals.clamp(min=0), 0) <= energy * eigvals.clamp(min=0).sum()
    else:
        keep = eigvals < threshold
    small = eigvecs[:, keep]
    return small @ small.T


def solve_update(
    residual: torch.Tensor,
    keys: torch.Tensor,
    c0: torch.Tensor | None,
    previous: torch.Tensor | None,
    lambda_p: float,
    lambda_n: float,
    projector: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (U, V) in float64 with ΔW = U @ V.T. Shapes: residual d×B, keys f×B, c0/previous/projector f×f."""
    k = keys.double()
    a = k @ k.T
    if previous is not None:
        a = a + previous.double()
    if c0 is not None and lambda_p:
        a = a + lambda_p * c0.double()
    rhs = k
    if projector is not None:
        a = projector @ a
        rhs = projector @ k
    a = a + lambda_n * torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    v = torch.linalg.solve(a, rhs)
    return residual.double(), v
