"""The topic transport: the ros2_control contract of real hardware.

Reads ``joint_states`` (joints mapped by name through the bridge's ``joints``), writes
``<controller>/commands`` through the bridge (std_msgs/Float64MultiArray ordered like
``joints``), takes the step reward from ``reward`` and starts each episode after the reset of
``reset_mode`` (``nodes/resets.py``: the robot's ``reset_service``, a scripted drive to a start
pose, or the operator).  What runs is the problem's ``controller(phi, rng)`` (the contract in
``core/problem.py``); this transport owns the waits and, for effort commands, the safety.

Two loops (bridge parameter ``loop``, read at configure): ``lockstep``, one command per fresh
joint_states (the lockstep emulator, tabular problems); ``timer``, the wall-clock control loop of
``nodes/control_loop.py`` for a robot that does not wait (joint_states then read with sensor-data
QoS, which matches reliable publishers too)."""
from __future__ import annotations

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64
from std_srvs.srv import Trigger
from sim2real_bilevel_interfaces.action import RunEpisodes

from .. import conversions
from ..control_loop import run_timed
from ..resets import EpisodeResets
from ..runtime import ROBOT_STREAM, SENSOR
from ..safety import CommandFilter, state_violation
from .base import Transport


class TopicTransport(Transport):

    def __init__(self, bridge):
        super().__init__(bridge)
        self.latest_state = None
        self.latest_velocity = None
        self.latest_stamp = None           # of latest_state, ns of ROS time
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
        """Joints are read by name (other joints and any order are fine)."""
        joints = self.bridge.joints
        names = list(msg.name)
        try:
            index = [names.index(joint) for joint in joints]
            positions = [msg.position[i] for i in index]
            # no velocities is not zero velocity: a velocity-limited episode refuses such states
            velocities = [msg.velocity[i] for i in index] if len(msg.velocity) else []
        except (ValueError, IndexError):
            self.bridge.get_logger().error(f'joint_states without the joints {joints}: names {names}',
                                           throttle_duration_sec=5.0)
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
        self.latest_state = np.asarray(positions, dtype=np.float64)
        self.latest_velocity = np.asarray(velocities, dtype=np.float64)
        self.bridge.waits.wake()

    def reward_callback(self, msg: Float64) -> None:
        self.rewards.append(float(msg.data))
        self.bridge.waits.wake()

    def start_timed_episode(self, reset_at_ns: int) -> None:
        """The timer loop starts an episode: only states sensed from ``reset_at_ns`` on count."""
        self.latest_state = self.latest_velocity = self.latest_stamp = None
        self.episode_stamps, self.accept_after, self.late_states = [], reset_at_ns, 0

    def end_timed_episode(self) -> list[int]:
        """The stamps of the states received in the episode, in arrival order (none once ended)."""
        stamps, self.episode_stamps = self.episode_stamps or [], None
        return stamps

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
        fails with the reason -- an aborted episode is never returned as data.  Other commands
        (e.g. a discrete action index) wait ``step_timeout_s`` per answer."""
        bridge, waits, problem = self.bridge, self.bridge.waits, self.bridge.problem
        phi, version, _ = conversions.policy_from_msg(goal.policy, problem.phi_size())
        try:
            controller = problem.controller(phi, np.random.default_rng())
        except NotImplementedError as err:
            return RunEpisodes.Result(success=False, message=f'the topic transport runs step-by-step controllers, '
                                                             f'not {problem.kind!r} policies: {err}')
        safety = controller.commands_are_efforts
        command_filter = (CommandFilter(bridge.parameters['effort_limit'], bridge.parameters['max_effort_rate'],
                                        joints=len(bridge.joints)) if safety else None)
        timeout = bridge.parameters['watchdog_timeout_s' if safety else 'step_timeout_s']
        limits = (bridge.parameters['position_limit'], bridge.parameters['velocity_limit'])

        def fail(reason: str) -> RunEpisodes.Result:
            if not safety:
                return RunEpisodes.Result(success=False, message=reason)
            bridge.send_zero_command()
            bridge.set_reason(f'episode aborted: {reason}', DiagnosticStatus.WARN)
            return RunEpisodes.Result(success=False, message=f'{reason}; zero command sent, episode discarded '
                                                             f'(filter: {command_filter.counts()})')

        def feedback(status: str, episodes_done: int) -> None:
            goal_handle.publish_feedback(RunEpisodes.Feedback(episodes_done=episodes_done, status=status))

        if self.loop == 'timer':
            if not safety:
                return fail('the timer loop runs effort controllers only; use loop lockstep')
            return await run_timed(self, goal, goal_handle, controller, command_filter, fail, version, feedback)
        for episode in range(int(goal.n_episodes)):
            reset = await self.reset_robot(safety, lambda status, done=episode: feedback(status, done))
            if not reset.success:
                return fail(f'reset failed: {reset.message}')
            if not await waits.until(lambda: self.latest_state is not None, timeout):
                return fail(f'watchdog: no joint_states within {timeout} s of the reset' if safety
                            else 'no joint_states after reset')
            controller.start_episode()
            if safety:
                command_filter.reset()
            for t in range(controller.horizon + 1):
                if safety and self.latest_velocity.size != self.latest_state.size:
                    return fail(f'joint_states without velocities for {bridge.joints}: the velocity limit '
                                f'({limits[1]:g} rad/s) cannot be checked (episode {episode}, step {t})')
                controller.observe(self.latest_state, self.latest_velocity)
                violation = (state_violation(bridge.joints, self.latest_state, self.latest_velocity, *limits)
                             if safety else None)
                if violation is not None:
                    return fail(f'state bounds: {violation} (episode {episode}, step {t})')
                if t == controller.horizon:
                    break
                requested = controller.command()
                command = [float(c) for c in command_filter(requested)] if safety else requested
                self.latest_state, reward_count = None, len(self.rewards)
                estop = bridge.send_command(command)
                if estop is not None:
                    return fail(f'E-STOP: {estop}')
                answered = ((lambda c=reward_count: self.latest_state is not None and len(self.rewards) > c)
                            if controller.needs_reward else (lambda: self.latest_state is not None))
                if not await waits.until(answered, timeout):
                    if not safety:
                        return fail(f'no answer from the robot within {timeout} s (episode {episode}, step {t})')
                    if bridge.estopped:
                        return fail(f'E-STOP: {bridge.estop_reason}')
                    return fail(f'watchdog: joint_states stale for {timeout} s (episode {episode}, step {t})')
                controller.record(command, self.rewards[-1] if controller.needs_reward else None)
            goal_handle.publish_feedback(RunEpisodes.Feedback(episodes_done=episode + 1))
        message = ''
        if safety:
            bridge.send_zero_command()
            counts = command_filter.counts()
            if any(counts.values()):
                bridge.get_logger().warning(f'command filter changed commands in these episodes: {counts}')
            bridge.filter_counts = counts
            message = f'command filter: {counts}'
        batch = controller.batch(version)
        return RunEpisodes.Result(success=True, trajectories=conversions.trajectories_to_msg(batch), message=message)
