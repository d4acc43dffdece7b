"""The ``sim2real-bilevel`` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ProblemConfigError


def builtin_config(name: str) -> Path:
    """Resolve a problem argument: a path, or the name of a shipped config (``lqr``)."""
    path = Path(name)
    if path.exists():
        return path
    here = Path(__file__).resolve().parents[2] / 'config'          # source checkout
    candidates = [here / name, here / f'{name}.yaml']
    try:
        from ament_index_python.packages import get_package_share_directory
        share = Path(get_package_share_directory('sim2real_bilevel')) / 'config'
        candidates += [share / name, share / f'{name}.yaml']
    except Exception:       # not installed in an ament index: source checkout only
        pass
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return path            # the loader reports the missing file with its name


def cmd_solve(args) -> int:
    from tqdm import tqdm
    from .experiments import METHODS, format_summary, run_experiment, write_results
    from .problems import load_problem

    methods = args.method or ['bilevel']
    for method in methods:
        if method not in METHODS:
            print(f'error: unknown --method {method!r}; expected one of {sorted(METHODS)}', file=sys.stderr)
            return 2
    config = builtin_config(args.config)
    problem = load_problem(config)     # validate before anything runs
    defaults = getattr(problem, 'outer_defaults', {}) or {}
    per_run = args.iterations if args.iterations is not None else defaults.get('iterations', 200)
    total = sum((0 if m == 'nominal' else per_run) + 1 for m in methods) * args.seeds
    bar = tqdm(total=total, unit='it', file=sys.stderr, dynamic_ncols=True, disable=args.quiet)

    def on_record(method, seed, record):
        bar.update(1)
        bar.set_description(f'{method} seed {seed}')
        bar.set_postfix(norm_return=f'{record.normalized_return:.4f}', real=record.real_transitions)

    overrides = {}
    if args.real_episodes is not None:
        overrides['real_episodes'] = args.real_episodes
    document = run_experiment(config, methods, seeds=args.seeds, iterations=args.iterations,
                              overrides=overrides, on_record=on_record)
    bar.close()
    json_path, png_path = write_results(document, args.out)
    print(format_summary(document['summary']))
    print(f'wrote {json_path} and {png_path}')
    return 0


def cmd_gradcheck(args) -> int:
    from .gradcheck import format_rows, gradcheck
    from .problems import load_problem

    problem = load_problem(builtin_config(args.config))
    rows, context = gradcheck(problem, step=args.step, seed=args.seed, sim_episodes=args.sim_episodes,
                              sim_horizon=args.sim_horizon)
    print(f'{args.config}: {context["theta_size"]} theta entries, {context["phi_size"]} policy parameters, '
          f'central differences with step {context["step"]:g}')
    print(format_rows(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='sim2real-bilevel', description=__doc__)
    commands = parser.add_subparsers(dest='command', required=True)

    solve = commands.add_parser('solve', help='run methods on a problem file; write results.json/png')
    solve.add_argument('config', help='problem YAML (path, or a shipped name such as discrete_3s2a)')
    solve.add_argument('--method', action='append',
                       help='bilevel, bilevel-first-order, bilevel-cg, bilevel-sampled, nominal, sysid, '
                            'cmaes, spsa, real-rl, ... (repeat to run side by side)')
    solve.add_argument('--seeds', type=_positive_int, default=1)
    solve.add_argument('--iterations', type=_non_negative_int, default=None,
                       help='outer iterations (default: the problem file\'s outer.iterations)')
    solve.add_argument('--real-episodes', type=_positive_int, default=None,
                       help='real episodes per iteration (default: the problem file\'s)')
    solve.add_argument('--out', default='results', help='output folder (default: ./results)')
    solve.add_argument('--quiet', action='store_true', help='no progress bar')
    solve.set_defaults(func=cmd_solve)

    check = commands.add_parser('gradcheck', help='sensitivity estimators vs finite differences')
    check.add_argument('config')
    check.add_argument('--step', type=float, default=1e-5)
    check.add_argument('--seed', type=int, default=0)
    check.add_argument('--sim-episodes', type=_positive_int, default=None)
    check.add_argument('--sim-horizon', type=_positive_int, default=None)
    check.set_defaults(func=cmd_gradcheck)

    for register in _extra_commands():
        register(commands)
    return parser


def _extra_commands():
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
