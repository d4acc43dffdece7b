"""The timer loop's bookkeeping without node processes: dropped states counted from stamp gaps,
the timing summary, and the real episodes' timestamps through TrajectoryBatch and checkpoints."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip('sim2real_bilevel_interfaces')

from sim2real_bilevel.core import checkpoint  # noqa: E402
from sim2real_bilevel.core.problem import Trajectories  # noqa: E402
from sim2real_bilevel.nodes import conversions  # noqa: E402
from sim2real_bilevel.nodes.control_loop import LoopTiming  # noqa: E402


def test_dropped_states_are_counted_from_the_gaps_between_stamps():
    period_ns = 10_000_000
    kept = np.delete(np.arange(50), [3, 10, 11, 30, 31, 32])        # 6 states lost, in runs of 1, 2 and 3
    timing = LoopTiming(0.01)
    # a few ns of stamp noise must not count
    timing.count_drops(kept * period_ns + np.random.default_rng(0).integers(-1000, 1000, kept.size))
    assert timing.dropped_states == 6
    timing.count_drops(np.arange(20) * period_ns)                  # a second episode, nothing lost
    assert timing.dropped_states == 6


def test_timing_summary_reports_jitter_age_and_misses_per_1000_slots():
    timing = LoopTiming(0.01, periods=[0.010, 0.011, 0.009, 0.030], ages=[0.002, 0.004],
                        policy_times=[0.001, 0.002], ticks=4, slots=5, deadline_misses=1)
    summary = timing.summary()
    assert summary['period_jitter_max_ms'] == pytest.approx(20.0)
    assert summary['period_jitter_p50_ms'] == pytest.approx(1.0)
    assert summary['state_age_p50_ms'] == pytest.approx(3.0)
    assert summary['misses_per_1000_ticks'] == pytest.approx(200.0)
    assert summary['control_rate_hz'] == pytest.approx(100.0)
    assert summary['policy_time_p99_of_period'] == pytest.approx(0.199, rel=1e-3)


def _real_batch(n=2, horizon=3) -> Trajectories:
    rng = np.random.default_rng(1)
    state_times = 1.8e9 + np.cumsum(np.full((n, horizon + 1), 0.02), axis=1)
    return Trajectories(states=rng.normal(size=(n, horizon + 1, 2)), actions=rng.normal(size=(n, horizon, 1)),
                        rewards=rng.normal(size=(n, horizon)), dones=np.zeros((n, horizon), bool),
                        log_probs=-rng.random((n, horizon)), source='real', policy_version=3,
                        state_times=state_times, command_times=state_times[:, :-1] + 0.001)


def test_real_episode_timestamps_round_trip_through_the_message_and_the_checkpoint(tmp_path):
    batch = _real_batch()
    back = conversions.trajectories_from_msg(conversions.trajectories_to_msg(batch))
    np.testing.assert_array_equal(back.state_times, batch.state_times)
    np.testing.assert_array_equal(back.command_times, batch.command_times)
    checkpoint.save_real_batch(tmp_path, 1, back, {'iteration': 1})
    stored, _ = checkpoint.load_real_batch(tmp_path, 1)
    np.testing.assert_array_equal(stored.command_times, batch.command_times)
    # a batch without them (batched transport, lockstep) stays without them
    plain = conversions.trajectories_from_msg(conversions.trajectories_to_msg(
        Trajectories(**{**batch.__dict__, 'state_times': None, 'command_times': None})))
    assert plain.state_times is None and plain.command_times is None


def test_timestamps_of_the_wrong_size_are_refused_with_the_field_named():
    msg = conversions.trajectories_to_msg(_real_batch())
    msg.command_times = msg.command_times[:-1]
    with pytest.raises(conversions.MessageValidationError, match='TrajectoryBatch.command_times: 5 values, '
                                                                 'expected 6'):
        conversions.trajectories_from_msg(msg)
    batch = _real_batch()
    batch.state_times = batch.state_times[:, :-1]
    with pytest.raises(conversions.MessageValidationError, match=r'Trajectories.state_times: shape \(2, 3\)'):
        conversions.trajectories_to_msg(batch)


# --- the real-time robot's wire, driven by hand (no executor: its timer is never run) ---------------------
class _Node:
    """What RealTimeRobot uses of the emulator node: a timer that is never fired and a clock."""

    def __init__(self):
        from rclpy.clock import Clock, ClockType
        self.clock = Clock(clock_type=ClockType.SYSTEM_TIME)

    def create_timer(self, *args, **kwargs):
        return None

    def destroy_timer(self, timer):
        pass

    def get_clock(self):
        return self.clock


class _System:
    """Records the command of every physics step."""
    control_period = 0.01

    def __init__(self):
        self.applied = []

    def step(self, command):
        from sim2real_bilevel.core.problem import Sample
        self.applied.append(list(command))
        return Sample(position=[float(len(self.applied))], velocity=[0.0])


def _robot(**faults):
    from sim2real_bilevel.nodes.realtime_robot import RealTimeRobot, fault_parameters
    parameters = {spec.name: spec.default for spec in fault_parameters()}
    parameters.update(state_rate=0.0, **faults)
    published = []
    system = _System()
    clock = [1000.0]
    robot = RealTimeRobot(_Node(), system, parameters, np.random.default_rng(0),
                          lambda sample, stamp: published.append((sample.position[0], stamp.nanoseconds)),
                          clock=lambda: clock[0])
    robot.test_clock = clock
    from sim2real_bilevel.core.problem import Sample
    robot.reset(Sample(position=[0.0], velocity=[0.0]))
    return robot, system, published


def _advance(robot, steps: int) -> None:
    """``steps`` periods of the robot's clock pass (plus a little), then its timer ticks."""
    robot.test_clock[0] += steps * robot.period + 1e-6
    robot.tick()


def test_realtime_robot_holds_the_last_command_and_applies_it_only_after_its_latency():
    robot, system, published = _robot(command_latency_s=0.025)
    _advance(robot, 2)
    robot.command([1.0])                 # arrives 25 ms from now: 2.5 periods
    _advance(robot, 4)
    robot.delivery.close()
    assert system.applied == [[0.0]] * 2 + [[0.0]] * 3 + [[1.0]]      # zero-order hold, then the command
    assert [p for p, _ in published] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]   # the reset state, every step
    # the steps one tick caught up with are stamped when each was sensed: one period apart
    # (across ticks the ROS clock, not driven here, does not follow the hand-driven steady one)
    second_tick = [s for _, s in published[3:]]
    assert np.diff(second_tick) == pytest.approx([robot.period * 1e9] * 3, abs=2e3)


def test_realtime_robot_drops_what_its_drop_rates_say():
    robot, system, published = _robot(command_drop_rate=1.0, state_drop_rate=1.0)
    for _ in range(5):
        robot.command([1.0])
    _advance(robot, 3)
    robot.delivery.close()
    assert system.applied == [[0.0]] * 3 and published == []
    assert robot.counts['commands_dropped'] == 5 and robot.counts['states_dropped'] == 4   # reset state too


def test_a_late_timer_is_caught_up_to_a_bound_and_the_rest_counted_as_overruns():
    from sim2real_bilevel.nodes.realtime_robot import MAX_CATCH_UP
    robot, system, _ = _robot()
    _advance(robot, MAX_CATCH_UP + 7)
    robot.delivery.close()
    assert len(system.applied) == MAX_CATCH_UP and robot.counts['overruns'] == 7
