"""The smoothness checks' figures (`sim2real-bilevel smoothness ... --out NAME.json`, this folder) as one table,
with the verdict of the current rule (core/smoothness.py) recomputed from the stored distances.  Run from
sim2real_bilevel/:  ../.venv/bin/python bench/results/theta_start/smoothness/table.py"""
import json
from pathlib import Path

from sim2real_bilevel.core.smoothness import CoordinateResponse, verdict

HERE = Path(__file__).resolve().parent
print('| task (start policy) | coordinate | distance at +-0.1 | at +-0.01 | linearity | verdict |')
print('|---|---|---|---|---|---|')
for path in sorted(HERE.glob('*.json')):
    figures = json.loads(path.read_text())
    for entry in figures['coordinates']:
        response = CoordinateResponse(entry['name'], tuple(figures['steps']), tuple(entry['distances']),
                                      entry.get('policy_norm', 1.0))
        said = verdict(response)
        print(f"| {path.stem} | {entry['name']} | {entry['distances'][0]:.3g} | {entry['distances'][1]:.3g} | "
              f"{response.linearity:.2f} | {'**not linear**' if said == 'not linear' else said} |")
