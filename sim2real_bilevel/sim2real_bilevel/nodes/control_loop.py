"""The hardware bridge's timer-driven control loop (``loop: timer``) on the topic transport.

A real robot does not wait for its controller: its joint_states arrive on the robot's clock,
late or not at all.  This loop runs on a wall-clock timer (steady clock) at ``control_rate``
(0: the controller's own rate, 1 / its ``control_period``).  Each tick takes the newest state
(by its stamp: older ones arriving late are ignored), runs the policy and publishes one command
through the bridge's filter.  It measures, per goal:
- the period jitter, |time between ticks - period|;
- the state age at use, the tick's ROS time minus the state's stamp (latency included; across
  hosts the clocks must be synchronised);
- deadline misses: control slots whose command did not go out before the next slot began
  (a late tick, or slots skipped by an overloaded executor);
- dropped states: gaps between consecutive stamps in units of the robot's state period (the
  median gap), ticks that reused the previous state, states that arrived out of order;
- the policy's evaluation time against the period.
The episode aborts (zero command, reason) when the newest state is older than
``max_state_age_s``, when an episode has more than ``max_deadline_misses`` misses, on a joint
outside its bounds, an e-stop or a deactivation.  A terminal state of the task
(``episode_ends.py``) ends the episode instead, at the tick that reads it: zero command, and the
goal goes on with the next episode's reset.  The episodes carry the stamps of the states
used and the send times of the commands (``Trajectories.state_times`` / ``command_times``),
and the result and /diagnostics the timing.  The controller must compute its reward from what
it senses (``needs_reward`` false): a real robot has no reward topic.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from diagnostic_msgs.msg import KeyValue
from rclpy.clock import Clock, ClockType
from rclpy.task import Future
from sim2real_bilevel_interfaces.action import RunEpisodes

from . import conversions

POLICY_TIME_WARNING = 0.5      # policy evaluation above this fraction of the period is warned about


def percentile(values, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float('nan')


@dataclass
class LoopTiming:
    """The timing of one goal's episodes on the timer loop (seconds)."""
    period: float
    periods: list = field(default_factory=list)       # time between consecutive ticks
    ages: list = field(default_factory=list)          # state age at use
    policy_times: list = field(default_factory=list)  # controller.command() evaluation time
    work_times: list = field(default_factory=list)    # tick start to command sent (checks, policy, filter)
    ticks: int = 0                                    # ticks that ran
    slots: int = 0                                    # control periods elapsed (ticks + skipped)
    deadline_misses: int = 0
    dropped_states: int = 0
    reused_states: int = 0
    late_states: int = 0                              # arrived after a newer one: ignored

    def count_drops(self, stamps_ns) -> None:
        """States lost between the stamps received in one episode, from their gaps in units of
        the median gap (the robot's state period)."""
        gaps = np.diff(np.asarray(stamps_ns, dtype=np.float64))
        gaps = gaps[gaps > 0]
        if gaps.size >= 2:
            self.dropped_states += int(np.maximum(np.round(gaps / np.median(gaps)) - 1, 0).sum())

    def summary(self) -> dict:
        jitter = np.abs(np.asarray(self.periods) - self.period) * 1e3
        ages, policy = np.asarray(self.ages) * 1e3, np.asarray(self.policy_times) * 1e3
        work = np.asarray(self.work_times) * 1e3
        return {'control_rate_hz': 1.0 / self.period, 'ticks': self.ticks, 'slots': self.slots,
                'period_jitter_p50_ms': percentile(jitter, 50), 'period_jitter_p99_ms': percentile(jitter, 99),
                'period_jitter_max_ms': float(jitter.max()) if jitter.size else float('nan'),
                'state_age_p50_ms': percentile(ages, 50), 'state_age_p99_ms': percentile(ages, 99),
                'state_age_max_ms': float(ages.max()) if ages.size else float('nan'),
                'deadline_misses': self.deadline_misses,
                'misses_per_1000_ticks': 1000.0 * self.deadline_misses / max(self.slots, 1),
                'dropped_states': self.dropped_states, 'reused_states': self.reused_states,
                'late_states': self.late_states,
                'policy_time_p50_ms': percentile(policy, 50), 'policy_time_p99_ms': percentile(policy, 99),
                'policy_time_max_ms': float(policy.max()) if policy.size else float('nan'),
                'policy_time_p99_of_period': percentile(policy, 99) / (self.period * 1e3),
                'tick_work_p50_ms': percentile(work, 50), 'tick_work_p99_ms': percentile(work, 99)}


def key_values(summary: dict, prefix: str = '') -> list[KeyValue]:
    """A timing summary as diagnostic_msgs/KeyValue entries (keys prefixed by ``prefix``)."""
    return [KeyValue(key=prefix + key, value=f'{value:.6g}' if isinstance(value, float) else str(value))
            for key, value in summary.items()]


class EpisodeLoop:
    """One episode on a steady-clock timer: ``await loop.run()`` gives None (done: at the horizon,
    or at a terminal state of the task, then ``end`` says where and why) or the reason it was
    aborted."""

    def __init__(self, transport, controller, bounds, command_filter, timing: LoopTiming, episode: int, ends):
        self.transport = transport
        self.ends = ends                       # EpisodeEnds: the goal's terminal-state ends
        self.end = None                        # this episode's EpisodeEnd, when a terminal state stopped it
        self.end_command_time: Optional[int] = None    # when the zero command of that end left (ns)
        self.bridge = transport.bridge
        self.controller = controller
        self.bounds = bounds                   # JointBounds: each joint's limits
        self.command_filter = command_filter
        self.timing = timing
        self.episode = episode
        self.t = 0                       # the controller's step
        self.slot = -1                   # the control slot served by the last tick
        self.previous_tick: Optional[float] = None
        self.used_stamp: Optional[int] = None
        self.state_times: list[int] = []
        self.command_times: list[int] = []
        self.misses = 0
        self.finished = Future()
        self.origin = 0.0
        self.timer = None

    async def run(self) -> Optional[str]:
        period = self.timing.period
        self.origin = time.monotonic()     # slot k runs in [origin + (k+1) period, origin + (k+2) period)
        self.timer = self.bridge.create_timer(period, self.tick, clock=Clock(clock_type=ClockType.STEADY_TIME))
        try:
            return await self.finished
        finally:
            self.bridge.destroy_timer(self.timer)

    def times(self, horizon: int) -> tuple[list[int], list[int]]:
        """The episode's state stamps (horizon + 1) and command send times (horizon), ns; after a
        terminal-state end they hold: its stamp, and the zero command's send time."""
        states, commands = list(self.state_times), list(self.command_times)
        states += states[-1:] * (horizon + 1 - len(states))
        commands += [self.end_command_time] * (horizon - len(commands))
        return states, commands

    def finish(self, reason: Optional[str]) -> None:
        self.timer.cancel()
        if not self.finished.done():
            self.finished.set_result(reason)

    def tick(self) -> None:
        if self.finished.done():
            return
        try:
            reason = self._tick()
        except Exception as err:            # a failing policy must not leave the robot commanded
            reason = f'control loop failed: {type(err).__name__}: {err}'
        if reason is not None or self.t > self.controller.horizon:
            self.finish(reason)

    def _tick(self) -> Optional[str]:
        bridge, timing, transport = self.bridge, self.timing, self.transport
        period, where = timing.period, f'(episode {self.episode}, step {self.t})'
        now = time.monotonic()
        if self.previous_tick is not None:
            timing.periods.append(now - self.previous_tick)
        self.previous_tick = now
        slot = self.slot + 1
        if now >= self.origin + (slot + 2) * period:      # this slot's deadline passed before it ran
            late_slot = int((now - self.origin) / period) - 1      # the slot now running
            self.misses += late_slot - slot                          # slots that got no command
            timing.deadline_misses += late_slot - slot
            slot = late_slot
        timing.ticks += 1
        timing.slots += slot - self.slot
        self.slot = slot
        if bridge.estopped:
            return f'E-STOP: {bridge.estop_reason}'
        if not bridge.active:
            return 'the bridge was deactivated'
        if transport.state_error is not None:
            return f'{transport.state_error} {where}'
        stamp = transport.latest_stamp
        age = (bridge.get_clock().now().nanoseconds - stamp) * 1e-9
        timing.ages.append(age)
        if age > bridge.parameters['max_state_age_s']:
            return (f'stale state: the newest joint_states is {age * 1e3:.1f} ms old, limit max_state_age_s = '
                    f'{bridge.parameters["max_state_age_s"] * 1e3:g} ms {where}')
        if stamp == self.used_stamp:
            timing.reused_states += 1
        self.used_stamp = stamp
        position, velocity = transport.latest_state, transport.latest_velocity
        if velocity.size != position.size:
            return (f'joint_states without velocities for {bridge.joints}: the velocity limit cannot be '
                    f'checked {where}')
        violation = self.bounds.violation(position, velocity)
        if violation is not None:
            return f'state bounds: {violation} {where}'
        self.controller.observe(position, velocity)
        self.state_times.append(stamp)
        self.end = self.ends.check(self.controller, self.episode, self.t)
        if self.end is not None:               # the task's end, not an abort: stop commanding
            bridge.send_zero_command()
            self.end_command_time = bridge.get_clock().now().nanoseconds
            self.t = self.controller.horizon + 1
            return None
        if self.t == self.controller.horizon:
            self.t += 1
            return None
        started = time.monotonic()
        requested = self.controller.command()
        timing.policy_times.append(time.monotonic() - started)
        command = [float(c) for c in self.command_filter(requested)]
        estop = bridge.send_command(command)
        if estop is not None:
            return f'E-STOP: {estop}'
        self.command_times.append(bridge.get_clock().now().nanoseconds)
        sent = time.monotonic()
        timing.work_times.append(sent - now)
        if sent >= self.origin + (slot + 2) * period:       # the command went out too late
            self.misses += 1
            timing.deadline_misses += 1
        self.controller.record(command, None)
        self.t += 1
        if self.misses > bridge.parameters['max_deadline_misses']:
            return (f'{self.misses} deadline misses in this episode, limit max_deadline_misses = '
                    f'{bridge.parameters["max_deadline_misses"]} {where}')
        return None


async def run_timed(transport, goal, goal_handle, controller, bounds,
                    fail: Callable[[str], RunEpisodes.Result], version: int,
                    feedback: Callable[[str, int], None], ends) -> RunEpisodes.Result:
    """The goal's episodes on the timer loop (the topic transport's ``run`` for ``loop: timer``);
    ``feedback(status, episodes_done)`` tells the goal's client what a reset waits for and which
    episode ended at a terminal state (``ends``, ``episode_ends.EpisodeEnds``).  After such an end
    the episode's timestamps hold: the terminal state's stamp, and the zero command's send time."""
    bridge, waits = transport.bridge, transport.bridge.waits
    rate = bridge.parameters['control_rate'] or (1.0 / controller.control_period if controller.control_period
                                                   else 0.0)
    if not rate:
        return fail('control_rate = 0 and the controller has no control period: set control_rate (Hz)')
    if controller.needs_reward:
        return fail('the timer loop runs controllers that compute their reward from the sensed states '
                    '(needs_reward false): a real robot has no reward topic; use loop lockstep')
    timing = LoopTiming(1.0 / rate)
    command_filter = bounds.command_filter()
    state_times, command_times = [], []

    def failed(reason: str) -> RunEpisodes.Result:
        transport.end_timed_episode()
        result = fail(reason)
        result.timing = key_values(finish_timing(bridge, timing))
        return result

    for episode in range(int(goal.n_episodes)):
        transport.start_timed_episode(bridge.get_clock().now().nanoseconds)
        reset = await transport.reset_robot(True, lambda status, done=episode: feedback(status, done))
        if not reset.success:
            return failed(f'reset failed: {reset.message}')
        timeout = bridge.parameters['watchdog_timeout_s']
        if not await waits.until(transport.state_arrived, timeout) or transport.latest_state is None:
            return failed(transport.stale_reason(f'watchdog: no joint_states within {timeout} s of the reset '
                                                 f'(episode {episode})'))
        controller.start_episode()
        command_filter.reset()
        loop = EpisodeLoop(transport, controller, bounds, command_filter, timing, episode, ends)
        reason = await loop.run()
        stamps, timing.late_states = transport.end_timed_episode(), timing.late_states + transport.late_states
        timing.count_drops(stamps)
        if reason is not None:
            return failed(reason)
        sensed, commanded = loop.times(controller.horizon)
        state_times.append(sensed)
        command_times.append(commanded)
        feedback('' if loop.end is None else loop.end.describe(), episode + 1)
    bridge.send_zero_command()
    summary = finish_timing(bridge, timing)
    batch = controller.batch(version)
    batch.state_times = np.asarray(state_times, dtype=np.float64) * 1e-9
    batch.command_times = np.asarray(command_times, dtype=np.float64) * 1e-9
    return RunEpisodes.Result(success=True, trajectories=conversions.trajectories_to_msg(batch),
                              message=f'{ends.message(int(goal.n_episodes))}command filter: {command_filter.counts()}',
                              timing=key_values(summary))


def finish_timing(bridge, timing: LoopTiming) -> dict:
    """The goal's timing summary, on /diagnostics too; a policy slow for the period is warned about."""
    summary = timing.summary()
    if summary['policy_time_p99_of_period'] > POLICY_TIME_WARNING:
        bridge.get_logger().warning(f'policy evaluation p99 {summary["policy_time_p99_ms"]:.3g} ms is '
                                    f'{summary["policy_time_p99_of_period"]:.0%} of the control period '
                                    f'({timing.period * 1e3:.3g} ms): too little margin')
    bridge.loop_timing = summary
    bridge.publish_diagnostics()
    return summary
