"""The ``sim2real-bilevel`` command line.

The in-process commands (solve, resume, gradcheck, smoothness, keygen) need only ``core``; the commands of
the ROS layer (launch, report) come from ``tools/commands.py``, imported only when ``tools`` is
there.  This module sits above ``core``, ``tools`` and ``nodes``; none of them imports it."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .core.config import ProblemConfigError, builtin_config


RUN_FILE = 'run.json'


def cmd_solve(args) -> int:
    methods = args.method or ['bilevel']
    run_dir = Path(args.run_dir) if args.run_dir else None
    invocation = {'config': str(builtin_config(args.config).resolve()), 'methods': methods, 'seeds': args.seeds,
                  'iterations': args.iterations, 'real_episodes': args.real_episodes, 'evaluate': args.evaluate,
                  'safe_improvement': args.safe_improvement}
    if args.real_data or args.offline or args.online_episodes is not None:
        if not (args.real_data and args.offline):
            print('error: --real-data and --offline go together (the outer loop on recorded data first; add '
                  '--online-episodes B for mixed mode, B new real episodes after it)', file=sys.stderr)
            return 2
        invocation['offline'] = {
            'real_data': [str(Path(p).resolve()) for p in args.real_data], 'min_coverage': args.min_coverage,
            'max_action_change': args.max_action_change,
            'online_episodes': args.online_episodes,
            'recording': {'joint_states_topic': args.joint_states_topic, 'commands_topic': args.commands_topic,
                          'reward_topic': args.reward_topic, 'joints': args.joints, 'velocities': args.velocities,
                          'rule': {'rule': args.episode_rule, 'gap_s': args.episode_gap,
                                   'reset_topic': args.reset_topic, 'length': args.episode_length}}}
    if run_dir is not None:
        from .core.checkpoint import atomic_write_bytes
        if (run_dir / RUN_FILE).exists():
            print(f'error: {run_dir} already holds a run; continue it with `sim2real-bilevel resume {run_dir}`',
                  file=sys.stderr)
            return 2
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / RUN_FILE, json.dumps(invocation, indent=1).encode())
    out = args.out or (run_dir if run_dir is not None else 'results')
    return _solve(invocation, out, args.quiet, run_dir)


def cmd_resume(args) -> int:
    run_dir = Path(args.run_dir)
    try:
        invocation = json.loads((run_dir / RUN_FILE).read_text())
    except FileNotFoundError:
        print(f'error: {run_dir / RUN_FILE}: no such file (start a run with `solve CONFIG --run-dir DIR`)',
              file=sys.stderr)
        return 2
    if args.iterations is not None:
        invocation['iterations'] = args.iterations
    return _solve(invocation, args.out or run_dir, args.quiet, run_dir)


def _solve(invocation: dict, out, quiet: bool, run_dir) -> int:
    from tqdm import tqdm
    from .core.experiments import METHODS, format_summary, run_experiment, write_results
    from .core.problems import load_problem

    methods = invocation['methods']
    for method in methods:
        if method not in METHODS:
            print(f'error: unknown --method {method!r}; expected one of {sorted(METHODS)}', file=sys.stderr)
            return 2
    config = Path(invocation['config'])
    problem = load_problem(config)     # validate before anything runs
    defaults = problem.outer_defaults
    iterations, seeds = invocation['iterations'], invocation['seeds']
    per_run = iterations if iterations is not None else defaults.get('iterations', 200)
    budget = (invocation.get('offline') or {}).get('online_episodes')
    if budget is not None:           # mixed mode: the online iterations after the offline ones
        per_run += -(-budget // (invocation['real_episodes'] or defaults.get('real_episodes', 10)))
    total = sum((0 if m == 'nominal' else per_run) + 1 for m in methods) * seeds
    bar = tqdm(total=total, unit='it', file=sys.stderr, dynamic_ncols=True, disable=quiet)

    def on_record(method, seed, record):
        bar.update(1)
        bar.set_description(f'{method} seed {seed}')
        if invocation.get('evaluate'):
            bar.set_postfix(norm_return=f'{record.normalized_return:.4f}', real=record.real_transitions)
        else:
            bar.set_postfix(estimate=f'{record.real_return_estimate:.4g}', real=record.real_transitions)

    overrides = {}
    if invocation['real_episodes'] is not None:
        # every method's batches, the black-box candidate scores included (score_episodes 0)
        overrides.update(real_episodes=invocation['real_episodes'], score_episodes=0)
    if invocation.get('safe_improvement') is not None:
        overrides['safe_improvement'] = invocation['safe_improvement']
    from .core.checkpoint import CheckpointError     # here: the operator's commands need no torch
    try:
        if invocation.get('offline'):
            document = _solve_offline(invocation, config, methods, seeds, iterations, overrides, on_record, run_dir)
        else:
            document = run_experiment(config, methods, seeds=seeds, iterations=iterations, overrides=overrides,
                                      on_record=on_record, run_dir=run_dir, evaluate=bool(invocation.get('evaluate')))
    except (ValueError, CheckpointError) as err:
        bar.close()
        print(f'error: {err}', file=sys.stderr)
        return 2
    bar.close()
    json_path, png_path = write_results(document, out)
    print(format_summary(document['summary']))
    for line in _phase_lines(document) + _warning_lines(document):
        print(line)
    print(f'wrote {json_path} and {png_path}')
    return 0


def _warning_lines(document: dict) -> list[str]:
    """Offline runs (and mixed mode's offline phase) that ended without an improvement the data support:
    their report's ``warning`` in words (``core.offline.diagnose``)."""
    lines = []
    for method, entry in document['methods'].items():
        for seed in entry['seeds']:
            report = (seed.get('phases') or {}).get('offline') or seed.get('best') or {}
            if report.get('warning'):
                lines.append(f'WARNING {method} seed {seed["seed"]} (offline): {report["warning"]}')
    return lines


def _phase_lines(document: dict) -> list[str]:
    """Mixed mode: each seed's offline and online phase on their own (``MixedBilevelRun.phase_reports``)."""
    lines = []
    for method, entry in document['methods'].items():
        for seed in entry['seeds']:
            phases = seed.get('phases')
            if not phases:
                continue
            offline, online = phases['offline'], phases['online']
            if offline:
                lines.append(f'{method} seed {seed["seed"]} offline phase ({offline["iterations"]} iterations): estimated '
                             f'real return {offline["real_return_estimate"]:.4g} [{offline["real_return_ci_low"]:.4g}, '
                             f'{offline["real_return_ci_high"]:.4g}], coverage {offline["coverage"]:.3g}, '
                             f'{offline["refused_steps"]} step(s) refused')
            if online:
                best = online['best']
                lines.append(f'{method} seed {seed["seed"]} online phase: {online["episodes"]} of {online["budget"]} real '
                             f'episodes in {online["iterations"]} iterations, {online["backtracks"]} backtrack(s); best '
                             f'deployed {best["real_return_estimate"]:.4g} [{best["real_return_ci_low"]:.4g}, '
                             f'{best["real_return_ci_high"]:.4g}] (n={best["episodes"]})')
    return lines


def _solve_offline(invocation, config, methods, seeds, iterations, overrides, on_record, run_dir) -> dict:
    """``solve --real-data ... --offline``: read the recordings, then every run on that dataset."""
    from .core.datasets import EpisodeRule
    from .core.offline import OfflineSettings, run_offline_experiment
    from .tools.recordings import RecordingOptions, load_real_data
    offline = invocation['offline']
    recording = dict(offline['recording'])
    options = RecordingOptions(**{**recording, 'rule': EpisodeRule(**recording['rule'])})
    dataset = load_real_data(offline['real_data'], options)
    print(f'real data: {dataset.describe()}', file=sys.stderr)
    for note in dataset.notes:
        print(f'  {note}', file=sys.stderr)
    return run_offline_experiment(config, methods, dataset, seeds=seeds, iterations=iterations, overrides=overrides,
                                  on_record=on_record, run_dir=run_dir, evaluate=bool(invocation.get('evaluate')),
                                  settings=OfflineSettings(min_coverage=offline['min_coverage'],
                                                            max_action_change=offline.get('max_action_change')),
                                  online_episodes=offline.get('online_episodes'))


def cmd_dataset(args) -> int:
    """Sample a problem's real system with a behaviour policy; save it as a run folder's real/."""
    import numpy as np
    from .core.datasets import DatasetError, save_dataset
    from .core.offline import generate_dataset
    from .core.problems import load_problem

    problem = load_problem(builtin_config(args.config))
    if (args.episodes is None) == (args.sources is None):
        print('error: dataset: give --episodes N (sample the real system) or --from PATH.. (convert recordings), '
              'one of the two', file=sys.stderr)
        return 2
    try:
        if args.sources is not None:
            return _convert_recordings(args, problem)
        dataset, phi = generate_dataset(problem, args.episodes, np.random.default_rng(args.seed), args.behaviour,
                                        args.noise)
        out = save_dataset(dataset, args.out, policy_phi=phi, description={
            'config': str(builtin_config(args.config).resolve()), 'seed': args.seed, 'noise': args.noise})
    except (DatasetError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f'wrote {dataset.describe()} to {out}/real/ (use it with `solve {args.config} --real-data {out} --offline`)')
    return 0


def _convert_recordings(args, problem) -> int:
    """``dataset CONFIG --from PATH.. --out DIR``: recordings as a dataset folder the problem accepts."""
    from .core.datasets import EpisodeRule, save_dataset
    from .core.offline import OfflineSettings, make_estimator
    from .tools.recordings import RecordingOptions, load_real_data
    options = RecordingOptions(joint_states_topic=args.joint_states_topic, commands_topic=args.commands_topic,
                               reward_topic=args.reward_topic, joints=args.joints, velocities=args.velocities,
                               rule=EpisodeRule(rule=args.episode_rule, gap_s=args.episode_gap,
                                                reset_topic=args.reset_topic, length=args.episode_length))
    dataset = load_real_data(args.sources, options)
    prepared = make_estimator(problem, dataset, OfflineSettings()).dataset      # the problem's checks
    out = save_dataset(prepared, args.out, description={'config': str(builtin_config(args.config).resolve()),
                                                         'converted_from': [str(p) for p in args.sources]})
    print(f'wrote {prepared.describe()} to {out}/real/ (use it with `solve {args.config} --real-data {out} --offline` '
          f'or the outer_optimizer\'s real_data:={out})')
    return 0


def cmd_gradcheck(args) -> int:
    from .core.gradcheck import GradcheckUnavailable, format_rows, gradcheck
    from .core.problems import load_problem

    problem = load_problem(builtin_config(args.config))
    try:
        rows, context = gradcheck(problem, step=args.step, seed=args.seed, sim_episodes=args.sim_episodes,
                                  sim_horizon=args.sim_horizon)
    except GradcheckUnavailable as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f'{args.config}: {context["theta_size"]} theta entries, {context["phi_size"]} policy parameters, '
          f'central differences with step {context["step"]:g}')
    print(format_rows(rows))
    return 0


def cmd_smoothness(args) -> int:
    import numpy as np
    from .core.problems import load_problem
    from .core.smoothness import solve_response, summary

    problem = load_problem(builtin_config(args.config))
    theta = problem.theta0()
    if args.policy:
        path, _, key = args.policy.partition(':')
        try:
            stored = np.load(path)
            if isinstance(stored, np.lib.npyio.NpzFile) and not key:
                raise ValueError(f'an .npz file holds several arrays: name one as FILE.npz:KEY (keys: {stored.files})')
            phi = np.asarray(stored[key] if key else stored, dtype=np.float64).reshape(-1)
        except (OSError, KeyError, ValueError) as err:
            print(f'error: --policy {args.policy!r}: {err}', file=sys.stderr)
            return 2
        if phi.size != problem.phi_size():
            print(f'error: --policy {args.policy!r}: {phi.size} values, expected {problem.phi_size()} (the policy of '
                  f'{args.config})', file=sys.stderr)
            return 2
    else:
        print(f'{args.config}: solving the inner problem at the file\'s theta (cold) for the start policy ...',
              flush=True)
        phi = problem.inner_solve(theta).phi
    print(f'{args.config}: the warm inner solve at theta +- step, per learnable theta coordinate '
          f'({2 * len(args.steps) * len(theta)} solves; steps {args.steps})', flush=True)
    try:
        responses = solve_response(problem, theta, phi, args.steps, progress=print)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(summary(responses))
    if args.out:
        Path(args.out).write_text(json.dumps({'config': args.config, 'steps': list(args.steps), 'coordinates': [
            {'name': r.name, 'distances': list(r.distances), 'policy_norm': r.policy_norm, 'linearity': r.linearity,
             'linear': r.smooth}
            for r in responses]}, indent=1) + '\n')
    return 0 if all(r.smooth for r in responses) else 1


def cmd_keygen(args) -> int:
    from .core.provenance import ProvenanceError, generate_key_file
    try:
        path = generate_key_file(args.path)
    except (ProvenanceError, OSError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f'wrote {path} (mode 0600): set policy_key_file:={path.resolve()} on the outer_optimizer and the '
          'hardware_bridge')
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='sim2real-bilevel', description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest='command', required=True)

    solve = commands.add_parser('solve', help='run methods on a problem file; write results.json/png')
    solve.add_argument('config', help='problem YAML (path, or a shipped name such as discrete_3s2a)')
    solve.add_argument('--method', action='append',
                       help='bilevel, bilevel-resolve, bilevel-first-order, bilevel-cg, bilevel-sampled, nominal, sysid, '
                            'cmaes, spsa, real-rl, ... (repeat to run side by side)')
    solve.add_argument('--seeds', type=_positive_int, default=1)
    solve.add_argument('--iterations', type=_non_negative_int, default=None,
                       help='outer iterations (default: the problem file\'s outer.iterations)')
    solve.add_argument('--real-episodes', type=_positive_int, default=None,
                       help='real episodes per iteration (default: the problem file\'s)')
    solve.add_argument('--out', default=None, help='output folder (default: the run dir, else ./results)')
    solve.add_argument('--run-dir', default=None,
                       help='persist the run here after every outer iteration and every real batch '
                            '(crash-safe; continue it with `resume DIR`)')
    solve.add_argument('--evaluate', action='store_true',
                       help="sim-only: evaluate every policy on the problem's hidden real model (the normalised "
                            'return in records, summary and plots); without it a run sees only its real episodes '
                            '(estimated real return with its confidence interval), as on a robot')
    safe = solve.add_mutually_exclusive_group()
    safe.add_argument('--safe-improvement', dest='safe_improvement', action='store_true', default=None,
                      help='bi-level: backtrack to the best deployed policy (and halve the step) when the '
                           'estimated real return drops significantly below it (default: the problem file\'s '
                           'outer.safe_improvement, else off)')
    safe.add_argument('--no-safe-improvement', dest='safe_improvement', action='store_false',
                      help='turn safe improvement off even where the problem file turns it on')
    solve.add_argument('--quiet', action='store_true', help='no progress bar')
    offline = solve.add_argument_group('offline: learn from recorded real data, no new real episode')
    offline.add_argument('--real-data', nargs='+', metavar='PATH', default=None,
                         help='run folders or datasets (real/batch_*.npz), this package\'s bags (real_trajectories) '
                              'or any MCAP bag of the robot (joint_states and <controller>/commands)')
    offline.add_argument('--offline', action='store_true',
                         help='the outer loop uses only --real-data (methods: bilevel, sysid, nominal)')
    offline.add_argument('--online-episodes', type=_positive_int, default=None, metavar='B',
                         help='mixed mode (method bilevel): after the offline phase (--iterations), go on online '
                              'with safe improvement until B new real episodes are spent; the real critic keeps the '
                              'dataset\'s transitions')
    offline.add_argument('--min-coverage', type=float, default=None,
                         help="pessimism: no step to a policy the data cover less than this, in [0, 1] (default: "
                              "the problem kind's; 0: off)")
    offline.add_argument('--max-action-change', type=float, default=None,
                         help="pessimism (robot kind): no step to a policy whose step-to-step action change is more "
                              "than this multiple of the recorded data's, and a warning when the final policy is "
                              "beyond it (default: the kind's, 2; 0: off)")
    add_recording_options(offline)
    solve.set_defaults(func=cmd_solve)

    dataset = commands.add_parser('dataset', help='sample a problem\'s real system with a behaviour policy and '
                                                  'save the episodes as a dataset (sim-only)')
    dataset.add_argument('config', help='problem YAML (path, or a shipped name)')
    dataset.add_argument('--episodes', type=_positive_int, default=None,
                         help='real episodes to sample (not with --from)')
    dataset.add_argument('--from', dest='sources', nargs='+', metavar='PATH', default=None,
                         help='instead of sampling: convert recordings (run folders, this package\'s bags, any MCAP '
                              'bag of the robot) into a dataset folder, checked against the problem (what the '
                              'outer_optimizer\'s real_data parameter reads)')
    dataset.add_argument('--behaviour', choices=('nominal', 'noisy'), default='nominal',
                         help='the nominal policy (the inner optimum at the nominal theta), or a noisier one')
    dataset.add_argument('--noise', type=float, default=2.0,
                         help='noisy: temperature x NOISE (tabular) or action std x NOISE (LQR); > 1')
    dataset.add_argument('--seed', type=int, default=0)
    dataset.add_argument('--out', required=True, help='folder to write (its real/ must hold no batch yet)')
    add_recording_options(dataset.add_argument_group('--from: robot bags'))
    dataset.set_defaults(func=cmd_dataset)

    resume = commands.add_parser('resume', help='continue a run started with `solve --run-dir DIR`')
    resume.add_argument('run_dir', help='the run directory')
    resume.add_argument('--iterations', type=_non_negative_int, default=None,
                        help='outer iterations in all (default: those the run was started with)')
    resume.add_argument('--out', default=None, help='output folder (default: the run dir)')
    resume.add_argument('--quiet', action='store_true', help='no progress bar')
    resume.set_defaults(func=cmd_resume)

    check = commands.add_parser('gradcheck', help='sensitivity estimators vs finite differences')
    check.add_argument('config')
    check.add_argument('--step', type=float, default=1e-5)
    check.add_argument('--seed', type=int, default=0)
    check.add_argument('--sim-episodes', type=_positive_int, default=None)
    check.add_argument('--sim-horizon', type=_positive_int, default=None)
    check.set_defaults(func=cmd_gradcheck)

    smooth = commands.add_parser('smoothness', help='simulator only: is the policy the outer loop deploys (the warm '
                                                    'inner solve) a smooth function of theta? exit 1 where not')
    smooth.add_argument('config')
    smooth.add_argument('--policy', default=None,
                        help='the start policy as FILE.npy or FILE.npz:KEY (default: the cold solve at the '
                             'file\'s theta)')
    smooth.add_argument('--steps', type=float, nargs='+', default=[0.1, 0.01],
                        help='changes of each theta coordinate to compare (default 0.1 0.01)')
    smooth.add_argument('--out', default=None, help='also write the figures as JSON here')
    smooth.set_defaults(func=cmd_smoothness)

    from .core.generators import add_generate_command
    add_generate_command(commands)

    for register in _ros_commands():
        register(commands)
    keygen = commands.add_parser('keygen', help='make a policy key (mode 0600) for signed run_episodes goals')
    keygen.add_argument('path', help='key file to create (never overwritten); give it to the outer_optimizer and '
                                     'the hardware_bridge as policy_key_file')
    keygen.set_defaults(func=cmd_keygen)
    return parser


def add_recording_options(group) -> None:
    """How robot bags are read (``solve --real-data`` and ``dataset --from``)."""
    group.add_argument('--joint-states-topic', default='/joint_states', help='robot bags: the JointState topic')
    group.add_argument('--commands-topic', default=None,
                       help="robot bags: the commands topic (default: the bag's one '.../commands' topic)")
    group.add_argument('--reward-topic', default='/reward',
                       help='robot bags: the step reward topic, read when present (LQR computes its cost)')
    group.add_argument('--joints', nargs='+', default=None,
                       help='robot bags: joint names in state order (default: all, in the first message\'s order)')
    group.add_argument('--velocities', action='store_true', help='robot bags: states are positions and velocities')
    group.add_argument('--episode-rule', choices=('gap', 'reset', 'length'), default='gap',
                       help='robot bags: cut episodes at pauses between commands (gap), at messages of '
                            '--reset-topic (reset) or every --episode-length commands (length)')
    group.add_argument('--episode-gap', type=float, default=None,
                       help='robot bags: the pause in seconds that starts an episode (default: 5 x the median '
                            'command interval)')
    group.add_argument('--reset-topic', default=None, help='robot bags: a message here starts an episode')
    group.add_argument('--episode-length', type=_positive_int, default=None, help='robot bags: commands per episode')


def _ros_commands():
    """Sub-commands that live with the ROS layer (launch, report) register themselves here."""
    import importlib
    import importlib.util
    if importlib.util.find_spec('sim2real_bilevel.tools.commands') is None:
        return []
    return list(importlib.import_module('sim2real_bilevel.tools.commands').REGISTRARS)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'{text!r}: expected an integer >= 1')
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'{text!r}: expected an integer >= 0')
    return value


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ProblemConfigError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
