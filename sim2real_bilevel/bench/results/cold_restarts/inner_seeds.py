"""The nominal policy (the cold inner solve at the nominal theta) per inner seed: its J_sim on the CRN
set, ||F||, the starts tried (``inner.cold_restarts``) and its normalised real return (hidden model,
reporting only).

    cd sim2real_bilevel && OMP_NUM_THREADS=1 ../.venv/bin/python bench/results/cold_restarts/inner_seeds.py \
        pendulum_urdf 0,1,2,3,4,5 [WARMUP_ITERATIONS] > OUT.jsonl
"""
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

PACKAGE = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(PACKAGE))
from sim2real_bilevel.core.problems import load_problem  # noqa: E402

torch.set_num_threads(1)
task, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(',')]
warmup = int(sys.argv[3]) if len(sys.argv) > 3 else None
document = yaml.safe_load((PACKAGE / 'config' / f'{task}.yaml').read_text())
document['robot']['urdf'] = str(PACKAGE / 'urdf' / Path(document['robot']['urdf']).name)
folder = Path(tempfile.mkdtemp(prefix='inner_seeds_'))
for seed in seeds:
    document['inner']['seed'] = seed
    if warmup is not None:
        document['inner']['warmup_iterations'] = warmup
    path = folder / f'{task}_seed{seed}.yaml'
    path.write_text(yaml.safe_dump(document))
    problem = load_problem(str(path))
    started = time.time()
    solved = problem.inner_solve(problem.theta0())
    print(json.dumps({'seed': seed, 'warmup': problem.inner.warmup_iterations, 'J_sim': solved.info['objective'],
                      'grad_norm': float(solved.grad_norm), 'ratio': float(solved.grad_norm) / problem.inner.tolerance,
                      'cold_starts': solved.info.get('cold_starts'), 'solve_s': time.time() - started,
                      'normalized': float(problem.normalized_return(solved.phi)),
                      'real_return': float(problem.real_return(solved.phi))}), flush=True)
