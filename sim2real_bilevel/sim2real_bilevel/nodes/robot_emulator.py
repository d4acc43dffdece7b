"""robot_emulator: the stand-in physical system of the sim-only loop, with hidden true
parameters (the ``real:`` section of the problem file, which no other node samples).

Two transports, the bridge picks one:
- ``~/run_episodes`` (RunEpisodes): whole episodes in one call, sampled by the problem's
  ``sample_real`` from one numpy Generator seeded with ``seed`` -- the same stream the
  in-process core draws its real data from, so a ROS run and a core run with the same seed
  see the same real episodes;
- the robot-facing topics of real hardware: ``joint_states`` (sensor_msgs/JointState) out,
  ``<controller>/commands`` (std_msgs/Float64MultiArray) in, one transition per command,
  with ``reward`` (std_msgs/Float64) for the step when the system measures one and
  ``~/reset`` (std_srvs/Trigger) to start an episode (with ``start_running`` the robot is on from
  startup, in a reset state, for a bridge that resets it itself).  The system stepped is the problem's
  ``real_system(rng)`` (the contract in ``core/problem.py``; e.g. tabular: state index as the
  joint position, action index as the command; the pendulum: the pybullet robot with the
  hidden parameters, one control period per command -- lockstep, as fast as the bridge
  commands it -- and no reward topic, the bridge computes the task reward from what it
  measures).  With ``publish_clock`` and a system with a control period, the emulator is the
  time source of a lockstep run: it publishes /clock (rosgraph_msgs/Clock, one control period
  per step, faster than real time) and stamps its joint_states with that time, so nodes
  started with use_sim_time follow the robot's time.  With ``mode: realtime``
  (``nodes/realtime_robot.py``) the robot does not wait: physics steps on a wall-clock timer at
  the system's own rate, the last command is held, joint_states (sensor-data QoS) comes at
  ``state_rate`` with injected latency, jitter and drops on both directions, and there is no
  reward topic, as on a real robot (the controller computes its reward from what it senses;
  systems without a control period cannot run in real time).  ``~/link_pose``
  (geometry_msgs/PoseStamped, e.g. the pendulum's tip in ``pendulum_base``) shows the robot
  in rviz when the system gives a pose.
- for rviz (``nodes/robot_visuals.py``): the problem's URDF on ``robot_description``
  (transient local; ``publish_robot_description``) and every link's pose at ``link_pose_rate``
  on ``/tf`` (tf2_msgs, where importable) or as a MarkerArray on ``link_markers``.
- joints by name (``nodes/joints.py``): commands arrive in the order of ``joints`` (the emulated
  controller's), joint_states carries ``state_joints`` (the controlled joints and any others,
  reported at 0) in that order.
- ``~/evaluate`` (EvaluatePolicy, ``nodes/evaluation.py``): the sim-only evaluator, the exact
  normalised and real return of a policy from the hidden model (the outer_optimizer's ``evaluator``),
  computed in a worker thread on a problem instance of its own (in realtime mode, in a child
  process: ``evaluation.ChildEvaluator``), so resets, episode goals and the real-time physics go on
  meanwhile; a policy asked again is computed once.

Only the nodes named in ``commanders`` may drive the robot: while any other node publishes on
``<controller>/commands`` (seen in the ROS graph, checked at every command), every command is
ignored and counted.  A writer the graph does not name yet (DDS delivers before the name arrives)
is not trusted either; in lockstep its commands are held, in order, until the graph names it
(applied) or names an intruder or UNNAMED_GRACE_S pass (ignored), since a lockstep commander
waits for each answer.  rclpy gives no per-message sender, so this is a graph-level check: it
stops a stray ``ros2 topic pub`` or a second controller, not a participant that takes the
bridge's name (docs/security.md).
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.action import GoalResponse
from rclpy.time import Time
from rosgraph_msgs.msg import Clock
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Float64MultiArray
from std_srvs.srv import Trigger
from sim2real_bilevel_interfaces.action import RunEpisodes

from . import conversions
from .joints import controlled_joints, from_command_order
from .kept_results import KeptResults
from .action_calls import RESULT_KEPT_S, serve_action
from .evaluation import EvaluationServer
from .realtime_robot import RealTimeRobot, fault_parameters
from .robot_visuals import RobotVisuals
from .runtime import PROBLEM, ROBOT_STREAM, SEED, SENSOR, DeclaredParameters, ParameterSpec, \
    UNKNOWN_NODE, PublisherNames, load_problem, run_node

UNNAMED_GRACE_S = 1.0
"""Lockstep: the longest a command from a writer the graph does not name yet is held, waiting for
its name (``RobotEmulator.intruders``)."""


class RobotEmulator(Node):

    def __init__(self):
        super().__init__('robot_emulator')
        self.parameters = DeclaredParameters(self, [
            PROBLEM, SEED,
            ParameterSpec('controller', 'forward_command_controller',
                          'controller whose <controller>/commands topic drives the emulated robot (read at startup)',
                          read_only=True, allow_empty=False),
            ParameterSpec('joints', [], "the emulated controller's command order: the problem's controlled "
                          "joints by name, in the order of the command array; [] = the problem's order (a problem "
                          "without joints: ['state']; read at startup)", read_only=True),
            ParameterSpec('state_joints', [], 'the names of joint_states, in its order: every controlled joint and '
                          'any others the robot reports (published at 0, e.g. passive joints); [] = joints (read '
                          'at startup)', read_only=True),
            ParameterSpec('publish_clock', False, 'publish /clock from the robot\'s steps (lockstep, faster than '
                          'real time); other nodes then run with use_sim_time (read at startup)', read_only=True),
            ParameterSpec('commanders', ['hardware_bridge'], 'nodes allowed to publish commands (names relative to '
                          'this node\'s namespace, or absolute); while another node publishes there, commands are '
                          "ignored; [''] = any node (read at startup)", read_only=True),
            ParameterSpec('start_running', False, 'the robot is on from startup: its real system starts in a reset '
                          'state (one draw from the seed\'s stream) and steps on commands before any ~/reset call, '
                          'as a robot the bridge resets itself (reset_mode scripted or operator) (read at startup)',
                          read_only=True),
            ParameterSpec('max_episodes', 100000, 'largest n_episodes one run_episodes goal may ask for', low=1,
                          high=10 ** 7),
            ParameterSpec('mode', 'lockstep', "topic transport: 'lockstep' (one control period per command, as fast "
                          "as the bridge commands) or 'realtime' (physics on a wall-clock timer, the last command "
                          'held; read at startup)', choices=('lockstep', 'realtime'), read_only=True),
            ParameterSpec('state_rate', 0.0, "realtime mode: joint_states rate (Hz); 0 = every physics step (the "
                          "system's 1 / control_period)", low=0.0, high=100000.0),
            ParameterSpec('publish_robot_description', True, "publish the problem's URDF on robot_description "
                          '(std_msgs/String, transient local) for rviz; false where a robot_state_publisher '
                          'already publishes it (read at startup)', read_only=True),
            ParameterSpec('link_pose_rate', 10.0, 'link poses for rviz (/tf where tf2_msgs is importable, else a '
                          'MarkerArray on link_markers) at this rate (Hz) from the newest state; 0 = none (read at '
                          'startup)', low=0.0, high=1000.0, read_only=True),
            ParameterSpec('evaluation_delay_s', 0.0, 'for tests only: every ~/evaluate computation takes this many '
                          'seconds longer (a slow evaluator); 0 in real use', low=0.0, high=3600.0),
        ] + fault_parameters())
        self.realtime_mode = self.parameters['mode'] == 'realtime'
        if self.realtime_mode and self.parameters['publish_clock']:
            raise ValueError('invalid parameters: publish_clock = true with mode = realtime: a real-time robot '
                             'runs on the wall clock, /clock is for lockstep runs faster than real time')
        self.realtime: Optional[RealTimeRobot] = None   # made at the first reset in realtime mode
        self.problem = load_problem(self.parameters['problem'])
        self.joints, self.command_index = controlled_joints(self.parameters['joints'], self.problem.joints())
        self.state_joints = list(self.parameters['state_joints'] or [self.joints[i] for i in self.command_index])
        missing = [joint for joint in self.joints if joint not in self.state_joints]
        if missing:
            raise ValueError(f'invalid parameters: state_joints = {self.state_joints} lacks the controlled joint(s) '
                             f'{missing}')
        # where each joint_states entry comes from: a controlled joint's index, or None (reported at 0)
        self.state_source = [self.joints.index(name) if name in self.joints else None for name in self.state_joints]
        # one stream for all real data, exactly like MethodRun.rng in the core
        self.rng = np.random.default_rng(self.parameters['seed'])
        self.running = False         # an episode of the topic transport was started
        self.system = None           # the problem's real_system of the topic transport, made on first reset
        self.system_refusal: Optional[str] = None     # why the problem has none
        namespace = self.get_namespace().rstrip('/')
        self.commanders = {name if name.startswith('/') else f'{namespace}/{name}'
                           for name in self.parameters['commanders'] if name}
        self.refused_commands = 0
        self.held_commands: list[Float64MultiArray] = []     # from a writer the graph does not name yet
        self.held_since, self.held_timer = 0.0, None
        self.requests = KeptResults(lambda: 16)    # a bridge restarted while episodes ran asks again
        # a bridge in the same process (containers:=robot) may hand its goals over by a direct call
        self.episodes_server = serve_action(self, RunEpisodes, '~/run_episodes', self.run_episodes_callback,
                                            self.goal_callback, result_timeout=RESULT_KEPT_S)
        self.joint_state_publisher = self.create_publisher(JointState, 'joint_states',
                                                           SENSOR if self.realtime_mode else ROBOT_STREAM)
        # a real robot measures no reward: in realtime mode the controller computes it
        self.reward_publisher = (None if self.realtime_mode else
                                 self.create_publisher(Float64, 'reward', ROBOT_STREAM))
        self.command_subscription = self.create_subscription(
            Float64MultiArray, f'{self.parameters["controller"]}/commands', self.command_callback, ROBOT_STREAM)
        self.command_publisher_names = PublisherNames(self, self.command_subscription.topic_name)
        self.reset_service = self.create_service(Trigger, '~/reset', self.reset_callback)
        # ~/evaluate, the sim-only evaluator: its own copy of the problem, loaded on first use
        # (a real-time robot's: in a child process, off the interpreter its physics timer runs in)
        self.evaluation = EvaluationServer(self, self.problem.phi_size(),
                                           lambda: load_problem(self.parameters['problem']),
                                           delay_s=lambda: self.parameters['evaluation_delay_s'],
                                           child_problem=self.problem.source if self.realtime_mode else None)
        self.sim_time_ns = 0
        self.clock_publisher = (self.create_publisher(Clock, '/clock', 10) if self.parameters['publish_clock']
                                else None)
        self.pose_publisher = self.create_publisher(PoseStamped, '~/link_pose', 10)
        self.visuals = RobotVisuals(self, self.problem, description=self.parameters['publish_robot_description'],
                                    link_rate=self.parameters['link_pose_rate'])
        if self.parameters['start_running']:
            reason = self._topic_refusal()
            if reason:
                self.get_logger().error(f'start_running ignored: {reason}')
            else:
                self.running = True
                self._publish_sample(self.system.reset())
        self.get_logger().info(f'emulating the real system of {self.problem.source} (seed {self.parameters["seed"]})')

    # --- batched transport ---------------------------------------------------------------------------
    def goal_callback(self, goal) -> GoalResponse:
        reason = self.requests.refusal(goal)
        if reason is not None:
            self.get_logger().error(f'rejected run_episodes goal: {reason}')
            return GoalResponse.REJECT
        try:
            conversions.policy_from_msg(goal.policy, self.problem.phi_size())
        except conversions.MessageValidationError as err:
            self.get_logger().error(f'rejected run_episodes goal: {err}')
            return GoalResponse.REJECT
        if not 1 <= goal.n_episodes <= self.parameters['max_episodes']:
            self.get_logger().error(f'rejected run_episodes goal: n_episodes={goal.n_episodes}, expected '
                                    f'1..{self.parameters["max_episodes"]}')
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def run_episodes_callback(self, goal_handle):
        goal = goal_handle.request
        kept = self.requests.kept(goal)
        if kept is not None:
            self.get_logger().info(f'run_episodes {goal.request_id!r} already ran: its result is sent again')
            goal_handle.succeed()
            return kept
        phi, version, _ = conversions.policy_from_msg(goal.policy, self.problem.phi_size())
        batch = self.problem.sample_real(phi, int(goal.n_episodes), self.rng)
        batch.policy_version = version
        goal_handle.succeed()
        result = RunEpisodes.Result(success=True, trajectories=conversions.trajectories_to_msg(batch))
        self.requests.finish(goal, result)
        return result

    # --- topic transport ---------------------------------------------------------------------------------
    def _topic_refusal(self) -> Optional[str]:
        """Why this problem cannot be emulated on the topics, or None (its real system is made
        here, once: it draws from the one stream, ``self.rng``)."""
        if self.system is None and self.system_refusal is None:
            try:
                self.system = self.problem.real_system(self.rng)
            except NotImplementedError as err:
                self.system_refusal = (f'the topic transport emulates problems with a step-by-step real system, '
                                       f'not {self.problem.kind!r}: {err}')
            if self.system is not None and self.realtime_mode and self.system.control_period is None:
                self.system_refusal = (f'mode realtime: the real system of {self.problem.kind!r} has no control '
                                       'period (no physical time); run it with mode lockstep')
        return self.system_refusal

    def reset_callback(self, request, response):
        reason = self._topic_refusal()
        if reason:
            response.success, response.message = False, reason
            return response
        sample = self.system.reset()
        self.running = True
        if self.held_commands:                       # sent for the episode the reset ends
            self.get_logger().warning(f'reset: {len(self.held_commands)} held command(s) dropped')
            self.held_commands = []
            self.destroy_timer(self.held_timer)
        if self.realtime_mode:
            if self.realtime is None:
                self.realtime = RealTimeRobot(self, self.system, self.parameters,
                                              np.random.default_rng([self.parameters['seed'], 1]),
                                              self._publish_sample)
            else:
                self.get_logger().info(f'realtime robot so far: {self.realtime.counts}')
            self.realtime.reset(sample)
        else:
            self._publish_sample(sample)
        response.success, response.message = True, self.system.describe(sample)
        return response

    def intruders(self) -> tuple[list[str], int]:
        """(publishers on the command topic the graph names that are not allowed commanders -- a
        name listed once but published under twice counts: somebody took an allowed name --, and
        the matched writers the graph does not name yet).  DDS matches a writer and delivers its
        data before its node name reaches the ROS graph (meanwhile listed as UNKNOWN_NODE): such
        a writer is not trusted until named."""
        if not self.commanders:
            return [], 0
        names = self.command_publisher_names()
        known = [name for name in names if not name.endswith(UNKNOWN_NODE)]
        named = sorted({name for name in known if name not in self.commanders or names.count(name) > 1})
        return named, max(0, self.command_subscription.get_publisher_count() - len(known))

    def command_callback(self, msg: Float64MultiArray) -> None:
        if not self.running:
            return
        if self.held_commands:                       # in order, behind the held ones
            self.held_commands.append(msg)
            return
        named, unnamed = self.intruders()
        if unnamed and not named and not self.realtime_mode:
            # a lockstep robot that drops a command stalls its commander: hold it until the
            # graph names the writer (then decide), for UNNAMED_GRACE_S at most
            self.held_commands.append(msg)
            self.held_since = time.monotonic()
            self.held_timer = self.create_timer(0.02, self.release_held_commands)
        elif named or unnamed:
            self.refuse_command(msg, named, unnamed)
        else:
            self.apply_command(msg)

    def release_held_commands(self) -> None:
        """The held commands, once the ROS graph names every writer: applied in order (or refused
        when an intruder is named, or when UNNAMED_GRACE_S passed without a name)."""
        named, unnamed = self.intruders()
        if unnamed and not named and time.monotonic() - self.held_since < UNNAMED_GRACE_S:
            return
        self.destroy_timer(self.held_timer)
        held, self.held_commands = self.held_commands, []
        for msg in held:
            if named or unnamed:
                self.refuse_command(msg, named, unnamed)
            elif self.running:
                self.apply_command(msg)

    def refuse_command(self, msg: Float64MultiArray, named: list[str], unnamed: int) -> None:
        intruders = named + ([f'{unnamed} publisher(s) not yet in the ROS graph'] if unnamed else [])
        self.refused_commands += 1
        self.get_logger().error(f'ignored command {list(msg.data)}: {", ".join(intruders)} also publish(es) on '
                                f'{self.command_subscription.topic_name}; only {sorted(self.commanders)} may '
                                f'command the robot ({self.refused_commands} refused so far)',
                                throttle_duration_sec=1.0)

    def apply_command(self, msg: Float64MultiArray) -> None:
        command = list(msg.data)
        if len(command) != len(self.joints):
            order = [self.joints[i] for i in self.command_index]
            self.get_logger().error(f'ignored command {command}: expected {len(order)} value(s), one per joint of '
                                    f'{order} in this order')
            return
        command = from_command_order(command, self.command_index)
        reason = self.system.command_refusal(command)
        if reason is not None:
            self.get_logger().error(f'ignored command {reason}')
            return
        if self.realtime is not None:
            self.realtime.command(command)
            return
        sample = self.system.step(command)
        if self.system.control_period is not None:
            self.sim_time_ns += int(round(self.system.control_period * 1e9))
        self._publish_sample(sample)

    def _publish_sample(self, sample, sensed_at: Optional[Time] = None) -> None:
        """The step's reward (if measured), then joint_states stamped with the robot's time (and
        /clock) when it has one, else with ``sensed_at`` (realtime) or the node's clock; then the
        link pose, if any."""
        if self.clock_publisher is not None and self.system.control_period is not None:
            stamp = Time(nanoseconds=self.sim_time_ns).to_msg()
            self.clock_publisher.publish(Clock(clock=stamp))
        else:
            stamp = (sensed_at or self.get_clock().now()).to_msg()
        if sample.reward is not None and self.reward_publisher is not None:
            self.reward_publisher.publish(Float64(data=float(sample.reward)))
        msg = JointState(name=self.state_joints, position=self._by_name(sample.position),
                         velocity=self._by_name(sample.velocity), effort=self._by_name(sample.effort))
        msg.header.stamp = stamp
        self.joint_state_publisher.publish(msg)
        self.visuals.update(sample.position)
        pose = self.system.link_pose(sample)
        if pose is not None:
            self.pose_publisher.publish(pose_stamped(*pose, stamp))

    def _by_name(self, values) -> list[float]:
        """A sample's field (problem order) in joint_states order; empty stays empty."""
        if not len(values):
            return []
        return [0.0 if source is None else float(values[source]) for source in self.state_source]

    def destroy_node(self) -> None:
        """The real-time robot's timer and delivery thread go first."""
        if self.realtime is not None:
            self.realtime.destroy()
        self.evaluation.destroy()
        self.visuals.destroy()
        super().destroy_node()


def pose_stamped(position: Sequence[float], orientation_wxyz: Sequence[float], frame_id: str,
                 stamp) -> PoseStamped:
    """A pose (position xyz, quaternion w x y z) as geometry_msgs/PoseStamped."""
    pose = PoseStamped()
    pose.header.frame_id = frame_id
    pose.header.stamp = stamp
    pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in position)
    w, x, y, z = (float(v) for v in orientation_wxyz)
    pose.pose.orientation.w, pose.pose.orientation.x, pose.pose.orientation.y, pose.pose.orientation.z = w, x, y, z
    return pose


def main(args=None) -> int:
    return run_node(RobotEmulator, args)


if __name__ == '__main__':
    raise SystemExit(main())
