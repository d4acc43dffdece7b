"""The real-time robot and the bridge's timer-driven control loop, as real node processes:
the robot emulator in ``mode: realtime`` (physics on the wall clock, commands held, joint_states
with sensor-data QoS and injected faults) driven by the hardware bridge with ``loop: timer``
on the pendulum (50 Hz)."""
from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('sim2real_bilevel_interfaces')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402

from sim2real_bilevel.nodes import conversions  # noqa: E402
from test_bridge_safety import pendulum_goal, start_pendulum  # noqa: E402
from test_nodes import _parameter, ros  # noqa: E402,F401 (ros: the fixture)

pytestmark = pytest.mark.ros

TIMING_KEYS = {'control_rate_hz', 'ticks', 'slots', 'period_jitter_p50_ms', 'period_jitter_p99_ms',
               'period_jitter_max_ms', 'state_age_p50_ms', 'state_age_p99_ms', 'deadline_misses',
               'misses_per_1000_ticks', 'dropped_states', 'reused_states', 'policy_time_p99_ms', 'tick_work_p99_ms'}


def start_realtime(ros, emulator_parameters=None, **bridge_parameters):
    """The pendulum's bridge on the timer loop and its emulator in realtime mode."""
    return start_pendulum(ros, {'mode': 'realtime', **(emulator_parameters or {})}, loop='timer',
                          **bridge_parameters)


def timing(result) -> dict:
    return {kv.key: float(kv.value) for kv in result.timing}


def assert_aborted(ros, response, reason: str, commands) -> dict:
    """The goal failed for ``reason`` with a zero command as the last word; its timing."""
    assert not response.result.success
    assert reason in response.result.message and 'zero command sent' in response.result.message, \
        response.result.message
    ros.spin_until(lambda: commands and commands[-1] == [0.0], 10.0, 'the zero command')
    return timing(response.result)


# the abort limits of the tests that must not abort: a shared, loaded test machine may hold a
# node off the CPU for tens of milliseconds (what the limits are for on a robot)
LENIENT = dict(max_state_age_s='1.0', max_deadline_misses='1000000')


def test_realtime_episodes_end_to_end_with_timing_and_timestamps(ros):
    bridge, emulator, episodes, commands = start_realtime(ros, **LENIENT)
    diagnostics = []
    ros.node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    request, problem = pendulum_goal(n_episodes=2)
    response = ros.run_goal(episodes, request, timeout=120.0)
    assert response.result.success, response.result.message
    horizon, period = problem.horizon, problem.geometry.control_period
    batch = conversions.trajectories_from_msg(response.result.trajectories)
    assert batch.states.shape == (2, horizon + 1, 2) and batch.actions.shape == (2, horizon, 1)
    # the timestamps of what was sensed and commanded: a command follows the state it used;
    # the robot's states advance at about its period (the loop's own period on a loaded host)
    assert batch.state_times.shape == (2, horizon + 1) and batch.command_times.shape == (2, horizon)
    assert np.all(batch.command_times > batch.state_times[:, :-1])
    assert np.all(np.diff(batch.command_times, axis=1) > 0)
    assert 0.5 * period < np.median(np.diff(batch.command_times, axis=1)) < 1.5 * period
    figures = timing(response.result)
    assert TIMING_KEYS <= set(figures), sorted(figures)
    assert figures['ticks'] == 2 * (horizon + 1) and figures['control_rate_hz'] == pytest.approx(1 / period)
    assert 0 <= figures['state_age_p50_ms'] <= figures['state_age_p99_ms'] < 1000.0    # max_state_age_s
    assert 0 < figures['policy_time_p99_ms'] <= figures['tick_work_p99_ms']
    # the robot moved under the held commands: its states are not the reset state repeated
    assert np.ptp(batch.states[0, :, 0]) > 0
    ros.spin_until(lambda: commands and commands[-1] == [0.0], 10.0, 'the zero command after the episodes')
    ros.spin_until(lambda: any(kv.key == 'loop_state_age_p99_ms' for array in diagnostics
                               for status in array.status for kv in status.values), 10.0,
                   'the loop timing on /diagnostics')
    assert bridge.alive() and emulator.alive()


def test_injected_state_drops_are_counted_as_dropped_states(ros):
    _, emulator, episodes, _ = start_realtime(ros, {'state_drop_rate': 0.3}, **LENIENT)
    request, problem = pendulum_goal()
    response = ros.run_goal(episodes, request, timeout=120.0)
    assert response.result.success, response.result.message
    figures = timing(response.result)
    # 30 % of ~100 states lost: the stamps' gaps show them, and ticks find no fresh state
    assert figures['dropped_states'] >= 10, figures
    assert figures['reused_states'] >= 10, figures
    assert emulator.alive()


def test_stale_state_aborts_with_a_zero_command_and_the_reason(ros):
    """The state latency is set live (ros param) above the bridge's max_state_age_s: the first
    tick finds the state too old, sends a zero command and the goal fails with the reason."""
    bridge, emulator, episodes, commands = start_realtime(ros, max_state_age_s='0.1')
    setter = ros.node.create_client(SetParameters, '/robot_emulator/set_parameters')
    result = ros.call(setter, SetParameters.Request(parameters=[_parameter('state_latency_s', 0.25)])).results[0]
    assert result.successful, result.reason
    request, _ = pendulum_goal()
    response = ros.run_goal(episodes, request, timeout=60.0)
    assert assert_aborted(ros, response, 'stale state', commands)['state_age_max_ms'] > 100.0
    assert bridge.alive() and emulator.alive()


def test_deadline_misses_over_the_limit_abort_the_episode(ros):
    """A control rate no executor can keep (10 kHz: 0.1 ms per tick for the policy, the filter
    and the publication) misses deadlines at once: aborted past max_deadline_misses."""
    # the state-age limit lenient: under load a stale state (its own abort) could come first
    bridge, _, episodes, commands = start_realtime(ros, control_rate='10000.0', max_deadline_misses='3',
                                                   max_state_age_s=LENIENT['max_state_age_s'])
    request, _ = pendulum_goal()
    response = ros.run_goal(episodes, request, timeout=60.0)
    assert assert_aborted(ros, response, 'deadline misses', commands)['deadline_misses'] > 3
    assert bridge.alive()


def test_a_second_commander_appearing_mid_episode_aborts_the_timer_loop(ros):
    """The per-tick check of the command topic's publishers keeps the names between ticks
    (``PublisherNames``) and re-reads them when the publisher count changes: a real second
    publisher that appears while the timer loop runs still latches the e-stop and aborts the
    episode with a zero command."""
    import time
    from std_msgs.msg import Float64MultiArray
    from sim2real_bilevel.nodes.runtime import ROBOT_STREAM
    _, emulator, episodes, commands = start_realtime(ros, **LENIENT)
    request, _ = pendulum_goal(n_episodes=50)            # far longer than the test waits
    handle = ros.send_goal(episodes, request, timeout=60.0)
    assert handle.accepted
    result = handle.get_result_async()
    ros.spin_until(lambda: len(commands) > 20, 60.0, 'the timer loop commanding the robot')
    intruder = ros.node.create_publisher(Float64MultiArray, 'forward_command_controller/commands', ROBOT_STREAM)
    appeared = time.monotonic()
    ros.spin_until(result.done, 60.0, 'the episode aborted by the second commander')
    seconds = time.monotonic() - appeared
    message = result.result().result.message
    assert not result.result().result.success
    assert 'another node publishes on /forward_command_controller/commands: /test_client' in message, message
    ros.spin_until(lambda: commands and commands[-1] == [0.0], 10.0, 'the zero command')
    print(f'\n[commanders] second publisher to aborted episode: {seconds:.3f} s')
    ros.node.destroy_publisher(intruder)
    assert emulator.alive()
