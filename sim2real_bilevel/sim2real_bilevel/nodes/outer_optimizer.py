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

Real episodes in transit: every run_episodes goal carries a ``request_id``, saved before it is
sent, and a restarted optimizer asks the bridge for the kept result of its last request before
anything else (``real_episodes.py``).  With ``policy_key_file`` every goal to the bridge is
signed (nodes/provenance.py, docs/security.md).  Goal timeouts, re-sends and lost results:
``action_calls.py``; the metrics topics, diagnostics and progress lines: ``loop_reporting.py``;
the bag: ``recording.py``; results.json: ``core.experiments.results_document``.

The loop runs in ``main()``'s thread and waits on futures with ``spin_once``, so parameter
changes (``ros2 param set``) are served between and during iterations and take effect on
the next iteration.
"""
from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.action import ActionClient
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from sim2real_bilevel_interfaces.action import ComputeSensitivity, RunEpisodes, TrainPolicy
from sim2real_bilevel_interfaces.msg import OuterGradient, OuterMetrics, PolicyParameters, SimParameters, \
    TrajectoryBatch
from sim2real_bilevel_interfaces.srv import RunEpisodeBatch

from ..core.checkpoint import CheckpointError
from ..core.offline import OfflineBilevelRun
from ..core.outer import BilevelOuterLoop, IterationRecord, OuterConfig
from . import conversions, provenance
from .action_calls import ActionCaller, ActionFailed, Unsupported
from .evaluation import EvaluatorClient
from .loop_reporting import LoopReporter
from .real_episodes import RealEpisodeRequests, batch_request
from .recording import PublicationLog, RunRecording, bag_folder
from .runtime import (EVENTS, LATCHED, PROBLEM, SEED, DeclaredParameters, ParameterSpec, ShutdownRequested,
                      internal_publisher, load_problem, outer_config_defaults, run_node)

LIVE_PARAMETERS = ('iterations', 'step_size', 'real_episodes')


class GraphCalls:
    """The expensive calls of an outer loop as actions on the graph's nodes (mixed into a core
    loop class; ``node`` set by the subclass)."""

    node: 'OuterOptimizer'

    def restore_policy(self, best):
        """Safe improvement went back to the best policy: re-register it with the graph as a resume
        does (one inner solve at its theta, warm-started at its phi, under new versions the bridge
        accepts); later batches of it are pooled with its earlier ones."""
        node = self.node
        grad_norm = best.inner_grad_norm if np.isfinite(best.inner_grad_norm) else node.policy.inner_grad_norm
        node.policy = conversions.policy_to_msg(best.phi, node.policy.version, node.theta_version,
                                                float(grad_norm), node.policy.kind)
        self.set_policy(node.train_policy(self.theta, best.phi))
        best.phi = np.array(self.phi, dtype=np.float64)

    def solve_inner(self, theta, phi_init):
        return self.node.train_policy(theta, phi_init)

    def sample_real_batch(self, phi):
        return self.node.run_episodes(self.batch_episodes)

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


class GraphBilevelLoop(GraphCalls, BilevelOuterLoop):
    """``BilevelOuterLoop`` whose inner solve, real episodes and sensitivity are actions."""

    def __init__(self, node: 'OuterOptimizer', problem, config: OuterConfig, seed: int, progress, evaluator=None):
        super().__init__(problem, config, seed, progress, evaluator)
        self.node = node


class GraphOfflineLoop(GraphCalls, OfflineBilevelRun):
    """``OfflineBilevelRun`` (``real_data`` parameter) whose inner solve and sensitivity are actions; it
    asks for no real episode, so the graph needs no bridge."""

    def __init__(self, node: 'OuterOptimizer', problem, config: OuterConfig, dataset, seed: int, progress,
                 evaluator=None, settings=None):
        super().__init__(problem, config, dataset, seed, progress, evaluator, settings)
        self.node = node

    def sample_real_batch(self, phi):
        raise RuntimeError('the offline outer loop asks for no real episode')


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
            ParameterSpec('write_behind', False, 'write the run dir\'s files (real batches, history, checkpoint, '
                          'pending request) in order on a writer thread, each still atomic and fsync\'d, so the loop '
                          'does not wait on the disk; SIGINT, SIGTERM and the end of the run wait for them, but a '
                          'SIGKILL or power loss loses the few writes queued: a resume then redoes those iterations '
                          'and may run their episodes again.  false: every file is on disk before the loop goes on '
                          'and before its record is published (no episode is ever run twice; read at startup)',
                          read_only=True),
            ParameterSpec('sync_period_s', 0.0, "fsync the run dir's files (real batches, history, checkpoint, pending "
                          'request) together at most every this many seconds instead of each before the loop goes on: '
                          'every file is still written and renamed into place at once, so a SIGKILL loses nothing; a '
                          'power loss loses at most the iterations since the last sync, which a resume redoes from '
                          'checkpoint.durable.npz, running their real episodes again; 0: each file on disk before '
                          'the loop goes on (not with write_behind; the launch files set it per mode: sim_only 1.0, hardware 0; '
                          'read at startup)', low=0.0, high=3600.0,
                          read_only=True),
            ParameterSpec('record_bag', True, 'record theta, policies, gradients, metrics and real '
                          'trajectories to RUN_DIR/bag (read at startup)', read_only=True),
            ParameterSpec('action_timeout_s', 600.0, 'longest wait for one action result with no feedback from '
                          'its server (then the goal is sent again, see action_retries); the trainer and the '
                          'sensitivity node send feedback every few seconds while a long computation runs',
                          low=0.1, high=1e6),
            ParameterSpec('goal_timeout_s', 10.0, 'longest wait for a goal to be accepted or rejected (a goal '
                          'sent while its server restarts is lost: it is sent again after this)', low=0.1,
                          high=1e6),
            ParameterSpec('action_retries', 3, 'times in a row a goal is sent again after no answer, a '
                          'rejection, an abort or a malformed result (a peer restarting)', low=0, high=10 ** 6),
            ParameterSpec('server_timeout_s', 60.0, 'longest wait for the other nodes to come up', low=0.1,
                          high=1e6),
            ParameterSpec('intra_process_actions', True, 'in a container (launch argument containers:=learning): '
                          'hand goals to the action servers of the same process (inner_trainer, sensitivity) by a '
                          'direct call instead of over DDS, as rclcpp\'s intra-process communication does; the '
                          'servers check and run them as any goal (read at every goal)'),
            ParameterSpec('run_episodes_via', 'auto', "how real episodes are asked of the hardware_bridge: 'action' "
                          "(run_episodes: feedback and cancel, what a robot needs), 'service' (run_episode_batch: one "
                          'service call, a fraction of the round trip, which the bridge takes on its batched '
                          "transport only: sim-only loops) or 'auto' (the service while the bridge takes it, then the "
                          'action; hardware launches fix action); read at every batch',
                          choices=('auto', 'action', 'service')),
            ParameterSpec('progress_period_s', 0.5, 'least time between two progress lines on stdout',
                          low=0.0, high=3600.0),
            ParameterSpec('evaluator', '', "sim-only evaluator: the EvaluatePolicy service (the robot_emulator's "
                          "~/evaluate) that gives each record's exact normalised and real return; '' = none (hardware: "
                          'those are NaN, records carry the estimate from the real episodes and its interval; read at '
                          'startup)', read_only=True),
            ParameterSpec('evaluate_behind', True, "with an evaluator: send iteration k's evaluation request and go "
                          'on with iteration k+1; record k is completed (into history.jsonl, the checkpoint, '
                          'results.json) and published once its answer is in, one iteration later (a record still '
                          "waiting at a crash or signal is kept in the checkpoint and evaluated on resume); false: "
                          'wait for each answer before the loop goes on (read at startup)', read_only=True),
            ParameterSpec('evaluator_timeout_s', 5.0, 'longest wait for the evaluator service to be there (absent: '
                          'the record\'s normalised return is NaN)', low=0.01, high=1e4),
            ParameterSpec('evaluator_answer_timeout_s', 300.0, 'longest wait for the evaluator\'s answer to one '
                          'request without word from it: the evaluator reports an evaluation in progress every 2 s '
                          '(<evaluator>/progress), so a long one -- a URDF robot\'s first solves its oracle policy, '
                          'minutes -- is waited for and a silent evaluator is not; a lost answer or a server gone '
                          'meanwhile is asked for again, action_retries times; then NaN', low=0.01, high=1e5),
            ParameterSpec('safe_improvement', bool(d['safe_improvement']),
                          'backtrack theta, phi and the optimiser to the best deployed policy (and halve the step) '
                          'when the estimated real return drops significantly below it (read at startup)',
                          read_only=True),
            ParameterSpec('real_data', '', 'offline: comma-separated run folders or datasets (real/batch_*.npz, '
                          'as `solve --run-dir` and `sim2real-bilevel dataset` write them); the outer loop learns '
                          'from them and asks for no real episode (no hardware_bridge needed); empty: online '
                          '(read at startup)', read_only=True),
            ParameterSpec('min_coverage', -1.0, "offline: no step to a policy the data cover less than this, in "
                          "[0, 1]; -1: the problem kind's default; 0: off (read at startup)", low=-1.0, high=1.0,
                          read_only=True),
            ParameterSpec('policy_key_file', '', "key (`sim2real-bilevel keygen`) every run_episodes goal is signed "
                          "with; the bridge's policy_key_file must hold the same key; '' = $SIM2REAL_POLICY_KEY_FILE, "
                          "else unsigned (read at startup)", read_only=True),
        ])
        if self.parameters['write_behind'] and self.parameters['sync_period_s'] > 0:
            raise ValueError(f'outer_optimizer: write_behind true and sync_period_s {self.parameters["sync_period_s"]:g}: '
                             'two durability rules for the run dir; expected one of them (sync_period_s 0 -- '
                             'the launch argument sync_period_s:=0 in a sim-only launch -- or write_behind false)')
        key_file = provenance.key_file_setting(self.parameters['policy_key_file'])
        policy_key = provenance.load_key(key_file) if key_file else None
        if policy_key is not None:
            self.get_logger().info(f'run_episodes goals are signed with the key in {key_file}')
        self.executor_: Optional[SingleThreadedExecutor] = None
        self.theta_version = 0
        self.policy: Optional[PolicyParameters] = None
        self.gradient_message: Optional[OuterGradient] = None
        self.theta_names = list(self.problem.theta_names)
        self.theta_publisher = internal_publisher(self, SimParameters, 'theta', LATCHED)
        self.publications = PublicationLog()
        self.reporter = LoopReporter(self, self.theta_names, self.problem.kind, self.publications)
        self.trajectory_publisher = internal_publisher(self, TrajectoryBatch, 'real_trajectories', EVENTS)
        self.train_client = ActionClient(self, TrainPolicy, 'train_policy')
        self.episodes_client = ActionClient(self, RunEpisodes, 'run_episodes')
        self.episode_batch_client = self.create_client(RunEpisodeBatch, 'run_episode_batch')
        self.episode_batch_refused = False     # the bridge is not on its batched transport: the action
        self.sensitivity_client = ActionClient(self, ComputeSensitivity, 'compute_sensitivity')
        self.actions = ActionCaller(self, self.parameters)
        self.run_dir = Path(self.parameters['run_dir'] or
                            Path('runs') / f'{Path(self.problem.source).stem}-{datetime.now():%Y%m%d-%H%M%S}')
        self.episodes = RealEpisodeRequests(self.problem, self.run_dir, policy_key, self.get_logger())
        self.recording: Optional[RunRecording] = None
        self.dataset = self.load_dataset()
        self.status = 'starting'
        self.startup_s: Optional[float] = None
        """Seconds of the run's wall time spent waiting for the other nodes' servers to appear."""

    # --- the replaced expensive calls ---------------------------------------------------------------------
    def train_policy(self, theta: np.ndarray, phi_init):
        from ..core.problem import InnerResult
        if self.policy is not None:      # theta moved: a new version for everyone downstream
            self.theta_version += 1
        goal = TrainPolicy.Goal(theta=self.publish_theta(theta))
        if phi_init is not None and self.policy is not None:
            goal.warm_start = self.policy
        result = self.actions.call(self.train_client, goal, 'train_policy')
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
        self.publications.publish(self.theta_publisher, theta_msg)
        return theta_msg

    def run_episodes(self, n_episodes: int):
        """Real batch number ``loop.real_batch_count + 1`` (its request saved before it is sent)."""
        goal = self.episodes.new_goal(self.policy, n_episodes, self.loop.real_batch_count + 1)
        version = self.policy.version
        # a malformed batch (faulty bridge) is logged and asked for again, never used
        read = lambda result: self.episodes.read(result, version)          # noqa: E731
        if self.episodes_by_service():
            try:
                batch, trajectories = self.actions.call_service(
                    self.episode_batch_client, goal, 'run_episode_batch', batch_request, read=read,
                    prepare=self.episodes.sign)
            except Unsupported as err:
                if self.parameters['run_episodes_via'] != 'auto':
                    raise
                self.episode_batch_refused = True
                self.get_logger().warning(f'{err}: real episodes are asked for by the run_episodes action from now '
                                          'on (run_episodes_via)')
        if not self.episodes_by_service():
            batch, trajectories = self.actions.call(self.episodes_client, goal, 'run_episodes', read=read,
                                                    prepare=self.episodes.sign)
        self.publications.publish(self.trajectory_publisher, trajectories)
        return batch

    def episodes_by_service(self) -> bool:
        via = self.parameters['run_episodes_via']
        return via == 'service' or (via == 'auto' and not self.episode_batch_refused)

    def compute_sensitivity(self, real_gradient: np.ndarray) -> np.ndarray:
        lower, upper = self.problem.theta_bounds()
        goal = ComputeSensitivity.Goal(
            theta=conversions.theta_to_msg(self.theta_names, self.loop.theta, lower, upper, self.theta_version,
                                           self.problem.source),
            policy=self.policy)
        goal.real_gradient = conversions.vector_to_field(real_gradient)
        goal.learn = [bool(v) for v in self.loop.learn_mask]        # solver 'resolve' re-solves along these only
        result = self.actions.call(self.sensitivity_client, goal, 'compute_sensitivity')
        self.gradient_message = result.gradient
        return conversions.gradient_from_msg(result.gradient, len(self.theta_names), self.problem.phi_size())

    # --- the run ------------------------------------------------------------------------------------------
    def apply_live_parameters(self, loop: GraphBilevelLoop) -> None:
        loop.config.iterations = self.parameters['iterations']
        loop.config.real_episodes = self.parameters['real_episodes']
        loop.config.step_size = loop.adam.step_size = self.parameters['step_size']

    def load_dataset(self):
        """The ``real_data`` parameter's dataset (None: online), checked against the problem now, so a bad
        path or a kind without an offline estimator stops the node before it waits for anyone."""
        from ..core.datasets import load_run_folder, merge
        from ..core.offline import make_estimator
        paths = [p.strip() for p in self.parameters['real_data'].split(',') if p.strip()]
        if not paths:
            return None
        for path in paths:
            if (Path(path) / 'metadata.yaml').is_file():
                raise ValueError(f'real_data: {path} is a bag folder; the outer_optimizer reads run folders and '
                                 'datasets (real/batch_*.npz): convert it with `sim2real-bilevel dataset --from '
                                 f'{path} --out DIR` (bag options as for `solve --real-data`)')
        dataset = merge([load_run_folder(p) for p in paths])
        prepared = make_estimator(self.problem, dataset, self.offline_settings()).dataset   # refusals, bad data
        self.get_logger().info(f'offline: real data {prepared.describe()} from {paths}; no real episode will be '
                               'asked for')
        return dataset

    def offline_settings(self):
        from ..core.offline import OfflineSettings
        coverage = self.parameters['min_coverage']
        return OfflineSettings(min_coverage=None if coverage < 0 else coverage)

    def make_loop(self) -> GraphBilevelLoop | GraphOfflineLoop:
        from ..core.experiments import make_run
        overrides = {name: self.parameters[name] for name in
                     ('iterations', 'step_size', 'optimizer', 'real_episodes', 'real_history', 'learn',
                      'safe_improvement')}
        config = make_run(self.problem, 'bilevel', self.parameters['seed'], overrides=overrides).config
        if self.dataset is not None:
            self.loop = GraphOfflineLoop(self, self.problem, config, self.dataset, self.parameters['seed'],
                                         self.record_callback, evaluator=self.make_evaluator(),
                                         settings=self.offline_settings())
        else:
            self.loop = GraphBilevelLoop(self, self.problem, config, self.parameters['seed'], self.record_callback,
                                         evaluator=self.make_evaluator())
        return self.loop

    def make_evaluator(self):
        """The sim-only evaluator (``evaluator`` parameter), or None: nothing reads the real model."""
        name = self.parameters['evaluator']
        if not name:
            self.get_logger().info('no evaluator: records carry the estimated real return from the real episodes '
                                   'and its confidence interval; the normalised return is NaN')
            return None
        self.get_logger().info(f'sim-only evaluator: {name} (normalised return of each record)')

        def policy_message(phi):
            policy = self.policy
            return conversions.policy_to_msg(phi, policy.version if policy else 0, self.theta_version,
                                             float(policy.inner_grad_norm) if policy else 0.0,
                                             policy.kind if policy else PolicyParameters.KIND_FLAT)
        client = EvaluatorClient(self, name, policy_message, lambda: self.executor_,
                                 timeout_s=self.parameters['evaluator_timeout_s'],
                                 answer_timeout_s=self.parameters['evaluator_answer_timeout_s'],
                                 retries=self.parameters['action_retries'])
        # the client (with submit): records wait for their evaluation while the loop goes on; its
        # call alone: the loop waits for each answer
        return client if self.parameters['evaluate_behind'] else client.__call__

    def wait_for_servers(self) -> None:
        """The servers the run calls (offline: no run_episodes, no bridge)."""
        episodes = self.episode_batch_client if self.episodes_by_service() else self.episodes_client
        clients = (self.train_client, self.sensitivity_client) if self.dataset is not None else \
            (self.train_client, episodes, self.sensitivity_client)
        for client in clients:
            self.actions.wait_for_server(client)

    def start_recording(self) -> None:
        if not self.parameters['record_bag']:
            return
        topics = [('theta', SimParameters, LATCHED), ('policy', PolicyParameters, LATCHED),
                  ('outer_metrics', OuterMetrics, EVENTS), ('outer_gradient', OuterGradient, EVENTS),
                  ('real_trajectories', TrajectoryBatch, EVENTS), ('/diagnostics', DiagnosticArray, EVENTS)]
        topics += self.reporter.scalar_topics()
        # what only this node publishes, for nobody in the graph, goes into the bag directly (not theta:
        # latched, a late subscriber must still get it)
        direct = [name for name, _, _ in topics if name in ('outer_metrics', 'real_trajectories')
                  or name.startswith('metrics/')]
        self.recording = RunRecording(f'{self.get_name()}_recorder', self.get_namespace(), bag_folder(self.run_dir),
                                      topics, direct)
        self.publications.record_directly(self.recording, [self.resolve_topic_name(name) for name in direct])

    def stop_recording(self) -> None:
        self.publications.stop_recording_directly()
        if self.recording is not None:
            short = self.recording.stop(self.publications.counts)
            if short:
                self.get_logger().warning(f'the bag misses messages this node published: {short}')

    def run(self, executor: SingleThreadedExecutor) -> int:
        self.executor_ = self.actions.executor = executor
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
                    f'episodes in {loop.real_batch_count} batches, theta version {self.theta_version}'
                    + (f'; from {loop.resumed_from}, the newer checkpoint being torn or incomplete'
                       if loop.resumed_from != 'checkpoint.npz' else '') + ')')
            self.get_logger().info(f'waiting for the graph ({self.problem.source}, seed {self.parameters["seed"]}, '
                                   f'{loop.config.iterations} iterations, run_dir {self.run_dir})')
            if self.parameters['write_behind']:
                self.episodes.writer = loop.write_behind()
            elif self.parameters['sync_period_s'] > 0:
                self.episodes.writer = loop.sync_periodically(self.parameters['sync_period_s'])
            self.wait_for_servers()
            self.startup_s = time.perf_counter() - started
            self.status = 'running'
            if loop.phi is not None and self.dataset is None:
                self.episodes.recover(loop, lambda goal: self.actions.call_once(self.episodes_client, goal,
                                                                                'run_episodes'))
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
            loop.settle()                                # the last record's evaluation (evaluate_behind)
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
        """results.json first: the final diagnostics and stopping the recorder talk to ROS, which
        may be going down (a signal), and must not cost the run its results -- after every file
        written behind is on disk."""
        try:
            loop.close_writer()
        except CheckpointError as err:
            self.status = f'failed: {err}'
            self.get_logger().error(f'the run dir is incomplete: {err}')
        self.episodes.writer = None
        if loop.pending is not None:
            self.get_logger().info(f'the record of iteration {loop.pending.record.iteration} still waits for its '
                                   'evaluation: it is kept in the checkpoint (a resume evaluates and reports it), not '
                                   'in results.json')
        written = self.write_results(loop, wall_time) if loop.history else None
        if self.executor_.context.ok():
            self._after_results('final diagnostics', lambda: self.publish_diagnostics(loop))
        self._after_results('stopping the bag recorder', self.stop_recording)
        if written is None:
            return
        json_path, png_path = written
        self.get_logger().info(f'{self.status}: {loop.iteration} iterations in {wall_time:.2f} s; '
                               f'wrote {json_path}, {png_path}' +
                               (f', {self.run_dir / "bag"}' if self.recording else '') +
                               f'; {loop.replayed_real_batches} real batch(es) reused from before a restart, '
                               f'{self.actions.retries} goal(s) sent again, {self.actions.in_process_calls} '
                               f'handed over in-process, {self.publications.skipped} publication(s) recorded '
                               'directly with no subscriber to send them to')

    def _after_results(self, what: str, action) -> None:
        try:
            action()
        except Exception as err:          # noqa: BLE001 -- the results are written; say what failed
            self.get_logger().warning(f'{what} failed: {type(err).__name__}: {err}')

    def write_results(self, loop: GraphBilevelLoop, wall_time: float):
        """RUN_DIR/results.json and results.png, the summary on stdout; returns both paths."""
        from ..core.experiments import format_summary, method_entry, results_document, seed_entry, write_results
        seed = seed_entry(loop, loop.seed, wall_time)
        seed['graph_startup_s'] = self.startup_s        # part of wall_time_s
        data = getattr(loop, 'dataset', self.dataset)      # as the problem took it (padded / dropped episodes)
        context = {} if self.dataset is None else {'offline': {
            'dataset': data.describe(), 'sources': self.dataset.sources, 'notes': data.notes,
            'behaviour_known': self.dataset.behaviour_known}}
        document = results_document(self.problem.source, self.problem, {'bilevel': method_entry(loop, [seed])},
                                    transport='ros2', status=self.status, **context)
        paths = write_results(document, self.run_dir)
        print(format_summary(document['summary']), flush=True)
        warning = (seed.get('best') or {}).get('warning')
        if warning:                                     # an offline run without an improvement the data support
            self.get_logger().warning(f'offline: {warning}')
        return paths

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
        self.reporter.publish_record(record, self.loop, self.status, self.theta_version,
                                     self.policy.version if self.policy is not None else 0,
                                     self.parameters['progress_period_s'])

    def publish_diagnostics(self, loop: GraphBilevelLoop) -> None:
        self.reporter.publish_diagnostics(loop, self.status, self.theta_version)


def main(args=None) -> int:
    return run_node(OuterOptimizer, args, body=lambda node, executor: node.run(executor))


if __name__ == '__main__':
    raise SystemExit(main())
