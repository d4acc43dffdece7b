"""What the policies of ``realtime_learning.py`` runs return on the real-time robot itself.

The learning bench's normalised returns come from the emulator's exact evaluator, which runs the
hidden model in lockstep; the episodes the real-time robot ran during learning are 2 per
iteration.  This script runs, for each run folder given, the run's first deployed policy (the
nominal one: ``real/batch_000001.npz``) and its last policy (``checkpoint.npz``) for
``--episodes`` episodes each on a fresh real-time robot (``robot_emulator`` ``mode: realtime``,
``hardware_bridge`` on the topic transport with its timer loop, the problem's params file as the
run had it), the same emulator seed for every policy (the same initial states and sensor noise
draws).  A goal the bridge aborts (a stale state on a busy host) is run again, at most 3
times.  It prints, per run, the mean discounted return with its standard error next to the exact
lockstep return of the same policy (``real_return`` in the run's records), and per problem
the final-minus-nominal difference, paired by seed.

    python sim2real_bilevel/bench/realtime_policy_eval.py /tmp/rt/*_realtime_seed* --episodes 24 --out /tmp/rt_eval
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_timing import bench_environment, realtime_robot_episodes  # noqa: E402

ATTEMPTS = 3
"""Per policy: a goal the bridge aborts (a stale state on a busy host) is run again, from scratch."""


def policies(run_folder: Path) -> dict:
    """The run's nominal (first deployed) and last policy."""
    run = run_folder / 'run'
    with np.load(run / 'real' / 'batch_000001.npz') as first, np.load(run / 'checkpoint.npz') as last:
        return {'nominal': np.array(first['policy_phi']), 'final': np.array(last['phi'])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('runs', type=Path, nargs='+', help="realtime_learning.py's run folders (PROBLEM_SETTING_seedN)")
    parser.add_argument('--episodes', type=int, default=24, help='per policy')
    parser.add_argument('--emulator-seed', type=int, default=7)
    parser.add_argument('--out', type=Path, default=Path(tempfile.mkdtemp(prefix='realtime_policy_eval_')))
    args = parser.parse_args(argv)
    import rclpy
    from sim2real_bilevel import graph
    from sim2real_bilevel.core.outer import discounted_returns
    from sim2real_bilevel.core.problems import load_problem
    from sim2real_bilevel.nodes import conversions

    environment, _lock = bench_environment(args.out)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(environment['ROS_DOMAIN_ID']))
    node = rclpy.create_node('realtime_policy_eval', context=context)
    rows = []
    try:
        for folder in args.runs:
            results = json.loads((folder / 'run' / 'results.json').read_text())
            problem_file = Path(results['config'])
            problem = load_problem(problem_file)
            params_file = graph.default_params_file(str(problem_file), graph.config_directories())
            records = next(iter(results['methods'].values()))['seeds'][0]['iterations']
            exact = {'nominal': records[0]['real_return'], 'final': records[-1]['real_return']}
            for which, phi in policies(folder).items():
                for attempt in range(1, ATTEMPTS + 1):
                    try:
                        result = realtime_robot_episodes(
                            f'eval_{which}', problem_file, phi, args.episodes, environment, args.out, node,
                            {'max_episodes': '100000'}, {'seed': str(args.emulator_seed)}, params_file)
                        break
                    except RuntimeError as err:      # e.g. aborted on a stale state: the host was too busy
                        print(f'[realtime_policy_eval] {folder.name} {which}: attempt {attempt} failed: {err}',
                              flush=True)
                        if attempt == ATTEMPTS:
                            raise
                returns = discounted_returns(conversions.trajectories_from_msg(result.trajectories), problem.gamma)
                row = {'run': folder.name, 'problem': problem_file.stem, 'policy': which,
                       'mean': float(returns.mean()), 'se': float(returns.std(ddof=1) / np.sqrt(len(returns))),
                       'exact_lockstep': float(exact[which]), 'returns': returns.tolist(),
                       'message': result.message}
                rows.append(row)
                print(f'[realtime_policy_eval] {folder.name} {which}: {row["mean"]:.2f} +- {row["se"]:.2f} on the '
                      f'real-time robot ({args.episodes} episodes); exact lockstep {row["exact_lockstep"]:.2f}'
                      + (f'; {result.message}' if result.message else ''), flush=True)
                (args.out / 'policy_eval.json').write_text(json.dumps(rows, indent=1))
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
    print('per problem, mean over runs: real-time robot return (exact lockstep return)')
    for problem in dict.fromkeys(r['problem'] for r in rows):
        cells = []
        for which in ('nominal', 'final'):
            chosen = [r for r in rows if r['problem'] == problem and r['policy'] == which]
            cells.append(f'{which} {np.mean([r["mean"] for r in chosen]):.2f} '
                         f'({np.mean([r["exact_lockstep"] for r in chosen]):.2f})')
        means = {(r['run'], r['policy']): r['mean'] for r in rows if r['problem'] == problem}
        gains = [means[run, 'final'] - means[run, 'nominal'] for run, which in means if which == 'final']
        print(f'  {problem}: ' + '; '.join(cells) + f'; final - nominal per run: '
              + ', '.join(f'{g:+.2f}' for g in gains))
    print(f'(logs and policy_eval.json in {args.out})')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
