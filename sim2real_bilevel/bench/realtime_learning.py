"""The pendulum's bi-level learning curve against a real-time robot vs a lockstep one.

Runs the whole sim-only graph (``sim2real-bilevel launch sim_only problem:=pendulum``, the
launcher's processes) once per setting and seed, the bridge on the topic transport (one command
per control step, as on hardware) in every setting:
- ``lockstep``: robot_emulator ``mode: lockstep``, bridge ``loop: lockstep`` (the robot waits);
- ``realtime``: emulator ``mode: realtime`` (50 Hz wall-clock physics, the last command held),
  bridge ``loop: timer`` at the problem's 50 Hz;
- ``realtime_faulty``: as ``realtime`` with joint_states delayed 10 ms +- 5 ms and 5 % of them
  dropped (``state_latency_s``, ``state_jitter_s``, ``state_drop_rate``).
Reads each run's results.json (normalised real return per outer iteration, from the
emulator's exact evaluator, and the real episodes used so far) and prints the curves side by
side, mean over seeds, and the final values.

    python sim2real_bilevel/bench/realtime_learning.py --seeds 0 1 2 --iterations 15 --out /tmp/rt_learning
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PACKAGE_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_timing import bench_environment  # noqa: E402
from soak import soak_params_file  # noqa: E402
from sim2real_bilevel.tools import launcher  # noqa: E402

REALTIME = {'hardware_bridge.transport': 'topics', 'hardware_bridge.loop': 'timer',
            'robot_emulator.mode': 'realtime'}
# the pendulum's state bounds (3.2 rad from upright) abort the episodes of policies that let it
# fall, which the bi-level steps produce on the way; this compares timing, not safety.  (The
# evaluator's shipped timeouts hold: evaluator_timeout_s covers only the service appearing, an
# exact evaluation has evaluator_answer_timeout_s, 300 s.)
COMMON = {'hardware_bridge.position_limit': 100.0, 'hardware_bridge.velocity_limit': 1000.0}
SETTINGS = {
    'lockstep': {'hardware_bridge.transport': 'topics', 'hardware_bridge.loop': 'lockstep',
                 'robot_emulator.mode': 'lockstep'},
    'realtime': REALTIME,
    'realtime_faulty': {**REALTIME, 'robot_emulator.state_latency_s': 0.01, 'robot_emulator.state_jitter_s': 0.005,
                        'robot_emulator.state_drop_rate': 0.05},
}


def run_once(setting: str, seed: int, iterations: int, environment: dict, out: Path, timeout_s: float) -> dict:
    """One sim-only run; its per-iteration records (results.json) and wall time."""
    directory = out / f'{setting}_seed{seed}'
    directory.mkdir(parents=True, exist_ok=True)
    params = soak_params_file('pendulum', iterations, {**SETTINGS[setting], **COMMON}, directory)
    arguments = launcher.parse_assignments('sim_only', ['problem:=pendulum', f'params_file:={params}',
                                                        f'seed:={seed}', f'run_dir:={directory / "run"}'])
    processes = launcher.GraphProcesses(launcher.plan('sim_only', arguments), environment, 10.0)
    started = time.monotonic()
    processes.start()
    log = open(directory / 'graph.log', 'w')
    try:
        while 'outer_optimizer' in processes.alive():
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f'{setting} seed {seed}: not finished within {timeout_s:g} s ({directory})')
            try:
                name, line = processes.lines.get(timeout=1.0)
            except Exception:       # queue.Empty
                continue
            if line is not None:
                log.write(f'[{name}] {line}\n')
    finally:
        wall = time.monotonic() - started
        processes.stop()
        log.close()
    results = json.loads((directory / 'run' / 'results.json').read_text())
    method = next(iter(results['methods'].values()))
    records = method['seeds'][0]['iterations']
    return {'setting': setting, 'seed': seed, 'wall_s': wall,
            'real_episodes': [r['real_episodes'] for r in records],
            'normalized_return': [r['normalized_return'] for r in records]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--iterations', type=int, default=15)
    parser.add_argument('--timeout-s', type=float, default=1200.0, help='per run')
    parser.add_argument('--out', type=Path, default=Path(tempfile.mkdtemp(prefix='realtime_learning_')))
    args = parser.parse_args(argv)
    environment, _lock = bench_environment(args.out)
    runs = []
    for seed in args.seeds:
        for setting in args.settings:
            run = run_once(setting, seed, args.iterations, environment, args.out, args.timeout_s)
            runs.append(run)
            print(f'[realtime_learning] {setting} seed {seed}: {run["wall_s"]:.0f} s, final normalised return '
                  f'{run["normalized_return"][-1]:.3f} after {run["real_episodes"][-1]} real episodes', flush=True)
            (args.out / 'learning.json').write_text(json.dumps(runs, indent=1))
    print('normalised real return (mean over seeds [min, max]) vs real episodes')
    print(f'{"real_episodes":>14} ' + ' '.join(f'{s:>26}' for s in args.settings))
    curves = {s: np.array([r['normalized_return'] for r in runs if r['setting'] == s]) for s in args.settings}
    episodes = next(r['real_episodes'] for r in runs)
    for i, count in enumerate(episodes):
        cells = []
        for setting in args.settings:
            values = curves[setting][:, i]
            cells.append(f'{values.mean():.3f} [{values.min():.3f}, {values.max():.3f}]')
        print(f'{count:>14} ' + ' '.join(f'{c:>26}' for c in cells))
    print(f'(runs in {args.out}; learning.json holds every curve)')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
