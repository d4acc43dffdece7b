"""Cold solves at the TRUE theta (the oracle's solve) on the swing-up, by inner.seed and inner.episodes:
is the inner solve's outcome reliable?  Real return on the stand-in (16 fixed evaluation episodes),
J_sim on the training CRN set and on 256 fresh draws at the true theta."""
import json, os, sys, tempfile, time, yaml, torch, numpy as np
from pathlib import Path
PACKAGE = Path(__file__).resolve().parents[6]
sys.path.insert(0, str(PACKAGE))
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.core.problems.robot.simulator import CommonNoise
torch.set_num_threads(1)
GAP_ORACLE_RETURN = 7.153     # ../gap.md: the oracle of the gap run the learning curves divide by
src = PACKAGE / 'config' / 'swingup.yaml'
base = yaml.safe_load(open(src))
out = sys.argv[1]
results = json.load(open(out)) if os.path.exists(out) else []
for item in sys.argv[2:]:
    E, s = (int(v) for v in item.split(','))
    if any(r['episodes'] == E and r['seed'] == s for r in results):
        continue
    d = dict(base); d['inner'] = dict(base['inner'], episodes=E, seed=s)
    with tempfile.TemporaryDirectory() as folder:      # the task's URDF is a package:// URI
        path = Path(folder) / f'swingup_{E}_{s}.yaml'
        path.write_text(yaml.safe_dump(d))
        p = load_problem(path)
    t = time.perf_counter()
    phi = p.oracle_phi()
    solve_s = time.perf_counter() - t
    true_full = torch.as_tensor(p.oracle_theta_full(), dtype=torch.float64)
    phit = torch.as_tensor(phi, dtype=torch.float64)
    with torch.no_grad():
        train = float(p.sim_objective(phit, true_full, p._crn, full=True))
        fresh = float(p.sim_objective(phit, true_full, CommonNoise.draw(256, p.horizon, p.initial, np.random.default_rng(12345)), full=True))
    real = p.real_return(phi)
    r = dict(episodes=E, seed=s, solve_s=solve_s, real_return=real, normalised_vs_7153=real / GAP_ORACLE_RETURN,
             j_train=train, j_fresh256=fresh)
    print(json.dumps(r), flush=True)
    results.append(r)
    json.dump(results, open(out, 'w'), indent=1)
