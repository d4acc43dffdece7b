"""The scripted reset's control law on the shipped robots' stand-ins, without ROS: the bridge's
ResetLaw and CommandFilter (its own code), one command per control period on the pybullet
stand-in with the hidden true parameters (the emulator's real system), from the stand-in's
initial states to targets ``offsets`` rad from the task's start pose on every joint.  Fixed gains
(10, 1: the old node default) against the gains from the model, side by side.

    cd sim2real_bilevel && OMP_NUM_THREADS=1 ../.venv/bin/python bench/scripted_reset.py \\
        --out bench/results/scripted_reset [--seconds 30]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import yaml

from sim2real_bilevel.core.config import builtin_config
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.nodes.joints import bridge_joint_bounds, controlled_joints, parse_joint_limits
from sim2real_bilevel.nodes.resets import ResetLaw, model_response, pose_miss


TASKS = ('pendulum', 'swingup', 'iiwa_payload')


def bridge_bounds(problem, name: str):
    """The bridge's limits from the task's shipped params file."""
    bridge = yaml.safe_load(Path(builtin_config(f'{name}_params')).read_text())['/**/hardware_bridge']['ros__parameters']
    joints, _ = controlled_joints(bridge['joints'], problem.joints())
    return joints, bridge_joint_bounds(joints, problem.joints(), bridge,
                                       parse_joint_limits(bridge.get('joint_limits', ''), joints))


def drive(problem, joints, bounds, law, target, seed: int, seconds: float) -> dict:
    """Run the law until 3 readings in a row are within 0.05 rad and 0.25 rad/s (the bridge's
    defaults) or ``seconds`` of robot time pass."""
    system = problem.real_system(np.random.default_rng(seed))
    sample = system.reset()
    command_filter = bounds.command_filter()
    settled, steps = 0, int(round(seconds / problem.control_period))
    for step in range(steps):
        position, velocity = np.asarray(sample.position), np.asarray(sample.velocity)
        miss = pose_miss(joints, target, position, velocity, 0.05, 0.25)
        settled = 0 if miss is not None else settled + 1
        if settled >= 3:
            return {'reached': True, 'seconds': step * problem.control_period, 'miss': '',
                    'error': float(np.abs(position - target).max())}
        sample = system.step([float(c) for c in command_filter(law(target, position, velocity))])
    return {'reached': False, 'seconds': seconds, 'miss': miss or '',
            'error': float(np.abs(np.asarray(sample.position) - target).max()), **command_filter.counts()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--seeds', type=int, default=3)
    parser.add_argument('--offsets', type=float, nargs='+', default=[0.0, 0.3])
    parser.add_argument('--seconds', type=float, default=10.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [f'# scripted reset, {args.seeds} seeds each, target = start pose + offset on every joint, '
             f'{args.seconds:g} s of robot time; filter and limits from config/<task>_params.yaml',
             '| task | offset (rad) | gains | reached | seconds (mean of reached) | largest final error (rad) | '
             'first miss |', '|---|---|---|---|---|---|---|']
    words = []
    for name in TASKS:
        problem = load_problem(builtin_config(name))
        joints, bounds = bridge_bounds(problem, name)
        for offset in args.offsets:
            target = np.clip(np.asarray(problem.start_pose()) + offset, bounds.lower, bounds.upper)
            started = time.perf_counter()
            model_response(problem, target)
            model_s = time.perf_counter() - started
            for label, kp in (('fixed PD 10 / 1', 10.0), ('model', 0.0)):
                runs = []
                for seed in range(args.seeds):         # a fresh law (its integral at zero) per reset
                    law = ResetLaw.of(problem, {'reset_kp': kp, 'reset_kd': 1.0, 'reset_bandwidth': 0.25}, target,
                                      bounds.effort)
                    runs.append(drive(problem, joints, bounds, law, target, seed, args.seconds))
                reached = [r for r in runs if r['reached']]
                misses = [r['miss'] for r in runs if not r['reached']]
                lines.append(f'| {name} | {offset:g} | {label} | {len(reached)}/{len(runs)} | '
                             f'{np.mean([r["seconds"] for r in reached]) if reached else float("nan"):.2f} | '
                             f'{max(r["error"] for r in runs):.3g} | {misses[0] if misses else ""} |')
                print(lines[-1], flush=True)
            words.append(f'- {name}, offset {offset:g}: {law.words} (model answer in {model_s:.1f} s)')
    (args.out / f'scripted_reset_{args.seconds:g}s.md').write_text('\n'.join(lines + [''] + words) + '\n')


if __name__ == '__main__':
    main()
