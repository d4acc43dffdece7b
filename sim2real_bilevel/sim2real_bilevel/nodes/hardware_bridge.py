"""hardware_bridge: deploys a policy on the robot (action run_episodes) -- a lifecycle node.

unconfigured -> configure: creates the action server, the command publisher (a lifecycle
publisher: it drops every message unless the node is active), the joint_states subscription
and the emulator client; activate: commands may leave; deactivate / shutdown: a zero command
is sent first, then nothing more.  Goals are rejected, with the reason logged, when the
bridge is not active, when the policy is malformed (wrong length, non-finite values) or
when its version is stale (older than the newest policy seen on ``policy``) or from the
future (more than one ahead of it).

Provenance (docs/security.md): with ``policy_key_file`` set, only goals signed with that key
(HMAC-SHA256, ``nodes/provenance.py``), fresh (``max_goal_age_s``) and not replayed are run,
and the ``policy`` topic is no longer trusted for version checks.  The bridge is the only
node allowed to publish on ``<controller>/commands``: another publisher there (seen in the
ROS graph at configure, before every goal, every second and at every step) latches the e-stop.
A goal whose ``request_id`` matches a goal that already succeeded here, with the same policy
and episode count, gets the kept result again instead of running the robot a second time
(``result_cache_size`` results are kept, in memory).

Transports (parameter ``transport``):
- ``batched``: forwards the goal to the emulator's ``robot_emulator/run_episodes`` action
  (sim-only loops, where one DDS round trip per transition would dominate);
- ``topics``: the ros2_control contract of real hardware -- reads ``joint_states`` (joints
  mapped by name through the ``joints`` parameter), writes ``<controller>/commands``
  (std_msgs/Float64MultiArray ordered like ``joints``), takes the step reward from ``reward``
  and starts episodes through the ``reset_service``; implemented for tabular policies.
"""
from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.action import ActionClient, ActionServer, GoalResponse
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.task import Future
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Float64MultiArray
from std_srvs.srv import Trigger
from sim2real_bilevel_interfaces.action import RunEpisodes
from sim2real_bilevel_interfaces.msg import PolicyParameters

from ..core.problem import Trajectories
from . import conversions, provenance
from .kept_results import KeptResults
from .action_calls import RESULT_KEPT_S, GoalRejected, PeerLost, call_async
from .runtime import EVENTS, LATCHED, PROBLEM, ROBOT_STREAM, DeclaredParameters, ParameterSpec, \
    command_publishers, load_problem, run_node

TRANSPORTS = ('batched', 'topics')


class HardwareBridge(LifecycleNode):

    def __init__(self):
        super().__init__('hardware_bridge')
        self.parameters = DeclaredParameters(self, [
            PROBLEM,
            ParameterSpec('autostart', False, 'configure and activate right after start (sim-only loops); on '
                          'hardware leave false and activate deliberately', read_only=True),
            ParameterSpec('transport', 'batched', "'batched' (emulator action) or 'topics' (joint_states / "
                          'commands, one transition per command); applies from the next goal',
                          choices=TRANSPORTS),
            ParameterSpec('controller', 'forward_command_controller',
                          'controller whose <controller>/commands topic takes the commands (read at configure)',
                          allow_empty=False),
            ParameterSpec('joints', ['state'], 'command order and the joint_states entries read, by name '
                          '(read at configure)'),
            ParameterSpec('emulator_action', 'robot_emulator/run_episodes',
                          'RunEpisodes action the batched transport forwards to (read at configure)',
                          allow_empty=False),
            ParameterSpec('reset_service', 'robot_emulator/reset',
                          'std_srvs/Trigger service that starts an episode on the topic transport (read at '
                          'configure)', allow_empty=False),
            ParameterSpec('step_timeout_s', 2.0, 'longest wait for the robot\'s answer to one command',
                          low=0.001, high=600.0),
            ParameterSpec('reset_timeout_s', 10.0, 'longest wait for the reset service to start an episode',
                          low=0.01, high=600.0),
            ParameterSpec('episode_timeout_s', 600.0, 'longest wait for a batched run_episodes result',
                          low=0.1, high=1e6),
            ParameterSpec('effort_limit', 2.0, 'largest |effort| commanded to any joint (N m); larger requests are '
                          'clamped and counted', low=1e-9, high=1e6),
            ParameterSpec('max_effort_rate', 1.0, 'largest change of a joint\'s effort per control step (N m)',
                          low=1e-9, high=1e6),
            ParameterSpec('watchdog_timeout_s', 0.5, 'joint_states older than this during an episode: zero '
                          'command, episode aborted', low=1e-3, high=60.0),
            ParameterSpec('position_limit', 3.2, 'largest |joint position| (rad) before the episode is aborted',
                          low=1e-9, high=1e6),
            ParameterSpec('velocity_limit', 20.0, 'largest |joint velocity| (rad/s) before the episode is aborted',
                          low=1e-9, high=1e6),
            ParameterSpec('max_episodes', 1000, 'largest n_episodes one run_episodes goal may ask for', low=1,
                          high=1_000_000),
            ParameterSpec('policy_key_file', '', "shared key (`sim2real-bilevel keygen`) run_episodes goals must be "
                          "signed with; '' = $SIM2REAL_POLICY_KEY_FILE, or when that is unset too goals are not "
                          'authenticated (warned at configure; read at configure)',
                          read_only=True),
            ParameterSpec('max_goal_age_s', 30.0, 'signed goals older (or further in the future) than this are '
                          'refused as replays; the hosts\' clocks must agree to well within it', low=0.1, high=3600.0),
            ParameterSpec('result_cache_size', 16, 'succeeded goals whose result is kept for a repeated request_id',
                          low=0, high=1000),
        ])
        self.problem = load_problem(self.parameters['problem'])
        self.active = False
        self.newest_policy_version = None
        self.deployed = 0
        self.estopped = ''                 # latched e-stop reason; '' = not stopped
        self.last_reason = 'unconfigured'
        self.step_waiters: list = []
        self.latest_state = None
        self.latest_velocity = None
        self.filter_counts: dict = {}
        self.rewards: list[float] = []
        self.entities_created = False
        self.verifier = None               # provenance.GoalVerifier when policy_key_file is set
        self.requests = KeptResults(lambda: self.parameters['result_cache_size'])
        if self.parameters['autostart']:
            self.autostart_timer = self.create_timer(0.0, self.autostart_callback)

    def autostart_callback(self) -> None:
        self.destroy_timer(self.autostart_timer)
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    # --- lifecycle -------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        joints = list(self.parameters['joints'])
        if not joints:
            self.get_logger().error('configure failed: the joints parameter is empty')
            return TransitionCallbackReturn.FAILURE
        self.joints = joints
        key_file = provenance.key_file_setting(self.parameters['policy_key_file'])
        if key_file:
            try:
                self.verifier = provenance.GoalVerifier(provenance.load_key(key_file),
                                                        self.parameters['max_goal_age_s'])
                self.get_logger().info(f'only run_episodes goals signed with the key in {key_file} are run')
            except provenance.ProvenanceError as err:
                self.get_logger().error(f'configure failed: {err}')
                return TransitionCallbackReturn.FAILURE
        else:
            self.verifier = None
            self.get_logger().warning('no policy key (policy_key_file and $SIM2REAL_POLICY_KEY_FILE are empty): any '
                                      'participant on this ROS domain can deploy a policy on the robot '
                                      '(docs/security.md)')
        self.command_publisher = self.create_lifecycle_publisher(
            Float64MultiArray, f'{self.parameters["controller"]}/commands', ROBOT_STREAM)
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, '/diagnostics', EVENTS)
        self.joint_state_subscription = self.create_subscription(JointState, 'joint_states',
                                                                 self.joint_state_callback, ROBOT_STREAM)
        self.reward_subscription = self.create_subscription(Float64, 'reward', self.reward_callback, ROBOT_STREAM)
        self.policy_subscription = self.create_subscription(PolicyParameters, 'policy', self.policy_callback, LATCHED)
        self.emulator_client = ActionClient(self, RunEpisodes, self.parameters['emulator_action'])
        self.reset_client = self.create_client(Trigger, self.parameters['reset_service'])
        self.estop_service = self.create_service(Trigger, '~/estop', self.estop_callback)
        self.reset_estop_service = self.create_service(Trigger, '~/reset_estop', self.reset_estop_callback)
        self.episodes_server = ActionServer(self, RunEpisodes, 'run_episodes',
                                            execute_callback=self.run_episodes_callback,
                                            goal_callback=self.goal_callback, result_timeout=RESULT_KEPT_S)
        self.commander_timer = self.create_timer(1.0, self.check_commanders)
        self.entities_created = True
        self.last_reason = 'configured'
        self.get_logger().info(f'configured: commands on {self.command_publisher.topic_name} for joints {joints}, '
                               f'transport {self.parameters["transport"]}')
        self.publish_diagnostics()
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = True
        self.last_reason = 'active'
        result = super().on_activate(state)       # enables the lifecycle publisher
        self.get_logger().info('active: policies may now be deployed')
        self.publish_diagnostics()
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.send_zero_command()                  # while the publisher still lets it through
        self.active = False
        self.last_reason = 'inactive'
        result = super().on_deactivate(state)
        self.get_logger().info('inactive: zero command sent, no further command leaves the bridge')
        self.publish_diagnostics()
        return result

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        self.last_reason = 'unconfigured'
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.active:
            self.send_zero_command()
        self.active = False
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        if not self.entities_created:
            return
        self.episodes_server.destroy()
        self.destroy_timer(self.commander_timer)
        self.emulator_client.destroy()
        self.destroy_client(self.reset_client)
        self.destroy_service(self.estop_service)
        self.destroy_service(self.reset_estop_service)
        for subscription in (self.joint_state_subscription, self.reward_subscription, self.policy_subscription):
            self.destroy_subscription(subscription)
        self.destroy_lifecycle_publisher(self.command_publisher)
        self.destroy_publisher(self.diagnostics_publisher)
        self.entities_created = False

    def before_exit(self) -> None:
        """SIGINT / SIGTERM: the last word to the robot is a zero command."""
        if self.active:
            self.send_zero_command()
            self.get_logger().info('shutting down: zero command sent')

    def send_zero_command(self) -> None:
        if self.entities_created:
            self.command_publisher.publish(Float64MultiArray(data=[0.0] * len(self.joints)))

    # --- e-stop ----------------------------------------------------------------------------------------
    def latch_estop(self, reason: str) -> None:
        """Latch a stop: zero command now, running episodes abort at their next step, every goal
        is refused until ``~/reset_estop`` is called -- deactivating and activating does not clear it."""
        self.estopped = reason
        self.send_zero_command()
        self.last_reason = f'E-STOP: {reason}'
        self.get_logger().error(f'E-STOP latched ({reason}): zero command sent, goals refused until ~/reset_estop')
        self.publish_diagnostics(DiagnosticStatus.ERROR)

    def estop_callback(self, request, response):
        self.latch_estop('e-stop requested through ~/estop')
        response.success, response.message = True, 'e-stop latched; call ~/reset_estop to clear it'
        return response

    def foreign_commanders(self) -> list[str]:
        """Nodes other than this bridge that publish on the command topic (from the ROS graph;
        a second publisher under this bridge's own name counts too)."""
        if not self.entities_created:
            return []
        own = self.get_fully_qualified_name()
        names = command_publishers(self, self.command_publisher.topic_name)
        if names.count(own) > 1:
            return [f'{own} (a second publisher under this bridge\'s name)']
        return sorted(name for name in names if name != own)

    def check_commanders(self) -> str:
        """Latch the e-stop when another node publishes robot commands; returns the reason or ''."""
        foreign = self.foreign_commanders()
        if not foreign:
            return ''
        reason = (f'another node publishes on {self.command_publisher.topic_name}: {", ".join(foreign)} -- only '
                  'this bridge may command the robot')
        if self.estopped != reason:
            self.latch_estop(reason)
        return reason

    def reset_estop_callback(self, request, response):
        was = self.estopped
        self.estopped = ''
        self.last_reason = 'active' if self.active else 'inactive'
        self.get_logger().warning(f'e-stop reset by ~/reset_estop (was: {was or "not latched"})')
        self.publish_diagnostics()
        response.success = True
        response.message = 'e-stop cleared' if was else 'no e-stop was latched'
        return response

    # --- goals -----------------------------------------------------------------------------------------
    def policy_callback(self, msg: PolicyParameters) -> None:
        """Track the newest published policy version -- only from well-formed messages whose
        version is a plausible successor (a hostile far-future version would otherwise make
        every genuine goal 'stale'), and not at all when goals are signed (the topic is not)."""
        if self.verifier is not None:
            return
        try:
            conversions.policy_from_msg(msg, self.problem.phi_size())
            version = conversions.check_version(msg.version, self.newest_policy_version or 0,
                                                'PolicyParameters.version')
        except conversions.MessageValidationError as err:
            self.get_logger().error(f'ignored policy message: {err}')
            return
        self.newest_policy_version = version
        self.publish_diagnostics()

    def refusal(self, goal) -> str:
        """Why a goal must not run now, or ''."""
        self.check_commanders()
        if self.estopped:
            return f'E-STOP latched ({self.estopped}): call ~/reset_estop first'
        if not self.active:
            return 'the bridge is not active: no command leaves it unless active'
        try:
            conversions.policy_from_msg(goal.policy, self.problem.phi_size())
        except conversions.MessageValidationError as err:
            return f'malformed policy: {err}'
        if self.verifier is not None:
            reason = self.verifier.refusal(goal)
            if reason:
                return reason
        reason = self.requests.refusal(goal)
        if reason or self.requests.known(goal):
            return reason                  # '' for a kept or running request: the robot does not move again
        version = int(goal.policy.version)
        newest = self.newest_policy_version
        if newest is not None and version < newest:
            return f'stale policy version {version}: the newest published policy is version {newest}'
        if newest is not None and version > newest + 1:
            return f'policy version {version} is from the future: the newest published policy is version {newest}'
        if version < self.deployed:
            return f'stale policy version {version}: version {self.deployed} was already deployed'
        if not 1 <= goal.n_episodes <= self.parameters['max_episodes']:
            return f'n_episodes={goal.n_episodes}: expected 1..{self.parameters["max_episodes"]} (max_episodes)'
        return ''

    def goal_callback(self, goal) -> GoalResponse:
        reason = self.refusal(goal)
        if reason:
            self.last_reason = f'rejected: {reason}'
            self.get_logger().error(f'rejected run_episodes goal: {reason}')
            self.publish_diagnostics(DiagnosticStatus.WARN)
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    async def run_episodes_callback(self, goal_handle):
        goal = goal_handle.request
        request = str(goal.request_id)
        running = self.requests.running_future(goal)
        if running is not None:            # sent again while it runs (its sender restarted): wait for it
            self.get_logger().info(f'run_episodes {request!r} is running: this goal waits for its result')
            await running
        kept = self.requests.kept(goal)
        if kept is not None:
            self.get_logger().info(f'run_episodes {request!r} already ran: its result is sent again, the robot is '
                                   'not run')
            goal_handle.succeed()
            return kept
        if goal.kept_result_only:
            goal_handle.abort()
            return RunEpisodes.Result(success=False, message=f'request_id {request!r} did not succeed: no result kept')
        self.requests.start(goal, Future())
        result = None
        try:
            result = await self._run(goal, goal_handle)
        finally:
            self.requests.finish(goal, result if result is not None and result.success else None)
        return result

    async def _run(self, goal, goal_handle) -> RunEpisodes.Result:
        if self.parameters['transport'] == 'batched':
            result = await self._forward(goal)
        else:
            result = await self._run_on_topics(goal, goal_handle)
        if self.estopped and result.success:
            result = RunEpisodes.Result(success=False, message=f'E-STOP during the episodes: {self.estopped}')
        if result.success and self.active:
            self.deployed = max(self.deployed, int(goal.policy.version))
            goal_handle.succeed()
        else:
            if self.active is False and result.success:
                result.success, result.message = False, 'deactivated during the episodes'
            goal_handle.abort()
            self.get_logger().error(f'run_episodes aborted: {result.message}')
        self.last_reason = 'active' if self.active else self.last_reason
        return result

    async def _forward(self, goal) -> RunEpisodes.Result:
        """The episodes on the emulator's action, every wait bounded: a goal or result message
        lost before DDS matched both ends would otherwise hold this goal (and every re-send of
        its request_id) forever.  A result that does not come although the emulator's status says
        the goal finished is asked for again."""
        name = self.parameters['emulator_action']
        # the request_id goes along: a bridge restarted while the emulator ran gets those episodes
        forwarded = RunEpisodes.Goal(policy=goal.policy, n_episodes=goal.n_episodes, request_id=goal.request_id)
        try:
            response = await call_async(self.emulator_client, forwarded, name, self._await_robot, self._await_future,
                                        self.parameters['episode_timeout_s'], on_done=self._wake_step_waiters,
                                        stopped=lambda: not self.active or bool(self.estopped))
        except GoalRejected:
            return RunEpisodes.Result(success=False, message='the emulator rejected the episodes (its log says why)')
        except PeerLost as err:
            return RunEpisodes.Result(success=False, message=str(err))
        return response.result

    # --- topic transport --------------------------------------------------------------------------------
    def joint_state_callback(self, msg: JointState) -> None:
        """Joints are read by name (other joints and any order are fine)."""
        names = list(msg.name)
        try:
            index = [names.index(joint) for joint in self.joints]
            positions = [msg.position[i] for i in index]
            velocities = [msg.velocity[i] for i in index] if len(msg.velocity) else [0.0] * len(index)
        except (ValueError, IndexError):
            self.get_logger().error(f'joint_states without the joints {self.joints}: names {names}',
                                    throttle_duration_sec=5.0)
            return
        self.latest_state = np.asarray(positions, dtype=np.float64)
        self.latest_velocity = np.asarray(velocities, dtype=np.float64)
        self._wake_step_waiters()

    def reward_callback(self, msg: Float64) -> None:
        self.rewards.append(float(msg.data))
        self._wake_step_waiters()

    def _wake_step_waiters(self) -> None:
        waiters, self.step_waiters = self.step_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(True)

    async def _await_robot(self, condition, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline or not self.active or self.estopped:
                return False
            waiter = Future()
            self.step_waiters.append(waiter)
            timer = self.create_timer(min(0.05, timeout_s), lambda w=waiter: None if w.done() else w.set_result(False))
            await waiter
            self.destroy_timer(timer)
            if waiter in self.step_waiters:      # woken by its timer: nothing else would drop it (leak
                self.step_waiters.remove(waiter)  # found by the soak on the batched transport)
        return True

    async def _await_future(self, future, timeout_s: float) -> bool:
        """``_await_robot`` for a future: woken the moment it completes (not at the next 50 ms tick)."""
        future.add_done_callback(lambda _: self._wake_step_waiters())
        return await self._await_robot(future.done, timeout_s)

    async def _reset_robot(self) -> Trigger.Response:
        """Start an episode through the reset service, within ``reset_timeout_s``.  A request sent
        before DDS has matched the client with the service is dropped without an answer, so the
        service must be ready first, and a request unanswered after a while is sent once more."""
        timeout = self.parameters['reset_timeout_s']
        name = self.reset_client.srv_name

        def stopped(reason: str) -> Trigger.Response:
            if self.estopped or not self.active:
                reason = f'E-STOP: {self.estopped}' if self.estopped else 'the bridge was deactivated'
            return Trigger.Response(success=False, message=reason)
        if not await self._await_robot(self.reset_client.service_is_ready, timeout):
            return stopped(f'{name} not available within {timeout:g} s')
        for attempt in range(2):
            future = self.reset_client.call_async(Trigger.Request())
            if await self._await_future(future, timeout / 2):
                return future.result()
            self.reset_client.remove_pending_request(future)
        return stopped(f'{name} did not answer within {timeout:g} s')

    async def _run_on_topics(self, goal, goal_handle) -> RunEpisodes.Result:
        if getattr(self.problem, 'kind', '') == 'robot':
            return await self._run_robot_on_topics(goal, goal_handle)
        if getattr(self.problem, 'kind', '') != 'tabular':
            return RunEpisodes.Result(success=False, message=f'the topic transport runs tabular and robot '
                                                             f'policies, not {self.problem.kind!r}')
        phi, version, _ = conversions.policy_from_msg(goal.policy, self.problem.phi_size())
        pi, log_pi = self.problem.policy_table(phi)
        rng = np.random.default_rng()
        horizon = int(self.problem.real_horizon)
        n = int(goal.n_episodes)
        states = np.zeros((n, horizon + 1), dtype=np.int64)
        actions = np.zeros((n, horizon), dtype=np.int64)
        rewards = np.zeros((n, horizon))
        timeout = self.parameters['step_timeout_s']
        for episode in range(n):
            self.latest_state = None
            reset = await self._reset_robot()
            if not reset.success:
                return RunEpisodes.Result(success=False, message=f'reset failed: {reset.message}')
            if not await self._await_robot(lambda: self.latest_state is not None, timeout):
                return RunEpisodes.Result(success=False, message='no joint_states after reset')
            states[episode, 0] = int(self.latest_state[0])
            for t in range(horizon):
                action = int(rng.choice(pi.shape[1], p=pi[states[episode, t]]))
                actions[episode, t] = action
                self.latest_state, reward_count = None, len(self.rewards)
                if self.check_commanders():
                    return RunEpisodes.Result(success=False, message=f'E-STOP: {self.estopped}')
                self.command_publisher.publish(Float64MultiArray(data=[float(action)]))
                arrived = await self._await_robot(
                    lambda c=reward_count: self.latest_state is not None and len(self.rewards) > c, timeout)
                if not arrived:
                    return RunEpisodes.Result(success=False, message=f'no answer from the robot within {timeout} s '
                                                                     f'(episode {episode}, step {t})')
                rewards[episode, t] = self.rewards[-1]
                states[episode, t + 1] = int(self.latest_state[0])
            goal_handle.publish_feedback(RunEpisodes.Feedback(episodes_done=episode + 1))
        batch = Trajectories(states=states, actions=actions, rewards=rewards, dones=np.zeros((n, horizon), bool),
                             log_probs=log_pi[states[:, :-1], actions], source='real', policy_version=version)
        return RunEpisodes.Result(success=True, trajectories=conversions.trajectories_to_msg(batch))

    async def _run_robot_on_topics(self, goal, goal_handle) -> RunEpisodes.Result:
        """Continuous policies on the ros2_control topics, one command per fresh joint_states,
        every command through the CommandFilter (effort clamp, rate limit).  Stale joint_states
        (watchdog), a joint outside its bounds, an e-stop or a deactivation: zero command and
        the whole goal fails with the reason -- an aborted episode is never returned as data."""
        import torch
        from .safety import CommandFilter, state_violation
        problem = self.problem
        phi, version, _ = conversions.policy_from_msg(goal.policy, problem.phi_size())
        phi_t = torch.as_tensor(phi, dtype=torch.float64)
        std = float(np.exp(problem.policy.log_std(phi_t).numpy())[0])
        command_filter = CommandFilter(self.parameters['effort_limit'], self.parameters['max_effort_rate'],
                                       joints=len(self.joints))
        rng = np.random.default_rng()
        horizon, n = int(problem.horizon), int(goal.n_episodes)
        states = np.zeros((n, horizon + 1, 2))
        actions = np.zeros((n, horizon, 1))
        watchdog = self.parameters['watchdog_timeout_s']
        limits = (self.parameters['position_limit'], self.parameters['velocity_limit'])

        def fail(reason: str) -> RunEpisodes.Result:
            self.send_zero_command()
            self.last_reason = f'episode aborted: {reason}'
            self.publish_diagnostics(DiagnosticStatus.WARN)
            return RunEpisodes.Result(success=False, message=f'{reason}; zero command sent, episode discarded '
                                                             f'(filter: {command_filter.counts()})')

        for episode in range(n):
            self.latest_state = None
            reset = await self._reset_robot()
            if not reset.success:
                return fail(f'reset failed: {reset.message}')
            if not await self._await_robot(lambda: self.latest_state is not None, watchdog):
                return fail(f'watchdog: no joint_states within {watchdog} s of the reset')
            command_filter.reset()
            for t in range(horizon + 1):
                states[episode, t] = (self.latest_state[0], self.latest_velocity[0])
                violation = state_violation(self.joints, self.latest_state, self.latest_velocity, *limits)
                if violation:
                    return fail(f'state bounds: {violation} (episode {episode}, step {t})')
                if t == horizon:
                    break
                with torch.no_grad():
                    observation = problem.model.observation(torch.as_tensor(states[episode, t]))
                    mean = float(problem.policy.mean(phi_t, observation).numpy()[0])
                requested = mean + std * rng.standard_normal()
                command = command_filter([requested])
                actions[episode, t, 0] = command[0]
                self.latest_state = None
                if self.check_commanders():
                    return fail(f'E-STOP: {self.estopped}')
                self.command_publisher.publish(Float64MultiArray(data=[float(c) for c in command]))
                if not await self._await_robot(lambda: self.latest_state is not None, watchdog):
                    if self.estopped:
                        return fail(f'E-STOP: {self.estopped}')
                    return fail(f'watchdog: joint_states stale for {watchdog} s (episode {episode}, step {t})')
            goal_handle.publish_feedback(RunEpisodes.Feedback(episodes_done=episode + 1))
        self.send_zero_command()
        counts = command_filter.counts()
        if any(counts.values()):
            self.get_logger().warning(f'command filter changed commands in these episodes: {counts}')
        self.filter_counts = counts
        rewards, log_probs = problem.score_episodes(phi, states, actions)
        dones = np.zeros((n, horizon), dtype=bool)
        dones[:, -1] = True
        batch = Trajectories(states=states, actions=actions, rewards=rewards, dones=dones, log_probs=log_probs,
                             source='real', policy_version=version)
        return RunEpisodes.Result(success=True, trajectories=conversions.trajectories_to_msg(batch),
                                  message=f'command filter: {counts}')

    def publish_diagnostics(self, level=DiagnosticStatus.OK) -> None:
        if not self.entities_created:
            return
        status = DiagnosticStatus(
            level=level, name=f'{self.get_fully_qualified_name()}: bridge', message=self.last_reason,
            hardware_id=self.parameters['controller'],
            values=[KeyValue(key='active', value=str(self.active)),
                    KeyValue(key='transport', value=self.parameters['transport']),
                    KeyValue(key='deployed_policy_version', value=str(self.deployed)),
                    KeyValue(key='estop', value=self.estopped or 'clear'),
                    KeyValue(key='command_filter', value=str(self.filter_counts)),
                    KeyValue(key='newest_policy_version', value=str(self.newest_policy_version)),
                    KeyValue(key='signed_goals_only', value=str(self.verifier is not None)),
                    KeyValue(key='results_resent', value=str(self.requests.resent))])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(array)


def main(args=None) -> int:
    return run_node(HardwareBridge, args, own_signals=True)


if __name__ == '__main__':
    raise SystemExit(main())
