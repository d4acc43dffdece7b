"""Per-phase medians of the runs of this folder's bench (run root /dev/shm/ros_overhead-runs-zevdlb4w):
for each problem and configuration, over its runs, the smallest median (ms) of the per-iteration
phases timed inside the loop (real_s: real episodes; sensitivity_s; inner_s) and of the
per-iteration step time (iterate() only: records, evaluator, checkpoint and publishing excluded).
Medians are robust to the multi-second stalls a loaded machine puts into single iterations."""
import glob
import json
import sys

import numpy as np


def records(path):
    if path.endswith('history.jsonl'):
        return [json.loads(line) for line in open(path)]
    return json.load(open(path))['methods']['bilevel']['seeds'][0]['iterations']


root = sys.argv[1]
for problem in ('discrete_3s2a', 'lqr'):
    for variant in ('core', 'main', 'main-composed', 'separate', 'composed', 'composed-wb'):
        rows = []
        for path in sorted(glob.glob(f'{root}/{variant}-{problem}-*/history.jsonl')):
            r = records(path)
            phases = [np.median([x['timing'].get(k, 0.0) for x in r[1:]]) * 1e3
                      for k in ('real_s', 'sensitivity_s', 'inner_s')]
            rows.append(phases + [np.median(np.diff([x['wall_time_s'] for x in r])) * 1e3])
        best = np.min(np.array(rows), axis=0)
        print(f'{problem:14s} {variant:9s} runs {len(rows)}  real {best[0]:5.1f}  sensitivity {best[1]:5.1f}  '
              f'inner {best[2]:5.1f}  step {best[3]:5.1f} ms')
