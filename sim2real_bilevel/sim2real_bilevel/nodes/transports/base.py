"""What a transport is, and what it may use of the bridge."""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Callable, Optional, Protocol, Sequence

from rclpy.task import Future


class RobotWaits:
    """The bridge's bounded waits inside its async goal callback: ``until(condition, timeout)``
    wakes when a robot message arrives or an awaited future completes (``wake``), and at a
    50 ms tick at the latest; it gives up at the timeout or once ``stopped()`` (deactivated,
    e-stop)."""

    def __init__(self, node, stopped: Callable[[], bool]):
        self.node = node
        self.stopped = stopped
        self.waiters: list[Future] = []

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(True)

    async def until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline or self.stopped():
                return False
            waiter = Future()
            self.waiters.append(waiter)
            timer = self.node.create_timer(min(0.05, timeout_s),
                                           lambda w=waiter: None if w.done() else w.set_result(False))
            await waiter
            self.node.destroy_timer(timer)
            if waiter in self.waiters:      # woken by its timer: only a wake() would drop it otherwise,
                self.waiters.remove(waiter)  # and waits that time out would pile up
        return True

    async def future(self, future: Future, timeout_s: float) -> bool:
        """``until`` for a future: woken the moment it completes (not at the next tick)."""
        future.add_done_callback(lambda _: self.wake())
        return await self.until(future.done, timeout_s)


class BridgeFacilities(Protocol):
    """What of the hardware bridge a transport uses (besides the rclpy Node API)."""
    parameters: object             # DeclaredParameters
    problem: object
    joints: list[str]              # the controlled joints, in the problem's (controller's) order
    visuals: object                # RobotVisuals: ``update(positions)`` with every state read
    active: bool
    estopped: bool
    estop_reason: str
    waits: RobotWaits
    work: object                   # runtime.BackgroundWork: computations a goal awaits off the executor
    filter_counts: dict
    unapplied_checks: dict         # batched: the checks' counts on episodes run without them (since start)

    def send_command(self, values: Sequence[float]) -> Optional[str]:
        """Publish a command unless the e-stop latches for another commander; then its reason."""

    def send_zero_command(self) -> None: ...

    def joint_bounds(self):
        """Every joint's limits now (``safety.JointBounds``, ``nodes/joints.py``)."""

    def episode_ended(self, words: str) -> None:
        """An episode ended at a terminal state of the task: counted, logged, on /diagnostics."""

    def set_reason(self, reason: str, level) -> None:
        """The bridge's state line (diagnostics) becomes ``reason``, published at ``level``."""


class Transport(ABC):
    """Runs a RunEpisodes goal on the robot.  Created at configure (its ROS entities with it) for
    every transport, so ``transport`` can change between goals; destroyed at cleanup."""

    def __init__(self, bridge: BridgeFacilities):
        self.bridge = bridge

    @abstractmethod
    async def run(self, goal, goal_handle):
        """The goal's episodes as a RunEpisodes.Result (success False with the reason)."""

    def destroy(self) -> None:
        """Release this transport's ROS entities."""
