"""Probe (device only): how much of the iiwa inner loop's CUDA time is kernel-launch overhead that a
CUDA graph removes.  J_sim forward (B rollouts x 25 steps) captured whole in one torch.cuda.CUDAGraph
and replayed, against the package's own call; and J_sim + gradient via make_graphed_callables.
Prints seconds per call (best of 5) and the max abs difference of the results."""
import sys, time, traceback
import numpy as np, torch
sys.path.insert(0, 'sim2real_bilevel')
from sim2real_bilevel.core.config import load_yaml
from sim2real_bilevel.core.problems.robot.simulator import CommonNoise
from sim2real_bilevel.core.problems.urdf import UrdfProblem
from sim2real_bilevel.core import urdf_robot

data, source = load_yaml('sim2real_bilevel/config/iiwa_payload.yaml')
problem = UrdfProblem.from_dict(data, source)
problem.model = problem.model.to('cuda')
phi0 = torch.as_tensor(problem.policy.init_params(np.random.default_rng(0))).cuda()
theta0 = problem.full_theta(torch.as_tensor(problem.theta0())).detach().cuda()

def best(f, n=5):
    out = []
    for _ in range(n):
        torch.cuda.synchronize(); t = time.perf_counter(); f(); torch.cuda.synchronize(); out.append(time.perf_counter() - t)
    return min(out)

for batch in [int(b) for b in sys.argv[1:]] or [1024, 4096]:
    drawn = CommonNoise.draw(batch, problem.horizon, problem.initial, np.random.default_rng(1))
    noise = CommonNoise(drawn.initial_states.cuda(), drawn.action_noise.cuda(), drawn.transition_noise.cuda())
    phi, theta = phi0.clone(), theta0.clone()
    def forward():
        with torch.no_grad():
            return problem.sim_objective(phi, theta, noise, full=True)
    reference = forward(); forward()
    plain = best(forward)
    print(f'batch {batch}: package J_sim {plain:.4f} s ({batch * problem.horizon / plain:.3g} tr/s)', flush=True)
    try:
        stream = torch.cuda.Stream(); stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                forward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with urdf_robot._without_gpu_fusion(), torch.cuda.graph(graph):
            static = forward()
        graph.replay(); torch.cuda.synchronize()
        replayed = best(graph.replay)
        print(f'batch {batch}: CUDA graph J_sim {replayed:.4f} s ({batch * problem.horizon / replayed:.3g} tr/s), '
              f'x{plain / replayed:.1f}; |diff| {float((static - reference).abs().max()):.3g}', flush=True)
    except Exception:
        print(f'batch {batch}: CUDA graph J_sim capture failed:\n{traceback.format_exc(limit=6)}', flush=True)
    try:
        p, th = phi0.clone().requires_grad_(True), theta0.clone().requires_grad_(True)
        def objective(p, th):
            return problem.sim_objective(p, th, noise, full=True).reshape(1)
        def gradient(fn):
            return torch.autograd.grad(fn(p, th).sum(), (p, th))
        expected = gradient(objective); gradient(objective)
        plain_g = best(lambda: gradient(objective))
        with urdf_robot._without_gpu_fusion():
            graphed = torch.cuda.make_graphed_callables(objective, (p, th))
        got = gradient(graphed)
        graphed_g = best(lambda: gradient(graphed))
        diff = max(float((a - b).abs().max()) for a, b in zip(expected, got))
        print(f'batch {batch}: J_sim + gradient package {plain_g:.4f} s, graphed {graphed_g:.4f} s, '
              f'x{plain_g / graphed_g:.1f}; |dgrad| {diff:.3g}', flush=True)
    except Exception:
        print(f'batch {batch}: graphed gradient failed:\n{traceback.format_exc(limit=6)}', flush=True)
