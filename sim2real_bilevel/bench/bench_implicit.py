"""Benchmark: the implicit-function solve for an MLP policy, dense vs CG vs first-order.

In-sim objective: a batch of differentiable rollouts of a planar point mass with drag,
actuator gains and a quadratic cost whose ~20 coefficients are theta (dynamics and reward),
driven by the MLP policy's mean action.  F(phi, theta) = grad_phi J_sim.  We take phi after
a few Adam steps (the solve cost, not the inner optimum, is what is measured), then compute
the outer gradient (d phi*/d theta)^T g for a random g by
  dense: materialise dF/dphi (P x P) with torch.func.jacrev, damped solve;
  cg:    matrix-free CG on the normal equations with Hessian-vector products only;
  first_order: drop the Hessian term.
Prints one table side by side: seconds, peak memory, matvec count, relative difference to dense.

    python sim2real_bilevel/bench/bench_implicit.py [--device cuda] [--sizes 1000 3000 10000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sim2real_bilevel.core import implicit  # noqa: E402
from sim2real_bilevel.core.policies.mlp_gaussian import MLPGaussianPolicy  # noqa: E402

OBS, ACT, THETA = 4, 2, 20


def hidden_for(size: int) -> tuple[int, int]:
    """Two equal hidden layers giving about ``size`` parameters."""
    best = 1
    for width in range(1, 400):
        if MLPGaussianPolicy(OBS, ACT, (width, width)).num_params <= size:
            best = width
    return best, best


def objective(policy, device, batch=32, horizon=20, gamma=0.97):
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(batch, OBS, generator=generator, dtype=torch.float64).to(device)

    def j_sim(phi, theta):
        dt = 0.05
        drag, gain, coupling = theta[0:2], theta[2:4], theta[4:8].reshape(2, 2)
        weights_x, weights_v, weights_u = theta[8:10], theta[10:12], theta[12:14]
        offsets = theta[14:18].reshape(2, 2)
        scale = theta[18:20]
        state, total = start, 0.0
        for t in range(horizon):
            u = torch.tanh(policy.mean(phi, state)) * scale
            pos, vel = state[:, :2], state[:, 2:]
            acc = gain * u - drag * vel + torch.tanh(pos @ coupling.T) * 0.1
            vel = vel + dt * acc
            pos = pos + dt * vel
            state = torch.cat([pos, vel], dim=1)
            cost = ((pos - offsets[0]) ** 2 * weights_x).sum(1) + (vel ** 2 * weights_v).sum(1) \
                + ((u - offsets[1]) ** 2 * weights_u).sum(1)
            total = total - gamma ** t * cost.mean()
        return total - 1e-3 * (phi ** 2).sum()

    theta = torch.tensor([0.5, 0.4, 1.0, 1.2, 0.1, 0.0, 0.0, 0.1, 1.0, 0.5, 0.1, 0.1, 0.05, 0.05,
                          0.2, -0.1, 0.0, 0.0, 1.5, 1.5], dtype=torch.float64, device=device)
    return j_sim, theta


def peak_memory(device) -> float:
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated() / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def run_size(size, device, damping, dense_max, cg_iters):
    policy = MLPGaussianPolicy(OBS, ACT, hidden_for(size))
    j_sim, theta = objective(policy, device)
    phi = torch.as_tensor(policy.init_params(np.random.default_rng(0)), device=device)
    phi = phi.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([phi], lr=1e-2)
    for _ in range(30):
        optimiser.zero_grad()
        (-j_sim(phi, theta)).backward()
        optimiser.step()
    phi = phi.detach()

    def residual(p, t):
        return torch.func.grad(j_sim, argnums=0)(p, t)

    g = torch.randn(policy.num_params, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    rows = {}
    matvecs = {'count': 0}
    terms = implicit.terms_from_residual(residual, phi, theta, symmetric=False)
    for name in ('hvp', 'hvp_t'):
        inner = getattr(terms, name)

        def counted(v, inner=inner):
            matvecs['count'] += 1
            return inner(v)
        setattr(terms, name, counted)

    # the torch-side outer_gradient works on cpu tensors via numpy; run the solves on device
    def outer(solver, t):
        ops = implicit.operators(t)
        u = solver.solve(ops, g, transpose=True)
        return ops.m_t_matvec(u)

    reset_peak(device)
    t0 = time.perf_counter()
    cg_grad = outer(implicit.cg_solver(damping=damping, maxiter=cg_iters, tol=1e-8), terms)
    sync(device)
    rows['cg'] = (time.perf_counter() - t0, peak_memory(device), matvecs['count'], cg_grad)

    reset_peak(device)
    t0 = time.perf_counter()
    fo_grad = outer(implicit.first_order(step=1.0), terms)
    sync(device)
    rows['first_order'] = (time.perf_counter() - t0, peak_memory(device), 0, fo_grad)

    if policy.num_params <= dense_max:
        reset_peak(device)
        t0 = time.perf_counter()
        hessian = torch.func.jacfwd(residual, argnums=0)(phi, theta)
        mixed = torch.func.jacfwd(residual, argnums=1)(phi, theta)
        a = -hessian
        # the same damped system the CG path solves: (A + dI)^T u = g
        u = torch.linalg.solve((a + damping * torch.eye(a.shape[0], dtype=a.dtype, device=device)).T, g)
        dense_grad = mixed.T @ u
        sync(device)
        rows['dense'] = (time.perf_counter() - t0, peak_memory(device), 0, dense_grad)
    reference = rows.get('dense', (None, None, None, None))[3]
    return policy.num_params, rows, reference


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--sizes', type=int, nargs='+', default=[1000, 3000, 10000])
    parser.add_argument('--damping', type=float, default=1e-2)
    parser.add_argument('--dense-max', type=int, default=12000,
                        help='skip the dense solve above this many policy parameters')
    parser.add_argument('--cg-iters', type=int, default=100)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f'device {device}, theta size {THETA}, damping {args.damping}, CG (normal equations) '
          f'max {args.cg_iters} iterations')
    header = f'{"params":>8} {"solver":<12}{"seconds":>10}{"peak MiB":>10}{"matvecs":>9}{"rel.diff vs dense":>19}{"cosine":>9}'
    print(header)
    print('-' * len(header))
    for size in args.sizes:
        params, rows, reference = run_size(size, device, args.damping, args.dense_max, args.cg_iters)
        for name in ('dense', 'cg', 'first_order'):
            if name not in rows:
                print(f'{params:>8} {name:<12}{"skipped (--dense-max)":>30}')
                continue
            seconds, memory, count, grad = rows[name]
            if reference is not None:
                diff = float(torch.linalg.norm(grad - reference) / torch.linalg.norm(reference))
                cos = float(grad @ reference / (torch.linalg.norm(grad) * torch.linalg.norm(reference)))
                extra = f'{diff:>19.2e}{cos:>9.4f}'
            else:
                extra = f'{"n/a":>19}{"n/a":>9}'
            print(f'{params:>8} {name:<12}{seconds:>10.3f}{memory:>10.0f}{count:>9}{extra}')
        sys.stdout.flush()


if __name__ == '__main__':
    main()
