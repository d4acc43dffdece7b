"""The sim-only evaluator over ROS: the robot_emulator (which holds the hidden real model) serves
``~/evaluate`` (EvaluatePolicy); the outer_optimizer's ``evaluator`` parameter names that service
and ``EvaluatorClient`` is the core's ``Evaluator`` (``phi -> {'normalized_return',
'real_return'}``) over it.

A real robot has no hidden model: on hardware the parameter is empty, nothing is asked and the
records' normalised and real return are NaN (the estimate from the real episodes and its
interval are there either way).  A configured evaluator that does not answer leaves them NaN
for that record with a logged reason; the loop never stops or waits long for it."""
from __future__ import annotations

import math
import time

import numpy as np
from sim2real_bilevel_interfaces.srv import EvaluatePolicy

from . import conversions
from .runtime import ShutdownRequested, wait_for

NOT_EVALUATED = {'normalized_return': math.nan, 'real_return': math.nan}


def serve_evaluation(node, problem) -> object:
    """``~/evaluate`` on ``node``: the exact normalised and real return of a policy from
    ``problem``'s hidden real model (the robot_emulator, sim-only)."""
    from ..core.evaluation import oracle_evaluator
    evaluate = oracle_evaluator(problem)

    def callback(request, response):
        try:
            phi, _, _ = conversions.policy_from_msg(request.policy, problem.phi_size())
            values = evaluate(phi)
        except conversions.MessageValidationError as err:
            response.success, response.message = False, str(err)
            node.get_logger().error(f'evaluate: refused: {err}')
            return response
        response.success = True
        response.normalized_return = float(values['normalized_return'])
        response.real_return = float(values['real_return'])
        return response

    return node.create_service(EvaluatePolicy, '~/evaluate', callback)


class EvaluatorClient:
    """``phi -> {'normalized_return', 'real_return'}`` by the EvaluatePolicy service ``name``.

    Each call waits at most ``timeout_s`` for the service and for each answer; an answer that
    does not come (lost, or the server restarting) is asked for again up to ``retries`` times;
    after that, or when the service is absent or refuses, the values are NaN and the reason is
    logged (once per distinct reason in a row).  ``policy_message(phi)`` builds the request's
    policy; ``executor()`` is the node's executor (spun while waiting)."""

    def __init__(self, node, name: str, policy_message, executor, timeout_s: float = 5.0, retries: int = 2):
        self.node, self.name = node, name
        self.client = node.create_client(EvaluatePolicy, name)
        self.policy_message, self.executor = policy_message, executor
        self.timeout_s, self.retries = timeout_s, retries
        self.failures = 0
        self.last_reason = ''

    def __call__(self, phi: np.ndarray) -> dict:
        if not self.executor().context.ok():
            return dict(NOT_EVALUATED)     # going down (results written on a signal): nothing to ask
        try:
            values = self._ask(phi)
        except ShutdownRequested:
            return dict(NOT_EVALUATED)     # the loop's own checks end the run as interrupted
        except TimeoutError as err:
            return self._failed(str(err))
        self.last_reason = ''
        return values

    def _ask(self, phi: np.ndarray) -> dict:
        executor = self.executor()
        deadline = time.monotonic() + self.timeout_s
        while not self.client.service_is_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f'evaluator {self.client.srv_name} is not available (waited {self.timeout_s:g} s)')
            if not executor.context.ok():
                raise ShutdownRequested('evaluator')
            executor.spin_once(timeout_sec=0.05)
        request = EvaluatePolicy.Request(policy=self.policy_message(phi))
        for attempt in range(self.retries + 1):
            try:
                response = wait_for(executor, self.client.call_async(request), self.timeout_s,
                                    f'evaluator {self.client.srv_name}')
            except TimeoutError:
                if attempt == self.retries:
                    raise
                continue                    # lost request or answer: ask again
            if not response.success:
                return self._failed(f'evaluator {self.client.srv_name} refused: {response.message}')
            return {'normalized_return': float(response.normalized_return), 'real_return': float(response.real_return)}
        raise TimeoutError('unreachable')

    def _failed(self, reason: str) -> dict:
        self.failures += 1
        if reason != self.last_reason:
            self.node.get_logger().warning(f'{reason}: the normalised return of this record is NaN (the run goes on)')
            self.last_reason = reason
        return dict(NOT_EVALUATED)

