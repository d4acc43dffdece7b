"""outer_optimizer: Algorithm 1 driven through the node graph.

The loop is the core's ``BilevelOuterLoop`` with its three expensive calls replaced by
actions on the other nodes (``train_policy`` on the inner_trainer, ``run_episodes`` on the
hardware_bridge, ``compute_sensitivity`` on the sensitivity node); the real policy gradient
(the "real critic") and the theta step are computed here by the core itself, so the
arithmetic is the in-process core's.  Publishes theta (latched), OuterMetrics, std_msgs/Float64
``metrics/*`` topics for rqt_plot, DiagnosticArray on /diagnostics; records the run to
RUN_DIR/bag and writes RUN_DIR/results.json and results.png at the end.

Crash safety: the loop persists itself in RUN_DIR (core/checkpoint.py: checkpoint.npz after
every completed iteration, every real batch in RUN_DIR/real/ the moment it arrives).  Started
with a ``run_dir`` that holds a checkpoint, the node resumes that run: it continues at the next
iteration, reuses a real batch collected after the last checkpoint instead of asking the robot
again, and keeps numbering theta versions upwards; its first goal re-registers the saved policy
(one inner solve at the saved theta warm-started at the saved phi, under a new theta version),
so a relaunched graph accepts it.  A peer that dies (SIGKILL) while it holds a
goal is waited for: the goal times out (``goal_timeout_s`` for the acceptance -- a goal sent
while its server restarts is lost --, ``action_timeout_s`` for the result), the node waits for the server to
be back and sends the goal again (at most ``action_retries`` times in a row); only results that
arrive are counted, so no real batch is counted twice.  The other nodes keep no run state that
this node needs (sensitivity: caches of the latched theta/policy; simulator: stateless; bridge:
version checks re-read from the latched policy topic; inner_trainer: continues the policy
numbering of the warm start it is sent), except the emulator's RNG stream (see
test/test_resume_nodes.py for what a restart of each costs).

Real episodes in transit: every run_episodes goal carries a ``request_id`` (the same for its
re-sends), saved in RUN_DIR/real/pending.json before it is sent; the bridge keeps the results
of succeeded requests.  A restarted optimizer whose last request has no stored batch asks the
bridge for that request's kept result (``kept_result_only``) before anything else, so episodes
the robot ran while the optimizer was dead are used, not run again.  With ``policy_key_file``
every goal to the bridge is signed (nodes/provenance.py, docs/security.md).

The loop runs in ``main()``'s thread and waits on futures with ``spin_once``, so parameter
changes (``ros2 param set``) are served between and during iterations and take effect on
the next iteration.
"""
from __future__ import annotations

import re
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.action import ActionClient
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import Float64
from sim2real_bilevel_interfaces.action import ComputeSensitivity, RunEpisodes, TrainPolicy
from sim2real_bilevel_interfaces.msg import OuterGradient, OuterMetrics, PolicyParameters, SimParameters, \
    TrajectoryBatch

from ..core import checkpoint
from ..core.checkpoint import CheckpointError
from ..core.outer import BilevelOuterLoop, IterationRecord, OuterConfig
from . import conversions, provenance
from .runtime import (EVENTS, LATCHED, PROBLEM, SEED, DeclaredParameters, ParameterSpec, ShutdownRequested,
                      load_problem, outer_config_defaults, run_node, wait_for, wait_for_result)

LIVE_PARAMETERS = ('iterations', 'step_size', 'real_episodes')


class ActionFailed(RuntimeError):
    pass


class PeerLost(ActionFailed):
    """A goal that may succeed when sent again: no answer in time, rejected or aborted by a
    peer that may be restarting, or a malformed result."""


class GraphBilevelLoop(BilevelOuterLoop):
    """``BilevelOuterLoop`` whose inner solve, real episodes and sensitivity are actions."""

    def __init__(self, node: 'OuterOptimizer', problem, config: OuterConfig, seed: int, progress):
        super().__init__(problem, config, seed, progress)
        self.node = node

    def solve_inner(self, theta, phi_init):
        return self.node.train_policy(theta, phi_init)

    def sample_real_batch(self, phi):
        return self.node.run_episodes(self.config.real_episodes)

    def state_dict(self) -> dict:
        state = super().state_dict()
        policy = self.node.policy
        state['meta']['graph'] = {
            'theta_version': int(self.node.theta_version),
            'policy': None if policy is None else {
                'version': int(policy.version), 'theta_version': int(policy.theta_version),
                'inner_grad_norm': float(policy.inner_grad_norm), 'kind': policy.kind}}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        graph = state['meta']['graph']
        self.node.theta_version = int(graph['theta_version'])
        saved = graph['policy']
        self.node.policy = None if saved is None else conversions.policy_to_msg(
            self.phi, saved['version'], saved['theta_version'], saved['inner_grad_norm'], saved['kind'])

    def outer_gradient(self, phi, theta, real_gradient):
        return self.node.compute_sensitivity(real_gradient)

    def apply_step(self, gradient):
        self.node.apply_live_parameters(self)      # ros2 param set takes effect here
        return super().apply_step(gradient)


class OuterOptimizer(Node):

    def __init__(self):
        super().__init__('outer_optimizer')
        self.parameters = DeclaredParameters(self, [PROBLEM, SEED])
        self.problem = load_problem(self.parameters['problem'])
        d = outer_config_defaults(self.problem)
        self.parameters.declare([
            ParameterSpec('iterations', int(d['iterations']), 'outer iterations of the run', low=0, high=10 ** 9),
            ParameterSpec('step_size', float(d['step_size']), 'outer learning rate (Adam alpha or SGD step)',
                          low=1e-12, high=1e3),
            ParameterSpec('optimizer', d['optimizer'], "'adam' or 'sgd' on theta (read at startup)",
                          choices=('adam', 'sgd'), read_only=True),
            ParameterSpec('real_episodes', int(d['real_episodes']), 'real episodes per outer iteration',
                          low=1, high=10 ** 6),
            ParameterSpec('real_history', int(d['real_history']),
                          'most recent real batches the real-gradient estimator may use (read at startup)',
                          low=1, high=10 ** 6, read_only=True),
            ParameterSpec('learn', d['learn'], "which theta entries move: 'all', 'dynamics' or 'reward' "
                          '(read at startup)', choices=('all', 'dynamics', 'reward'), read_only=True),
            ParameterSpec('run_dir', '', 'folder for results.json, results.png and the bag '
                          '(empty: runs/<problem>-<time>)', read_only=True),
            ParameterSpec('record_bag', True, 'record theta, policies, gradients, metrics and real '
                          'trajectories to RUN_DIR/bag (read at startup)', read_only=True),
            ParameterSpec('action_timeout_s', 600.0, 'longest wait for one action result (then the goal is '
                          'sent again, see action_retries)', low=0.1, high=1e6),
            ParameterSpec('goal_timeout_s', 10.0, 'longest wait for a goal to be accepted or rejected (a goal '
                          'sent while its server restarts is lost: it is sent again after this)', low=0.1,
                          high=1e6),
            ParameterSpec('action_retries', 3, 'times in a row a goal is sent again after no answer, a '
                          'rejection, an abort or a malformed result (a peer restarting)', low=0, high=10 ** 6),
            ParameterSpec('server_timeout_s', 60.0, 'longest wait for the other nodes to come up', low=0.1,
                          high=1e6),
            ParameterSpec('progress_period_s', 0.5, 'least time between two progress lines on stdout',
                          low=0.0, high=3600.0),
            ParameterSpec('policy_key_file', '', "key (`sim2real-bilevel keygen`) every run_episodes goal is signed "
                          "with; the bridge's policy_key_file must hold the same key; '' = $SIM2REAL_POLICY_KEY_FILE, "
                          "else unsigned (read at startup)", read_only=True),
        ])
        key_file = provenance.key_file_setting(self.parameters['policy_key_file'])
        self.policy_key = provenance.load_key(key_file) if key_file else None
        if self.policy_key is not None:
            self.get_logger().info(f'run_episodes goals are signed with the key in {key_file}')
        self.executor_: Optional[SingleThreadedExecutor] = None
        self.theta_version = 0
        self.policy: Optional[PolicyParameters] = None
        self.gradient_message: Optional[OuterGradient] = None
        self.theta_names = list(self.problem.theta_names)
        self.metric_names = [_topic_token(name) for name in self.theta_names]
        self.theta_publisher = self.create_publisher(SimParameters, 'theta', LATCHED)
        self.metrics_publisher = self.create_publisher(OuterMetrics, 'outer_metrics', EVENTS)
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, '/diagnostics', EVENTS)
        scalar_names = ('real_return', 'normalized_return', 'inner_grad_norm', 'outer_grad_norm',
                        'real_return_estimate')
        self.scalar_publishers = {name: self.create_publisher(Float64, f'metrics/{name}', EVENTS)
                                  for name in scalar_names}
        self.theta_metric_publishers = [self.create_publisher(Float64, f'metrics/theta/{token}', EVENTS)
                                        for token in self.metric_names]
        self.trajectory_publisher = self.create_publisher(TrajectoryBatch, 'real_trajectories', EVENTS)
        self.train_client = ActionClient(self, TrainPolicy, 'train_policy')
        self.episodes_client = ActionClient(self, RunEpisodes, 'run_episodes')
        self.sensitivity_client = ActionClient(self, ComputeSensitivity, 'compute_sensitivity')
        self.run_dir = Path(self.parameters['run_dir'] or
                            Path('runs') / f'{Path(self.problem.source).stem}-{datetime.now():%Y%m%d-%H%M%S}')
        self.recorder = None
        self.retries = 0
        """Goals sent again after a peer failed to answer (see ``_call``)."""
        self.last_progress = 0.0
        self.status = 'starting'

    # --- the replaced expensive calls ---------------------------------------------------------------------
    def train_policy(self, theta: np.ndarray, phi_init):
        from ..core.problem import InnerResult
        if self.policy is not None:      # theta moved: a new version for everyone downstream
            self.theta_version += 1
        goal = TrainPolicy.Goal(theta=self.publish_theta(theta))
        if phi_init is not None and self.policy is not None:
            goal.warm_start = self.policy
        result = self._call(self.train_client, goal, 'train_policy')
        phi, version, trained_on = conversions.policy_from_msg(result.policy, self.problem.phi_size())
        if self.policy is not None and version <= self.policy.version:
            self.get_logger().warning(
                f'train_policy returned policy version {version}, not newer than {self.policy.version}: an '
                'inner_trainer restarted without a warm start counts from 1 again; a hardware_bridge that was '
                'not restarted will refuse these versions as stale')
        if trained_on != self.theta_version:
            raise ActionFailed(f'train_policy returned a policy for theta version {trained_on}, '
                               f'expected {self.theta_version}')
        self.policy = result.policy
        return InnerResult(phi=phi, grad_norm=float(result.policy.inner_grad_norm),
                           iterations=int(result.iterations))

    def publish_theta(self, theta: np.ndarray) -> SimParameters:
        """Publish (latched) theta at the current version; returns the message."""
        lower, upper = self.problem.theta_bounds()
        theta_msg = conversions.theta_to_msg(self.theta_names, theta, lower, upper, self.theta_version,
                                             self.problem.source)
        theta_msg.header.stamp = self.get_clock().now().to_msg()
        self.theta_publisher.publish(theta_msg)
        return theta_msg

    def run_episodes(self, n_episodes: int):
        """Real batch number ``loop.real_batch_count + 1``: the request is saved (pending.json)
        before it is sent, so a restarted optimizer can ask for its result again."""
        goal = RunEpisodes.Goal(policy=self.policy, n_episodes=int(n_episodes), request_id=uuid.uuid4().hex)
        checkpoint.save_pending_request(self.run_dir, {
            'index': int(self.loop.real_batch_count + 1), 'request_id': goal.request_id,
            'n_episodes': int(n_episodes), 'policy': _policy_fields(self.policy)})
        # a malformed batch (faulty bridge) is logged and asked for again, never used
        batch, trajectories = self._call(self.episodes_client, goal, 'run_episodes',
                                         read=lambda result: self._read_episodes(result, self.policy.version),
                                         prepare=self.sign)
        self.trajectory_publisher.publish(trajectories)
        return batch

    def sign(self, goal) -> None:
        """Sign a run_episodes goal (again at every send: the bridge refuses old signatures)."""
        if self.policy_key is not None:
            provenance.sign_goal(self.policy_key, goal)

    def _read_episodes(self, result, version: int):
        tabular = getattr(self.problem, 'kind', '') == 'tabular'
        sizes = {'n_states': self.problem.n_states, 'n_actions': self.problem.n_actions} if tabular else {}
        batch = conversions.trajectories_from_msg(result.trajectories, **sizes)
        if batch.policy_version != version:
            raise PeerLost(f'returned episodes of policy version {batch.policy_version}, expected {version}')
        return batch, result.trajectories

    def recover_in_transit(self, loop: 'GraphBilevelLoop') -> bool:
        """On resume: the last request sent before the crash, when its batch was never stored,
        is asked of the bridge once with ``kept_result_only``; a kept result is stored as that
        batch (the loop then takes it like any batch collected before a crash).  True if one was."""
        pending = checkpoint.load_pending_request(self.run_dir)
        index = loop.real_batch_count + 1
        if pending is None or pending['index'] != index or checkpoint.real_batch_path(self.run_dir, index).exists():
            return False
        try:
            policy = _policy_message(pending['policy'])
            phi, version, _ = conversions.policy_from_msg(policy, self.problem.phi_size())
            goal = RunEpisodes.Goal(policy=policy, n_episodes=int(pending['n_episodes']),
                                    request_id=str(pending['request_id']), kept_result_only=True)
            self.sign(goal)
            batch, _ = self._read_episodes(self._call_once(self.episodes_client, goal, 'run_episodes'), version)
        except (KeyError, TypeError, ValueError, PeerLost, TimeoutError) as err:
            self.get_logger().info(f'real batch {index} was requested before the restart but the bridge has no '
                                   f'result kept for it ({err}): it is collected anew')
            return False
        checkpoint.save_real_batch(self.run_dir, index, batch, {
            'iteration': loop.iteration + 1, 'rng_after': loop.rng.bit_generator.state}, phi)
        self.get_logger().info(f'real batch {index} ({batch.rewards.shape[0]} episodes), run on the robot while this '
                               'node was down, recovered from the bridge')
        return True

    def compute_sensitivity(self, real_gradient: np.ndarray) -> np.ndarray:
        lower, upper = self.problem.theta_bounds()
        goal = ComputeSensitivity.Goal(
            theta=conversions.theta_to_msg(self.theta_names, self.loop.theta, lower, upper, self.theta_version,
                                           self.problem.source),
            policy=self.policy)
        goal.real_gradient = conversions.vector_to_field(real_gradient)
        result = self._call(self.sensitivity_client, goal, 'compute_sensitivity')
        self.gradient_message = result.gradient
        return conversions.gradient_from_msg(result.gradient, len(self.theta_names), self.problem.phi_size())

    def _call(self, client: ActionClient, goal, name: str, read=None, prepare=None):
        """Send a goal and wait for its result, ``read(result)`` if given; sent again (after the
        server is back) when the attempt fails in a way a restarted peer may fix, at most
        ``action_retries`` times in a row; then the last reason is raised.  ``prepare(goal)``
        runs before every send."""
        retries = self.parameters['action_retries']
        for attempt in range(retries + 1):
            try:
                if prepare is not None:
                    prepare(goal)
                result = self._call_once(client, goal, name)
                return result if read is None else read(result)
            except (PeerLost, TimeoutError, conversions.MessageValidationError) as err:
                if attempt == retries:
                    raise ActionFailed(f'{name}: {err} (after {retries} retries)') from err
                self.retries += 1
                self.get_logger().warning(f'{name}: {err}; sending it again once {client._action_name} is up '
                                          f'(retry {attempt + 1} of {retries})')
                self._wait_for_server(client)
                self._pause(min(0.25 * 2 ** attempt, 5.0))    # a restarted peer may still be activating

    def _call_once(self, client: ActionClient, goal, name: str):
        timeout = self.parameters['action_timeout_s']
        sent = wait_for(self.executor_, client.send_goal_async(goal), self.parameters['goal_timeout_s'],
                        f'{name} goal')
        if not sent.accepted:
            raise PeerLost(f'goal rejected by {client._action_name} (its log says why)')
        response = wait_for_result(self.executor_, sent, timeout, f'{name} result')
        if not response.result.success:
            raise PeerLost(f'failed (status {response.status}): {response.result.message}')
        return response.result

    # --- the run ------------------------------------------------------------------------------------------
    def apply_live_parameters(self, loop: GraphBilevelLoop) -> None:
        loop.config.iterations = self.parameters['iterations']
        loop.config.real_episodes = self.parameters['real_episodes']
        loop.config.step_size = loop.adam.step_size = self.parameters['step_size']

    def make_loop(self) -> GraphBilevelLoop:
        from ..core.experiments import make_run
        overrides = {name: self.parameters[name] for name in
                     ('iterations', 'step_size', 'optimizer', 'real_episodes', 'real_history', 'learn')}
        config = make_run(self.problem, 'bilevel', self.parameters['seed'], overrides=overrides).config
        self.loop = GraphBilevelLoop(self, self.problem, config, self.parameters['seed'], self.record_callback)
        return self.loop

    def _pause(self, seconds: float) -> None:
        """Wait, serving callbacks (parameters) meanwhile."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            if not self.executor_.context.ok():
                raise ShutdownRequested('pause')
            self.executor_.spin_once(timeout_sec=max(0.0, min(0.05, until - time.monotonic())))

    def wait_for_servers(self) -> None:
        for client in (self.train_client, self.episodes_client, self.sensitivity_client):
            self._wait_for_server(client)

    def _wait_for_server(self, client: ActionClient) -> None:
        timeout = self.parameters['server_timeout_s']
        deadline = time.monotonic() + timeout
        while not client.server_is_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f'action server {client._action_name} did not appear within {timeout:g} s')
            if not self.executor_.context.ok():
                raise ShutdownRequested(client._action_name)
            self.executor_.spin_once(timeout_sec=0.05)

    def start_recording(self) -> None:
        """The recorder gets its own node and executor thread, so its subscriptions stay out
        of the wait set the loop spins on between actions."""
        if not self.parameters['record_bag']:
            return
        import threading
        from ..tools.recorder import BagRecorder
        topics = [('theta', SimParameters, LATCHED), ('policy', PolicyParameters, LATCHED),
                  ('outer_metrics', OuterMetrics, EVENTS), ('outer_gradient', OuterGradient, EVENTS),
                  ('real_trajectories', TrajectoryBatch, EVENTS), ('/diagnostics', DiagnosticArray, EVENTS)]
        topics += [(f'metrics/{name}', Float64, EVENTS) for name in self.scalar_publishers]
        topics += [(f'metrics/theta/{token}', Float64, EVENTS) for token in self.metric_names]
        # no global arguments: the command line's __node remap must not rename this node too
        self.recorder_node = rclpy.create_node(f'{self.get_name()}_recorder', namespace=self.get_namespace(),
                                               use_global_arguments=False, start_parameter_services=False)
        self.recorder = BagRecorder(self.recorder_node, self._bag_folder(), topics)
        self.recorder_executor = SingleThreadedExecutor()
        self.recorder_executor.add_node(self.recorder_node)
        self.recording = True

        def spin():
            try:
                while self.recording and self.recorder_executor.context.ok():
                    self.recorder_executor.spin_once(timeout_sec=0.1)
            except ExternalShutdownException:      # SIGINT / SIGTERM: the context went down under us
                pass

        self.recorder_thread = threading.Thread(target=spin, daemon=True, name='recorder')
        self.recorder_thread.start()

    def _bag_folder(self) -> Path:
        """RUN_DIR/bag, or RUN_DIR/bag.resumed-N for the N-th resumed session of the run."""
        folder, resumed = self.run_dir / 'bag', 0
        while folder.exists() and any(folder.iterdir()):
            resumed += 1
            folder = self.run_dir / f'bag.resumed-{resumed}'
        return folder

    def stop_recording(self) -> None:
        if self.recorder is None:
            return
        drain_until = time.monotonic() + 0.5        # let the recorder take the last messages
        while time.monotonic() < drain_until and self.recorder_executor.context.ok():
            time.sleep(0.05)
        self.recording = False
        self.recorder_thread.join(timeout=5.0)
        self.recorder.close()
        self.recorder_executor.remove_node(self.recorder_node)
        self.recorder_node.destroy_node()

    def run(self, executor: SingleThreadedExecutor) -> int:
        self.executor_ = executor
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.start_recording()
        loop = self.make_loop()
        started = time.perf_counter()
        outcome = 0
        try:
            if loop.attach_run_dir(self.run_dir):
                self.apply_live_parameters(loop)       # this launch's iterations, step size, episodes
                self.get_logger().info(
                    f'resuming {self.run_dir} after iteration {loop.iteration} ({loop.real_episode_count} real '
                    f'episodes in {loop.real_batch_count} batches, theta version {self.theta_version})')
            self.get_logger().info(f'waiting for the graph ({self.problem.source}, seed {self.parameters["seed"]}, '
                                   f'{loop.config.iterations} iterations, run_dir {self.run_dir})')
            self.wait_for_servers()
            self.status = 'running'
            if loop.phi is not None:
                self.recover_in_transit(loop)
            if loop.phi is None:
                loop.start()
            else:
                # re-register the saved policy with the graph (a relaunched trainer and bridge know no
                # version of it): the inner solve at the saved theta, warm-started at the saved phi,
                # returns phi up to the solver's tolerance under a version the bridge accepts.  The
                # theta version moves on: the crashed session may have sent the next one already.
                loop.set_policy(self.train_policy(loop.theta, loop.phi))
            while loop.iteration < loop.config.iterations:
                loop.step()
                self.apply_live_parameters(loop)
            self.status = 'finished'
        except (ActionFailed, TimeoutError, FloatingPointError, conversions.MessageValidationError,
                CheckpointError) as err:
            self.status = f'failed: {err}'
            self.get_logger().error(f'outer loop stopped at iteration {loop.iteration}: {err}')
            outcome = 1
        except (KeyboardInterrupt, ExternalShutdownException, ShutdownRequested):
            self.status = 'interrupted'
            outcome = 130
        finally:
            wall_time = time.perf_counter() - started
            self.finish(loop, wall_time)
        return outcome

    def finish(self, loop: GraphBilevelLoop, wall_time: float) -> None:
        """Write the run's results, then take leave of the graph.  The results come first and
        touch no ROS entity: a shutdown that took the context down under the loop must not
        keep them from being written."""
        from ..core.experiments import summarize, write_results, format_summary
        written = None
        if loop.history:
            document = {'config': str(self.problem.source), 'problem_kind': self.problem.kind,
                        'theta_names': self.theta_names, 'target': 0.95, 'transport': 'ros2',
                        'status': self.status,
                        'methods': {'bilevel': {
                            'config': vars(loop.config) | {'adam_betas': list(loop.config.adam_betas)},
                            'seeds': [{'seed': loop.seed, 'wall_time_s': wall_time,
                                       'iterations': [r.to_json() for r in loop.history]}]}}}
            document['summary'] = summarize(document)
            written = write_results(document, self.run_dir)
            print(format_summary(document['summary']), flush=True)
        try:
            if self.executor_.context.ok():
                self.publish_diagnostics(loop)
        except Exception as err:      # noqa: BLE001 -- the context went down meanwhile; nothing to tell
            self.get_logger().debug(f'last diagnostics not published: {err}')
        self.stop_recording()
        if written is not None:
            json_path, png_path = written
            self.get_logger().info(f'{self.status}: {loop.iteration} iterations in {wall_time:.2f} s; '
                                   f'wrote {json_path}, {png_path}' +
                                   (f', {self.run_dir / "bag"}' if self.recorder else '') +
                                   f'; {loop.replayed_real_batches} real batch(es) reused from before a restart, '
                                   f'{self.retries} goal(s) sent again')

    # --- reporting -------------------------------------------------------------------------------------------
    def record_callback(self, record: IterationRecord) -> None:
        """Publish an iteration's record (already checkpointed).  A shutdown signal may have
        taken the context down mid-iteration: that ends the run as interrupted, not failed."""
        if not self.executor_.context.ok():
            raise ShutdownRequested('record')
        try:
            self._publish_record(record)
        except Exception:                          # noqa: BLE001 -- RCLError 'context is invalid' and kin
            if self.executor_.context.ok():
                raise
            raise ShutdownRequested('record') from None

    def _publish_record(self, record: IterationRecord) -> None:
        stamp = self.get_clock().now().to_msg()
        metrics = conversions.metrics_to_msg(record, self.theta_version,
                                             self.policy.version if self.policy is not None else 0)
        metrics.header.stamp = stamp
        self.metrics_publisher.publish(metrics)
        for name, value in (('real_return', record.real_return), ('normalized_return', record.normalized_return),
                            ('inner_grad_norm', record.inner_grad_norm), ('outer_grad_norm', record.grad_norm),
                            ('real_return_estimate', record.real_return_estimate)):
            self.scalar_publishers[name].publish(Float64(data=float(value)))
        for publisher, value in zip(self.theta_metric_publishers, record.theta):
            publisher.publish(Float64(data=float(value)))
        now = time.monotonic()
        total = self.loop.config.iterations
        if now - self.last_progress >= self.parameters['progress_period_s'] or record.iteration >= total \
                or record.iteration <= 1:
            self.last_progress = now
            self.publish_diagnostics(self.loop)
            print(f'progress iteration={record.iteration} total={total} '
                  f'normalized_return={record.normalized_return:.4f} real_return={record.real_return:.4f} '
                  f'inner_grad_norm={record.inner_grad_norm:.2e} real_transitions={record.real_transitions}',
                  flush=True)

    def publish_diagnostics(self, loop: GraphBilevelLoop) -> None:
        level = DiagnosticStatus.OK if not self.status.startswith('failed') else DiagnosticStatus.ERROR
        last = loop.history[-1] if loop.history else None
        values = {'iteration': loop.iteration, 'iterations': loop.config.iterations,
                  'theta_version': self.theta_version, 'real_transitions': loop.real_transitions}
        if last is not None:
            values.update(normalized_return=f'{last.normalized_return:.6f}',
                          inner_grad_norm=f'{last.inner_grad_norm:.3e}')
        status = DiagnosticStatus(level=level, name=f'{self.get_fully_qualified_name()}: outer loop',
                                  message=self.status, hardware_id=self.problem.kind,
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(array)


def _policy_fields(policy: PolicyParameters) -> dict:
    """A policy message as JSON-able fields (floats round-trip exactly through JSON)."""
    return {'kind': policy.kind, 'shape': [int(s) for s in policy.shape], 'values': [float(v) for v in policy.values],
            'version': int(policy.version), 'theta_version': int(policy.theta_version),
            'inner_grad_norm': float(policy.inner_grad_norm)}


def _policy_message(fields: dict) -> PolicyParameters:
    return PolicyParameters(kind=str(fields['kind']), shape=[int(s) for s in fields['shape']],
                            values=[float(v) for v in fields['values']], version=int(fields['version']),
                            theta_version=int(fields['theta_version']),
                            inner_grad_norm=float(fields['inner_grad_norm']))


def _topic_token(name: str) -> str:
    """'L[0][1][2]' -> 'L_0_1_2': a valid topic name token for each theta entry."""
    token = re.sub(r'[^A-Za-z0-9_]+', '_', name).strip('_')
    return token if token and not token[0].isdigit() else f'theta_{token}'


def main(args=None) -> int:
    return run_node(OuterOptimizer, args, body=lambda node, executor: node.run(executor))


if __name__ == '__main__':
    raise SystemExit(main())
