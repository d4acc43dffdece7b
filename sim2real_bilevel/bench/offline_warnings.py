"""When does offline bi-level say it found no supported improvement? (issue 14, 'say when offline fails').

For each tabular problem (discrete_3s2a and generated tabular seeds 0..G-1, ``bench/offline.py``'s
``problem_files``), N nominal-policy episodes (``dataset_of``, data seeds 0..S-1), one offline bi-level
run of ``--iterations``: its final normalised return (the hidden real model: reporting only), the
count model's headroom over the final policy (``OfflineEstimator.model_headroom``: gain as a share of
the return range, and the data's coverage of that better policy) and the report's ``warning``.

    OMP_NUM_THREADS=1 python sim2real_bilevel/bench/offline_warnings.py --out /tmp/offline-warnings

Outputs OUT/warnings.md and OUT/warnings.jsonl.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline import dataset_of, problem_files   # noqa: E402  (bench/offline.py's)


def main(argv=None) -> int:
    from sim2real_bilevel.core.offline import make_offline_run
    from sim2real_bilevel.core.problems import load_problem

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True)
    parser.add_argument('--generated', type=int, default=4)
    parser.add_argument('--sizes', default='10,30')
    parser.add_argument('--seeds', type=int, default=3)
    parser.add_argument('--iterations', type=int, default=100)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: file for name, file in problem_files(out, args.generated, ('discrete_3s2a',)).items()
             if not name.startswith('lqr')}
    rows = []
    with open(out / 'warnings.jsonl', 'w') as stream:
        for name, file in files.items():
            for episodes in (int(n) for n in args.sizes.split(',')):
                for seed in range(args.seeds):
                    problem = load_problem(file)
                    run = make_offline_run(problem, 'bilevel', dataset_of(problem, episodes, 'nominal', seed), seed,
                                           iterations=args.iterations, evaluate=True)
                    run.run()
                    report = run.final_report()
                    headroom = run.estimator.model_headroom(run.phi)
                    row = {'problem': name, 'episodes': episodes, 'seed': seed,
                           'normalized_return': report['normalized_return'], 'coverage': report['coverage'],
                           'refused_steps': report['refused_steps'], 'headroom_share': headroom['share'],
                           'better_policy_coverage': headroom['coverage'], 'warning': report['warning']}
                    stream.write(json.dumps(row) + '\n')
                    stream.flush()
                    rows.append(row)
                    print(f'{name} N={episodes} seed {seed}: {row["normalized_return"]:.3f} '
                          f'{"WARNED" if row["warning"] else ""}', file=sys.stderr)
    lines = ['# Offline bi-level: the warning against the outcome (tabular, nominal-policy data)', '',
             f'{args.iterations} offline iterations; normalised return from the hidden real model (reporting only); '
             'headroom: the count model\'s optimum over the final policy, % of the return range; cov better: the '
             'data\'s coverage of that optimum', '',
             '| problem | N | seed | final normalised | coverage | refused | headroom % | cov better | warned |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f'| {r["problem"]} | {r["episodes"]} | {r["seed"]} | {r["normalized_return"]:.3f} | '
                     f'{r["coverage"]:.2f} | {r["refused_steps"]} | {100 * r["headroom_share"]:.2f} | '
                     f'{r["better_policy_coverage"]:.2f} | {"yes" if r["warning"] else "no"} |')
    below = [r for r in rows if r['normalized_return'] < 0.95]
    good = [r for r in rows if r['normalized_return'] >= 0.99]
    lines += ['', f'Warned: {sum(bool(r["warning"]) for r in below)} of {len(below)} runs ending below 0.95; '
                  f'{sum(bool(r["warning"]) for r in good)} of {len(good)} runs ending at >= 0.99.', '',
              'The warnings:', ''] + [f'- {r["problem"]} N={r["episodes"]} seed {r["seed"]}: {r["warning"]}'
                                      for r in rows if r['warning']]
    (out / 'warnings.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
