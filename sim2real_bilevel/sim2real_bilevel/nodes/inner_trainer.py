"""inner_trainer: trains the policy in the simulator for a given theta (action train_policy).

Each goal carries theta and the policy to warm-start from (empty: the trainer's own latest
policy, or none); the solve is the problem's ``inner_solve``.  Sampled SPG solves run in a
worker thread, so cancel requests and parameter changes are served meanwhile, and report
the iteration count and ||phi_hat|| as feedback; exact solves (milliseconds) run inline.
The result and the latched ``policy`` topic carry phi, its version and the theta version it
was trained on.
"""
from __future__ import annotations

import numpy as np
from rclpy.node import Node
from sim2real_bilevel_interfaces.action import TrainPolicy
from sim2real_bilevel_interfaces.msg import PolicyParameters

from ..core.outer import INNER_METHODS
from . import conversions
from .action_calls import RESULT_KEPT_S, serve_action
from .runtime import (LATCHED, PROBLEM, SEED, BackgroundWork, DeclaredParameters, ParameterSpec, accept_cancel,
                      goal_validator, internal_publisher, load_problem, outer_config_defaults, run_node)


class InnerTrainer(Node):

    def __init__(self):
        super().__init__('inner_trainer')
        self.parameters = DeclaredParameters(self, [PROBLEM, SEED])
        self.problem = load_problem(self.parameters['problem'])
        defaults = outer_config_defaults(self.problem)
        self.parameters.declare([
            ParameterSpec('inner_method', defaults['inner_method'],
                          "inner solver: 'exact' (soft DP / Riccati) or 'sampled' (SPG in the simulator)",
                          choices=INNER_METHODS),
            ParameterSpec('warm_start', True, 'start each solve from the goal\'s (or the latest) policy'),
        ])
        self.rng = np.random.default_rng([self.parameters['seed'], 2])
        self.phi = None
        self.policy_version = 0
        self.theta_version = -1
        self.work = BackgroundWork(self)
        self.policy_publisher = internal_publisher(self, PolicyParameters, 'policy', LATCHED)
        self.train_server = serve_action(
            self, TrainPolicy, 'train_policy', execute_callback=self.train_policy_callback,
            goal_callback=goal_validator(self, self._read_goal, 'train_policy'), cancel_callback=accept_cancel,
            result_timeout=RESULT_KEPT_S)
        self.get_logger().info(f'inner trainer for {self.problem.source}: {self.problem.phi_size()} policy '
                               f'parameters, method {self.parameters["inner_method"]}')

    def _read_goal(self, goal):
        """(theta, theta_version, phi_init, warm_start_version) or MessageValidationError."""
        theta, theta_version = conversions.theta_from_msg(goal.theta, self.problem.theta_names,
                                                          self.problem.theta_bounds())
        conversions.check_version(theta_version, max(self.theta_version, 0), 'TrainPolicy.theta.version')
        phi_init, warm_version = None, 0
        if len(goal.warm_start.values):
            phi_init, warm_version, _ = conversions.policy_from_msg(goal.warm_start, self.problem.phi_size())
        return theta, theta_version, phi_init, int(warm_version)

    async def train_policy_callback(self, goal_handle):
        result = TrainPolicy.Result()
        theta, theta_version, phi_init, warm_version = self._read_goal(goal_handle.request)
        # a restarted trainer continues the policy numbering of the warm start it is given,
        # so the bridge (which refuses stale versions) accepts what it trains next
        self.policy_version = max(self.policy_version, warm_version)
        method = self.parameters['inner_method']
        if not self.parameters['warm_start']:
            phi_init = None
        elif phi_init is None:
            phi_init = self.phi
        def solve():
            return self.problem.inner_solve(theta, phi_init, method=method, rng=self.rng)

        # inline while solves are quick (tabular, LQR: a thread hand-off and feedback would cost
        # more than they tell); long ones (a robot's exact solve: minutes) in the worker, with
        # feedback every few seconds, so that goals are still accepted and the optimizer waits
        def still_solving():
            goal_handle.publish_feedback(TrainPolicy.Feedback(iteration=0, grad_norm=float('nan')))
        try:
            solved = await self.work.run_long(solve, still_solving)
            if not (np.all(np.isfinite(solved.phi)) and np.isfinite(solved.grad_norm)):
                raise FloatingPointError(f'non-finite policy (||phi_hat|| = {solved.grad_norm!r})')
        except Exception as err:     # noqa: BLE001 -- the latest policy stays as it was
            goal_handle.abort()
            result.message = f'inner solve failed: {type(err).__name__}: {err}'
            self.get_logger().error(result.message)
            return result
        if goal_handle.is_cancel_requested:
            goal_handle.canceled()
            result.message = 'cancelled: the solve finished but its policy was not adopted'
            return result
        if solved.info.get('start') == 'cold':        # inner.start: best replaced the warm chain
            self.get_logger().info(f'theta version {theta_version}: the cold solve reached J_sim '
                                   f'{solved.info["cold_objective"]:.4g} against the warm solve\'s '
                                   f'{solved.info["warm_objective"]:.4g}: its policy is kept (inner.start: best)')
        self.phi, self.theta_version = solved.phi, theta_version
        self.policy_version += 1
        policy = conversions.policy_to_msg(solved.phi, self.policy_version, theta_version, solved.grad_norm)
        policy.header.stamp = self.get_clock().now().to_msg()
        self.policy_publisher.publish(policy)
        goal_handle.succeed()
        result.success = True
        result.policy = policy
        result.iterations = int(solved.iterations)
        return result


def main(args=None) -> int:
    return run_node(InnerTrainer, args)


if __name__ == '__main__':
    raise SystemExit(main())
