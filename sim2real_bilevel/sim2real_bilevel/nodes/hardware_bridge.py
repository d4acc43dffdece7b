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
and the (unsigned) ``policy`` topic is not trusted for version checks.  The bridge is the only
node allowed to publish on ``<controller>/commands``: another publisher there (seen in the
ROS graph at configure, before every goal, every second and at every step) latches the e-stop.
A goal whose ``request_id`` matches a goal that already succeeded here, with the same policy
and episode count, gets the kept result again instead of running the robot a second time
(``result_cache_size`` results are kept, in memory).

Transports (parameter ``transport``, package ``nodes/transports``):
- ``batched``: forwards the goal to the emulator's ``robot_emulator/run_episodes`` action
  (sim-only loops, where one DDS round trip per transition would dominate); on this transport the
  bridge also takes a goal as one call of the ``run_episode_batch`` service (the optimizer's
  ``run_episodes_via``, ``auto`` by default): the same checks and kept results, without the action's status
  traffic;
- ``topics``: the ros2_control contract of real hardware -- reads ``joint_states`` (the
  problem's controlled joints by name, in any order, other joints ignored), writes
  ``<controller>/commands`` (std_msgs/Float64MultiArray in the controller's order, the ``joints``
  parameter) through this node's checks with per-joint limits (``nodes/joints.py``), takes the
  step reward from ``reward`` and starts each episode after a reset of ``reset_mode``
  (``nodes/resets.py``): the robot's ``reset_service``, a scripted drive to ``reset_pose``
  under the bridge's limits, or the operator's answer on ``~/continue_episode``.
This node keeps the lifecycle, the e-stop, the goal checks (signatures, versions, kept results)
and the command publisher; a transport only runs the episodes.
"""
from __future__ import annotations

from typing import Optional, Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.action import ActionServer, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.duration import Duration
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.task import Future
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from sim2real_bilevel_interfaces.action import RunEpisodes
from sim2real_bilevel_interfaces.msg import PolicyParameters
from sim2real_bilevel_interfaces.srv import RunEpisodeBatch

from . import conversions, provenance
from .action_calls import RESULT_KEPT_S, UNSUPPORTED, InProcessGoalHandle
from .control_loop import key_values
from .joints import bridge_joint_bounds, controlled_joints, parse_joint_limits, to_command_order
from .kept_results import KeptResults
from .resets import RESET_PARAMETERS, model_response, start_pose
from .safety import JointBounds, effort_below_actuator
from .robot_visuals import RobotVisuals
from .runtime import EVENTS, LATCHED, PROBLEM, ROBOT_STREAM, BackgroundWork, DeclaredParameters, ParameterSpec, \
    PublisherNames, load_problem, run_node
from .transports import TRANSPORTS, RobotWaits, Transport

ZERO_ACK_TIMEOUT_S = 0.5
"""Longest wait, at shutdown, for the robot's readers to acknowledge the last zero command."""


class HardwareBridge(LifecycleNode):

    def __init__(self):
        super().__init__('hardware_bridge')
        self._refuse_transitions_not_available()
        self.parameters = DeclaredParameters(self, [
            PROBLEM,
            ParameterSpec('autostart', False, 'configure and activate right after start (sim-only loops); on '
                          'hardware leave false and activate deliberately', read_only=True),
            ParameterSpec('transport', 'batched', "'batched' (emulator action) or 'topics' (joint_states / "
                          'commands, one transition per command); applies from the next goal',
                          choices=tuple(TRANSPORTS)),
            ParameterSpec('controller', 'forward_command_controller',
                          'controller whose <controller>/commands topic takes the commands (read at configure)',
                          allow_empty=False),
            ParameterSpec('joints', [], "the robot controller's command order: the problem's controlled joints "
                          "(by name) in the order of its command array; [] = the problem's order (a problem "
                          "without joints: ['state']); joint_states is read by name in any order (read at "
                          'configure)'),
            ParameterSpec('joint_limits', '', "per-joint limits that replace the blanket ones and the problem's: "
                          "'JOINT.FIELD=VALUE, ...', FIELD one of effort, effort_rate, lower, upper, velocity "
                          "(e.g. 'elbow.effort=1.5, elbow.velocity=8'; read at configure)"),
            ParameterSpec('emulator_action', 'robot_emulator/run_episodes',
                          'RunEpisodes action the batched transport forwards to (read at configure)',
                          allow_empty=False),
            ParameterSpec('intra_process_actions', True, 'batched transport in a container with the emulator '
                          '(containers:=robot): hand the goals to the emulator by a direct call instead of over DDS '
                          '(read at every goal)'),
            ParameterSpec('reset_service', 'robot_emulator/reset',
                          'std_srvs/Trigger service that starts an episode on the topic transport (read at '
                          'configure)', allow_empty=False),
            ParameterSpec('loop', 'lockstep', "topic transport: 'lockstep' (one command per fresh joint_states) or "
                          "'timer' (a wall-clock control loop at control_rate, for a robot that does not wait; "
                          'read at configure)', choices=('lockstep', 'timer')),
            ParameterSpec('control_rate', 0.0, "timer loop: ticks per second (Hz); 0 = the controller's own rate "
                          '(1 / its control period)', low=0.0, high=10000.0),
            ParameterSpec('max_state_age_s', 0.1, 'timer loop: the newest joint_states older than this (by its '
                          'stamp) at a tick: zero command, episode aborted', low=1e-4, high=60.0),
            ParameterSpec('max_deadline_misses', 50, 'timer loop: more control slots than this without a command '
                          'in time in one episode: zero command, episode aborted', low=0, high=10 ** 9),
            ParameterSpec('step_timeout_s', 2.0, 'longest wait for the robot\'s answer to one command',
                          low=0.001, high=600.0),
            ParameterSpec('reset_timeout_s', 10.0, 'longest wait for the robot to answer a reset (the reset '
                          'service, or the first joint_states of a scripted reset) and for a command reader '
                          'before a goal',
                          low=0.01, high=600.0),
            *RESET_PARAMETERS,
            ParameterSpec('episode_timeout_s', 600.0, 'longest wait for a batched run_episodes result',
                          low=0.1, high=1e6),
            ParameterSpec('effort_limit', 2.0, 'largest |effort| commanded to any joint (N m); larger requests are '
                          "clamped and counted (a joint's URDF effort limit tightens it)", low=1e-9, high=1e6),
            ParameterSpec('max_effort_rate', 1.0, 'largest change of a joint\'s effort per control step (N m)',
                          low=1e-9, high=1e6),
            ParameterSpec('watchdog_timeout_s', 0.5, 'joint_states older than this during an episode: zero '
                          'command, episode aborted', low=1e-3, high=60.0),
            ParameterSpec('position_limit', 3.2, 'largest |joint position| (rad) before the episode is aborted '
                          "(a joint's URDF lower / upper limits tighten it)", low=1e-9, high=1e6),
            ParameterSpec('velocity_limit', 20.0, 'largest |joint velocity| (rad/s) before the episode is aborted '
                          "(a joint's URDF velocity limit tightens it)", low=1e-9, high=1e6),
            ParameterSpec('max_episodes', 1000, 'largest n_episodes one run_episodes goal may ask for', low=1,
                          high=1_000_000),
            ParameterSpec('publish_robot_description', False, "publish the problem's URDF on robot_description "
                          '(transient local) for rviz: for a robot without a robot_state_publisher (which '
                          'normally publishes it; never run both; read at startup)', read_only=True),
            ParameterSpec('link_pose_rate', 0.0, 'link poses for rviz from the joint_states read (/tf where tf2_msgs '
                          'is importable, else a MarkerArray on link_markers) at this rate (Hz); 0 = none, as when a '
                          'robot_state_publisher publishes /tf (read at startup)', low=0.0, high=1000.0,
                          read_only=True),
            ParameterSpec('require_policy_key', False, 'refuse to configure without a policy key (the hardware '
                          'launch sets it: on a real robot every deployed policy must be signed)', read_only=True),
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
        self.visuals = RobotVisuals(self, self.problem, description=self.parameters['publish_robot_description'],
                                    link_rate=self.parameters['link_pose_rate'])
        self.active = False
        self.newest_policy_version = None
        self.deployed = 0
        self.estopped = False              # latched until ~/reset_estop
        self.estop_reason = ''             # why it latched (while estopped)
        self.last_reason = 'unconfigured'
        self.waits = RobotWaits(self, stopped=lambda: not self.active or self.estopped)
        self.work = BackgroundWork(self)   # computations a goal awaits off the executor (a new reset pose's model)
        self.filter_counts: dict = {}
        self.unapplied_checks: dict = {}   # batched transport: what the checks would have changed, since start
        self.loop_timing: dict = {}        # the timer loop's timing of the last goal (control_loop.py)
        self.transports: dict[str, Transport] = {}
        self.entities_created = False
        self.verifier = None               # provenance.GoalVerifier when policy_key_file is set
        self.requests = KeptResults(lambda: self.parameters['result_cache_size'])
        self.in_process_calls = 0          # batched goals handed to the emulator in this process
        self.terminated_episodes = 0       # episodes ended at a terminal state of the task (episode_ends.py)
        self.last_termination = ''         # the last of them, in words
        if self.parameters['autostart']:
            self.autostart_timer = self.create_timer(0.0, self.autostart_callback)

    def autostart_callback(self) -> None:
        self.destroy_timer(self.autostart_timer)
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    # --- lifecycle -------------------------------------------------------------------------------------
    def _refuse_transitions_not_available(self) -> None:
        """rclpy's change_state service raises, and so ends the process, when asked for a
        transition the current state does not have (e.g. activate while unconfigured).  Such a
        request is refused with the reason instead: the bridge stays up, in its state."""
        service = self._service_change_state
        change_state = service.callback

        def refusing(request, response):
            try:
                return change_state(request, response)
            except _rclpy.RCLError as err:
                self.get_logger().error(f'refused lifecycle transition id {request.transition.id} '
                                        f'{request.transition.label!r}: not available from this state ({err})')
                response.success = False
                return response
        service.callback = refusing

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.joints, self.command_index = controlled_joints(self.parameters['joints'], self.problem.joints())
            self.limit_overrides = parse_joint_limits(self.parameters['joint_limits'], self.joints)
            bounds = self.joint_bounds()
        except ValueError as err:
            self.get_logger().error(f'configure failed: {err}')
            return TransitionCallbackReturn.FAILURE
        joints = [self.joints[i] for i in self.command_index]            # the command array's order
        if self.parameters['reset_mode'] == 'scripted':
            try:
                pose = start_pose(self.parameters['reset_pose'], self.joints, self.problem.start_pose(), bounds)
                model_response(self.problem, pose)    # the scripted reset's model gains, now rather than mid-goal
            except ValueError as err:
                self.get_logger().error(f'configure failed: reset_mode scripted: {err}')
                return TransitionCallbackReturn.FAILURE
        key_file = provenance.key_file_setting(self.parameters['policy_key_file'])
        if key_file:
            try:
                self.verifier = provenance.GoalVerifier(provenance.load_key(key_file),
                                                        self.parameters['max_goal_age_s'])
                self.get_logger().info(f'only run_episodes goals signed with the key in {key_file} are run')
            except provenance.ProvenanceError as err:
                self.get_logger().error(f'configure failed: {err}')
                return TransitionCallbackReturn.FAILURE
        elif self.parameters['require_policy_key']:
            self.get_logger().error('configure failed: no policy key (policy_key_file and $SIM2REAL_POLICY_KEY_FILE '
                                    'are empty) and require_policy_key is set, as on hardware: make one with '
                                    '`sim2real-bilevel keygen PATH` and launch with policy_key_file:=PATH')
            return TransitionCallbackReturn.FAILURE
        else:
            self.verifier = None
            self.get_logger().warning('no policy key (policy_key_file and $SIM2REAL_POLICY_KEY_FILE are empty): any '
                                      'participant on this ROS domain can deploy a policy on the robot '
                                      '(docs/security.md)')
        self.command_publisher = self.create_lifecycle_publisher(
            Float64MultiArray, f'{self.parameters["controller"]}/commands', ROBOT_STREAM)
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, '/diagnostics', EVENTS)
        # the newest published version (stale goals) -- only without signed goals: a signed goal is
        # checked by its signature, and the topic is not signed.  Not subscribing then also spares
        # the robot's host a message per outer iteration.
        self.policy_subscription = None if self.verifier is not None else \
            self.create_subscription(PolicyParameters, 'policy', self.policy_callback, LATCHED)
        # every transport, so that the transport parameter can change between goals
        self.transports = {name: transport(self) for name, transport in TRANSPORTS.items()}
        self.estop_service = self.create_service(Trigger, '~/estop', self.estop_callback)
        self.reset_estop_service = self.create_service(Trigger, '~/reset_estop', self.reset_estop_callback)
        self.episodes_server = ActionServer(self, RunEpisodes, 'run_episodes',
                                            execute_callback=self.run_episodes_callback,
                                            goal_callback=self.goal_callback, result_timeout=RESULT_KEPT_S)
        # its own group: an awaiting callback holds its group (the e-stop must be served meanwhile);
        # reentrant: a request sent again while the first runs waits for that run's kept result
        self.episode_batch_service = self.create_service(RunEpisodeBatch, 'run_episode_batch',
                                                         self.run_episode_batch_callback,
                                                         callback_group=ReentrantCallbackGroup())
        self.command_publisher_names = PublisherNames(self, self.command_publisher.topic_name)
        self.commander_timer = self.create_timer(1.0, self.watch_the_command_channel)
        self.command_readers = 0
        self.entities_created = True
        self.last_reason = 'configured'
        self.get_logger().info(f'configured: commands on {self.command_publisher.topic_name} for joints {joints}, '
                               f'transport {self.parameters["transport"]}; limits {bounds.describe()}')
        below = effort_below_actuator(bounds, self.problem.actuator_range())
        if below and self.parameters['transport'] == 'topics':
            self.get_logger().warning(
                f'effort limits below the simulator\'s actuator range ({below}): the policy is trained to use '
                'commands this bridge will clamp, and sim-only runs on the batched transport never apply the '
                'clamp (they only report it); raise effort_limit / joint_limits, or set the problem\'s simulator '
                'effort_limit to the robot\'s (docs/hardware.md)')
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
            self.send_zero_command(flush=True)
        self.active = False
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        if not self.entities_created:
            return
        self.episodes_server.destroy()
        self.destroy_timer(self.commander_timer)
        for transport in self.transports.values():
            transport.destroy()
        self.transports = {}
        self.destroy_service(self.estop_service)
        self.destroy_service(self.reset_estop_service)
        self.destroy_service(self.episode_batch_service)
        if self.policy_subscription is not None:
            self.destroy_subscription(self.policy_subscription)
        self.destroy_lifecycle_publisher(self.command_publisher)
        self.destroy_publisher(self.diagnostics_publisher)
        self.entities_created = False

    def before_exit(self) -> None:
        """SIGINT / SIGTERM: the last word to the robot is a zero command."""
        if self.active:
            self.send_zero_command(flush=True)
            self.get_logger().info('shutting down: zero command sent')

    def joint_bounds(self) -> JointBounds:
        """Every joint's limits now (problem order; ``nodes/joints.py``): the blanket parameters as
        they are set now, the problem's limits and the ``joint_limits`` read at configure."""
        return bridge_joint_bounds(self.joints, self.problem.joints(), self.parameters, self.limit_overrides)

    def send_zero_command(self, flush: bool = False) -> None:
        """Zero command to every joint; ``flush`` (the process is about to end): wait, up to
        ZERO_ACK_TIMEOUT_S, until every matched reader has acknowledged it, so that it is not lost
        with the process's DDS writer (seen under load: the bridge exited before the robot had it)."""
        if self.entities_created:
            self.command_publisher.publish(Float64MultiArray(data=[0.0] * len(self.joints)))
            if flush and not self.command_publisher.wait_for_all_acked(Duration(seconds=ZERO_ACK_TIMEOUT_S)):
                self.get_logger().warning(f'the zero command was not acknowledged by every reader within '
                                          f'{ZERO_ACK_TIMEOUT_S} s')

    def send_command(self, values: Sequence[float]) -> Optional[str]:
        """Publish a command (``values`` in problem order, sent in the controller's command order)
        to the robot, unless the e-stop is latched (a state can arrive in the
        same executor turn as the e-stop request) or another node publishes robot commands (then
        the e-stop latches): the e-stop's reason is returned and nothing is sent."""
        if self.estopped:
            return self.estop_reason
        if self.check_commanders() is not None:
            return self.estop_reason
        self.command_publisher.publish(Float64MultiArray(data=to_command_order(values, self.command_index)))
        return None

    def episode_ended(self, words: str) -> None:
        """An episode ended at a terminal state of the task (``nodes/episode_ends.py``): counted,
        logged and on /diagnostics at once; not an abort."""
        self.terminated_episodes += 1
        self.last_termination = words
        self.get_logger().info(f'{words} -- the policy stopped there (not an abort: the goal goes on)')
        self.publish_diagnostics()

    def set_reason(self, reason: str, level=DiagnosticStatus.OK) -> None:
        """The state line of the diagnostics becomes ``reason``, published at once."""
        self.last_reason = reason
        self.publish_diagnostics(level)

    # --- e-stop ----------------------------------------------------------------------------------------
    def latch_estop(self, reason: str) -> None:
        """Latch a stop: zero command now, running episodes abort at their next step, every goal
        is refused until ``~/reset_estop`` is called -- deactivating and activating does not clear it."""
        self.estopped, self.estop_reason = True, reason
        self.send_zero_command()
        self.last_reason = f'E-STOP: {reason}'
        self.get_logger().error(f'E-STOP latched ({reason}): zero command sent, goals refused until ~/reset_estop')
        self.publish_diagnostics(DiagnosticStatus.ERROR)

    def estop_callback(self, request, response):
        self.latch_estop('e-stop requested through ~/estop')
        response.success, response.message = True, 'e-stop latched; call ~/reset_estop to clear it'
        return response

    def foreign_commanders(self, fresh: bool = False) -> list[str]:
        """Nodes other than this bridge that publish on the command topic (from the ROS graph,
        re-read when the publisher count changes, each second, or ``fresh``: ``PublisherNames``;
        a second publisher under this bridge's own name counts too)."""
        if not self.entities_created:
            return []
        own = self.get_fully_qualified_name()
        names = self.command_publisher_names(fresh)
        if names.count(own) > 1:
            return [f'{own} (a second publisher under this bridge\'s name)']
        return sorted(name for name in names if name != own)

    def watch_the_command_channel(self) -> None:
        """Each second: no other commander (``check_commanders``), and the bridge's state on
        /diagnostics (1 Hz, as diagnostic_updater does), with how many readers (the robot's
        controller) its command publisher has."""
        self.check_commanders(fresh=True)
        self.command_readers = self.command_publisher.get_subscription_count()
        self.publish_diagnostics()

    def check_commanders(self, fresh: bool = False) -> Optional[str]:
        """Latch the e-stop when another node publishes robot commands; returns the reason, or
        None when this bridge is the only commander (``fresh``: the names re-read from the graph;
        else as ``PublisherNames`` keeps them, the path of every command)."""
        foreign = self.foreign_commanders(fresh)
        if not foreign:
            return None
        reason = (f'another node publishes on {self.command_publisher.topic_name}: {", ".join(foreign)} -- only '
                  'this bridge may command the robot')
        if not self.estopped or self.estop_reason != reason:
            self.latch_estop(reason)
        return reason

    def reset_estop_callback(self, request, response):
        was = self.estop_reason if self.estopped else None
        self.estopped, self.estop_reason = False, ''
        self.last_reason = 'active' if self.active else 'inactive'
        self.get_logger().warning(f'e-stop reset by ~/reset_estop (was: {was or "not latched"})')
        self.publish_diagnostics()
        response.success = True
        response.message = 'e-stop cleared' if was is not None else 'no e-stop was latched'
        return response

    # --- goals -----------------------------------------------------------------------------------------
    def policy_callback(self, msg: PolicyParameters) -> None:
        """Track the newest published policy version -- only from well-formed messages whose
        version is a plausible successor (a hostile far-future version would otherwise make
        every genuine goal 'stale'); not subscribed when goals are signed (the topic is not)."""
        try:
            conversions.policy_from_msg(msg, self.problem.phi_size())
            version = conversions.check_version(msg.version, self.newest_policy_version or 0,
                                                'PolicyParameters.version')
        except conversions.MessageValidationError as err:
            self.get_logger().error(f'ignored policy message: {err}')
            return
        self.newest_policy_version = version
        self.publish_diagnostics()

    def refusal(self, goal) -> Optional[str]:
        """Why a goal must not run now, or None."""
        self.check_commanders(fresh=True)
        if self.estopped:
            return f'E-STOP latched ({self.estop_reason}): call ~/reset_estop first'
        if not self.active:
            return 'the bridge is not active: no command leaves it unless active'
        try:
            conversions.policy_from_msg(goal.policy, self.problem.phi_size())
        except conversions.MessageValidationError as err:
            return f'malformed policy: {err}'
        if self.verifier is not None:
            reason = self.verifier.refusal(goal)
            if reason is not None:
                return reason
        reason = self.requests.refusal(goal)
        if reason is not None or self.requests.known(goal):
            return reason                  # None for a kept or running request: the robot does not move again
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
        return None

    def refused(self, goal, what: str) -> Optional[str]:
        """``refusal``, logged and shown on /diagnostics when there is one (``what``: the kind of request)."""
        reason = self.refusal(goal)
        if reason is not None:
            self.get_logger().error(f'rejected {what}: {reason}')
            self.set_reason(f'rejected: {reason}', DiagnosticStatus.WARN)
        return reason

    def goal_callback(self, goal) -> GoalResponse:
        return GoalResponse.REJECT if self.refused(goal, 'run_episodes goal') is not None else GoalResponse.ACCEPT

    async def run_episode_batch_callback(self, request, response):
        """``run_episode_batch``: a run_episodes goal as one service call, for sim-only loops on the
        batched transport -- the same checks (``refusal``), kept results and episodes as the action,
        without its status traffic; refused on any other transport (on a robot the action's
        feedback and cancel are the way)."""
        transport = self.parameters['transport']
        if transport != 'batched':
            response.message = (f'{UNSUPPORTED}run_episode_batch serves the batched transport only (transport is '
                                 f'{transport!r}): use the run_episodes action')
            return response
        reason = self.refused(request, 'run_episode_batch request')
        if reason is not None:
            response.success, response.message = False, f'rejected: {reason}'
            return response
        result = await self.run_episodes_callback(InProcessGoalHandle(request))
        response.success, response.message = result.success, result.message
        response.trajectories, response.timing = result.trajectories, result.timing
        return response

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
        result = await self.transports[self.parameters['transport']].run(goal, goal_handle)
        if self.estopped and result.success:
            result = RunEpisodes.Result(success=False, message=f'E-STOP during the episodes: {self.estop_reason}')
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

    def publish_diagnostics(self, level=DiagnosticStatus.OK) -> None:
        if not self.entities_created:
            return
        status = DiagnosticStatus(
            level=level, name=f'{self.get_fully_qualified_name()}: bridge', message=self.last_reason,
            hardware_id=self.parameters['controller'],
            values=[KeyValue(key='active', value=str(self.active)),
                    KeyValue(key='transport', value=self.parameters['transport']),
                    KeyValue(key='reset_mode', value=self.parameters['reset_mode']),
                    KeyValue(key='command_readers', value=str(self.command_readers)),
                    KeyValue(key='deployed_policy_version', value=str(self.deployed)),
                    KeyValue(key='estop', value=self.estop_reason if self.estopped else 'clear'),
                    KeyValue(key='command_filter', value=str(self.filter_counts)),
                    KeyValue(key='unapplied_checks', value=str(self.unapplied_checks)),
                    KeyValue(key='newest_policy_version', value=str(self.newest_policy_version)),
                    KeyValue(key='signed_goals_only', value=str(self.verifier is not None)),
                    KeyValue(key='results_resent', value=str(self.requests.resent)),
                    KeyValue(key='goals_handed_in_process', value=str(self.in_process_calls)),
                    KeyValue(key='terminated_episodes', value=str(self.terminated_episodes)),
                    KeyValue(key='last_termination', value=self.last_termination)]
            + key_values(self.loop_timing, prefix='loop_'))
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(array)


def main(args=None) -> int:
    return run_node(HardwareBridge, args, own_signals=True)


if __name__ == '__main__':
    raise SystemExit(main())
