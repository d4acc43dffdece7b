"""The node graph of each run mode, described once.

Both ``launch/*.launch.py`` (for ``ros2 launch`` on a full ROS 2 install) and the pip-only
launcher (``sim2real-bilevel launch``) build their processes from this module, so the two
bring up the same nodes with the same names, executables, parameter files and remappings.

This module imports neither rclpy nor launch: it is plain data plus the rules that turn
launch arguments into per-node parameter overrides.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

PACKAGE = 'sim2real_bilevel'
POLICY_KEY_ENV = 'SIM2REAL_POLICY_KEY_FILE'
"""Environment variable the outer_optimizer and hardware_bridge read their policy key file from
when their ``policy_key_file`` parameter is empty (like ROS_SECURITY_KEYSTORE: set once for the
whole graph, and a params file without the key does not switch signing off)."""


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph: its ROS name, console_scripts executable and wiring."""
    name: str
    executable: str
    description: str
    lifecycle: bool = False
    remappings: tuple[tuple[str, str], ...] = ()
    overrides: tuple[str, ...] = ('problem', 'use_sim_time')
    """Launch arguments passed to this node as parameters (on top of the params file)."""


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str


SIMULATOR = NodeSpec(
    'differentiable_simulator', 'differentiable_simulator',
    'the parametrised simulator f_theta, R_theta: serves simulated rollouts for the current theta',
    overrides=('problem', 'use_sim_time', 'seed'))
INNER_TRAINER = NodeSpec(
    'inner_trainer', 'inner_trainer',
    'trains the policy in the simulator (action train_policy), publishes the latest policy',
    overrides=('problem', 'use_sim_time', 'seed'))
SENSITIVITY = NodeSpec(
    'sensitivity', 'sensitivity',
    'implicit-function sensitivities and the outer gradient (action compute_sensitivity)',
    overrides=('problem', 'use_sim_time', 'seed'))
OUTER_OPTIMIZER = NodeSpec(
    'outer_optimizer', 'outer_optimizer',
    'Algorithm 1: drives the others, updates and publishes theta, metrics, records the run',
    overrides=('problem', 'use_sim_time', 'seed', 'run_dir', 'evaluator', 'safe_improvement', 'real_data',
               'sync_period_s'))
HARDWARE_BRIDGE = NodeSpec(
    'hardware_bridge', 'hardware_bridge',
    'lifecycle node deploying a policy on the robot (action run_episodes)', lifecycle=True,
    overrides=('problem', 'use_sim_time', 'autostart_bridge'))
ROBOT_EMULATOR = NodeSpec(
    'robot_emulator', 'robot_emulator',
    'the stand-in physical system with hidden true parameters (sim-only runs)',
    overrides=('problem', 'use_sim_time', 'seed'))

# Containers: nodes of one side of the graph in one process on one executor (nodes/container.py,
# the rclpy counterpart of a component container), chosen with the launch argument
# ``containers:=learning[,robot]``.  The learning side and the robot side never share a process:
# that boundary is the one a deployment splits across hosts (hardware: the bridge on the robot's
# computer).  Members keep their names, parameters, topics, services and actions.
CONTAINERS: dict[str, tuple[str, ...]] = {
    'learning': ('differentiable_simulator', 'inner_trainer', 'sensitivity', 'outer_optimizer'),
    'robot': ('hardware_bridge', 'robot_emulator'),
}
CONTAINER_EXECUTABLE = 'container'
# ``containers:=auto`` (the default) by mode and robot_mode.  A lockstep sim-only run is the fast
# loop: both sides in a container each (200 discrete_3s2a iterations in 3.0 s against 9.4 s with one
# process per node and 4.9 s with the learning side alone, core 0.65 s; bench/results/
# ros_overhead_containers).  A real-time robot keeps its own processes, as a robot's driver is one:
# its wall-clock physics timer and the bridge's control timer do not share an executor.  On hardware
# the real episodes take seconds, so each node keeps its own process (a node's fault stays its own).
AUTO_CONTAINERS: dict[tuple[str, str], tuple[str, ...]] = {
    ('sim_only', 'lockstep'): ('learning', 'robot'),
    ('sim_only', 'realtime'): ('learning',),
    ('hardware', 'lockstep'): (),
    ('hardware', 'realtime'): (),
}
CONTAINER_CHOICES = ('auto', 'none')

MODES: dict[str, tuple[NodeSpec, ...]] = {
    'sim_only': (SIMULATOR, INNER_TRAINER, SENSITIVITY, HARDWARE_BRIDGE, ROBOT_EMULATOR, OUTER_OPTIMIZER),
    'hardware': (SIMULATOR, INNER_TRAINER, SENSITIVITY, HARDWARE_BRIDGE, OUTER_OPTIMIZER),
}

# The bridge activates itself in the sim-only loop; on hardware an operator (or a lifecycle
# manager) configures and activates it: nothing moves the robot until someone says so.
AUTOSTART_BRIDGE = {'sim_only': 'true', 'hardware': 'false'}

# Parameters a mode fixes for a node, on top of the params file: on hardware the bridge talks to
# the robot on its topics (there is no emulator to forward to) and runs only signed goals, which the
# optimizer sends on the run_episodes action (feedback, cancel), never as one service call.
MODE_PARAMETERS: dict[str, dict[str, dict]] = {
    'sim_only': {},
    'hardware': {'hardware_bridge': {'transport': 'topics', 'require_policy_key': True},
                 'outer_optimizer': {'run_episodes_via': 'action'}},
}

# Only a sim-only run has an evaluator (the emulator's hidden real model); on hardware nothing
# reads the real model and the loop keeps to safe improvement (OuterConfig.safe_improvement).
EVALUATOR = {'sim_only': 'robot_emulator/evaluate', 'hardware': ''}
SAFE_IMPROVEMENT = {'sim_only': 'false', 'hardware': 'true'}
# The run dir's fsyncs: a sim-only run makes them together once a second (its "real" episodes are
# the emulator's, so a power loss costs a resume a second of them, and the loop no longer waits
# on the disk for every file: 9.4 -> 5.6 s for 200 discrete_3s2a iterations on this machine's
# disk, bench/results/ros_overhead_rosfast3); on hardware every file is on disk before the loop
# goes on, so no real episode is ever run twice.
SYNC_PERIOD = {'sim_only': '1.0', 'hardware': '0.0'}

# Launch arguments whose default depends on the mode: name -> (description, {mode: default}).
MODE_ARGUMENTS: dict[str, tuple[str, dict[str, str]]] = {
    'autostart_bridge': ('configure and activate the hardware_bridge lifecycle node right away', AUTOSTART_BRIDGE),
    'evaluator': ("the outer_optimizer's sim-only evaluator service (EvaluatePolicy: the exact normalised return "
                  "from the emulator's hidden model); empty: none, the normalised return is NaN", EVALUATOR),
    'safe_improvement': ('the outer loop backtracks to the best deployed policy when the estimated real return '
                         'drops significantly below it (true/false)', SAFE_IMPROVEMENT),
    'sync_period_s': ("the outer_optimizer fsyncs its run dir's files together at most every this many seconds "
                      '(files are still renamed into place at once: a SIGKILL loses nothing, a power loss the '
                      'last seconds, which a resume redoes); 0: each file on disk before the loop goes on',
                      SYNC_PERIOD),
}
BOOLEAN_ARGUMENTS = ('use_sim_time', 'autostart_bridge', 'safe_improvement')
FLOAT_ARGUMENTS = ('sync_period_s',)

# The robot's timing (issue 13): ``robot_mode:=realtime`` runs the robot_emulator on a wall-clock
# timer (``mode: realtime``) and the bridge's timer-driven control loop on the topic transport;
# the arguments below pass the rates and the injected faults through (empty: the params file's).
ROBOT_MODES = ('lockstep', 'realtime')
# What makes the robot side real-time: either node's parameter of this name with this value (in
# a params file too: ``params_file_realtime``); robot_mode:=realtime sets both, and the bridge's topics.
REALTIME_IN_PARAMS = {'robot_emulator': ('mode', 'realtime'), 'hardware_bridge': ('loop', 'timer')}
REALTIME_PARAMETERS: dict[str, dict] = {
    node: {**({'transport': 'topics'} if node == 'hardware_bridge' else {}), parameter: value}
    for node, (parameter, value) in REALTIME_IN_PARAMS.items()}
REALTIME_ARGUMENTS: dict[str, tuple[str, str]] = {
    'control_rate': ('hardware_bridge', "the bridge's control loop rate (Hz; 0: the controller's own rate)"),
    'state_rate': ('robot_emulator', 'joint_states rate of the real-time robot (Hz; 0: every physics step)'),
    **{f'{direction}_{fault}': ('robot_emulator', f'{what} of {messages} on the real-time robot')
       for direction, messages in (('state', 'joint_states'), ('command', 'commands'))
       for fault, what in (('latency_s', 'delay (s)'), ('jitter_s', 'delay variation +- (s)'),
                           ('drop_rate', 'loss probability'))},
}
"""Launch argument -> (the node whose parameter of that name it sets, description)."""


def realtime_overrides(node_name: str, arguments: dict[str, str]) -> dict:
    """The parameters ``robot_mode`` and its pass-through arguments give node ``node_name``;
    a bad value or a pass-through argument without ``robot_mode:=realtime`` is a ValueError
    naming the argument."""
    robot_mode = arguments.get('robot_mode', 'lockstep').strip() or 'lockstep'
    if robot_mode not in ROBOT_MODES:
        raise ValueError(f'launch argument robot_mode:={robot_mode!r}: expected one of {list(ROBOT_MODES)}')
    values = dict(REALTIME_PARAMETERS.get(node_name, {})) if robot_mode == 'realtime' else {}
    for name, (node, _) in REALTIME_ARGUMENTS.items():
        text = arguments.get(name, '').strip()
        if not text:
            continue
        if robot_mode != 'realtime':
            raise ValueError(f'launch argument {name}:={text!r} applies to the real-time robot only: add '
                             'robot_mode:=realtime')
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f'launch argument {name}:={text!r}: expected a number') from None
        if not value >= 0.0:
            raise ValueError(f'launch argument {name}:={text!r}: expected a number >= 0')
        if node == node_name:
            values[name] = value
    return values


LAUNCH_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument('problem', 'discrete_3s2a',
                   'problem file: a shipped name (discrete_3s2a, lqr, ...) or a path to a YAML file'),
    LaunchArgument('namespace', '', 'ROS namespace pushed onto every node of the graph'),
    LaunchArgument('params_file', '',
                   'ROS parameter file for all nodes (default: <problem>_params.yaml beside a problem file, or '
                   'config/<problem>_params.yaml of the package for a shipped problem; sim_only without one: the '
                   "nodes' defaults; hardware needs one)"),
    LaunchArgument('use_sim_time', 'false', 'use the /clock topic instead of the wall clock'),
    LaunchArgument('seed', '0', 'random seed of the run (real-data stream and sampled methods)'),
    LaunchArgument('run_dir', '',
                   'folder for results.json, results.png and the MCAP bag (default: runs/<problem>-<time>)'),
    LaunchArgument('log_level', 'info', 'ROS log level of every node (debug, info, warn, error)'),
    LaunchArgument('policy_key_file', '', 'key file signing run_episodes goals (`sim2real-bilevel keygen`), '
                   f'given to the nodes as ${POLICY_KEY_ENV}; empty: goals are not signed'),
    LaunchArgument('real_data', '', 'offline: comma-separated run folders or datasets (real/batch_*.npz) the outer '
                   'optimizer learns from, with no real episode; only the simulator, inner trainer, sensitivity and '
                   'outer optimizer are started (no bridge, no emulator, no evaluator); empty: online'),
    LaunchArgument('containers', 'auto', 'comma-separated sides of the graph to run as one process each, on one '
                   'executor: ' + ', '.join(f'{name} ({"/".join(members)})' for name, members in CONTAINERS.items())
                   + '; none (or empty): one process per node; auto: both sides in a sim-only lockstep run, '
                   'the learning side only with a real-time robot (robot_mode:=realtime, or the params file\'s '
                   'robot_emulator mode: realtime or hardware_bridge loop: timer), none on hardware'),
    LaunchArgument('robot_mode', 'lockstep', "the robot's timing: lockstep (the emulator steps once per command, "
                   'as fast as the loop asks) or realtime (the emulator on a wall-clock timer, the bridge on its '
                   'timer-driven control loop over the topics; with the arguments control_rate, state_rate and '
                   "state_/command_ latency_s, jitter_s, drop_rate; empty ones keep the params file's values)"),
    *(LaunchArgument(name, '', f'robot_mode:=realtime: {description} (empty: the params file\'s)')
      for name, (_, description) in REALTIME_ARGUMENTS.items()),
)


def argument_defaults(mode: str) -> dict[str, str]:
    defaults = {a.name: a.default for a in LAUNCH_ARGUMENTS}
    defaults.update({name: by_mode[mode] for name, (_, by_mode) in MODE_ARGUMENTS.items()})
    return defaults


# An offline run (launch argument real_data:=PATH[,PATH...]) learns from recorded data only: no real
# episode is asked for, so neither the bridge nor the emulator is started (and there is no evaluator).
OFFLINE_ABSENT = (HARDWARE_BRIDGE, ROBOT_EMULATOR)


def nodes(mode: str, offline: bool = False) -> tuple[NodeSpec, ...]:
    """The nodes of a mode; ``offline`` (a ``real_data`` argument): without the bridge and the emulator."""
    if mode not in MODES:
        raise ValueError(f'unknown mode {mode!r}; expected one of {sorted(MODES)}')
    return tuple(s for s in MODES[mode] if s not in OFFLINE_ABSENT) if offline else MODES[mode]


def params_file_realtime(params_file) -> bool:
    """Whether the ROS params file runs the robot side in real time (``REALTIME_IN_PARAMS``), in a
    section that applies to the node: its name, with or without a namespace, or a wildcard
    (``/**``, ``/**/robot_emulator``).  A file that cannot be read says no: the nodes report it."""
    try:
        document = yaml.safe_load(Path(params_file).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    if not isinstance(document, dict):
        return False
    for key, section in document.items():
        parameters = section.get('ros__parameters') if isinstance(section, dict) else None
        if not isinstance(parameters, dict):
            continue
        name = str(key).rstrip('/').rsplit('/', 1)[-1]
        for node, (parameter, value) in REALTIME_IN_PARAMS.items():
            if name in (node, '*', '**') and parameters.get(parameter) == value:
                return True
    return False


def effective_robot_mode(robot_mode: str, params_file) -> str:
    """``realtime`` when the launch argument says so or the params file runs the robot side in real
    time (``params_file_realtime``); else ``lockstep``: what ``containers:=auto`` goes by."""
    robot_mode = robot_mode.strip() or 'lockstep'
    if robot_mode != 'realtime' and params_file and params_file_realtime(params_file):
        return 'realtime'
    return robot_mode


def container_names(text: str, mode: str = 'sim_only', robot_mode: str = 'lockstep') -> tuple[str, ...]:
    """The ``containers`` launch argument as container names (validated): ``auto`` is
    ``AUTO_CONTAINERS`` of the mode and robot_mode, ``none`` or empty is no container."""
    stripped = text.strip()
    if stripped == 'auto':
        key = (mode, robot_mode.strip() or 'lockstep')
        if key not in AUTO_CONTAINERS:
            raise ValueError(f'launch argument containers:=auto: no default for mode {mode!r} with '
                             f'robot_mode:={robot_mode!r}; expected a mode of {sorted(MODES)} and a robot_mode '
                             f'of {list(ROBOT_MODES)}')
        return AUTO_CONTAINERS[key]
    if stripped == 'none':
        return ()
    names = tuple(name.strip() for name in text.split(',') if name.strip())
    unknown = [name for name in names if name not in CONTAINERS]
    if unknown:
        raise ValueError(f'launch argument containers:={text!r}: unknown container(s) {unknown}; expected '
                         f'{" or ".join(CONTAINER_CHOICES)} or a comma-separated list of {sorted(CONTAINERS)}')
    return tuple(dict.fromkeys(names))


def processes(mode: str, containers: str = 'none', offline: bool = False,
              robot_mode: str = 'lockstep') -> list[tuple[NodeSpec, tuple[NodeSpec, ...]]]:
    """The processes of a mode: (process spec, member node specs), in the order of ``nodes(mode)``;
    a container's process spec is named after the container and runs ``CONTAINER_EXECUTABLE``
    with the members' launch-argument overrides.  A container of which the mode has one node
    only (the robot side on hardware) is that node's own process.  ``containers`` is the launch
    argument (``container_names``; ``auto`` depends on ``robot_mode``)."""
    specs = nodes(mode, offline)
    grouped = {name: tuple(s for s in specs if s.name in CONTAINERS[name])
               for name in container_names(containers, mode, robot_mode)}
    result, placed = [], set()
    for spec in specs:
        if spec.name in placed:
            continue
        group = next((name for name, members in grouped.items() if spec in members and len(members) > 1), None)
        if group is None:
            result.append((spec, (spec,)))
            placed.add(spec.name)
            continue
        members = grouped[group]
        overrides = tuple(dict.fromkeys(o for member in members for o in member.overrides))
        container = NodeSpec(group, CONTAINER_EXECUTABLE, f'container of {", ".join(m.name for m in members)}',
                             overrides=overrides)
        result.append((container, members))
        placed.update(m.name for m in members)
    return result


def params_file_name(problem: str) -> str:
    """``<stem>_params.yaml`` for a shipped problem name or a problem file path."""
    return f'{Path(problem).stem}_params.yaml'


class ParamsFileError(ValueError):
    """No usable params file for a launch."""


def config_directories() -> list[Path]:
    """Where shipped parameter files live: the source checkout, then the ament share."""
    here = [Path(__file__).resolve().parents[1] / 'config']
    try:
        from ament_index_python.packages import get_package_share_directory
        here.append(Path(get_package_share_directory(PACKAGE)) / 'config')
    except Exception:        # not installed in an ament index
        pass
    return here


def params_file_for(mode: str, problem: str, given: str, config_folders) -> Optional[Path]:
    """The params file of a launch: ``given`` (it must exist), else ``default_params_file``; None
    (the nodes' defaults) only in sim_only: on hardware the bridge's joints and limits must be the
    user's own choice, so a missing file is an error."""
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise ParamsFileError(f'params_file:={given}: no such file')
        return path.resolve()
    found = default_params_file(problem, config_folders)
    if found is None and mode == 'hardware':
        where = 'beside the problem file' if is_problem_path(problem) else \
            f'in {[str(d) for d in config_folders]}'
        raise ParamsFileError(f'no parameter file {params_file_name(problem)} for problem {problem!r} {where}: on '
                              'hardware the bridge\'s joints and limits must be your own (docs/hardware.md); pass '
                              f'params_file:=PATH (`sim2real-bilevel params {problem}` writes one to start from)')
    return found


def is_problem_path(problem: str) -> bool:
    """Whether ``problem`` names a file (a path, or a .yaml name) rather than a shipped problem."""
    path = Path(problem)
    return path.suffix in ('.yaml', '.yml') or len(path.parts) > 1


def default_params_file(problem: str, config_folders) -> Optional[Path]:
    """The params file a run uses when ``params_file`` is not given: ``<stem>_params.yaml`` beside a
    problem file given by path, or in the package's config folder for a shipped problem name;
    None when there is none (the nodes' own defaults: a sim-only run of a user's problem, or of a
    shipped one without a params file, needs none)."""
    name = params_file_name(problem)
    folders = [Path(problem).expanduser().parent] if is_problem_path(problem) else list(config_folders)
    return next(((folder / name).resolve() for folder in folders if (folder / name).is_file()), None)


def argument_type(name: str) -> type:
    """The parameter type the nodes declare for a launch argument they take (``typed_value``'s rules)."""
    if name in BOOLEAN_ARGUMENTS:
        return bool
    if name in FLOAT_ARGUMENTS:
        return float
    return int if name == 'seed' else str


def typed_value(name: str, text: str):
    """A launch argument's text as the parameter type the nodes declare."""
    if name in BOOLEAN_ARGUMENTS:
        lowered = text.strip().lower()
        if lowered not in ('true', 'false'):
            raise ValueError(f'launch argument {name}:={text!r}: expected true or false')
        return lowered == 'true'
    if name == 'seed':
        try:
            return int(text)
        except ValueError:
            raise ValueError(f'launch argument seed:={text!r}: expected an integer') from None
    if name in FLOAT_ARGUMENTS:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise ValueError(f'launch argument {name}:={text!r}: expected a number of seconds >= 0') from None
        return value
    return text


def fixed_parameters(mode: str, members: tuple[NodeSpec, ...], arguments: dict[str, str]) -> dict:
    """What the mode (``MODE_PARAMETERS``) and ``robot_mode`` with its pass-through arguments
    (``realtime_overrides``) set for these nodes, in the pip-only launcher and the launch files alike."""
    values = {}
    for member in members:
        values.update(MODE_PARAMETERS[mode].get(member.name, {}))
        values.update(realtime_overrides(member.name, arguments))
    return values


def parameter_overrides(spec: NodeSpec, arguments: dict[str, str], mode: str,
                        members: tuple[NodeSpec, ...] = ()) -> dict:
    """The parameters a node gets from the launch arguments and its mode (``MODE_PARAMETERS``),
    applied after the params file; for a container (``members``), those of every member (a
    parameter a member does not declare is ignored by it).

    Empty ``run_dir`` means "the node's default" and is not passed."""
    values = fixed_parameters(mode, members or (spec,), arguments)
    for name in spec.overrides:
        if name not in arguments:
            continue
        text = arguments[name]
        if name in ('run_dir', 'real_data') and not text:
            continue
        if name == 'evaluator' and arguments.get('real_data'):
            text = ''                  # offline: the emulator that serves the evaluator is not started
        values['autostart' if name == 'autostart_bridge' else name] = typed_value(name, text)
    return values


@dataclass
class ProcessPlan:
    """What the pip-only launcher runs for one node or container (the same the launch file asks for)."""
    spec: NodeSpec
    command: list[str]
    parameters: dict = field(default_factory=dict)
    members: tuple[NodeSpec, ...] = ()
    """The nodes this process runs (a container: several)."""


def ros_arguments(spec: NodeSpec, namespace: str, params_file: Optional[str], overrides: dict,
                  log_level: str = 'info') -> list[str]:
    """``--ros-args`` for one node, as launch_ros's Node action builds them (a container's nodes
    keep their own names: no ``__node`` remapping, which would rename them all)."""
    args = ['--ros-args']
    if spec.executable != CONTAINER_EXECUTABLE:
        args += ['-r', f'__node:={spec.name}']
    if namespace:
        args += ['-r', f'__ns:={normalize_namespace(namespace)}']
    if params_file:
        args += ['--params-file', str(params_file)]
    for key, value in overrides.items():
        args += ['-p', f'{key}:={_parameter_text(value)}']
    for source, target in spec.remappings:
        args += ['-r', f'{source}:={target}']
    args += ['--log-level', log_level]
    return args


def normalize_namespace(namespace: str) -> str:
    namespace = namespace.strip()
    if not namespace or namespace == '/':
        return '/'
    return '/' + namespace.strip('/')


def _parameter_text(value) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, str):
        # quoted so that YAML keeps numbers-looking names and paths as strings
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def launch_description(mode: str):
    """The ``launch.LaunchDescription`` of a mode, for ``launch/<mode>.launch.py``.

    Declares every launch argument with its description; ``params_file`` defaults to the
    installed ``config/<problem>_params.yaml``; the namespace is pushed onto the whole group;
    ``containers`` groups nodes into processes (``processes``); when the outer optimizer's process
    exits, the launch shuts down (as the pip-only launcher does)."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, EmitEvent, GroupAction, OpaqueFunction, \
        RegisterEventHandler, SetEnvironmentVariable
    from launch.conditions import IfCondition
    from launch.event_handlers import OnProcessExit
    from launch.events import Shutdown
    from launch.substitutions import LaunchConfiguration, NotEqualsSubstitution
    from launch_ros.actions import LifecycleNode, Node, PushROSNamespace
    from launch_ros.parameter_descriptions import ParameterValue

    defaults = argument_defaults(mode)
    declared = [DeclareLaunchArgument(argument.name, default_value=defaults[argument.name],
                                      description=argument.description) for argument in LAUNCH_ARGUMENTS]
    for name, (description, _) in MODE_ARGUMENTS.items():
        declared.append(DeclareLaunchArgument(name, default_value=defaults[name], description=description))


    def node_actions(context):
        """The processes, once ``containers`` is known: one Node action per node or container."""
        actions = [PushROSNamespace(LaunchConfiguration('namespace')),
                   # only when given: an empty policy_key_file keeps an exported $SIM2REAL_POLICY_KEY_FILE
                   # (as the pip-only launcher does) instead of overwriting it with ''
                   SetEnvironmentVariable(POLICY_KEY_ENV, LaunchConfiguration('policy_key_file'),
                                          condition=IfCondition(NotEqualsSubstitution(
                                              LaunchConfiguration('policy_key_file'), '')))]
        handlers = []
        offline = bool(LaunchConfiguration('real_data').perform(context))
        params_file = params_file_for(mode, LaunchConfiguration('problem').perform(context),
                                      LaunchConfiguration('params_file').perform(context), config_directories())
        robot_mode = effective_robot_mode(LaunchConfiguration('robot_mode').perform(context), params_file)
        for spec, members in processes(mode, LaunchConfiguration('containers').perform(context), offline, robot_mode):
            overrides = {('autostart' if name == 'autostart_bridge' else name):
                         ParameterValue(LaunchConfiguration(name), value_type=argument_type(name))
                         for name in spec.overrides}
            robot = {name: LaunchConfiguration(name).perform(context) for name in ('robot_mode', *REALTIME_ARGUMENTS)}
            overrides.update(fixed_parameters(mode, members, robot))
            if offline and 'evaluator' in overrides:
                overrides['evaluator'] = ''      # the emulator serving it is not started
            common = dict(package=PACKAGE, executable=spec.executable, output='screen',
                          parameters=([str(params_file)] if params_file else []) + [overrides],
                          remappings=list(spec.remappings),
                          ros_arguments=['--log-level', LaunchConfiguration('log_level')])
            if spec.executable == CONTAINER_EXECUTABLE:     # the members keep their own names
                node = Node(arguments=[member.executable for member in members], **common)
            elif spec.lifecycle:
                node = LifecycleNode(name=spec.name, namespace='', **common)
            else:
                node = Node(name=spec.name, **common)
            actions.append(node)
            if OUTER_OPTIMIZER in members:
                handlers.append(RegisterEventHandler(OnProcessExit(
                    target_action=node,
                    on_exit=[EmitEvent(event=Shutdown(reason='the outer optimizer finished'))])))
        return [GroupAction(actions)] + handlers

    return LaunchDescription(declared + [OpaqueFunction(function=node_actions)])
