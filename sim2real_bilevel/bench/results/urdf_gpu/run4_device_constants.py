"""Device run: UrdfModel.to moving the step's constants (after) against moving the rigid-body
dynamics alone (before: the other constants copied host-to-device at each use), in one process,
interleaved; then where the GPU time of one J_sim goes (torch.profiler: kernel launches, device
syncs) and the implicit friction solve's share (the same J_sim with implicit_friction off)."""
import copy, dataclasses, sys, time
import numpy as np, torch
sys.path.insert(0, 'sim2real_bilevel')
from sim2real_bilevel.core.config import load_yaml
from sim2real_bilevel.core.problems.robot.simulator import CommonNoise
from sim2real_bilevel.core.problems.urdf import UrdfProblem

data, source = load_yaml('sim2real_bilevel/config/iiwa_payload.yaml')
problem = UrdfProblem.from_dict(data, source)
cpu_model = problem.model
after = cpu_model.to('cuda')
before = copy.copy(cpu_model); before.dynamics = after.dynamics        # the old UrdfModel.to
phi0 = torch.as_tensor(problem.policy.init_params(np.random.default_rng(0)))
theta0 = problem.full_theta(torch.as_tensor(problem.theta0())).detach()

def inputs(batch, device):
    drawn = CommonNoise.draw(batch, problem.horizon, problem.initial, np.random.default_rng(1))
    noise = CommonNoise(drawn.initial_states.to(device), drawn.action_noise.to(device), drawn.transition_noise.to(device))
    return phi0.to(device).requires_grad_(True), theta0.to(device).requires_grad_(True), noise

def works(model, phi, theta, noise):
    problem.model = model
    sync = torch.cuda.synchronize if phi.is_cuda else (lambda: None)
    def J():
        with torch.no_grad():
            value = problem.sim_objective(phi, theta, noise, full=True)
        sync(); return value
    def G():
        value = torch.autograd.grad(problem.sim_objective(phi, theta, noise, full=True), (phi, theta)); sync(); return value
    def H():
        (r,) = torch.autograd.grad(problem.sim_objective(phi, theta, noise, full=True), phi, create_graph=True)
        value = torch.autograd.grad(r, phi, grad_outputs=torch.ones_like(phi)); sync(); return value
    return J, G, H

# 1. CUDA (after) against the CPU model, batch 64: J, gradient, HVP
phi, theta, noise = inputs(64, 'cpu')
cpu = [f() for f in works(cpu_model, phi, theta, noise)]
phi, theta, noise = inputs(64, 'cuda')
gpu = [f() for f in works(after, phi, theta, noise)]
flat = lambda r: torch.cat([t.reshape(-1).cpu() for t in (r if isinstance(r, tuple) else (r,))])
print('cuda (after) vs cpu, batch 64: max |diff| J %.3g, gradient %.3g, HVP %.3g' %
      tuple(float((flat(a) - flat(b)).abs().max()) for a, b in zip(cpu, gpu)), flush=True)

# 2. before / after, interleaved, best of 3
print('batch  part        before s  after s  before/after', flush=True)
for batch in [int(b) for b in sys.argv[1:]] or [1024, 4096]:
    phi, theta, noise = inputs(batch, 'cuda')
    variants = {'before': works(before, phi, theta, noise), 'after': works(after, phi, theta, noise)}
    for fs in variants.values():
        for f in fs: f()
    best = {name: [float('inf')] * 3 for name in variants}
    for _ in range(2):
        for name, fs in variants.items():
            for i, f in enumerate(fs):
                t = time.perf_counter(); f(); best[name][i] = min(best[name][i], time.perf_counter() - t)
    for i, part in enumerate(('J_sim', '+ gradient', '+ HVP')):
        b, a = best['before'][i], best['after'][i]
        print(f'{batch:<6} {part:<11} {b:8.3f} {a:8.3f}  x{b / a:.2f}   ({batch * problem.horizon / a:.3g} tr/s after)', flush=True)

# 3. one J_sim at batch 1024 under the profiler (after): kernels, syncs, host-device copies
phi, theta, noise = inputs(1024, 'cuda')
J, G, H = works(after, phi, theta, noise)
J()
from torch.profiler import profile, ProfilerActivity
for name, model in (('after', after), ('before', before)):
    J, _, _ = works(model, phi, theta, noise); J()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        J()
    events = prof.key_averages()
    count = lambda key: sum(e.count for e in events if key in e.key)
    kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    print(f'profile J_sim batch 1024 ({name}): {kernels} GPU events; cudaLaunchKernel {count("cudaLaunchKernel")}, '
          f'cudaStreamSynchronize {count("cudaStreamSynchronize")}, cudaMemcpyAsync {count("cudaMemcpyAsync")}, '
          f'aten::item {count("aten::item")}, aten::to/copy_ {count("aten::copy_")}', flush=True)

# 4. the implicit friction solve's share: the same J_sim with implicit_friction off (explicit friction)
explicit = copy.copy(after); explicit.settings = dataclasses.replace(after.settings, implicit_friction=False)
for batch in (1024, 16384):
    phi, theta, noise = inputs(batch, 'cuda')
    Ji, Gi, _ = works(after, phi, theta, noise); Je, Ge, _ = works(explicit, phi, theta, noise)
    for f in (Ji, Gi, Je, Ge): f()
    t = {}
    for name, f in (('J implicit', Ji), ('J explicit', Je), ('G implicit', Gi), ('G explicit', Ge)):
        s = float('inf')
        for _ in range(2):
            t0 = time.perf_counter(); f(); s = min(s, time.perf_counter() - t0)
        t[name] = s
    print(f'batch {batch}: J_sim implicit friction {t["J implicit"]:.3f} s, explicit {t["J explicit"]:.3f} s; '
          f'+ gradient {t["G implicit"]:.3f} / {t["G explicit"]:.3f} s', flush=True)
