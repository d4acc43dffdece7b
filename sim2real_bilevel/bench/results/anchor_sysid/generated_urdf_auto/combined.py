"""Every generated URDF task of this folder's runs (jobs.jsonl: tasks 1, 2, 4, 5; new_tasks/: 6, 7;
new_tasks2/: 8-11) in one table: per method, the mean normalised real return at N = 10 / 20 / 30 real
episodes and the worst task as a fraction of that task's best method.

    python3 sim2real_bilevel/bench/results/anchor_sysid/generated_urdf_auto/combined.py [TASK ...]
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = ('bilevel', 'bilevel-anchored', 'sysid', 'bilevel-anchored-auto')
curves = {}
for path in (HERE / 'jobs.jsonl', HERE / 'new_tasks' / 'jobs.jsonl', HERE / 'new_tasks2' / 'jobs.jsonl'):
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith('{'):
                record = json.loads(line)
                if record.get('status') == 'ok' and record['method'] in METHODS:
                    curves[record['problem_seed'], record['method']] = record['curve']
tasks = sorted({task for task, _ in curves}) if len(sys.argv) < 2 else [int(a) for a in sys.argv[1:]]
print(f'tasks {tasks}; normalised real return at N = 10 / 20 / 30 real episodes (curve points 1-3)')
print('| | ' + ' | '.join(METHODS) + ' |')
print('|---' * (len(METHODS) + 1) + '|')
means, worst = [], []
for method in METHODS:
    means.append(' / '.join(f'{sum(curves[t, method][k] for t in tasks) / len(tasks):.3f}' for k in (1, 2, 3)))
    worst.append(' / '.join(f'{min(curves[t, method][k] / max(curves[t, m][k] for m in METHODS) for t in tasks):.2f}'
                            for k in (1, 2, 3)))
print('| mean | ' + ' | '.join(means) + ' |')
print("| worst task ÷ that task's best method | " + ' | '.join(worst) + ' |')
for task in tasks:
    print(f'| task {task} | ' + ' | '.join(' / '.join(f'{v:.3f}' for v in curves[task, m][1:4]) for m in METHODS) + ' |')
