"""exp.py KIND PROBLEM_SEEDS RUN_SEEDS ITER OVERRIDES_JSON [method]"""
import sys, json, time
sys.path.insert(0, '/work/wt-lqr11/sim2real_bilevel')
import numpy as np
from sim2real_bilevel.core.experiments import make_run
from sim2real_bilevel.core.generators import generate, load_text
kind = sys.argv[1]; ps = [int(x) for x in sys.argv[2].split(',')]; rs = [int(x) for x in sys.argv[3].split(',')]
iters = int(sys.argv[4]); ov = json.loads(sys.argv[5]); method = sys.argv[6] if len(sys.argv) > 6 else 'bilevel'
for p in ps:
    prob = load_text(generate(kind, p).text)
    for r in rs:
        t = time.time()
        run = make_run(prob, method, r, iterations=iters, overrides=ov, evaluate=True)
        recs = run.run(iters)
        nr = [x.normalized_return for x in recs]
        hit = next((x.iteration for x in recs if x.normalized_return >= 0.95), None)
        hitT = next((x.real_transitions for x in recs if x.normalized_return >= 0.95), None)
        f = getattr(getattr(run, 'adam', None), 'factor', None)
        print(f'{kind} p{p} s{r} final {nr[-1]:.4f} max {max(nr):.4f} hit {hit} T {hitT} '
              f'min_after_hit {min(nr[hit:]) if hit is not None else float("nan"):.3f} {time.time()-t:.1f}s '
              f'factor_min {None if f is None else round(float(f.min()),4)}', flush=True)
        if '-v' in sys.argv:
            print('  ', ' '.join(f'{v:.3f}' for v in nr[::5]))
