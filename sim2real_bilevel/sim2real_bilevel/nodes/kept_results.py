"""Idempotent run_episodes requests: the results of succeeded goals kept by ``request_id``.

A goal that repeats the ``request_id`` of a goal that succeeded (or is still running), with the
same policy and episode count, gets that goal's result instead of running the robot again --
what a sender that restarted while the robot ran asks for.  Used by the hardware bridge and by
the robot emulator (so a bridge that restarted while the emulator ran gets the episodes too).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np


def fingerprint(goal) -> tuple:
    """What a repeated request_id must match to get the kept result: the policy and the count."""
    policy = goal.policy
    return (int(goal.n_episodes), str(policy.kind), tuple(int(s) for s in policy.shape),
            np.asarray(policy.values, dtype='<f8').tobytes(), int(policy.version), int(policy.theta_version))


class KeptResults:
    """Succeeded results by request_id (at most ``size()``, oldest dropped first) and the
    requests running now (request_id -> a future done when the run ends)."""

    def __init__(self, size: Callable[[], int]):
        self.size = size
        self.results: dict = {}            # request_id -> (fingerprint, result)
        self.running: dict = {}            # request_id -> (fingerprint, future)
        self.resent = 0

    def refusal(self, goal) -> Optional[str]:
        """None when the goal may go on; else why not (a request_id reused for other episodes, or
        ``kept_result_only`` with nothing kept or running)."""
        request = str(goal.request_id)
        held = (self.results.get(request) or self.running.get(request)) if request else None
        if held is not None and held[0] != fingerprint(goal):
            return f'request_id {request!r} already ran with another policy or episode count'
        if held is None and getattr(goal, 'kept_result_only', False):
            return f'no kept result for request_id {request!r} (kept_result_only: the robot is not run)'
        return None

    def known(self, goal) -> bool:
        """The goal's request is kept or running (and matches): the robot will not run for it."""
        request = str(goal.request_id)
        return bool(request) and (request in self.results or request in self.running) and self.refusal(goal) is None

    def kept(self, goal):
        """The kept result of this request, or None."""
        held = self.results.get(str(goal.request_id)) if goal.request_id else None
        if held is None or held[0] != fingerprint(goal):
            return None
        self.resent += 1
        return held[1]

    def running_future(self, goal):
        held = self.running.get(str(goal.request_id)) if goal.request_id else None
        return None if held is None else held[1]

    def start(self, goal, future) -> None:
        if goal.request_id:
            self.running[str(goal.request_id)] = (fingerprint(goal), future)

    def finish(self, goal, result: Optional[object]) -> None:
        """The run of ``goal`` ended; ``result`` (None: it failed) is kept when it succeeded."""
        request = str(goal.request_id)
        held = self.running.pop(request, None)
        if result is not None and request and self.size() > 0:
            self.results.pop(request, None)
            self.results[request] = (fingerprint(goal), result)
            while len(self.results) > self.size():
                del self.results[next(iter(self.results))]
        if held is not None and not held[1].done():
            held[1].set_result(True)
