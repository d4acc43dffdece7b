"""The resolve solver's curves beside the other methods' on the same generated tasks (same task files,
same oracle, one run seed): prints the markdown table of README.md.

    python bench/results/urdf_generated_tasks/resolve/compare.py
"""
import json
from pathlib import Path

here = Path(__file__).resolve().parent


def curves(path: Path, rename=None) -> dict:
    found = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get('type') == 'job' and record['status'] == 'ok':
            method = record['key'].split('/')[2]
            found[(record['problem_seed'], (rename or {}).get(method, method))] = record
    return found


runs = {}
runs.update(curves(here.parent / 'jobs.jsonl'))                       # session 24: nominal, sysid (old default g)
runs.update(curves(here.parent / 'identified_model' / 'jobs.jsonl', {'bilevel': 'bilevel (CG)'}))
runs.update(curves(here / 'forward_jobs.jsonl', {'bilevel:solver=resolve': 'resolve, forward'}))
runs.update(curves(here / 'jobs.jsonl', {'bilevel:solver=resolve': 'resolve'}))
methods = ['nominal', 'sysid', 'bilevel (CG)', 'resolve, forward', 'resolve']
tasks = sorted({seed for seed, method in runs if method == 'resolve'})
print('| task | method | N = 0 | N = 10 | N = 20 | N = 30 | wall s |')
print('|---|---|---|---|---|---|---|')
for task in tasks:
    for method in methods:
        record = runs.get((task, method))
        if record is None:
            continue
        curve = record['curve'] * (4 if len(record['curve']) == 1 else 1)
        bold = method == 'resolve'
        cells = [f'**{c:.3f}**' if bold else f'{c:.3f}' for c in curve]
        print(f'| {task} | {method} | ' + ' | '.join(cells) + f' | {record["wall_s"]:.0f} |')
