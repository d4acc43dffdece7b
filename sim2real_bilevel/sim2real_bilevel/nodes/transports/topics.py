"""The topic transport: the ros2_control contract of real hardware.

Reads ``joint_states`` (the controlled joints by name, in any order, other joints ignored; a
message lacking one is an error naming it), writes ``<controller>/commands`` through the bridge
(std_msgs/Float64MultiArray in the robot controller's order, the bridge's ``joints``) with each
joint's limits (``nodes/joints.py``), takes the step reward from ``reward`` and starts each episode after the reset of
``reset_mode`` (``nodes/resets.py``: the robot's ``reset_service``, a scripted drive to a start
pose, or the operator).  What runs is the problem's ``controller(phi, rng)`` (the contract in
``core/problem.py``); this transport owns the waits and, for effort commands, the safety.

Two loops (bridge parameter ``loop``, read at configure): ``lockstep``, one command per fresh
joint_states (the lockstep emulator, tabular problems); ``timer``, the wall-clock control loop of
``nodes/control_loop.py`` for a robot that does not wait (joint_states then read with sensor-data
QoS, which matches reliable publishers too)."""
from __future__ import annotations

from typing import Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64
from std_srvs.srv import Trigger
from sim2real_bilevel_interfaces.action import RunEpisodes

from .. import conversions
from ..control_loop import run_timed
from ..episode_ends import EpisodeEnds
from ..resets import EpisodeResets, stop_reason
from ..runtime import ROBOT_STREAM, SENSOR, LogThrottle
from ..joints import read_joint_state
from .base import Transport


class TopicTransport(Transport):

    def __init__(self, bridge):
        super().__init__(bridge)
        self.latest_state = None
        self.latest_velocity = None
        self.latest_stamp = None           # of latest_state, ns of ROS time
        self.state_error = None            # why the newest joint_states was not a state (a joint missing)
        self.foreign_states = 0            # joint_states naming none of the controlled joints (since expect_state)
        self.foreign_names: list[str] = []  # the names of the last of them
        self.bad_state_log = LogThrottle(5.0)
        self.episode_stamps = None         # timer loop: the stamps of the episode's states, in arrival order
        self.accept_after = 0              # timer loop: states sensed before the episode's reset are ignored
        self.late_states = 0               # timer loop: states older than the newest one, ignored
        self.rewards: list[float] = []
        self.loop = bridge.parameters['loop']
        self.joint_state_subscription = bridge.create_subscription(
            JointState, 'joint_states', self.joint_state_callback, SENSOR if self.loop == 'timer' else ROBOT_STREAM)
        self.reward_subscription = bridge.create_subscription(Float64, 'reward', self.reward_callback, ROBOT_STREAM)
        self.resets = EpisodeResets(self)

    def destroy(self) -> None:
        self.resets.destroy()
        self.bridge.destroy_subscription(self.joint_state_subscription)
        self.bridge.destroy_subscription(self.reward_subscription)

    # --- what the robot says ------------------------------------------------------------------------------
    def joint_state_callback(self, msg: JointState) -> None:
        """Joints are read by name (other joints and any order are fine).  A message that lacks a
        controlled joint is not a state: its reason is kept in ``state_error`` (the episode waiting
        for a state then fails with it).  A message that names none of them is another source's
        (a gripper's broadcaster on the same topic, as robot_state_publisher reads it): counted
        and otherwise ignored; an episode that gets no state says how many came and what they named."""
        joints = self.bridge.joints
        if not any(joint in joints for joint in msg.name):
            self.foreign_states += 1
            self.foreign_names = list(msg.name)
            return
        try:
            # no velocities is not zero velocity: a velocity-limited episode refuses such states
            positions, velocities = read_joint_state(msg.name, msg.position, msg.velocity, joints)
        except ValueError as err:
            self.state_error = str(err)
            self.bad_state_log(self.bridge.get_logger().error, f'ignored joint_states: {err}')
            self.bridge.waits.wake()
            return
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        if self.episode_stamps is not None:
            if stamp < self.accept_after:
                return
            if self.latest_stamp is not None and stamp <= self.latest_stamp:
                self.late_states += 1
                return
            self.episode_stamps.append(stamp)
        self.latest_stamp = stamp
        self.latest_state, self.latest_velocity, self.state_error = positions, velocities, None
        self.bridge.visuals.update(positions)
        self.bridge.waits.wake()

    def expect_state(self) -> None:
        """From now on only a joint_states that arrives counts (or a message that is not one)."""
        self.latest_state = self.state_error = None
        self.foreign_states = 0

    def state_arrived(self) -> bool:
        """A state has come since ``latest_state`` was cleared, or a message that is not one."""
        return self.latest_state is not None or self.state_error is not None

    def stale_reason(self, fallback: str) -> str:
        """Why no usable state arrived: the last bad joint_states if there was one, else ``fallback``
        (with the messages that named none of the controlled joints, if any came)."""
        if self.state_error is not None:
            return f'{self.state_error} ({fallback})'
        if self.foreign_states:
            return (f'{fallback}; {self.foreign_states} joint_states message(s) named none of the controlled '
                    f'joints {list(self.bridge.joints)} (the last named {self.foreign_names})')
        return fallback

    def reward_callback(self, msg: Float64) -> None:
        self.rewards.append(float(msg.data))
        self.bridge.waits.wake()

    def start_timed_episode(self, reset_at_ns: int) -> None:
        """The timer loop starts an episode: only states sensed from ``reset_at_ns`` on count."""
        self.latest_state = self.latest_velocity = self.latest_stamp = self.state_error = None
        self.foreign_states = 0
        self.episode_stamps, self.accept_after, self.late_states = [], reset_at_ns, 0

    def end_timed_episode(self) -> list[int]:
        """The stamps of the states received in the episode, in arrival order (none once ended)."""
        stamps, self.episode_stamps = self.episode_stamps or [], None
        return stamps

    async def commands_reach_the_robot(self) -> Optional[str]:
        """Wait until the command publisher has matched every subscription the ROS graph lists on
        the command topic, and at least one; None then, else why not.  A reliable, volatile
        writer drops what it publishes before it has matched a reader, and one command of the
        lockstep loop, lost, leaves the robot waiting and the watchdog firing (seen under load:
        the robot's reset service was ready and its first state had arrived, but the bridge's
        writer had not matched its command reader yet).  Up to ``reset_timeout_s`` for a first
        reader; then up to ``watchdog_timeout_s`` for the others the graph lists (a reader whose
        QoS never matches is only warned of)."""
        bridge, waits = self.bridge, self.bridge.waits
        publisher = bridge.command_publisher
        topic = publisher.topic_name
        first = bridge.parameters['reset_timeout_s']
        if not await waits.until(lambda: publisher.get_subscription_count() > 0, first):
            return stop_reason(bridge) or (f'no robot controller subscribes to {topic} within reset_timeout_s '
                                           f'({first:g} s): is the controller loaded and active?')
        if not await waits.until(lambda: publisher.get_subscription_count() >= bridge.count_subscribers(topic),
                                 bridge.parameters['watchdog_timeout_s']):
            if stop_reason(bridge) is not None:
                return stop_reason(bridge)
            bridge.get_logger().warning(
                f'{topic}: the ROS graph lists {bridge.count_subscribers(topic)} subscription(s), the command '
                f'publisher matched {publisher.get_subscription_count()} (a subscriber with incompatible QoS?); '
                'commanding the matched ones')
        return None

    async def reset_robot(self, efforts: bool = True, feedback=None) -> Trigger.Response:
        """Bring the robot to an initial state by ``reset_mode`` (``nodes/resets.py``); on success
        ``latest_state`` is None or measured after the reset.  ``efforts``: commands are joint
        efforts; ``feedback(status)``: what the goal's client is told while the bridge waits."""
        return await self.resets.reset(efforts, feedback or (lambda status: None))

    # --- episodes -------------------------------------------------------------------------------------------
    async def run(self, goal, goal_handle) -> RunEpisodes.Result:
        """The goal's episodes, one command per fresh joint_states (and ``reward`` message, when
        the controller needs one).  Effort commands (``commands_are_efforts``) pass the
        CommandFilter (effort clamp, rate limit); stale joint_states (watchdog), a joint outside
        its bounds, an e-stop or a deactivation then send a zero command and the whole goal
        fails with the reason -- an aborted episode is never returned as data.  A terminal state
        of the task (``episode_ends.py``) is not an abort: the episode stops there (a zero command,
        whose answer from the robot is awaited) and the goal goes on with the next one.  Other
        commands (e.g. a discrete action index) wait ``step_timeout_s`` per answer."""
        bridge, waits, problem = self.bridge, self.bridge.waits, self.bridge.problem
        phi, version, _ = conversions.policy_from_msg(goal.policy, problem.phi_size())
        try:
            controller = problem.controller(phi, np.random.default_rng())
        except NotImplementedError as err:
            return RunEpisodes.Result(success=False, message=f'the topic transport runs step-by-step controllers, '
                                                             f'not {problem.kind!r} policies: {err}')
        safety = controller.commands_are_efforts
        try:
            bounds = bridge.joint_bounds()
        except ValueError as err:
            return RunEpisodes.Result(success=False, message=f'joint limits: {err}')
        command_filter = bounds.command_filter() if safety else None
        timeout = bridge.parameters['watchdog_timeout_s' if safety else 'step_timeout_s']

        def fail(reason: str) -> RunEpisodes.Result:
            if not safety:
                return RunEpisodes.Result(success=False, message=reason)
            bridge.send_zero_command()
            bridge.set_reason(f'episode aborted: {reason}', DiagnosticStatus.WARN)
            return RunEpisodes.Result(success=False, message=f'{reason}; zero command sent, episode discarded '
                                                             f'(filter: {command_filter.counts()})')

        def feedback(status: str, episodes_done: int) -> None:
            goal_handle.publish_feedback(RunEpisodes.Feedback(episodes_done=episodes_done, status=status))

        ends = EpisodeEnds(bridge, controller.horizon)
        if self.loop == 'timer':
            if not safety:
                return fail('the timer loop runs effort controllers only; use loop lockstep')
            return await run_timed(self, goal, goal_handle, controller, bounds, fail, version, feedback, ends)
        unreachable = await self.commands_reach_the_robot()
        if unreachable is not None:
            return fail(unreachable)
        for episode in range(int(goal.n_episodes)):
            reset = await self.reset_robot(safety, lambda status, done=episode: feedback(status, done))
            if not reset.success:
                return fail(f'reset failed: {reset.message}')
            if not await waits.until(self.state_arrived, timeout) or self.latest_state is None:
                return fail(self.stale_reason(f'watchdog: no joint_states within {timeout} s of the reset' if safety
                                              else 'no joint_states after reset'))
            controller.start_episode()
            if safety:
                command_filter.reset()
            end = None
            for t in range(controller.horizon + 1):
                if safety and self.latest_velocity.size != self.latest_state.size:
                    return fail(f'joint_states without velocities for {bridge.joints}: the velocity limits '
                                f'({bounds.velocity.tolist()}) cannot be checked (episode {episode}, step {t})')
                controller.observe(self.latest_state, self.latest_velocity)
                violation = bounds.violation(self.latest_state, self.latest_velocity) if safety else None
                if violation is not None:
                    return fail(f'state bounds: {violation} (episode {episode}, step {t})')
                end = ends.check(controller, episode, t)
                if end is not None:
                    if safety:                         # the robot answers the zero command before the reset
                        self.expect_state()
                        bridge.send_zero_command()
                        if not await waits.until(self.state_arrived, timeout):
                            return fail(stop_reason(bridge) or self.stale_reason(
                                f'watchdog: no joint_states within {timeout} s of the zero command that ended '
                                f'episode {episode}'))
                    break
                if t == controller.horizon:
                    break
                requested = controller.command()
                command = [float(c) for c in command_filter(requested)] if safety else requested
                self.expect_state()
                reward_count = len(self.rewards)
                estop = bridge.send_command(command)
                if estop is not None:
                    return fail(f'E-STOP: {estop}')
                answered = ((lambda c=reward_count: self.state_arrived() and len(self.rewards) > c)
                            if controller.needs_reward else self.state_arrived)
                if not await waits.until(answered, timeout) or self.latest_state is None:
                    where = (f'episode {episode}, step {t}; the command went to '
                             f'{bridge.command_publisher.get_subscription_count()} matched reader(s)')
                    if not safety:
                        return fail(self.stale_reason(f'no answer from the robot within {timeout} s ({where})'))
                    if bridge.estopped:
                        return fail(f'E-STOP: {bridge.estop_reason}')
                    return fail(self.stale_reason(f'watchdog: joint_states stale for {timeout} s ({where})'))
                controller.record(command, self.rewards[-1] if controller.needs_reward else None)
            feedback('' if end is None else end.describe(), episode + 1)
        message = ends.message(int(goal.n_episodes))
        if safety:
            bridge.send_zero_command()
            counts = command_filter.counts()
            if any(counts.values()):
                bridge.get_logger().warning(f'command filter changed commands in these episodes: {counts}')
            bridge.filter_counts = counts
            message += f'command filter: {counts}'
        batch = controller.batch(version)
        return RunEpisodes.Result(success=True, trajectories=conversions.trajectories_to_msg(batch), message=message)
