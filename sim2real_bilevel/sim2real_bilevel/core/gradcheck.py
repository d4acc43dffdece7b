"""Sensitivity estimators against central finite differences of phi*(theta) and J_real(theta)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from . import implicit
from .problem import BilevelProblem


@dataclass
class GradcheckRow:
    estimator: str             # 'exact' or 'sampled'
    solver: str                # 'dense', 'cg', 'first_order'
    phi_error: float           # ||J - J_fd|| / ||J_fd|| for d phi*/d theta
    objective_error: float     # relative error of dJ_real/dtheta
    cosine: float              # cosine(dJ_real/dtheta, finite differences)
    info: str = ''


def finite_difference_jacobians(problem: BilevelProblem, theta: np.ndarray, step: float = 1e-5):
    """Central differences of phi*(theta) (P x D) and of J_real(phi*(theta)) (D,)."""
    columns, objective = [], []
    for j in range(theta.size):
        offset = np.zeros_like(theta)
        offset[j] = step
        phi_plus = problem.inner_solve(theta + offset, method='exact').phi
        phi_minus = problem.inner_solve(theta - offset, method='exact').phi
        columns.append((phi_plus - phi_minus) / (2 * step))
        objective.append((real_objective(problem, phi_plus) - real_objective(problem, phi_minus)) / (2 * step))
    return np.stack(columns, axis=1), np.asarray(objective)


class GradcheckUnavailable(ValueError):
    """The problem offers no exact reference to check against."""


def require_differentiable_real_objective(problem: BilevelProblem) -> None:
    probe = torch.zeros(problem.phi_size(), dtype=torch.float64, requires_grad=True)
    if not problem.real_objective(probe).requires_grad:
        raise GradcheckUnavailable(
            f'{problem.source}: gradcheck needs the exact real objective as a differentiable function of '
            f'the policy, and this {problem.kind} problem has none (its real return is a Monte-Carlo '
            'estimate on the physical stand-in), so dJ_real/dtheta has no finite-difference reference; '
            'gradcheck runs on tabular and lqr problems')


def real_objective(problem: BilevelProblem, phi: np.ndarray) -> float:
    return float(problem.real_objective(torch.as_tensor(phi, dtype=torch.float64)))


def real_objective_gradient(problem: BilevelProblem, phi: np.ndarray) -> np.ndarray:
    phi_t = torch.as_tensor(phi, dtype=torch.float64).clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(problem.real_objective(phi_t), phi_t)
    return gradient.detach().numpy()


def relative_error(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(estimate - reference) / max(np.linalg.norm(reference), 1e-300))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a.ravel() @ b.ravel() / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))


def gradcheck(problem: BilevelProblem, theta: Optional[np.ndarray] = None, *, step: float = 1e-5,
              estimators=('exact', 'sampled'), solvers=('dense', 'cg', 'first_order'),
              seed: int = 0, sim_episodes: Optional[int] = None,
              sim_horizon: Optional[int] = None) -> tuple[list[GradcheckRow], dict]:
    """Compare every (estimator, solver) pair with central finite differences at theta.

    Needs an exact real objective that is differentiable in phi (tabular, LQR): a problem whose
    real return is only a Monte-Carlo estimate on its physical stand-in (robots) is refused with
    the reason, before any work, by ``GradcheckUnavailable``."""
    theta = np.asarray(problem.theta0() if theta is None else theta, dtype=np.float64)
    require_differentiable_real_objective(problem)
    phi = problem.inner_solve(theta, method='exact').phi
    fd_jacobian, fd_objective = finite_difference_jacobians(problem, theta, step)
    real_gradient = real_objective_gradient(problem, phi)
    solver_factories = {
        'dense': lambda: implicit.dense_solver(damping=0.0),
        'cg': lambda: implicit.cg_solver(damping=0.0, maxiter=10 * phi.size + 100, tol=1e-13),
        'first_order': lambda: implicit.first_order(step=1.0),
    }
    rows = []
    for estimator in estimators:
        trajectories = None
        if estimator == 'sampled':
            rng = np.random.default_rng(seed)
            n = sim_episodes or problem.default_sim_episodes
            horizon = sim_horizon or problem.default_sim_horizon
            trajectories = problem.simulate(phi, theta, n, horizon, rng)
        terms = problem.sensitivity_terms(phi, theta, method=estimator, trajectories=trajectories,
                                          rng=np.random.default_rng(seed))
        for solver_name in solvers:
            solver = solver_factories[solver_name]()
            jacobian = np.asarray(implicit.sensitivity_matrix(terms, solver))
            objective_gradient = np.asarray(implicit.outer_gradient(terms, real_gradient, solver))
            rows.append(GradcheckRow(
                estimator=estimator, solver=solver_name,
                phi_error=relative_error(jacobian, fd_jacobian),
                objective_error=relative_error(objective_gradient, fd_objective),
                cosine=cosine(objective_gradient, fd_objective),
                info='direction only (drops the Hessian term)' if solver_name == 'first_order' else ''))
    context = {'theta': theta.tolist(), 'phi_size': int(phi.size), 'theta_size': int(theta.size),
               'step': step, 'fd_objective': fd_objective.tolist()}
    return rows, context


def format_rows(rows: list[GradcheckRow]) -> str:
    header = f'{"estimator":<10}{"solver":<13}{"rel.err dphi*/dtheta":>22}{"rel.err dJ/dtheta":>20}{"cosine":>10}  note'
    lines = [header, '-' * len(header)]
    for r in rows:
        lines.append(f'{r.estimator:<10}{r.solver:<13}{r.phi_error:>22.3e}{r.objective_error:>20.3e}'
                     f'{r.cosine:>10.5f}  {r.info}')
    return '\n'.join(lines)
