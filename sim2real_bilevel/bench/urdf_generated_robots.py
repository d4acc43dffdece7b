"""The URDF simulator against pybullet on generated robots (``core/generators/robots.py``): per
robot, the max |error| of the mass matrix, the bias forces and the link frames at identical
parameters (the test suite's ``errors_against_pybullet``) and of a 1 s rollout (``rollout_error``,
``--rollouts``), then per variant how many robots exceed the suite's tolerances.

    cd sim2real_bilevel && OMP_NUM_THREADS=1 ../.venv/bin/python bench/urdf_generated_robots.py --robots 40 \\
        --out OUT.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'test'))
import test_urdf_robot as cases  # noqa: E402

from sim2real_bilevel.core.generators.robots import random_robot  # noqa: E402

VARIANTS = {
    'random trees': {},
    'revolute only, unrotated inertials': {'types': ('revolute',), 'inertial_rotation': False},
    'unrotated inertials': {'inertial_rotation': False},
    'axes of length 2.5, half without axis or origin': {'axis_length': 2.5, 'axisless': 0.5, 'originless': 0.5},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--robots', type=int, default=40, help='robots per variant (seeds 0..N-1)')
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument('--out', type=Path, help='one JSON line per robot')
    parser.add_argument('--rollouts', action='store_true', help='also the 1 s rollout error (~5 s per robot)')
    args = parser.parse_args()
    warnings.simplefilter('ignore')       # normalised axes warn (tested in the suite)
    limits = {'mass': cases.MASS_ATOL, 'bias': cases.BIAS_ATOL, 'pose': cases.POSE_ATOL}
    if args.rollouts:
        limits['rollout'] = cases.ROLLOUT_ATOL
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for variant in args.variants:
            for seed in range(args.robots):
                robot = random_robot(seed, **VARIANTS[variant])
                path = Path(folder) / f'robot_{seed}.urdf'
                path.write_text(robot.text)
                started = time.perf_counter()
                try:
                    errors = {key: float(value) for key, value in cases.errors_against_pybullet(path, robot.joints).items()}
                    if args.rollouts:
                        errors['rollout'] = float(cases.rollout_error((path, list(robot.joints)), 1.0))
                except Exception as err:          # noqa: BLE001 -- a robot one side cannot load is a finding
                    errors = {'error': f'{type(err).__name__}: {str(err)[:200]}'}
                row = {'variant': variant, 'seed': seed, 'types': list(robot.types), **errors,
                       'seconds': round(time.perf_counter() - started, 2)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(''.join(json.dumps(row) + '\n' for row in rows))
    names = {'mass': 'M', 'bias': 'h', 'pose': 'frames', 'rollout': '1 s rollout'}
    print(f'\n| variant | robots | above tolerance ({", ".join(f"{names[k]} {v:g}" for k, v in limits.items())}) '
          f'| could not load | {" | ".join(f"max {names[k]} error" for k in limits)} |')
    print('|---' * (4 + len(limits)) + '|')
    for variant in args.variants:
        mine = [row for row in rows if row['variant'] == variant]
        loaded = [row for row in mine if 'error' not in row]
        above = sum(any(row[key] > limit for key, limit in limits.items()) for row in loaded)
        worst = {key: max((row[key] for row in loaded), default=float('nan')) for key in limits}
        print(f'| {variant} | {len(mine)} | {above} | {len(mine) - len(loaded)} | '
              + ' | '.join(f'{worst[key]:.1e}' for key in limits) + ' |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
