"""Where one inner-solver evaluation (J_sim and its gradient F, 32 episodes x 25 steps) and one
Hessian-vector product of the CG sensitivity spend their time on the iiwa task: cProfile
(Python level) and torch.profiler (operator level, forward and backward)."""
import cProfile, pstats, io, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from sim2real_bilevel.core.problems import load_problem
p = load_problem(str(__import__('pathlib').Path(__file__).resolve().parents[4] / 'config' / 'iiwa_payload.yaml'))
phi0 = p.policy.init_params(np.random.default_rng(0))
theta = p.theta0()
th = p.full_theta(torch.as_tensor(theta))

def evaluation():
    phi = torch.tensor(phi0, requires_grad=True)
    J = p.sim_objective(phi, th, None, full=True)
    J.backward()

evaluation()  # recordings
for label, fn in (('J_sim + F', evaluation),):
    pr = cProfile.Profile(); t = time.perf_counter(); pr.enable(); fn(); pr.disable()
    wall = time.perf_counter() - t
    st = pstats.Stats(pr)
    want = {'mass_matrix_and_bias': 'dynamics (adam replay M+h)', 'gravity_compensation': 'gravity compensation (replay)',
            'step_mean_with': 'simulator step total', 'mean': 'policy mean', 'log_prob': 'policy log_prob',
            'run_backward': 'autograd backward (C++)', 'reward': 'reward', 'sim_objective': 'objective forward total',
            'linalg_solve': 'solve'}
    agg = {}
    for (f, l, name), (cc, nc, tt, ct, callers) in st.stats.items():
        if name in want and not (name == 'mean' and 'mlp' not in f):
            agg[want[name]] = agg.get(want[name], 0) + ct
    print(f'{label}: wall {wall:.2f} s;', {k: round(v, 3) for k, v in sorted(agg.items(), key=lambda kv: -kv[1])})
    s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats('tottime').print_stats(12); print(s.getvalue()[-2500:])
# sensitivity: one Hessian-vector product of the CG solve
terms = p.sensitivity_terms(phi0, theta)
v = torch.as_tensor(np.random.default_rng(1).standard_normal(phi0.size))
terms.hvp(v)
pr = cProfile.Profile(); t = time.perf_counter(); pr.enable(); terms.hvp(v); pr.disable()
print(f'one HVP: wall {time.perf_counter() - t:.2f} s')
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats('tottime').print_stats(8); print(s.getvalue()[-1800:])
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as prof:
    evaluation()
print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=15))
