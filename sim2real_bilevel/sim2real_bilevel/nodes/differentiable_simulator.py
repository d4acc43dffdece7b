"""differentiable_simulator: the parametrised simulator f_theta, R_theta as a ROS node.

Subscribes ``theta`` (latched) and serves ``~/simulate`` (SimulateRollouts): episodes of the
requested policy in the simulator at the current theta, with the score terms
grad_theta log f_theta that sampled sensitivities need.  The arithmetic is the problem's
``simulate``; this node only converts messages and checks versions.
"""
from __future__ import annotations

import numpy as np
from rclpy.node import Node
from sim2real_bilevel_interfaces.msg import SimParameters
from sim2real_bilevel_interfaces.srv import SimulateRollouts

from . import conversions
from .runtime import LATCHED, PROBLEM, SEED, DeclaredParameters, ParameterSpec, load_problem, run_node


class DifferentiableSimulator(Node):

    def __init__(self):
        super().__init__('differentiable_simulator')
        self.parameters = DeclaredParameters(self, [
            PROBLEM, SEED,
            ParameterSpec('max_episodes', 100000, 'largest n_episodes a request may ask for', low=1, high=10 ** 7),
            ParameterSpec('max_horizon', 100000, 'largest horizon a request may ask for', low=1, high=10 ** 7),
            ParameterSpec('max_steps', 10 ** 6, 'largest n_episodes * horizon a request may ask for (the batch is '
                          'preallocated, score terms included)', low=1, high=10 ** 8),
        ])
        self.problem = load_problem(self.parameters['problem'])
        self.rng = np.random.default_rng([self.parameters['seed'], 1])
        self.theta = np.asarray(self.problem.theta0(), dtype=np.float64)
        self.theta_version = 0
        self.theta_subscription = self.create_subscription(SimParameters, 'theta', self.theta_callback, LATCHED)
        self.simulate_service = self.create_service(SimulateRollouts, '~/simulate', self.simulate_callback)
        self.get_logger().info(f'simulator for {self.problem.source}: {len(self.problem.theta_names)} theta entries')

    def theta_callback(self, msg: SimParameters) -> None:
        try:
            values, version = conversions.theta_from_msg(msg, self.problem.theta_names, self.problem.theta_bounds())
            conversions.check_version(version, self.theta_version, 'SimParameters.version')
        except conversions.MessageValidationError as err:
            self.get_logger().error(f'ignored theta message: {err}')
            return
        self.theta, self.theta_version = values, version

    def simulate_callback(self, request, response):
        try:
            phi, _, theta_version = conversions.policy_from_msg(request.policy, self.problem.phi_size())
        except conversions.MessageValidationError as err:
            return self._refuse(response, f'malformed policy: {err}')
        if theta_version != self.theta_version:
            return self._refuse(response, f'policy was trained on theta version {theta_version}, the simulator '
                                          f'holds version {self.theta_version}')
        limits = (self.parameters['max_episodes'], self.parameters['max_horizon'], self.parameters['max_steps'])
        if not (1 <= request.n_episodes <= limits[0] and 1 <= request.horizon <= limits[1]
                and request.n_episodes * request.horizon <= limits[2]):
            return self._refuse(response, f'n_episodes={request.n_episodes}, horizon={request.horizon}: expected '
                                          f'1..{limits[0]} episodes, 1..{limits[1]} steps and at most {limits[2]} '
                                          'steps in all')
        try:
            batch = self.problem.simulate(phi, self.theta, int(request.n_episodes), int(request.horizon), self.rng)
            batch.policy_version = int(request.policy.version)
            trajectories = conversions.trajectories_to_msg(batch)
        except Exception as err:     # noqa: BLE001 -- a service callback that raises ends the node
            return self._refuse(response, f'simulation failed: {type(err).__name__}: {err}')
        response.success = True
        response.trajectories = trajectories
        return response

    def _refuse(self, response, reason: str):
        self.get_logger().warning(f'simulate request refused: {reason}')
        response.success = False
        response.message = reason
        return response


def main(args=None) -> int:
    return run_node(DifferentiableSimulator, args)


if __name__ == '__main__':
    raise SystemExit(main())
