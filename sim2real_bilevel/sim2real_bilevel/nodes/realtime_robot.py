"""The robot emulator's real-time mode (``mode: realtime``): the robot does not wait for the bridge.

Physics steps on a wall-clock timer (steady clock) at the real system's own rate, 1 / its
``control_period``; a late timer is caught up (up to ``MAX_CATCH_UP`` steps, the rest counted
as overruns), so the robot's time keeps pace with the wall clock.  The command in force is the
last one that arrived (zero-order hold; zero after a reset).  ``joint_states`` goes out every
``physics_rate / state_rate`` steps, stamped with the time the state was sensed.  Both
directions can be degraded, live through ROS parameters: a latency, a uniform jitter of
+-jitter around it, and a drop probability (``state_*`` for joint_states, ``command_*`` for
commands).  The faults draw from their own stream, so the episodes' initial states and noise
(drawn from the one real-data stream) are those of a lockstep run with the same seed.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Callable, Optional, Sequence

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration

from .runtime import ParameterSpec

MAX_CATCH_UP = 5         # physics steps one late timer tick may run to catch up with the wall clock


def fault_parameters() -> list[ParameterSpec]:
    """The live parameters of the injected faults, for both directions."""
    specs = []
    for direction, what in (('state', 'joint_states'), ('command', 'commands')):
        specs += [
            ParameterSpec(f'{direction}_latency_s', 0.0, f'realtime mode: delay added to every {what} message (s)',
                          low=0.0, high=1.0),
            ParameterSpec(f'{direction}_jitter_s', 0.0, f'realtime mode: the delay of {what} varies uniformly in '
                          f'latency +- jitter (s, never below 0)', low=0.0, high=1.0),
            ParameterSpec(f'{direction}_drop_rate', 0.0, f'realtime mode: probability that a {what} message is '
                          'lost', low=0.0, high=1.0)]
    return specs


class DelayedDelivery:
    """A thread that runs callbacks (publications) at their due time on the steady clock, in
    order of due time: a latency with jitter may reorder messages, as a network can."""

    def __init__(self):
        self.heap: list = []
        self.order = itertools.count()
        self.condition = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._serve, name='delayed_delivery', daemon=True)
        self.thread.start()

    def put(self, due: float, deliver: Callable[[], None]) -> None:
        with self.condition:
            heapq.heappush(self.heap, (due, next(self.order), deliver))
            self.condition.notify()

    def _serve(self) -> None:
        while True:
            with self.condition:
                while not self.closed and (not self.heap or self.heap[0][0] > time.monotonic()):
                    self.condition.wait(None if not self.heap else self.heap[0][0] - time.monotonic())
                if self.closed:
                    return
                _, _, deliver = heapq.heappop(self.heap)
            deliver()

    def close(self) -> None:
        with self.condition:
            self.closed = True
            self.condition.notify()
        self.thread.join(timeout=1.0)


class RealTimeRobot:
    """Steps ``system`` on a wall-clock timer of ``node`` and delivers its states through
    ``publish(sample, stamp)`` (stamp: the ROS time the state was sensed), with the faults of
    ``parameters``; ``command(values)`` is a command as it arrives from the bridge."""

    def __init__(self, node, system, parameters, rng: np.random.Generator,
                 publish: Callable[[object, object], None], clock: Callable[[], float] = time.monotonic):
        self.node = node
        self.clock = clock                   # the robot's steady clock (s); tests drive it by hand
        self.system = system
        self.parameters = parameters
        self.rng = rng
        self.publish = publish
        self.period = float(system.control_period)
        self.held = None                     # the command in force (None: zero)
        self.zero: list[float] = []          # the zero command, one value per joint (set at reset)
        self.pending: list = []              # (due time, arrival order, command) not yet arrived
        self.order = itertools.count()
        self.lock = threading.Lock()         # the delivery thread and the executor share the counters
        self.counts = {'physics_steps': 0, 'overruns': 0, 'states_published': 0, 'states_dropped': 0,
                       'commands_received': 0, 'commands_dropped': 0}
        self.delivery = DelayedDelivery()
        self.steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.started = clock()
        self.timer = node.create_timer(self.period, self.tick, clock=self.steady)

    def destroy(self) -> None:
        self.node.destroy_timer(self.timer)
        self.delivery.close()

    def _delay(self, direction: str) -> Optional[float]:
        """The delay of one message in ``direction`` ('state', 'command'), None if it is lost."""
        p = self.parameters
        if p[f'{direction}_drop_rate'] > 0 and self.rng.random() < p[f'{direction}_drop_rate']:
            return None
        latency, jitter = p[f'{direction}_latency_s'], p[f'{direction}_jitter_s']
        return max(0.0, latency + (self.rng.uniform(-jitter, jitter) if jitter > 0 else 0.0))

    # --- the robot's side of the wire ------------------------------------------------------------------
    def reset(self, sample) -> None:
        """A new episode started from ``sample``: zero command, nothing in flight to the robot."""
        self.held, self.pending = None, []
        self.zero = [0.0] * len(sample.position)
        self.deliver(sample, self.node.get_clock().now())

    def command(self, values: Sequence[float]) -> None:
        self.counts['commands_received'] += 1
        delay = self._delay('command')
        if delay is None:
            self.counts['commands_dropped'] += 1
            return
        heapq.heappush(self.pending, (self.clock() + delay, next(self.order), list(values)))

    def deliver(self, sample, stamp) -> None:
        """Publish a state now or after its delay, or lose it."""
        delay = self._delay('state')
        with self.lock:
            if delay is None:
                self.counts['states_dropped'] += 1
                return
            self.counts['states_published'] += 1
        if delay == 0.0:
            self.publish(sample, stamp)
        else:
            self.delivery.put(time.monotonic() + delay, lambda: self.publish(sample, stamp))

    def tick(self) -> None:
        """Physics up to the wall clock: each step applies the newest command that has arrived."""
        now = self.clock()
        due = int((now - self.started) / self.period) - self.counts['physics_steps']
        if due > MAX_CATCH_UP:
            self.counts['overruns'] += due - MAX_CATCH_UP
            self.counts['physics_steps'] += due - MAX_CATCH_UP
            due = MAX_CATCH_UP
        ros_now = self.node.get_clock().now()
        rate = self.parameters['state_rate']
        every = max(1, int(round(1.0 / (self.period * rate)))) if rate > 0 else 1
        for _ in range(max(due, 0)):
            self.counts['physics_steps'] += 1
            sensed_at = self.started + self.counts['physics_steps'] * self.period
            while self.pending and self.pending[0][0] <= sensed_at - self.period:
                self.held = heapq.heappop(self.pending)[2]
            sample = self.system.step(self.held if self.held is not None else self.zero)
            if self.counts['physics_steps'] % every == 0:
                self.deliver(sample, ros_now - Duration(nanoseconds=int(max(now - sensed_at, 0.0) * 1e9)))
