"""LQR mathematics in closed form: the discounted closed loop (value matrix, second moment,
Q-function blocks), Lyapunov and Riccati solvers, the cost and its gradient in torch."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

DTYPE = torch.float64


class UnstableClosedLoopError(ValueError):
    """A gain that does not stabilise sqrt(gamma) (A - B K): its discounted cost is infinite."""


@dataclass
class ClosedLoop:
    """Everything the exact formulas need at one (K, model): value matrix P, discounted second
    moment S, Q-function blocks, E = H_uu K - H_ux, and the factorised Lyapunov operator."""
    a: np.ndarray
    b: np.ndarray
    q: np.ndarray
    r: np.ndarray
    k: np.ndarray
    a_k: np.ndarray
    p: np.ndarray
    s: np.ndarray
    h_uu: np.ndarray
    h_ux: np.ndarray
    e: np.ndarray
    lyapunov: 'DiscountedLyapunov'

    @property
    def gradient(self) -> np.ndarray:
        """F = grad_K J = -2 E S (m x n)."""
        return -2.0 * self.e @ self.s


class DiscountedLyapunov:
    """Solves X = M + gamma G' X G (value form) and X = N + gamma G X G' (covariance form) for a
    batch of right-hand sides with one LU factorisation of I - gamma (G' kron G') (row-major vec;
    the covariance operator is its transpose)."""

    def __init__(self, closed_loop: np.ndarray, gamma: float):
        self.n = closed_loop.shape[0]
        operator = np.eye(self.n ** 2) - gamma * np.kron(closed_loop.T, closed_loop.T)
        self.factor = scipy.linalg.lu_factor(operator)

    def _solve(self, rhs: np.ndarray, trans: int) -> np.ndarray:
        flat = rhs.reshape(-1, self.n ** 2).T
        return scipy.linalg.lu_solve(self.factor, flat, trans=trans).T.reshape(rhs.shape)

    def value(self, rhs: np.ndarray) -> np.ndarray:
        return self._solve(rhs, 0)

    def covariance(self, rhs: np.ndarray) -> np.ndarray:
        return self._solve(rhs, 1)


def discounted_radius(closed_loop: np.ndarray, gamma: float) -> float:
    """Spectral radius of sqrt(gamma) G: the discounted cost is finite iff it is < 1."""
    return math.sqrt(gamma) * float(np.abs(np.linalg.eigvals(closed_loop)).max())


def closed_loop(a, b, q, r, w, k, gamma: float, std: float, x0_moment: np.ndarray,
                what: str = 'closed loop') -> ClosedLoop:
    """P, S, H blocks and E at gain ``k`` (raises ``UnstableClosedLoopError``)."""
    a_k = a - b @ k
    radius = discounted_radius(a_k, gamma)
    if not radius < 1.0:
        raise UnstableClosedLoopError(
            f'{what}: the gain K = {k.tolist()} does not stabilise the discounted system '
            f'(spectral radius of sqrt(gamma) (A - B K) is {radius:.6g} >= 1): its cost is infinite')
    lyapunov = DiscountedLyapunov(a_k, gamma)
    p = sym(lyapunov.value(q + k.T @ r @ k))
    noise = w + std ** 2 * b @ b.T
    s = sym(lyapunov.covariance(x0_moment + gamma / (1.0 - gamma) * noise))
    h_uu = r + gamma * b.T @ p @ b
    h_ux = gamma * b.T @ p @ a
    return ClosedLoop(a=a, b=b, q=q, r=r, k=k, a_k=a_k, p=p, s=s, h_uu=h_uu, h_ux=h_ux,
                      e=h_uu @ k - h_ux, lyapunov=lyapunov)


def discounted_riccati(a, b, q, r, gamma: float, *, polish_tolerance: float = 1e-14,
                       max_polish: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """(K*, P*) of min E sum gamma^t (x'Qx + u'Ru): the DARE of (sqrt(gamma) A, sqrt(gamma) B, Q, R),
    refined by Hewer (policy-iteration) steps to machine precision.  Raises
    ``UnstableClosedLoopError`` when no stabilising solution exists."""
    scale = math.sqrt(gamma)
    try:
        p = scipy.linalg.solve_discrete_are(scale * a, scale * b, q, r)
    except (np.linalg.LinAlgError, ValueError) as err:
        raise UnstableClosedLoopError(
            f'the discounted Riccati equation has no stabilising solution for A = {a.tolist()}, '
            f'B = {b.tolist()} (is (sqrt(gamma) A, sqrt(gamma) B) stabilisable?): {err}') from None
    k = np.linalg.solve(r + gamma * b.T @ p @ b, gamma * b.T @ p @ a)
    for _ in range(max_polish):
        a_k = a - b @ k
        if not discounted_radius(a_k, gamma) < 1.0:
            raise UnstableClosedLoopError(
                f'the discounted Riccati solution for A = {a.tolist()}, B = {b.tolist()} does not '
                f'stabilise the system (is (sqrt(gamma) A, sqrt(gamma) B) stabilisable?)')
        p = sym(DiscountedLyapunov(a_k, gamma).value(q + k.T @ r @ k))
        new_k = np.linalg.solve(r + gamma * b.T @ p @ b, gamma * b.T @ p @ a)
        change = np.abs(new_k - k).max()
        k = new_k
        if change <= polish_tolerance * max(1.0, np.abs(k).max()):
            break
    return k, p


def sym(m: np.ndarray) -> np.ndarray:
    return 0.5 * (m + np.swapaxes(m, -1, -2))


def transposed(m: np.ndarray) -> np.ndarray:
    return np.swapaxes(m, -1, -2)


def correlation_of(c: np.ndarray) -> np.ndarray:
    """Unit-diagonal correlation of a PSD matrix; rows with a zero diagonal get 0 (PSD forces
    their off-diagonal entries to be 0 too)."""
    scale = np.sqrt(np.maximum(np.diag(c), 0.0))
    safe = np.where(scale > 0, scale, 1.0)
    correlation = sym(c) / safe[:, None] / safe[None, :]
    correlation[scale == 0, :] = 0.0
    correlation[:, scale == 0] = 0.0
    np.fill_diagonal(correlation, 1.0)
    return correlation


def psd_factor(covariance: np.ndarray) -> np.ndarray:
    """L with L L' = covariance for a symmetric PSD matrix (eigen-decomposition: works when singular)."""
    values, vectors = np.linalg.eigh(sym(covariance))
    return vectors * np.sqrt(np.maximum(values, 0.0))


def torch_cost(a, b, q, r, w, k, gamma: float, std: float, x0_moment) -> torch.Tensor:
    """Discounted expected cost of u = -Kx + std eps (torch; the caller checks stability)."""
    n = a.shape[0]
    a_k = a - b @ k
    operator = torch.eye(n * n, dtype=DTYPE) - gamma * torch.kron(a_k, a_k)
    noise = w + std ** 2 * b @ b.T
    s = torch.linalg.solve(operator, (x0_moment + gamma / (1.0 - gamma) * noise).reshape(-1)).reshape(n, n)
    return torch.sum((q + k.T @ r @ k) * s) + std ** 2 * torch.trace(r) / (1.0 - gamma)


def torch_gradient(a, b, q, r, w, k, gamma: float, std: float, x0_moment) -> torch.Tensor:
    """F = grad_K J = -2 ((R + gamma B'PB) K - gamma B'PA) S, flattened row-major (torch)."""
    n = a.shape[0]
    a_k = a - b @ k
    operator = torch.eye(n * n, dtype=DTYPE) - gamma * torch.kron(a_k.T, a_k.T)
    p = torch.linalg.solve(operator, (q + k.T @ r @ k).reshape(-1)).reshape(n, n)
    noise = w + std ** 2 * b @ b.T
    s = torch.linalg.solve(operator.T, (x0_moment + gamma / (1.0 - gamma) * noise).reshape(-1)).reshape(n, n)
    e = (r + gamma * b.T @ p @ b) @ k - gamma * b.T @ p @ a
    return (-2.0 * e @ s).reshape(-1)


def discounted_radius_torch(a, b, k, gamma: float) -> float:
    with torch.no_grad():
        closed = (a - b @ k).detach()
        return math.sqrt(gamma) * float(torch.linalg.eigvals(closed).abs().max())
