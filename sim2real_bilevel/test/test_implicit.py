"""Implicit-function machinery against closed forms and central finite differences (float64)."""
import numpy as np
import pytest
import torch

from sim2real_bilevel.core import implicit
from sim2real_bilevel.core.problem import SensitivityTerms



@pytest.fixture(autouse=True)
def float64_default():
    """Gradients are checked in float64; the default dtype is restored for the tests after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def quadratic_inner(size=5, theta_size=3, seed=0):
    """max_phi -1/2 phi^T S(theta) phi + b(theta)^T phi, with S(theta) SPD: phi* = S^{-1} b."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((size, size))
    base = torch.as_tensor(base @ base.T + size * np.eye(size))
    coupling = torch.as_tensor(rng.standard_normal((size, theta_size)))
    direction = torch.as_tensor(rng.standard_normal((size, size)) * 0.1)
    direction = direction + direction.T

    def matrix(theta):
        return base + theta[0] * direction

    def residual(phi, theta):
        return -matrix(theta) @ phi + coupling @ torch.sin(theta)

    def phi_star(theta):
        theta = torch.as_tensor(theta)
        return torch.linalg.solve(matrix(theta), coupling @ torch.sin(theta))

    return residual, phi_star


def finite_difference_jacobian(phi_star, theta, step=1e-6):
    columns = []
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = step
        columns.append((phi_star(theta + e) - phi_star(theta - e)).numpy() / (2 * step))
    return np.stack(columns, axis=1)


@pytest.mark.parametrize('dense', [True, False])
@pytest.mark.parametrize('solver', [implicit.dense_solver(), implicit.cg_solver(tol=1e-14, maxiter=100)])
def test_sensitivity_matrix_matches_finite_differences(dense, solver):
    residual, phi_star = quadratic_inner()
    theta = np.array([0.3, -0.2, 0.7])
    phi = phi_star(theta)
    terms = implicit.terms_from_residual(residual, phi, theta, dense=dense, symmetric=True)
    jacobian = implicit.sensitivity_matrix(terms, solver)
    reference = finite_difference_jacobian(phi_star, theta)
    assert np.linalg.norm(jacobian - reference) / np.linalg.norm(reference) < 1e-7


def test_outer_gradient_matches_finite_differences_of_real_objective():
    residual, phi_star = quadratic_inner(seed=1)
    theta = np.array([0.1, 0.4, -0.5])
    target = torch.linspace(-1, 1, 5)

    def real(phi):
        return -0.5 * torch.sum((phi - target) ** 2)

    phi = phi_star(theta)
    g = (target - phi).numpy()
    terms = implicit.terms_from_residual(residual, phi, theta, symmetric=True)
    gradient = implicit.outer_gradient(terms, g, implicit.cg_solver(tol=1e-14))
    fd = []
    for j in range(3):
        e = np.zeros(3)
        e[j] = 1e-6
        fd.append((real(phi_star(theta + e)) - real(phi_star(theta - e))).item() / 2e-6)
    np.testing.assert_allclose(gradient, fd, rtol=1e-6)


def test_cg_agrees_with_dense_and_counts_only_matvecs():
    residual, phi_star = quadratic_inner(size=8, seed=2)
    theta = np.array([0.2, 0.1, 0.3])
    terms = implicit.terms_from_residual(residual, phi_star(theta), theta, symmetric=True)
    calls = {'hvp': 0}
    inner_hvp = terms.hvp

    def counted(v):
        calls['hvp'] += 1
        return inner_hvp(v)

    terms.hvp = counted
    terms.hvp_t = None           # symmetric: the transposed product reuses hvp
    g = np.arange(8.0)
    cg = implicit.cg_solver(tol=1e-13, maxiter=50)
    dense_terms = implicit.terms_from_residual(residual, phi_star(theta), theta, dense=True)
    np.testing.assert_allclose(implicit.outer_gradient(terms, g, cg),
                               implicit.outer_gradient(dense_terms, g, implicit.dense_solver()), rtol=1e-9)
    # CG touched the Hessian only through matvecs, fewer than its size (no column-by-column build)
    assert 0 < calls['hvp'] <= 8 + 1 and cg.info['iterations'] <= 9


def test_cg_on_negative_curvature_along_the_first_direction_steps_along_it_instead_of_returning_zero():
    """An indefinite operator whose curvature along b is negative (an inner point that is not a local
    optimum): CG returns b |b|^2 / |b^T A b| and says so; negative curvature met later keeps the
    last iterate; a positive definite operator is solved as before."""
    a = torch.diag(torch.tensor([-4.0, 1.0, 2.0]))
    b = torch.tensor([1.0, 0.5, 0.5])                          # b^T A b = -4 + 0.25 + 0.5 = -3.25
    x, info = implicit.conjugate_gradient(lambda v: a @ v, b, maxiter=10, tol=1e-12)
    torch.testing.assert_close(x, b * (b @ b) / 3.25)
    assert info['negative_curvature'] == 0 and info['matvecs'] == 1
    assert info['residual'] == pytest.approx(float(torch.linalg.norm(b - a @ x) / torch.linalg.norm(b)))
    # positive along b, negative along the next direction: the first CG iterate, unchanged
    b = torch.tensor([0.2, 1.0, 1.0])                          # b^T A b = -0.16 + 1 + 2 > 0
    x, info = implicit.conjugate_gradient(lambda v: a @ v, b, maxiter=10, tol=1e-12)
    torch.testing.assert_close(x, b * (b @ b) / (b @ a @ b))
    assert info['negative_curvature'] == 1 and info['iterations'] == 1
    spd = torch.diag(torch.tensor([4.0, 1.0, 2.0]))
    x, info = implicit.conjugate_gradient(lambda v: spd @ v, b, maxiter=10, tol=1e-12)
    torch.testing.assert_close(x, torch.linalg.solve(spd, b))
    assert 'negative_curvature' not in info


def test_nonsymmetric_sampled_terms_use_normal_equations():
    rng = np.random.default_rng(4)
    a = -(np.eye(6) * 3 + 0.5 * rng.standard_normal((6, 6)))     # dF/dphi, non-symmetric
    m = rng.standard_normal((6, 2))
    g = rng.standard_normal(6)
    terms = SensitivityTerms(hessian=a, mixed=m)
    exact = m.T @ np.linalg.solve(-a.T, g)
    cg = implicit.cg_solver(tol=1e-14, maxiter=200)
    np.testing.assert_allclose(implicit.outer_gradient(terms, g, cg), exact, rtol=1e-8)
    assert cg.info.get('normal_equations')
    np.testing.assert_allclose(implicit.outer_gradient(terms, g, implicit.dense_solver()), exact, rtol=1e-10)


def test_first_order_direction_is_an_ascent_direction_on_well_conditioned_problems():
    residual, phi_star = quadratic_inner(size=4, seed=5)
    theta = np.array([0.0, 0.2, -0.1])
    phi = phi_star(theta)
    terms = implicit.terms_from_residual(residual, phi, theta, dense=True)
    g = np.array([1.0, -0.5, 0.3, 0.2])
    full = implicit.outer_gradient(terms, g, implicit.dense_solver())
    approx = implicit.outer_gradient(terms, g, implicit.first_order(step=0.1))
    assert full @ approx > 0
    np.testing.assert_allclose(approx, 0.1 * terms.mixed.T @ g)


def test_shape_errors_name_the_shapes():
    terms = SensitivityTerms(hessian=-np.eye(3), mixed=np.ones((4, 2)))
    with pytest.raises(ValueError, match=r'\(4, 2\)'):
        implicit.outer_gradient(terms, np.ones(3), implicit.dense_solver())
    terms = SensitivityTerms(hessian=-np.eye(3), mixed=np.ones((3, 2)))
    with pytest.raises(ValueError, match=r'\(5,\)'):
        implicit.outer_gradient(terms, np.ones(5), implicit.dense_solver())


@pytest.mark.parametrize('name', ['lqr', 'discrete_3s2a'])
def test_resolve_agrees_with_the_implicit_function_gradient_at_exact_solves(name):
    """Where the inner solve is exact (Riccati, soft value iteration: stationary at every theta), solver
    'resolve' (central differences of the re-solved policy) and the dense implicit-function solve are
    the same derivative: float64, relative error O(h^2), shrinking 100x for a 10x smaller step."""
    from pathlib import Path

    from sim2real_bilevel.core.outer import resolve_steps, resolved_outer_gradient
    from sim2real_bilevel.core.problems import load_problem

    problem = load_problem(Path(__file__).resolve().parents[1] / 'config' / f'{name}.yaml')
    theta = problem.theta0()
    phi = problem.inner_solve(theta).phi
    g = np.random.default_rng(0).standard_normal(problem.phi_size())
    exact = implicit.outer_gradient(problem.sensitivity_terms(phi, theta, method='exact'), g,
                                    implicit.dense_solver(damping=0.0))
    errors = []
    for fraction in (1e-2, 1e-3):
        resolved, info = resolved_outer_gradient(problem, phi, theta, g, resolve_steps(problem, fraction))
        assert info['solves'] == 2 * theta.size
        errors.append(np.linalg.norm(resolved - exact) / np.linalg.norm(exact))
    assert errors[0] < 5e-3 and errors[1] < 5e-5
    assert 50 < errors[0] / errors[1] < 200
