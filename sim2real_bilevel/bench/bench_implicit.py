"""Benchmark: the implicit-function solve for an MLP policy, dense vs CG vs first-order.

In-sim objective: a batch of differentiable rollouts of a planar point mass with drag,
actuator gains and a quadratic cost whose ~20 coefficients are theta (dynamics and reward),
driven by the MLP policy's mean action.  F(phi, theta) = grad_phi J_sim.  We take phi near
the inner optimum (Adam, then L-BFGS; ||F|| is printed), then compute
the outer gradient (d phi*/d theta)^T g for a random g by
  dense: materialise dF/dphi (P x P) from chunked reverse-mode products, damped solve;
  cg:    matrix-free CG (dF/dphi is a symmetric Hessian) with Hessian-vector products only;
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


_BASELINE_RSS = [0.0]


def peak_memory(device) -> float:
    """Peak MiB above the state after the inner solve.  CUDA: peak allocated since the last
    reset.  CPU: the process's peak RSS minus the RSS at reset_peak; RSS peaks only grow, so
    each size runs in its own process and its solvers run in increasing memory order
    (first-order, CG, dense)."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated() / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - _BASELINE_RSS[0]


def reset_peak(device):
    if device.type != 'cuda' and not _BASELINE_RSS[0]:
        import resource
        _BASELINE_RSS[0] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def converge_inner(policy, j_sim, theta, device, steps):
    """Adam then L-BFGS on -J_sim so the solve is done where the IFT applies (small ||F||)."""
    phi = torch.as_tensor(policy.init_params(np.random.default_rng(0)), device=device)
    phi = phi.clone().requires_grad_(True)
    adam = torch.optim.Adam([phi], lr=1e-2)
    for _ in range(steps):
        adam.zero_grad()
        (-j_sim(phi, theta)).backward()
        adam.step()
    lbfgs = torch.optim.LBFGS([phi], lr=1.0, max_iter=steps, tolerance_grad=1e-9,
                              line_search_fn='strong_wolfe')

    def closure():
        lbfgs.zero_grad()
        loss = -j_sim(phi, theta)
        loss.backward()
        return loss
    lbfgs.step(closure)
    return phi.detach()


def dense_hessian(terms, size, device, chunk):
    """-dF/dphi formed from reverse-mode products, ``chunk`` rows at a time (bounded memory)."""
    eye = torch.eye(size, dtype=torch.float64, device=device)
    rows = [torch.func.vmap(terms.hvp_t)(eye[i:i + chunk]) for i in range(0, size, chunk)]
    return -torch.cat(rows, dim=0)


def run_size(size, device, damping, dense_max, cg_iters, inner_steps, chunk):
    policy = MLPGaussianPolicy(OBS, ACT, hidden_for(size))
    j_sim, theta = objective(policy, device)
    t0 = time.perf_counter()
    phi = converge_inner(policy, j_sim, theta, device, inner_steps)

    def residual(p, t):
        return torch.func.grad(j_sim, argnums=0)(p, t)

    stationarity = float(torch.linalg.norm(residual(phi, theta)))
    inner_seconds = time.perf_counter() - t0
    g = torch.randn(policy.num_params, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64).to(device)
    rows = {}
    matvecs = {'count': 0}
    terms = implicit.terms_from_residual(residual, phi, theta, symmetric=True)
    inner_hvp = terms.hvp_t

    def counted(v):
        matvecs['count'] += 1
        return inner_hvp(v)
    terms.hvp = terms.hvp_t = counted
    ops = implicit.operators(terms)

    reset_peak(device)
    t0 = time.perf_counter()
    fo_grad = ops.m_t_matvec(g)
    sync(device)
    rows['first_order'] = (time.perf_counter() - t0, peak_memory(device), 0, fo_grad, None)

    reset_peak(device)
    t0 = time.perf_counter()
    solver = implicit.cg_solver(damping=damping, maxiter=cg_iters, tol=1e-8)
    cg_grad = ops.m_t_matvec(solver.solve(ops, g, transpose=True))
    sync(device)
    rows['cg'] = (time.perf_counter() - t0, peak_memory(device), matvecs['count'], cg_grad,
                  solver.info.get('residual'))

    if policy.num_params <= dense_max:
        reset_peak(device)
        t0 = time.perf_counter()
        a = dense_hessian(terms, policy.num_params, device, chunk)
        eye = torch.eye(a.shape[0], dtype=a.dtype, device=device)
        damped = (a + damping * eye).T
        u = torch.linalg.solve(damped, g)     # the same damped system CG solves
        dense_grad = ops.m_t_matvec(u)
        sync(device)
        residual_norm = float(torch.linalg.norm(damped @ u - g) / torch.linalg.norm(g))
        rows['dense'] = (time.perf_counter() - t0, peak_memory(device), policy.num_params,
                         dense_grad, residual_norm)
    reference = rows['dense'][3] if 'dense' in rows else None
    return policy.num_params, rows, reference, stationarity, inner_seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--sizes', type=int, nargs='+', default=[1000, 3000, 10000])
    parser.add_argument('--damping', type=float, default=1e-2)
    parser.add_argument('--dense-max', type=int, default=12000,
                        help='skip the dense solve above this many policy parameters')
    parser.add_argument('--cg-iters', type=int, default=300)
    parser.add_argument('--inner-steps', type=int, default=200,
                        help='Adam steps, then as many L-BFGS iterations, before the solve')
    parser.add_argument('--chunk', type=int, default=256,
                        help='Hessian rows formed per vmapped batch in the dense solve')
    parser.add_argument('--rows-only', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if not args.rows_only:
        print(f'device {device}, theta size {THETA}, damping {args.damping}, CG (symmetric Hessian) '
              f'max {args.cg_iters} iterations; peak MiB = above the state after the inner solve')
    header = (f'{"params":>8} {"solver":<12}{"seconds":>10}{"peak MiB":>10}{"matvecs":>9}'
              f'{"lin.resid":>11}{"rel.diff vs dense":>19}{"cosine":>9}')
    if not args.rows_only:
        print(header)
        print('-' * len(header))
    if len(args.sizes) > 1 and device.type != 'cuda':
        import subprocess      # one process per size: clean peak-RSS figures
        for size in args.sizes:
            child = [sys.executable, __file__, '--sizes', str(size), '--device', args.device,
                     '--damping', str(args.damping), '--dense-max', str(args.dense_max),
                     '--cg-iters', str(args.cg_iters), '--inner-steps', str(args.inner_steps),
                     '--chunk', str(args.chunk), '--rows-only']
            subprocess.run(child, check=True)
        return
    for size in args.sizes:
        params, rows, reference, stationarity, inner_seconds = run_size(
            size, device, args.damping, args.dense_max, args.cg_iters, args.inner_steps, args.chunk)
        print(f'{params:>8} inner solve {inner_seconds:.1f} s, ||grad_phi J_sim|| = {stationarity:.2e}')
        for name in ('dense', 'cg', 'first_order'):
            if name not in rows:
                print(f'{params:>8} {name:<12}{"skipped (--dense-max)":>30}')
                continue
            seconds, memory, count, grad, lin_residual = rows[name]
            lin = f'{lin_residual:>11.1e}' if lin_residual is not None else f'{"-":>11}'
            if reference is not None:
                diff = float(torch.linalg.norm(grad - reference) / torch.linalg.norm(reference))
                cos = float(grad @ reference / (torch.linalg.norm(grad) * torch.linalg.norm(reference)))
                extra = f'{diff:>19.2e}{cos:>9.4f}'
            else:
                extra = f'{"n/a":>19}{"n/a":>9}'
            print(f'{params:>8} {name:<12}{seconds:>10.3f}{memory:>10.0f}{count:>9}{lin}{extra}')
        sys.stdout.flush()


if __name__ == '__main__':
    main()
