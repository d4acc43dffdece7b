"""The table of README.md from records/ (runs.py's records, support_check.py's and diagnose.py's quantities).

    python3 sim2real_bilevel/bench/results/mixed_pendulum/warning_rule/summary.py
"""
import json
import re
from pathlib import Path

RUNS = Path(__file__).resolve().parent / 'records'
print('| run | bound in the run | true normalised: start -> max -> final | estimate [95 % interval] (final) | '
      'coverage | action-change ratio: final (max over iterations) | fresh-start gap (final) | rule fires | '
      'warning (final report) |')
print('|---|---|---|---|---|---|---|---|---|')
for path in sorted(RUNS.glob('N*_seed*.json')):
    if path.stem.endswith(('_support', '_diagnosis')) or '_residual' in path.stem:
        continue
    run = json.loads(path.read_text())
    report, history = run['report'], run['history']
    support = RUNS / f'{path.stem}_support.json'
    ratios = [r['inc_ratio'] for r in json.loads(support.read_text())] if support.exists() else None
    final_ratio = report.get('action_change', ratios[-1] if ratios else float('nan'))
    found = re.search(r'bound held (\d+) of', report['warning'])     # steps halved or refused for the bound
    held = int(found.group(1)) if found else 0
    diagnosis = RUNS / f'{path.stem}_diagnosis.json'
    gap = ''
    if diagnosis.exists():
        last = json.loads(diagnosis.read_text())[-1]
        gap = f"{last['paired_gap']:.1f} +- {last['paired_gap_se']:.1f}"
    fires = final_ratio > 2.0 or held > 0
    normalised = [r['normalized_return'] for r in history]
    bound = run.get('max_action_change')
    print(f"| {path.stem} | {'none (main)' if bound is None else 'off (main loop)' if bound == 0 else bound} | {normalised[0]:.3f} -> {max(normalised):.3f} -> "
          f"{normalised[-1]:.3f} | {report['real_return_estimate']:.1f} [{report['real_return_ci_low']:.1f}, "
          f"{report['real_return_ci_high']:.1f}] (true {report['real_return']:.1f}) | {report['coverage']:.3f} | "
          f"{final_ratio:.2f} ({max(ratios) if ratios else final_ratio:.2f}) | {gap} | "
          f"{'**yes**' if fires else 'no'}{f' (held {held} step(s))' if held else ''} | "
          f"{report['warning'][:60] + '...' if report['warning'] else '-'} |")
