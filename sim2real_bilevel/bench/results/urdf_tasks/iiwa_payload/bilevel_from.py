"""Bi-level outer iterations on the iiwa task from the gap run's nominal policy (its iteration 0),
the first one under cProfile; real return of every iterate on the fixed evaluation seeds,
normalised by the gap run's oracle; theta printed in natural units.  Usage: bilevel_from.py TASK GAP_DIR ITERATIONS
REAL_EPISODES [method=NAME] [seed=K] [KEY=VALUE ...] (seed: the run's seed, which draws its real episodes'
noise, default 0; the rest are outer settings, e.g. first_order_above=0 or safe_improvement=true)"""
import cProfile, io, json, pstats, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.core.experiments import make_run
from sim2real_bilevel.core.outer import MethodRun, OuterConfig
from sim2real_bilevel.core.problem import InnerResult
task, gap_dir, iterations, episodes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
settings = dict(a.split('=', 1) for a in sys.argv[5:])
method = settings.pop('method', 'bilevel')
run_seed = int(settings.pop('seed', 0))
defaults = OuterConfig()       # each value as its field's type (an unknown key: OuterConfig's error below)
settings = {key: (value == 'true' if isinstance(getattr(defaults, key, None), bool)
                  else type(getattr(defaults, key, ''))(value)) for key, value in settings.items()}
problem = load_problem(task)
results = json.load(open(f'{gap_dir}/results.json'))['results']
oracle = [r for r in results if r['method'] == 'oracle' and r['seed'] == 0][0]['real_return']
policies = np.load(f'{gap_dir}/policies.npz')
run = make_run(problem, method, seed=run_seed, iterations=iterations, overrides={'real_episodes': episodes, **settings})
if type(run).start is MethodRun.start:     # its start is the cold solve at the nominal theta: skip it
    run.phi = policies['nominal_seed0']
    run.inner_grad_norm = float('nan')
else:                                      # its own start (CMA-ES's strategy), the gap policy for that solve
    solve_inner = run.solve_inner
    run.solve_inner = lambda theta, phi: InnerResult(policies['nominal_seed0'], float('nan'), 0)
    run.start()
    run.solve_inner = solve_inner
print(f'iteration 0: 0 real episodes, real return {problem.real_return(run.phi):.3f}, '
      f'normalised {problem.real_return(run.phi) / oracle:.3f}', flush=True)
names = [n.removeprefix('log_') for n in problem.theta_names]
adam, taken = getattr(run, 'adam', None), {}
if adam is not None:             # the outer gradient each Adam step takes, as Adam is given it
    direction = adam.direction
    adam.direction = lambda gradient: direction(taken.setdefault('gradient', np.array(gradient, dtype=float)))
for k in range(iterations):
    taken.clear()
    profiler = cProfile.Profile() if k == 0 else None
    t0 = time.perf_counter()
    if profiler: profiler.enable()
    record = run.step()
    if profiler:
        profiler.disable()
        s = io.StringIO(); pstats.Stats(profiler, stream=s).sort_stats('tottime').print_stats(20); print(s.getvalue(), flush=True)
        s = io.StringIO(); pstats.Stats(profiler, stream=s).sort_stats('cumulative').print_stats(30); print(s.getvalue(), flush=True)
    value = problem.real_return(run.phi)
    print(f'iteration {k + 1}: {run.real_episode_count} real episodes, real return {value:.3f}, normalised '
          f'{value / oracle:.3f}; {time.perf_counter() - t0:.0f} s; timing {record.timing}; {record.event} theta '
          f'{dict(zip(names, np.exp(run.theta).round(3).tolist()))}', flush=True)
    if 'gradient' in taken:
        print('  outer gradient ' + ', '.join(f'{n} {x:.3g}' for n, x in zip(names, taken['gradient']))
              + '; Adam first moment ' + ', '.join(f'{x:.3g}' for x in adam.m), flush=True)
