"""Implicit differentiation of the inner optimum phi*(theta).

The inner optimality residual is F(phi, theta) = grad_phi J_sim (a maximisation, so
dF/dphi is negative definite at a strict maximum).  With A = -dF/dphi and M = dF/dtheta:

    d phi*/d theta = A^{-1} M,        dJ_real/d theta = M^T A^{-T} g.

The outer gradient takes ONE linear solve with A^T, then one vector-Jacobian product with
M; neither d phi*/d theta nor (in the CG path) A is ever formed.  Linear solvers are small
factories chosen by configuration (dense / cg / first_order), after jaxopt's and torchopt's
pluggable solves.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from .problem import SensitivityTerms

Vector = torch.Tensor


# --- operators --------------------------------------------------------------------------------
@dataclass
class Operators:
    """A = -dF/dphi as matvecs, M = dF/dtheta as (jvp, vjp); sizes P and D."""
    a_matvec: Callable[[Vector], Vector]
    a_t_matvec: Callable[[Vector], Vector]
    m_matvec: Callable[[Vector], Vector]
    m_t_matvec: Callable[[Vector], Vector]
    phi_size: int
    theta_size: int
    symmetric: bool
    a_dense: Optional[Vector] = None
    m_dense: Optional[Vector] = None


def operators(terms: SensitivityTerms) -> Operators:
    """Normalise SensitivityTerms (matrices or operators) into matvec form."""
    if terms.hessian is not None:
        a_dense = -torch.as_tensor(np.asarray(terms.hessian), dtype=torch.float64)
        if a_dense.ndim != 2 or a_dense.shape[0] != a_dense.shape[1]:
            raise ValueError(f'SensitivityTerms.hessian must be square (P, P); got shape {tuple(a_dense.shape)}')
        a_matvec, a_t_matvec = (lambda v: a_dense @ v), (lambda v: a_dense.T @ v)
        phi_size = a_dense.shape[0]
        symmetric = bool(torch.allclose(a_dense, a_dense.T, rtol=1e-10, atol=1e-12 * float(a_dense.abs().max() + 1)))
    elif terms.hvp is not None:
        hvp, hvp_t = terms.hvp, terms.hvp_t or terms.hvp
        a_matvec, a_t_matvec = (lambda v: -hvp(v)), (lambda v: -hvp_t(v))
        a_dense, phi_size = None, None
        symmetric = bool(terms.info.get('symmetric', terms.hvp_t is None))
    else:
        raise ValueError('SensitivityTerms needs either hessian (P, P) or hvp')
    if terms.mixed is not None:
        m_dense = torch.as_tensor(np.asarray(terms.mixed), dtype=torch.float64)
        if m_dense.ndim != 2:
            raise ValueError(f'SensitivityTerms.mixed must be (P, D); got shape {tuple(m_dense.shape)}')
        if phi_size is not None and m_dense.shape[0] != phi_size:
            raise ValueError(f'SensitivityTerms: hessian is ({phi_size}, {phi_size}) but mixed is '
                             f'{tuple(m_dense.shape)}; expected (P, D) with P = {phi_size}')
        phi_size = m_dense.shape[0]
        m_matvec, m_t_matvec = (lambda v: m_dense @ v), (lambda u: m_dense.T @ u)
        theta_size = m_dense.shape[1]
    elif terms.vjp_theta is not None:
        m_dense, m_t_matvec = None, terms.vjp_theta
        m_matvec = terms.info.get('jvp_theta')
        theta_size = terms.info.get('theta_size')
        phi_size = phi_size or terms.info.get('phi_size')
        if phi_size is None or theta_size is None:
            raise ValueError("operator-form SensitivityTerms need info['phi_size'] and info['theta_size']")
    else:
        raise ValueError('SensitivityTerms needs either mixed (P, D) or vjp_theta')
    return Operators(a_matvec, a_t_matvec, m_matvec, m_t_matvec, int(phi_size), int(theta_size),
                     symmetric, a_dense, m_dense)


# --- linear solvers -----------------------------------------------------------------------------
class DenseSolver:
    """Damped direct solve; forms A (from matvecs if only operators are given)."""
    name = 'dense'

    def __init__(self, damping: float = 0.0):
        self.damping = damping
        self.info: dict = {}

    def matrix(self, ops: Operators) -> Vector:
        if ops.a_dense is not None:
            return ops.a_dense
        eye = torch.eye(ops.phi_size, dtype=torch.float64)
        return torch.stack([ops.a_matvec(eye[i]) for i in range(ops.phi_size)], dim=1)

    def solve(self, ops: Operators, rhs: Vector, transpose: bool) -> Vector:
        a = self.matrix(ops)
        a = a.T if transpose else a
        a = a + self.damping * torch.eye(a.shape[0], dtype=a.dtype)
        solution = torch.linalg.solve(a, rhs)
        self.info = {'residual': float(torch.linalg.norm(a @ solution - rhs) / max(float(torch.linalg.norm(rhs)), 1e-300))}
        return solution


class CGSolver:
    """Matrix-free conjugate gradient on (A + damping I) x = b using only matvecs.

    A symmetric A (exact Hessians) is solved directly.  A non-symmetric A (sampled
    estimates) is solved through the normal equations A A^T y = b, x = A^T y (CGNE), which
    needs matvecs with both A and A^T and still never forms A.
    """
    name = 'cg'

    def __init__(self, damping: float = 0.0, maxiter: int = 200, tol: float = 1e-10):
        self.damping, self.maxiter, self.tol = damping, maxiter, tol
        self.info: dict = {}

    def solve(self, ops: Operators, rhs: Vector, transpose: bool) -> Vector:
        forward = ops.a_t_matvec if transpose else ops.a_matvec
        backward = ops.a_matvec if transpose else ops.a_t_matvec

        def damped(v, f):
            return f(v) + self.damping * v

        if ops.symmetric:
            x, info = conjugate_gradient(lambda v: damped(v, forward), rhs, self.maxiter, self.tol)
        else:
            y, info = conjugate_gradient(lambda v: damped(damped(v, backward), forward), rhs,
                                         self.maxiter, self.tol)
            x = damped(y, backward)
            info['normal_equations'] = True
        self.info = info
        return x


class FirstOrder:
    """Drops the Hessian term: A^{-1} ~ step * I (one inner gradient step)."""
    name = 'first_order'

    def __init__(self, step: float = 1.0):
        if not step > 0:
            raise ValueError(f'first_order step = {step!r}: expected a number > 0')
        self.step = step
        self.info: dict = {}

    def solve(self, ops: Operators, rhs: Vector, transpose: bool) -> Vector:
        return self.step * rhs


def dense_solver(damping: float = 0.0) -> DenseSolver:
    return DenseSolver(damping)


def cg_solver(damping: float = 0.0, maxiter: int = 200, tol: float = 1e-10) -> CGSolver:
    return CGSolver(damping, maxiter, tol)


def first_order(step: float = 1.0) -> FirstOrder:
    return FirstOrder(step)


def conjugate_gradient(matvec: Callable[[Vector], Vector], rhs: Vector, maxiter: int,
                       tol: float) -> tuple[Vector, dict]:
    """Plain CG for a symmetric positive definite operator; stops at ||r|| <= tol ||b||.

    Where the operator is not positive definite along a search direction (the inner point is not
    a local optimum: an unconverged solve on a rough objective), CG stops at its last iterate.  If
    that happens on the FIRST direction (b itself), that iterate would be zero -- no sensitivity at
    all, and a zero outer gradient -- so CG returns instead the step along b with the curvature's
    magnitude, b |b|^2 / |b^T A b| (saddle-free in the one-dimensional Krylov space, as trust-region
    CG steps along a negative-curvature direction), and ``info['negative_curvature']`` says so."""
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = r @ r
    target = tol * float(torch.linalg.norm(rhs))
    iterations = 0
    negative = False
    while iterations < maxiter and float(torch.sqrt(rr)) > target:
        ap = matvec(p)
        curvature = p @ ap
        if curvature <= 0:
            negative = True
            if iterations == 0 and curvature < 0:
                x = (rr / -curvature) * p
                r = rhs - (rr / -curvature) * ap
                rr = r @ r
            break       # not positive definite along p: return the best iterate so far
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
        iterations += 1
    info = {'iterations': iterations, 'matvecs': iterations + int(negative),
            'residual': float(torch.sqrt(rr)) / max(float(torch.linalg.norm(rhs)), 1e-300)}
    if negative:
        info['negative_curvature'] = iterations
    return x, info


# --- the two products users need ------------------------------------------------------------------
def outer_gradient(terms: SensitivityTerms, g, solver) -> np.ndarray:
    """dJ_real/dtheta = M^T A^{-T} g (one transposed solve, one VJP)."""
    ops = operators(terms)
    g = torch.as_tensor(np.asarray(g, dtype=np.float64))
    if g.shape != (ops.phi_size,):
        raise ValueError(f'real policy gradient has shape {tuple(g.shape)}; expected ({ops.phi_size},)')
    u = solver.solve(ops, g, transpose=True)
    return ops.m_t_matvec(u).detach().numpy().astype(np.float64)


def sensitivity_matrix(terms: SensitivityTerms, solver) -> np.ndarray:
    """d phi*/d theta = A^{-1} M (P x D), one solve per theta entry."""
    ops = operators(terms)
    if ops.m_dense is not None:
        m = ops.m_dense
    elif ops.m_matvec is not None:
        eye = torch.eye(ops.theta_size, dtype=torch.float64)
        m = torch.stack([ops.m_matvec(eye[j]) for j in range(ops.theta_size)], dim=1)
    else:   # build M from its transpose products
        eye = torch.eye(ops.phi_size, dtype=torch.float64)
        m = torch.stack([ops.m_t_matvec(eye[i]) for i in range(ops.phi_size)], dim=0)
    columns = [solver.solve(ops, m[:, j], transpose=False) for j in range(ops.theta_size)]
    return torch.stack(columns, dim=1).detach().numpy()


def terms_from_residual(residual_fn: Callable[[Vector, Vector], Vector], phi, theta,
                        dense: bool = False, symmetric: bool = False) -> SensitivityTerms:
    """Linearise a pure torch residual F(phi, theta) at a point with torch.func.

    Operators: hvp(v) = dF/dphi v (jvp), hvp_t(v) = dF/dphi^T v (vjp),
    vjp_theta(u) = dF/dtheta^T u.  With dense=True the matrices are formed instead.
    ``symmetric=True`` declares dF/dphi symmetric (F is a gradient), so CG runs directly
    instead of on the normal equations.
    """
    from torch.func import jacrev, jvp, vjp

    phi = torch.as_tensor(np.asarray(phi, dtype=np.float64)) if not torch.is_tensor(phi) else phi.double()
    theta = torch.as_tensor(np.asarray(theta, dtype=np.float64)) if not torch.is_tensor(theta) else theta.double()
    phi, theta = phi.detach(), theta.detach()
    if dense:
        hessian = jacrev(residual_fn, argnums=0)(phi, theta)
        mixed = jacrev(residual_fn, argnums=1)(phi, theta)
        return SensitivityTerms(hessian=hessian.numpy(), mixed=mixed.numpy())

    _, pullback_phi = vjp(lambda p: residual_fn(p, theta), phi)
    _, pullback_theta = vjp(lambda t: residual_fn(phi, t), theta)

    def hvp_t(v):
        return pullback_phi(v)[0]

    def hvp(v):
        return jvp(lambda p: residual_fn(p, theta), (phi,), (v,))[1]

    if symmetric:   # dF/dphi v = dF/dphi^T v: reuse the recorded pullback, no new forward pass
        hvp = hvp_t

    def vjp_theta(u):
        return pullback_theta(u)[0]

    def jvp_theta(w):
        return jvp(lambda t: residual_fn(phi, t), (theta,), (w,))[1]

    return SensitivityTerms(hvp=hvp, hvp_t=hvp_t, vjp_theta=vjp_theta,
                            info={'phi_size': phi.numel(), 'theta_size': theta.numel(),
                                  'jvp_theta': jvp_theta, 'symmetric': symmetric})
