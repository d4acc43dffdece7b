"""Task 5 with real_gradient.estimator: reinforce (task-005.yaml plus that section), bi-level, 3 outer
iterations of 10 real episodes, the saved oracle policy reused:

    cd sim2real_bilevel && OMP_NUM_THREADS=1 ../.venv/bin/python bench/results/urdf_generated_tasks/reinforce/run.py \
        bench/results/urdf_generated_tasks/reinforce/task-005-reinforce.yaml bilevel 3
"""
import json, sys
from pathlib import Path
import numpy as np
HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2])); sys.path.insert(0, str(HERE.parents[3]))
import suite
path = sys.argv[1]; method = sys.argv[2]; iterations = int(sys.argv[3])
suite._worker_init()
problem, _ = suite.loaded_problem(path)
problem._oracle_phi = np.load(Path(path).with_suffix('.oracle.npy'))
record = suite.run_job({'key': f'{Path(path).stem}/{method}', 'kind': 'urdf', 'problem_seed': 5, 'method': method,
                        'run_seed': 0, 'iterations': iterations, 'path': path, 'overrides': {}})
print(json.dumps(record))
with open(Path(path).parent / 'jobs.jsonl', 'a') as f: f.write(json.dumps(record) + '\n')
