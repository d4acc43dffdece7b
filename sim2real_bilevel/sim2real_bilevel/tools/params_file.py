"""``sim2real-bilevel params PROBLEM``: a starting ROS params file for a user's robot problem.

A robot problem (a URDF and a task file) needs a params file before ``launch hardware`` (the
bridge's joints and limits must be the user's) and for any run on the topic transport (the
bridge's node defaults, 2 N m and +-3.2 rad, would clamp most robots).  Writing it by hand is
where the shipped examples went wrong (a filter below the actuator range made the pendulum's
nominal policy fall in 16 of 32 episodes; a velocity bound equal to the swing-up's termination
speed would have turned every such termination into an aborted goal).  This writes one from what
the problem says, by these rules (``bridge_limits``):

- joints: the problem's controlled joints, in its order, for the bridge and the emulator;
- effort: each joint's actuator range (the simulator's command saturation, what the policy is
  trained to use) -- ``effort_limit`` the largest, ``joint_limits`` entries for the others; where
  the problem gives no range, the URDF's effort limit; a joint's URDF limit tightens it anyway;
- ``max_effort_rate``: twice the largest effort, a full-range command may follow its opposite
  within one step (the simulator has no rate limit);
- ``watchdog_timeout_s``: ten control periods;
- ``position_limit`` and ``velocity_limit``: clear of the task's termination with margin
  (``TERMINATION_MARGIN`` times its largest finite bound), at least one turn either way and
  ``VELOCITY_FLOOR``: the task ends an episode at its terminal state before the bridge's bound,
  which aborts the whole goal, is reached.  A joint's URDF ``<limit>`` tightens both (a joint whose
  URDF limit does not clear the termination is named on stderr).

The file is a start, not a tuning: it is sim-only as written (batched transport, the emulator's
reset service); its comments say what a hardware launch needs (docs/hardware.md)."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional

import yaml

from .. import graph

TERMINATION_MARGIN = 1.5
"""The bridge's position and velocity bounds: this many times the termination's largest finite bound."""
POSITION_FLOOR = 6.3
"""rad: one turn either way (a pendulum falling through its hanging position is no reason to abort)."""
VELOCITY_FLOOR = 20.0
"""rad/s: the blanket velocity bound where the task has no speed termination (the URDF's tightens it)."""
WATCHDOG_PERIODS = 10


@dataclass(frozen=True)
class BridgeLimits:
    joints: tuple
    effort_limit: float
    joint_limits: str                 # 'JOINT.effort=VALUE, ...' for joints below effort_limit
    max_effort_rate: float
    watchdog_timeout_s: float
    position_limit: float
    velocity_limit: float
    notes: tuple                      # what the rules could not satisfy, in words


def bridge_limits(problem) -> BridgeLimits:
    """The hardware bridge's limits for ``problem`` by the module docstring's rules; ValueError when
    the problem has no joints (a tabular or LQR problem: copy its shipped params file instead)."""
    joints = problem.joints()
    if not joints:
        raise ValueError(f'{problem.source}: the {problem.kind!r} problem has no joints to command (a params file '
                         'for it is not about robot limits: start from a shipped one, e.g. config/lqr_params.yaml)')
    names = tuple(joint.name for joint in joints)
    notes = []
    actuator = problem.actuator_range()
    efforts = []
    for i, joint in enumerate(joints):
        effort = actuator[i] if actuator is not None else joint.effort
        if not math.isfinite(effort):
            effort = 2.0
            notes.append(f'joint {joint.name}: neither the simulator nor the URDF gives an effort range; '
                         f'effort {effort:g} is a placeholder, set your robot\'s')
        efforts.append(float(effort))
    largest = max(efforts)
    entries = ', '.join(f'{name}.effort={effort:g}' for name, effort in zip(names, efforts) if effort < largest)
    period = problem.control_period
    termination = problem.termination_bounds()
    position, velocity = POSITION_FLOOR, VELOCITY_FLOOR
    if termination is not None:
        bounds = [abs(b) for b in termination.position_low + termination.position_high if math.isfinite(b)]
        speeds = [s for s in termination.max_speed if math.isfinite(s)]
        position = max(position, TERMINATION_MARGIN * max(bounds, default=0.0))
        velocity = TERMINATION_MARGIN * max(speeds) if speeds else velocity
        for i, joint in enumerate(joints):
            if math.isfinite(termination.max_speed[i]) and joint.velocity <= termination.max_speed[i]:
                notes.append(f'joint {joint.name}: the URDF velocity limit {joint.velocity:g} does not clear the '
                             f'task\'s termination speed {termination.max_speed[i]:g}: the bridge aborts before the task ends')
            low, high = termination.position_low[i], termination.position_high[i]
            if (math.isfinite(low) and joint.lower >= low) or (math.isfinite(high) and joint.upper <= high):
                notes.append(f'joint {joint.name}: the URDF position limits [{joint.lower:g}, {joint.upper:g}] do not '
                             f'clear the task\'s termination bounds [{low:g}, {high:g}]')
    return BridgeLimits(names, largest, entries, 2.0 * largest, WATCHDOG_PERIODS * float(period),
                        _round_up(position), _round_up(velocity), tuple(notes))


def _round_up(value: float) -> float:
    """To one decimal, up (a bound rounded down could fall inside what it must clear)."""
    return math.ceil(value * 10.0 - 1e-9) / 10.0


def _number(value: float) -> str:
    """A float as YAML reads back a float (``4`` would be an integer, which a double parameter refuses)."""
    text = f'{value:.10g}'
    return text if any(c in text for c in '.en') else text + '.0'


def params_text(problem, problem_ref: str, limits: Optional[BridgeLimits] = None) -> str:
    """The params file (YAML with comments) for ``problem``, named ``problem_ref`` in its header;
    ``limits``: ``bridge_limits(problem)``, computed here when not given."""
    limits = limits or bridge_limits(problem)
    joints = yaml.safe_dump(list(limits.joints), default_flow_style=True, width=1000).strip()
    period = problem.control_period
    actuator = problem.actuator_range()
    termination = problem.termination_bounds()
    lines = [
        f'# ROS parameters of the node graph for {problem_ref}, written by `sim2real-bilevel params` on',
        f'# {datetime.now():%Y-%m-%d} from the problem\'s joints, actuator range, control period and termination',
        '# (sim2real_bilevel/tools/params_file.py gives the rules).  Keys are /**/<node_name>, so the file',
        '# applies in any namespace.  As written it serves a sim-only run.  Before `launch hardware`',
        '# (docs/hardware.md): transport topics, your controller\'s name and joint order, limits your robot',
        '# takes (never above them), a reset_mode for your robot, and a policy key.',
        '/**/differentiable_simulator:',
        '  ros__parameters:',
        '    max_episodes: 100000',
        '    max_horizon: 100000',
        '',
        '/**/inner_trainer:',
        '  ros__parameters:',
        '    warm_start: true',
        '',
        '/**/sensitivity:',
        '  ros__parameters:',
        '    simulate_service: differentiable_simulator/simulate',
        '    simulate_timeout_s: 300.0',
        '',
        '/**/outer_optimizer:',
        '  ros__parameters:',
        '    evaluator_timeout_s: 5.0',
        '    record_bag: true',
        '    action_timeout_s: 600.0',
        '    server_timeout_s: 60.0',
        '    progress_period_s: 0.5',
        '',
        '/**/hardware_bridge:',
        '  ros__parameters:',
        '    transport: batched          # sim-only; on hardware: topics',
        '    controller: forward_command_controller',
        f'    joints: {joints}',
        '    emulator_action: robot_emulator/run_episodes',
        '    reset_service: robot_emulator/reset',
        '    # before each episode: service (reset_service: your robot\'s own), scripted (the bridge drives',
        '    # the joints to reset_pose, by default the task\'s start pose) or operator (a person);',
        '    # docs/hardware.md "Resets between episodes"',
        '    reset_mode: service',
        '    step_timeout_s: 2.0',
        '    # The command filter is not tighter than the actuator the policy is trained on (the simulator\'s',
        f'    # saturation per joint: {list(actuator) if actuator is not None else "not given"}; no rate limit):',
        '    # a full-range command may follow its opposite within one step.  A joint\'s URDF <limit>',
        '    # tightens each value.',
        f'    effort_limit: {_number(limits.effort_limit)}',
    ]
    if limits.joint_limits:
        lines.append(f"    joint_limits: '{limits.joint_limits}'")
    lines += [
        f'    max_effort_rate: {_number(limits.max_effort_rate)}    # per {period:g} s control step',
        f'    watchdog_timeout_s: {_number(limits.watchdog_timeout_s)}    # {WATCHDOG_PERIODS} control periods '
        'without joint_states: stop',
        f'    position_limit: {_number(limits.position_limit)}    # rad (m for a prismatic joint); '
        + ('clear of the task\'s termination bounds' if termination is not None else 'one turn either way'),
        f'    velocity_limit: {_number(limits.velocity_limit)}    # rad/s; '
        + (f'{TERMINATION_MARGIN:g} x the task\'s termination speed: the task ends an episode first'
           if termination is not None and any(math.isfinite(s) for s in termination.max_speed)
           else 'set your robot\'s'),
        '',
        '/**/robot_emulator:',
        '  ros__parameters:',
        '    controller: forward_command_controller',
        f'    joints: {joints}',
    ]
    return '\n'.join(lines) + '\n'


def default_output(problem_ref: str) -> Path:
    """Where ``launch`` looks for the file: beside a problem file given by path; for a shipped
    name, the current folder (pass it as params_file:=PATH)."""
    name = graph.params_file_name(problem_ref)
    return Path(problem_ref).expanduser().parent / name if graph.is_problem_path(problem_ref) else Path(name)


def add_params_command(commands) -> None:
    parser = commands.add_parser('params', help='write a starting ROS params file for a robot problem (its joints, '
                                                'and bridge limits that clear its actuator range and termination)')
    parser.add_argument('config', help='problem YAML (path, or a shipped name)')
    parser.add_argument('--out', type=Path, default=None,
                        help='the file to write (default: <stem>_params.yaml beside the problem file, where '
                             '`launch` finds it; for a shipped name, in the current folder)')
    parser.add_argument('--force', action='store_true', help='replace an existing file')
    parser.set_defaults(func=cmd_params)


def cmd_params(args) -> int:
    from ..core.config import ProblemConfigError, builtin_config
    from ..core.problems import load_problem
    out: Optional[Path] = args.out or default_output(args.config)
    if out.exists() and not args.force:
        print(f'error: {out} exists (--force replaces it)', file=sys.stderr)
        return 2
    try:
        problem = load_problem(builtin_config(args.config))
        limits = bridge_limits(problem)
        text = params_text(problem, args.config, limits)
    except (ProblemConfigError, FileNotFoundError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    for note in limits.notes:
        print(f'warning: {note}', file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    found = graph.default_params_file(args.config, graph.config_directories())
    use = ('`launch` finds it' if found is not None and found == out.resolve()
           else f'launch with params_file:={out}')
    print(f'wrote {out} ({use}); read its comments before a hardware launch (docs/hardware.md)')
    return 0
