"""The single graph description (graph.py), the launcher's planning, the parameter files and
the launch files agree with each other.  No middleware needed."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml

from sim2real_bilevel import graph
from sim2real_bilevel.tools import launcher

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
CONFIG = PACKAGE_ROOT / 'config'


def test_modes_share_the_core_nodes_and_only_sim_only_has_the_emulator():
    sim_only = [spec.name for spec in graph.nodes('sim_only')]
    hardware = [spec.name for spec in graph.nodes('hardware')]
    assert 'robot_emulator' in sim_only and 'robot_emulator' not in hardware
    assert set(hardware) <= set(sim_only)
    assert [spec.name for spec in graph.nodes('sim_only') if spec.lifecycle] == ['hardware_bridge']
    with pytest.raises(ValueError, match='unknown mode'):
        graph.nodes('simulation')


def test_every_executable_is_a_node_module_with_main():
    for spec in graph.MODES['sim_only']:
        path = PACKAGE_ROOT / 'sim2real_bilevel' / 'nodes' / f'{spec.executable}.py'
        assert path.is_file(), path
        assert 'def main(args=None)' in path.read_text()


def test_ros_arguments_are_what_launch_ros_passes():
    spec = graph.OUTER_OPTIMIZER
    overrides = graph.parameter_overrides(spec, graph.argument_defaults('sim_only') | {'seed': '3', 'run_dir': '/x'},
                                          'sim_only')
    assert overrides == {'problem': 'discrete_3s2a', 'use_sim_time': False, 'seed': 3, 'run_dir': '/x',
                         'evaluator': 'robot_emulator/evaluate', 'safe_improvement': False, 'sync_period_s': 1.0}
    args = graph.ros_arguments(spec, 'robots/one', '/p.yaml', overrides, 'warn')
    assert args[:3] == ['--ros-args', '-r', '__node:=outer_optimizer']
    assert '__ns:=/robots/one' in args and args[args.index('--params-file') + 1] == '/p.yaml'
    assert "problem:='discrete_3s2a'" in args and 'seed:=3' in args and 'use_sim_time:=false' in args
    assert args[-2:] == ['--log-level', 'warn']


def test_empty_run_dir_is_left_to_the_node_and_bad_values_are_refused():
    overrides = graph.parameter_overrides(graph.OUTER_OPTIMIZER, graph.argument_defaults('sim_only'), 'sim_only')
    assert 'run_dir' not in overrides
    bridge = graph.parameter_overrides(graph.HARDWARE_BRIDGE, graph.argument_defaults('hardware'), 'hardware')
    assert bridge['autostart'] is False
    # on hardware the bridge talks to the robot's topics and runs signed goals only
    assert bridge['transport'] == 'topics' and bridge['require_policy_key'] is True
    simulated = graph.parameter_overrides(graph.HARDWARE_BRIDGE, graph.argument_defaults('sim_only'), 'sim_only')
    assert simulated['autostart'] is True
    assert 'transport' not in simulated and 'require_policy_key' not in simulated      # the params file's
    # only a sim-only run has an evaluator; hardware runs keep to safe improvement
    hardware = graph.parameter_overrides(graph.OUTER_OPTIMIZER, graph.argument_defaults('hardware'), 'hardware')
    assert hardware['evaluator'] == '' and hardware['safe_improvement'] is True
    # on hardware real episodes go by the run_episodes action (feedback, cancel), never as one service call
    assert hardware['run_episodes_via'] == 'action' and 'run_episodes_via' not in overrides
    # sim-only runs sync their run dir once a second; on hardware every file is on disk before the loop goes on
    assert hardware['sync_period_s'] == 0.0
    assert launcher.parse_assignments('sim_only', ['sync_period_s:=0'])['sync_period_s'] == '0'
    for bad in ('-1', 'soon', 'nan'):
        with pytest.raises(launcher.LaunchError, match=f'sync_period_s:={bad!r}: expected a number of seconds'):
            launcher.parse_assignments('sim_only', [f'sync_period_s:={bad}'])
    assert launcher.parse_assignments('hardware', ['safe_improvement:=false'])['safe_improvement'] == 'false'
    with pytest.raises(launcher.LaunchError, match='expected true or false'):
        launcher.parse_assignments('sim_only', ['safe_improvement:=maybe'])
    with pytest.raises(ValueError, match='expected true or false'):
        graph.typed_value('use_sim_time', 'yes please')
    with pytest.raises(ValueError, match='expected an integer'):
        graph.typed_value('seed', '1.5')


def test_real_data_plans_an_offline_graph_without_bridge_emulator_or_evaluator():
    for mode in ('sim_only', 'hardware'):
        arguments = launcher.parse_assignments(mode, ['problem:=lqr', 'real_data:=/data/a,/data/b', 'containers:=none'])
        plans = launcher.plan(mode, arguments)
        assert [p.spec.name for p in plans] == ['differentiable_simulator', 'inner_trainer', 'sensitivity',
                                                'outer_optimizer']
        optimizer = plans[-1].parameters
        assert optimizer['real_data'] == '/data/a,/data/b' and optimizer['evaluator'] == ''
    online = launcher.plan('sim_only', launcher.parse_assignments('sim_only', ['problem:=lqr', 'containers:=none']))
    assert 'real_data' not in online[-1].parameters and online[-1].parameters['evaluator'] == 'robot_emulator/evaluate'
    learning = graph.processes('sim_only', 'learning,robot', offline=True)
    assert [(spec.name, len(members)) for spec, members in learning] == [('learning', 4)]


def test_launcher_plans_every_node_with_the_shipped_params_file(tmp_path):
    arguments = launcher.parse_assignments('sim_only', ['problem:=discrete_3s2a', 'namespace:=ns', 'seed:=2',
                                                        'containers:=none'])
    plans = launcher.plan('sim_only', arguments)
    assert [p.spec.name for p in plans] == [s.name for s in graph.nodes('sim_only')]
    for item in plans:
        command = item.command
        assert command[1:3] == ['-m', f'sim2real_bilevel.nodes.{item.spec.executable}']
        assert Path(command[command.index('--params-file') + 1]) == CONFIG / 'discrete_3s2a_params.yaml'
        assert '__ns:=/ns' in command


def test_launcher_refuses_unknown_arguments_and_missing_files():
    with pytest.raises(launcher.LaunchError, match='unknown launch argument'):
        launcher.parse_assignments('sim_only', ['problme:=x'])
    with pytest.raises(launcher.LaunchError, match='NAME:=VALUE'):
        launcher.parse_assignments('sim_only', ['problem=x'])
    with pytest.raises(launcher.LaunchError, match='no such file'):
        launcher.plan('sim_only', launcher.parse_assignments('sim_only', ['params_file:=/no/such.yaml']))
    with pytest.raises(launcher.LaunchError, match=r"no parameter file pendulum_urdf_params.yaml for problem "
                                                  r"'pendulum_urdf' "
                                                  r"in .*on hardware the bridge's joints and limits must be your own"):
        launcher.plan('hardware', launcher.parse_assignments('hardware', ['problem:=pendulum_urdf']))


def test_params_file_beside_a_users_problem_else_the_nodes_defaults(tmp_path):
    """A problem file given by path takes <stem>_params.yaml from its own folder (never the
    package's, whose pendulum_params.yaml is not about the user's pendulum.yaml); without one, and
    for a shipped problem without one, a sim-only run uses the nodes' defaults; hardware refuses."""
    problem = tmp_path / 'pendulum.yaml'
    problem.write_text('kind: robot\n')
    assert params_of_plan(problem) is None
    assert params_of_plan('pendulum_urdf') is None
    with pytest.raises(launcher.LaunchError, match=r"pendulum_params.yaml for problem '.*pendulum.yaml' beside the "
                                                  r"problem file"):
        params_of_plan(problem, 'hardware')
    (tmp_path / 'pendulum_params.yaml').write_text('/**/outer_optimizer:\n  ros__parameters:\n    iterations: 3\n')
    assert params_of_plan(problem) == str(tmp_path / 'pendulum_params.yaml')
    assert params_of_plan(problem, 'hardware') == str(tmp_path / 'pendulum_params.yaml')
    assert params_of_plan('pendulum') == str(CONFIG / 'pendulum_params.yaml')


@pytest.mark.parametrize('path', sorted(CONFIG.glob('*_params.yaml')), ids=lambda p: p.name)
def test_parameter_files_name_only_graph_nodes_in_any_namespace(path):
    document = yaml.safe_load(path.read_text())
    names = {spec.name for spec in graph.MODES['sim_only']}
    for key, section in document.items():
        assert key.startswith('/**/'), f'{path.name}: {key} would not match namespaced nodes'
        assert key[len('/**/'):] in names, f'{path.name}: {key} is not a node of the graph'
        assert set(section) == {'ros__parameters'}


@pytest.mark.skipif(importlib.util.find_spec('launch_ros') is None, reason='launch_ros is not installed')
@pytest.mark.parametrize('mode', sorted(graph.MODES))
def test_launch_files_describe_the_graph(mode):
    from launch.actions import DeclareLaunchArgument
    spec = importlib.util.spec_from_file_location(f'{mode}_launch', PACKAGE_ROOT / 'launch' / f'{mode}.launch.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = {a.name: a for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert {a.name for a in graph.LAUNCH_ARGUMENTS} <= set(declared)
    assert all(a.description for a in declared.values())


def test_containers_group_each_side_into_one_process_and_keep_the_node_names():
    assert [(spec.name, [m.name for m in members]) for spec, members in graph.processes('sim_only')] == \
        [(s.name, [s.name]) for s in graph.nodes('sim_only')]
    grouped = {spec.name: (spec, [m.name for m in members])
               for spec, members in graph.processes('sim_only', 'learning, robot')}
    assert set(grouped) == {'learning', 'robot'}
    assert grouped['learning'][1] == ['differentiable_simulator', 'inner_trainer', 'sensitivity', 'outer_optimizer']
    assert grouped['robot'][1] == ['hardware_bridge', 'robot_emulator']
    # the learning side never shares a process with the robot side
    assert not set(graph.CONTAINERS['learning']) & set(graph.CONTAINERS['robot'])
    # on hardware the robot side is the bridge alone: its own process, under its own name
    hardware = {spec.name: [m.name for m in members] for spec, members in graph.processes('hardware', 'learning,robot')}
    assert hardware == {'learning': list(graph.CONTAINERS['learning']), 'hardware_bridge': ['hardware_bridge']}
    with pytest.raises(ValueError, match=r"containers:='learning,robots'.*unknown container\(s\) \['robots'\]"):
        graph.processes('sim_only', 'learning,robots')
    with pytest.raises(launcher.LaunchError, match='unknown container'):
        launcher.parse_assignments('sim_only', ['containers:=everything'])


def test_launcher_plans_a_container_per_side_with_every_members_overrides():
    arguments = launcher.parse_assignments('sim_only', ['containers:=learning,robot', 'namespace:=ns', 'seed:=2',
                                                        'run_dir:=/runs/x'])
    plans = launcher.plan('sim_only', arguments)
    assert [p.spec.name for p in plans] == ['learning', 'robot']
    assert launcher.optimizer_process(plans) == 'learning'
    learning, robot = (p.command for p in plans)
    assert learning[1:7] == ['-m', 'sim2real_bilevel.nodes.container', 'differentiable_simulator', 'inner_trainer',
                             'sensitivity', 'outer_optimizer']
    assert not any(a.startswith('__node:=') for a in learning + robot)      # the members keep their names
    assert '__ns:=/ns' in learning and "run_dir:='/runs/x'" in learning and 'seed:=2' in learning
    assert 'autostart:=true' in robot and robot[3:5] == ['hardware_bridge', 'robot_emulator']
    assert launcher.optimizer_process(launcher.plan('sim_only', launcher.parse_assignments(
        'sim_only', ['containers:=none']))) == 'outer_optimizer'


@pytest.mark.parametrize('mode, assignments, processes', [
    ('sim_only', [], ['learning', 'robot']),
    ('sim_only', ['robot_mode:=realtime'], ['learning', 'hardware_bridge', 'robot_emulator']),
    ('sim_only', ['real_data:=/data/a'], ['learning']),
    ('sim_only', ['containers:=none'], [s.name for s in graph.nodes('sim_only')]),
    ('sim_only', ['containers:='], [s.name for s in graph.nodes('sim_only')]),
    ('sim_only', ['containers:=learning'], ['learning', 'hardware_bridge', 'robot_emulator']),
    ('hardware', [], [s.name for s in graph.nodes('hardware')]),
    ('hardware', ['robot_mode:=realtime'], [s.name for s in graph.nodes('hardware')]),
], ids=['sim-lockstep', 'sim-realtime', 'sim-offline', 'none', 'empty', 'learning', 'hardware', 'hardware-realtime'])
def test_containers_auto_is_both_sides_in_a_lockstep_sim_run_and_keeps_the_robots_own_processes(
        mode, assignments, processes):
    """The default (containers:=auto): the fast lockstep sim-only loop in two processes; the real-time
    robot's emulator and bridge keep their own processes, as does every node on hardware."""
    arguments = launcher.parse_assignments(mode, ['problem:=lqr', *assignments])
    assert graph.argument_defaults(mode)['containers'] == 'auto'
    assert [p.spec.name for p in launcher.plan(mode, arguments)] == processes
    with pytest.raises(launcher.LaunchError, match=r"containers:='learning,auto'.*expected auto or none or a "
                                                   r"comma-separated list of \['learning', 'robot'\]"):
        launcher.parse_assignments(mode, ['containers:=learning,auto'])


@pytest.mark.parametrize('section, parameters, realtime', [
    ('/**/robot_emulator', {'mode': 'realtime'}, True),
    ('/run1/robot_emulator', {'mode': 'realtime'}, True),
    ('robot_emulator', {'mode': 'lockstep'}, False),
    ('/**/hardware_bridge', {'loop': 'timer', 'transport': 'topics'}, True),
    ('/**/hardware_bridge', {'loop': 'lockstep', 'transport': 'topics'}, False),
    ('/**', {'mode': 'realtime'}, True),
    ('/**/outer_optimizer', {'mode': 'realtime'}, False),
], ids=['emulator', 'namespaced', 'lockstep', 'bridge-timer', 'bridge-lockstep', 'wildcard', 'other-node'])
def test_containers_auto_keeps_a_robot_made_real_time_by_the_params_file_in_its_own_processes(
        tmp_path, section, parameters, realtime):
    """robot_mode:=realtime is one way to a real-time robot; a params file setting the emulator's mode
    or the bridge's loop is the other, and containers:=auto must not put that robot in one executor."""
    params = yaml.safe_load((CONFIG / 'pendulum_params.yaml').read_text())
    params[section] = {'ros__parameters': {**params.get(section, {}).get('ros__parameters', {}), **parameters}}
    path = tmp_path / 'params.yaml'
    path.write_text(yaml.safe_dump(params))
    assert graph.params_file_realtime(path) is realtime
    plans = launcher.plan('sim_only', launcher.parse_assignments('sim_only', ['problem:=pendulum',
                                                                             f'params_file:={path}']))
    assert [p.spec.name for p in plans] == (['learning', 'hardware_bridge', 'robot_emulator'] if realtime
                                            else ['learning', 'robot'])
    assert not graph.params_file_realtime(tmp_path / 'missing.yaml')
    (tmp_path / 'bad.yaml').write_text('[unclosed')
    assert not graph.params_file_realtime(tmp_path / 'bad.yaml')


def test_every_node_module_can_be_a_container_member():
    from sim2real_bilevel.nodes import container
    assert set(container.MEMBERS) == {s.executable for s in graph.MODES['sim_only']}
    for executable, name in container.MEMBERS.items():
        assert f'class {name}(' in (PACKAGE_ROOT / 'sim2real_bilevel' / 'nodes' / f'{executable}.py').read_text()
    assert container.member_names(['container', 'outer_optimizer', 'sensitivity', '--ros-args', '-p', 'seed:=1']) \
        == ['sensitivity', 'outer_optimizer']
    with pytest.raises(SystemExit, match='unknown'):
        container.member_names(['container', 'optimizer'])


@pytest.mark.skipif(importlib.util.find_spec('launch_ros') is None, reason='launch_ros is not installed')
def test_launch_file_starts_the_containers_it_is_asked_for():
    from launch import LaunchContext
    from launch.actions import GroupAction, OpaqueFunction, RegisterEventHandler
    from launch_ros.actions import Node
    description = graph.launch_description('sim_only')
    opaque = next(e for e in description.entities if isinstance(e, OpaqueFunction))
    executables = {}
    for containers, robot_mode in (('', 'lockstep'), ('learning,robot', 'lockstep'), ('auto', 'lockstep'),
                                   ('auto', 'realtime')):
        context = LaunchContext()
        context.launch_configurations.update(graph.argument_defaults('sim_only')
                                             | {'containers': containers, 'robot_mode': robot_mode})
        entities = opaque.execute(context)
        group = next(e for e in entities if isinstance(e, GroupAction))
        nodes = [a for a in group.get_sub_entities() if isinstance(a, Node)]
        executables[containers, robot_mode] = sorted(n.node_executable for n in nodes)
        assert sum(isinstance(e, RegisterEventHandler) for e in entities) == 1      # the optimizer's process
    assert executables['', 'lockstep'] == sorted(s.executable for s in graph.nodes('sim_only'))
    assert executables['learning,robot', 'lockstep'] == executables['auto', 'lockstep'] == ['container', 'container']
    assert executables['auto', 'realtime'] == ['container', 'hardware_bridge', 'robot_emulator']


@pytest.mark.skipif(importlib.util.find_spec('launch_ros') is None, reason='launch_ros is not installed')
def test_launch_file_takes_the_params_file_the_pip_launcher_takes(tmp_path):
    from launch import LaunchContext
    from launch.actions import GroupAction, OpaqueFunction
    from launch_ros.actions import Node
    from launch_ros.parameter_descriptions import ParameterFile
    description = graph.launch_description('sim_only')
    opaque = next(e for e in description.entities if isinstance(e, OpaqueFunction))
    problem = tmp_path / 'arm.yaml'
    problem.write_text('kind: urdf\n')
    (tmp_path / 'arm_params.yaml').write_text('/**/outer_optimizer:\n  ros__parameters:\n    iterations: 3\n')
    for name, expected in (('pendulum', str(CONFIG / 'pendulum_params.yaml')), ('pendulum_urdf', None),
                           (str(problem), str(tmp_path / 'arm_params.yaml'))):
        context = LaunchContext()
        context.launch_configurations.update(graph.argument_defaults('sim_only') | {'problem': name})
        group = next(e for e in opaque.execute(context) if isinstance(e, GroupAction))
        for node in (a for a in group.get_sub_entities() if isinstance(a, Node)):
            files = [str(p.evaluate(context)) for p in node._Node__parameters      # the file; then the overrides
                     if isinstance(p, ParameterFile)]
            assert files == ([expected] if expected else []), (name, node.node_executable, files)
        assert params_of_plan(name) == expected


def params_of_plan(problem, mode='sim_only'):
    """The params file the pip-only launcher gives every process of a ``mode`` run of ``problem``."""
    commands = [p.command for p in launcher.plan(mode, launcher.parse_assignments(mode, [f'problem:={problem}']))]
    files = {c[c.index('--params-file') + 1] if '--params-file' in c else None for c in commands}
    assert len(files) == 1
    return files.pop()


def _plan_parameters(plans, node):
    """The ``-p NAME:=VALUE`` overrides of the process running ``node``, as a dict of texts."""
    command = next(p.command for p in plans if node in [m.name for m in p.members] or p.spec.name == node)
    return dict(command[i + 1].split(':=', 1) for i, a in enumerate(command) if a == '-p')


def test_robot_mode_realtime_sets_the_emulator_and_the_bridge_loop_and_passes_the_rates_through():
    defaults = graph.argument_defaults('sim_only')
    assert defaults['robot_mode'] == 'lockstep' and all(defaults[n] == '' for n in graph.REALTIME_ARGUMENTS)
    for node in ('hardware_bridge', 'robot_emulator', 'outer_optimizer'):     # lockstep: the params file's
        assert graph.realtime_overrides(node, defaults) == {}
    arguments = launcher.parse_assignments('sim_only', [
        'robot_mode:=realtime', 'control_rate:=250', 'state_rate:=500', 'state_latency_s:=0.01',
        'state_jitter_s:=0.005', 'state_drop_rate:=0.05', 'command_latency_s:=0.002'])
    bridge = graph.parameter_overrides(graph.HARDWARE_BRIDGE, arguments, 'sim_only')
    emulator = graph.parameter_overrides(graph.ROBOT_EMULATOR, arguments, 'sim_only')
    assert bridge['transport'] == 'topics' and bridge['loop'] == 'timer' and bridge['control_rate'] == 250.0
    assert 'state_rate' not in bridge and 'mode' not in bridge
    assert emulator['mode'] == 'realtime' and emulator['state_rate'] == 500.0
    assert (emulator['state_latency_s'], emulator['state_jitter_s'], emulator['state_drop_rate'],
            emulator['command_latency_s']) == (0.01, 0.005, 0.05, 0.002)
    assert 'command_jitter_s' not in emulator and 'control_rate' not in emulator        # empty: the params file's
    # what the launch files add to each node's parameters (graph.launch_description calls the same)
    robot = graph.fixed_parameters('sim_only', (graph.HARDWARE_BRIDGE, graph.ROBOT_EMULATOR), arguments)
    assert robot['loop'] == 'timer' and robot['mode'] == 'realtime' and robot['state_drop_rate'] == 0.05
    optimizer = graph.parameter_overrides(graph.OUTER_OPTIMIZER, arguments, 'sim_only')
    assert not set(optimizer) & {'mode', 'loop', 'transport', 'control_rate', 'state_rate'}
    # the processes get them as -p overrides, in a robot container too (each member takes its own)
    for containers in ('', 'learning,robot'):
        plans = launcher.plan('sim_only', arguments | {'containers': containers})
        assert _plan_parameters(plans, 'hardware_bridge')['loop'] == "'timer'"
        assert _plan_parameters(plans, 'robot_emulator')['mode'] == "'realtime'"
        assert _plan_parameters(plans, 'robot_emulator')['state_latency_s'] == '0.01'


@pytest.mark.parametrize('assignments,message', [
    (['robot_mode:=fast'], r"robot_mode:='fast': expected one of \['lockstep', 'realtime'\]"),
    (['state_latency_s:=0.01'], r"state_latency_s:='0.01' applies to the real-time robot only"),
    (['robot_mode:=realtime', 'control_rate:=fast'], r"control_rate:='fast': expected a number"),
    (['robot_mode:=realtime', 'state_drop_rate:=-0.1'], r"state_drop_rate:='-0.1': expected a number >= 0"),
])
def test_robot_mode_arguments_are_checked_before_anything_starts(assignments, message):
    with pytest.raises(launcher.LaunchError, match=message):
        launcher.parse_assignments('sim_only', assignments)



ROBOT_PARAMS = [path for path in sorted(CONFIG.glob('*_params.yaml'))
                if (CONFIG / path.name.replace('_params.yaml', '.yaml')).exists()
                and yaml.safe_load((CONFIG / path.name.replace('_params.yaml', '.yaml')).read_text())['kind']
                in ('robot', 'urdf')]


def test_every_shipped_robot_task_has_a_params_file():
    """Without one a sim-only run takes the bridge's node defaults (effort 2 N m, +-3.2 rad), which
    would clamp the swing-up's shoulder and the iiwa's every joint on the topic transport, and
    `launch hardware` refuses."""
    tasks = sorted(p.stem for p in CONFIG.glob('*.yaml') if not p.stem.endswith('_params')
                   and yaml.safe_load(p.read_text())['kind'] in ('robot', 'urdf'))
    assert {'pendulum', 'swingup', 'iiwa_payload'} <= set(tasks)
    assert [p.name for p in ROBOT_PARAMS] == [f'{t}_params.yaml' for t in tasks if (CONFIG / f'{t}_params.yaml')
                                              .exists()]
    missing = [t for t in tasks if not (CONFIG / f'{t}_params.yaml').exists()]
    assert missing in ([], ['pendulum_urdf']), missing     # pendulum_urdf: the pendulum's URDF twin, sim-only


@pytest.mark.parametrize('path', ROBOT_PARAMS, ids=lambda p: p.name)
def test_a_shipped_bridge_commands_the_whole_actuator_range_the_policy_was_trained_on(path):
    from sim2real_bilevel.core.problems import load_problem
    assert_the_bridge_fits_the_task(load_problem(CONFIG / path.name.replace('_params.yaml', '.yaml')),
                                    yaml.safe_load(path.read_text()))


def assert_the_bridge_fits_the_task(problem, document: dict):
    """The bridge's joints (a params file ``document``'s) are the task's, and its command filter is
    not tighter than the simulator's actuator (the class of failure measured on the pendulum: a
    filter at half the range made the nominal policy fall in 16 of 32 episodes); the task's start
    states are inside its state bounds, and those clear the task's termination (the bridge checks
    its bounds first and aborts the whole goal: at a bound equal to a termination bound, the task
    would never end an episode itself).  Returns the bounds."""
    from sim2real_bilevel.nodes.joints import bridge_joint_bounds, controlled_joints, parse_joint_limits
    from sim2real_bilevel.nodes.safety import effort_below_actuator
    bridge = document['/**/hardware_bridge']['ros__parameters']
    joints, _ = controlled_joints(bridge['joints'], problem.joints())
    assert controlled_joints(document['/**/robot_emulator']['ros__parameters']['joints'], problem.joints())[0] == joints
    bounds = bridge_joint_bounds(joints, problem.joints(), bridge,
                                 parse_joint_limits(bridge.get('joint_limits', ''), joints))
    actuator = np.asarray(problem.actuator_range())
    assert effort_below_actuator(bounds, tuple(actuator)) is None
    assert np.all(bounds.effort_rate >= actuator - 1e-9), bounds.describe()      # zero to full in one step
    start = problem.start_pose()
    assert bounds.violation(np.asarray(start), np.zeros(len(joints))) is None
    termination = problem.termination_bounds()
    if termination is not None:
        speed, low, high = (np.asarray(v) for v in (termination.max_speed, termination.position_low,
                                                     termination.position_high))
        assert np.all(~np.isfinite(speed) | (speed < bounds.velocity)), bounds.describe()
        assert np.all(~np.isfinite(low) | (bounds.lower < low)), bounds.describe()
        assert np.all(~np.isfinite(high) | (high < bounds.upper)), bounds.describe()
    return bounds
