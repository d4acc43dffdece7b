"""sensitivity: the implicit-function step of Algorithm 1 (action compute_sensitivity).

Given theta, the policy phi trained on it and the real policy gradient g, returns (and
publishes on ``outer_gradient``) dJ_real/dtheta = (d phi*/d theta)^T g, using the core's
linearisation (``sensitivity_terms``: exact, or sampled from simulator rollouts fetched from
the differentiable_simulator's ``~/simulate`` service) and the core's implicit solve
(``implicit.outer_gradient`` with the solver that ``outer.sensitivity_solver`` picks from the
parameters and the policy's ``inner_grad_norm``: the first-order step for a policy far from
stationary).  With exact terms the linearisation is computed as soon as a new policy is
published (pipelined with the real episodes); sampled work runs in a worker thread while the
executor keeps serving.
"""
from __future__ import annotations

import time

import numpy as np
from rclpy.node import Node
from sim2real_bilevel_interfaces.action import ComputeSensitivity
from sim2real_bilevel_interfaces.msg import OuterGradient, PolicyParameters, SimParameters
from sim2real_bilevel_interfaces.srv import SimulateRollouts

from ..core import implicit
from ..core.outer import (FAR_FROM_STATIONARY, SENSITIVITY_METHODS, SOLVERS, OuterConfig, resolve_steps,
                          resolved_outer_gradient, sensitivity_solver)
from . import conversions
from .action_calls import RESULT_KEPT_S, serve_action
from .runtime import (EVENTS, LATCHED, PROBLEM, SEED, BackgroundWork, DeclaredParameters, ParameterSpec, accept_cancel,
                      goal_validator, internal_publisher, load_problem, outer_config_defaults, run_node)

SOLVER_PARAMETERS = ('sensitivity_method', 'solver', 'damping', 'cg_maxiter', 'cg_tol', 'first_order_step',
                     'first_order_above', 'far_from_stationary', 'resolve_step', 'resolve_workers', 'sim_episodes', 'sim_horizon')


class ResolveProgress:
    """Solver 'resolve''s progress in the log, at most every ``period_s`` (long solves: the swing-up's
    take ~1 min each; small problems finish before the first line)."""

    def __init__(self, logger, policy_version: int, period_s: float = 10.0):
        self.logger, self.policy_version, self.period_s = logger, policy_version, period_s
        self.started = self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last >= self.period_s:
            self.last = now
            self.logger.info(f'policy version {self.policy_version}: {done} of {total} inner solves done '
                             f'({now - self.started:.0f} s)')


class Sensitivity(Node):

    def __init__(self):
        super().__init__('sensitivity')
        self.parameters = DeclaredParameters(self, [PROBLEM, SEED])
        self.problem = load_problem(self.parameters['problem'])
        self.defaults = outer_config_defaults(self.problem)
        d = self.defaults
        self.parameters.declare([
            ParameterSpec('sensitivity_method', d['sensitivity_method'],
                          "linearisation of the inner optimality condition: 'exact' or 'sampled' "
                          '(from simulated rollouts)', choices=SENSITIVITY_METHODS),
            ParameterSpec('solver', d['solver'], "implicit-function solve: 'dense', 'cg' or 'first_order'; "
                          "'resolve': finite differences of the inner solve continued from the policy, one "
                          'solve per theta coordinate (this node runs them)', choices=SOLVERS),
            ParameterSpec('damping', float(d['damping']), 'ridge added to -dF/dphi in dense and CG solves',
                          low=0.0, high=1e6),
            ParameterSpec('cg_maxiter', int(d['cg_maxiter']), 'conjugate-gradient iteration cap', low=1, high=10 ** 6),
            ParameterSpec('cg_tol', float(d['cg_tol']), 'conjugate-gradient relative residual tolerance',
                          low=1e-300, high=1.0),
            ParameterSpec('first_order_step', float(d['first_order_step']),
                          'step of the first-order variant: d phi*/d theta ~ step * dF/dtheta', low=0.0, high=1e6),
            ParameterSpec('first_order_above', float(d['first_order_above']),
                          'the first-order step instead of the solver for a policy whose inner solve ended with '
                          '||F|| above this many times the inner tolerance (far from stationary); 0: never',
                          low=0.0, high=1e12),
            ParameterSpec('far_from_stationary', d['far_from_stationary'],
                          "what replaces the implicit-function solve for such a policy: 'first_order', "
                          "'resolve' (the inner solves continued from it, as solver 'resolve') or 'skip' (the "
                          "optimizer takes no outer step and does not ask; asked anyway: 'first_order')",
                          choices=FAR_FROM_STATIONARY),
            ParameterSpec('resolve_step', float(d['resolve_step']),
                          "solver 'resolve': each theta coordinate's finite-difference step, as a fraction of "
                          'its bound range', low=1e-12, high=1.0),
            ParameterSpec('resolve_workers', int(d['resolve_workers']),
                          "solver 'resolve': processes that run its solves side by side; 0: one per CPU when a "
                          'solve takes over a second, 1: all in this node', low=0, high=4096),
            ParameterSpec('sim_episodes', int(d['sim_episodes']),
                          'simulated trajectories for sampled sensitivities (0: the problem default)', low=0,
                          high=10 ** 7),
            ParameterSpec('sim_horizon', int(d['sim_horizon']),
                          'their horizon (0: the problem default)', low=0, high=10 ** 7),
            ParameterSpec('simulate_service', 'differentiable_simulator/simulate',
                          'SimulateRollouts service of the simulator (sampled sensitivities)', allow_empty=False),
            ParameterSpec('simulate_timeout_s', 30.0, 'how long to wait for simulated rollouts', low=0.1, high=3600.0),
            ParameterSpec('precompute', True, 'linearise (exact terms) as soon as a new policy is published, while '
                          'the real episodes run, instead of when the gradient is asked for'),
        ])
        self.rng = np.random.default_rng([self.parameters['seed'], 3])
        self.problem.warm_up()              # before 'ready': not in the first outer iteration
        self.work = BackgroundWork(self)
        self.gradient_publisher = internal_publisher(self, OuterGradient, 'outer_gradient', EVENTS)
        self.simulate_client = self.create_client(SimulateRollouts, self.parameters['simulate_service'])
        # exact terms at the latest (policy, theta): {'key': (policy version, theta version), ...}
        self.latest_theta = self.latest_policy = self.precomputed = None
        self.latest_inner_grad_norm = float('nan')
        self.theta_subscription = self.create_subscription(SimParameters, 'theta', self.theta_callback, LATCHED)
        self.policy_subscription = self.create_subscription(PolicyParameters, 'policy', self.policy_callback,
                                                            LATCHED)
        self.sensitivity_server = serve_action(
            self, ComputeSensitivity, 'compute_sensitivity', execute_callback=self.compute_sensitivity_callback,
            goal_callback=goal_validator(self, self._read_goal, 'compute_sensitivity'), cancel_callback=accept_cancel,
            result_timeout=RESULT_KEPT_S)

    def theta_callback(self, msg: SimParameters) -> None:
        try:
            theta = conversions.theta_from_msg(msg, self.problem.theta_names, self.problem.theta_bounds())
            held = self.latest_theta[1] if self.latest_theta is not None else 0     # the outer loop starts at 0
            conversions.check_version(theta[1], held, 'SimParameters.version')
        except conversions.MessageValidationError as err:
            self.get_logger().error(f'ignored theta message: {err}')
            return
        self.latest_theta = theta
        self._precompute()

    def policy_callback(self, msg: PolicyParameters) -> None:
        try:
            self.latest_policy = conversions.policy_from_msg(msg, self.problem.phi_size())
        except conversions.MessageValidationError as err:
            self.get_logger().error(f'ignored policy message: {err}')
            return
        self.latest_inner_grad_norm = float(msg.inner_grad_norm)
        self._precompute()

    def _precompute(self) -> None:
        """Pipelining: the linearisation at (phi, theta) needs no real data, so it is computed
        as soon as the policy and the theta it was trained on have both arrived -- while the
        bridge runs the real episodes; the action then only solves with g."""
        if (not self.parameters['precompute'] or self.parameters['sensitivity_method'] != 'exact'
                or self.latest_theta is None or self.latest_policy is None):
            return
        if self.parameters['solver'] == 'resolve' or (     # re-solves: no linearisation to prepare
                self.parameters['far_from_stationary'] == 'resolve'
                and sensitivity_solver(self._config(), self.problem, self.latest_inner_grad_norm)[0] is None):
            return
        (theta, theta_version), (phi, version, trained_on) = self.latest_theta, self.latest_policy
        key = (version, theta_version)
        if trained_on != theta_version or (self.precomputed is not None and self.precomputed['key'] == key):
            return
        entry = self.precomputed = {'key': key, 'phi': phi, 'theta': theta, 'terms': None}

        def linearise():
            # long for a robot (tens of seconds): in the worker, and the action's solve queues behind it
            try:
                terms = self.problem.sensitivity_terms(phi, theta, method='exact')
            except Exception as err:     # noqa: BLE001 -- the action computes them itself then
                self.get_logger().error(f'no precomputed sensitivity at policy {version}, theta {theta_version}: '
                                        f'{type(err).__name__}: {err}')
                return
            entry['terms'] = terms         # its own entry: a newer policy's is another dict
        if self.work.quick():
            linearise()
        else:
            self.work.start(linearise)

    def _terms(self, phi, theta, key, method, trajectories):
        cached = self.precomputed
        if (method == 'exact' and cached is not None and cached['key'] == key and cached['terms'] is not None
                and np.array_equal(cached['phi'], phi) and np.array_equal(cached['theta'], theta)):
            return cached['terms']
        return self.problem.sensitivity_terms(phi, theta, method=method, trajectories=trajectories, rng=self.rng)

    def _config(self) -> OuterConfig:
        """The solver settings as they are now (parameter changes apply from the next goal)."""
        values = dict(self.defaults)
        values.update({name: self.parameters[name] for name in SOLVER_PARAMETERS})
        return OuterConfig.from_mapping(values)

    def _read_goal(self, goal):
        theta, theta_version = conversions.theta_from_msg(goal.theta, self.problem.theta_names,
                                                          self.problem.theta_bounds())
        phi, policy_version, trained_on = conversions.policy_from_msg(goal.policy, self.problem.phi_size())
        if trained_on != theta_version:
            raise conversions.MessageValidationError(
                f'policy version {policy_version} was trained on theta version {trained_on}, the goal carries '
                f'theta version {theta_version}')
        real_gradient = conversions.vector_from_field(goal.real_gradient, 'ComputeSensitivity.real_gradient',
                                                      self.problem.phi_size(), size_rule='one per policy parameter')
        learn = np.asarray(goal.learn, dtype=bool)
        if learn.size == 0:
            learn = None
        elif learn.size != theta.size:
            raise conversions.MessageValidationError(
                f'ComputeSensitivity.learn: {learn.size} values, expected {theta.size} (one per theta entry) or none')
        return theta, theta_version, phi, policy_version, real_gradient, learn

    async def compute_sensitivity_callback(self, goal_handle):
        result = ComputeSensitivity.Result()
        theta, theta_version, phi, policy_version, real_gradient, learn = self._read_goal(goal_handle.request)
        config = self._config()
        solver, why = sensitivity_solver(config, self.problem, goal_handle.request.policy.inner_grad_norm)
        if why:
            self.get_logger().info(f'policy version {policy_version}: {why}')
        trajectories = None
        if config.sensitivity_method == 'sampled' and solver is not None:     # re-solves need no rollouts
            goal_handle.publish_feedback(ComputeSensitivity.Feedback(stage='simulating'))
            trajectories, reason = await self._simulate(goal_handle.request.policy, config)
            if trajectories is None:
                goal_handle.abort()
                result.message = reason
                self.get_logger().error(f'compute_sensitivity aborted: {reason}')
                return result
        if config.sensitivity_method != 'exact' or solver is None:
            goal_handle.publish_feedback(ComputeSensitivity.Feedback(stage='solving'))
        if solver is None:
            solver_name = 'resolve'

            def solve():
                gradient, info = resolved_outer_gradient(self.problem, phi, theta, real_gradient,
                                                         resolve_steps(self.problem, config.resolve_step),
                                                         learn, workers=config.resolve_workers,
                                                         progress=ResolveProgress(self.get_logger(), policy_version))
                self.get_logger().info(f"policy version {policy_version}: {info['solves']} inner solves "
                                       f"continued from it in {info['seconds']:.1f} s "
                                       f"({info['processes']} process{'es' if info['processes'] > 1 else ''})")
                return gradient
        else:
            solver_name = solver.name

            def solve():
                terms = self._terms(phi, theta, (policy_version, theta_version), config.sensitivity_method,
                                    trajectories)
                return np.asarray(implicit.outer_gradient(terms, real_gradient, solver), dtype=np.float64)

        # inline while quick (exact terms of small problems: milliseconds), else in the worker --
        # behind a linearisation still running there -- with feedback every few seconds
        def still_solving():
            goal_handle.publish_feedback(ComputeSensitivity.Feedback(stage='solving'))
        try:
            gradient = await self.work.run_long(solve, still_solving)
        except Exception as err:     # noqa: BLE001 -- e.g. a policy that destabilises the simulator
            goal_handle.abort()
            result.message = f'sensitivity failed: {type(err).__name__}: {err}'
            self.get_logger().error(result.message)
            return result
        if goal_handle.is_cancel_requested:
            goal_handle.canceled()
            result.message = 'cancelled'
            return result
        if not np.all(np.isfinite(gradient)):
            goal_handle.abort()
            result.message = f'the outer gradient is not finite: {gradient.tolist()}'
            self.get_logger().error(result.message)
            return result
        message = conversions.gradient_to_msg(gradient, real_gradient, theta_version, policy_version,
                                               sensitivity_method=config.sensitivity_method, solver=solver_name)
        message.header.stamp = self.get_clock().now().to_msg()
        self.gradient_publisher.publish(message)
        goal_handle.succeed()
        result.success = True
        result.gradient = message
        return result

    async def _simulate(self, policy_msg, config: OuterConfig):
        """Simulated rollouts of the goal's policy at its theta, or (None, reason)."""
        n = config.sim_episodes or self.problem.default_sim_episodes
        horizon = config.sim_horizon or self.problem.default_sim_horizon
        if not self.simulate_client.wait_for_service(timeout_sec=self.parameters['simulate_timeout_s']):
            return None, f'simulator service {self.simulate_client.srv_name} is not available'
        request = SimulateRollouts.Request(policy=policy_msg, n_episodes=int(n), horizon=int(horizon))
        response = await self.simulate_client.call_async(request)
        if not response.success:
            return None, f'the simulator refused: {response.message}'
        try:
            return conversions.trajectories_from_msg(response.trajectories, **self.problem.trajectory_sizes()), ''
        except conversions.MessageValidationError as err:
            return None, f'malformed simulated trajectories: {err}'


def main(args=None) -> int:
    return run_node(Sensitivity, args)


if __name__ == '__main__':
    raise SystemExit(main())
