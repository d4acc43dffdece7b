"""The topic transport: the ros2_control contract of real hardware.

Reads ``joint_states`` (joints mapped by name through the bridge's ``joints``), writes
``<controller>/commands`` through the bridge (std_msgs/Float64MultiArray ordered like
``joints``), takes the step reward from ``reward`` and starts episodes through the
``reset_service``; implemented for tabular and continuous (robot) policies."""
from __future__ import annotations

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64
from std_srvs.srv import Trigger
from sim2real_bilevel_interfaces.action import RunEpisodes

from ...core.problem import Trajectories
from .. import conversions
from ..runtime import ROBOT_STREAM
from .base import Transport


class TopicTransport(Transport):

    def __init__(self, bridge):
        super().__init__(bridge)
        self.latest_state = None
        self.latest_velocity = None
        self.rewards: list[float] = []
        self.joint_state_subscription = bridge.create_subscription(JointState, 'joint_states',
                                                                   self.joint_state_callback, ROBOT_STREAM)
        self.reward_subscription = bridge.create_subscription(Float64, 'reward', self.reward_callback, ROBOT_STREAM)
        self.reset_client = bridge.create_client(Trigger, bridge.parameters['reset_service'])

    def destroy(self) -> None:
        self.bridge.destroy_client(self.reset_client)
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
            velocities = [msg.velocity[i] for i in index] if len(msg.velocity) else [0.0] * len(index)
        except (ValueError, IndexError):
            self.bridge.get_logger().error(f'joint_states without the joints {joints}: names {names}',
                                           throttle_duration_sec=5.0)
            return
        self.latest_state = np.asarray(positions, dtype=np.float64)
        self.latest_velocity = np.asarray(velocities, dtype=np.float64)
        self.bridge.waits.wake()

    def reward_callback(self, msg: Float64) -> None:
        self.rewards.append(float(msg.data))
        self.bridge.waits.wake()

    async def reset_robot(self) -> Trigger.Response:
        """Start an episode through the reset service, within ``reset_timeout_s``.  A request sent
        before DDS has matched the client with the service is dropped without an answer, so the
        service must be ready first, and a request unanswered after a while is sent once more."""
        bridge, waits = self.bridge, self.bridge.waits
        timeout = bridge.parameters['reset_timeout_s']
        name = self.reset_client.srv_name

        def stopped(reason: str) -> Trigger.Response:
            if bridge.estopped or not bridge.active:
                reason = f'E-STOP: {bridge.estop_reason}' if bridge.estopped else 'the bridge was deactivated'
            return Trigger.Response(success=False, message=reason)
        if not await waits.until(self.reset_client.service_is_ready, timeout):
            return stopped(f'{name} not available within {timeout:g} s')
        for attempt in range(2):
            future = self.reset_client.call_async(Trigger.Request())
            if await waits.future(future, timeout / 2):
                return future.result()
            self.reset_client.remove_pending_request(future)
        return stopped(f'{name} did not answer within {timeout:g} s')

    # --- episodes -------------------------------------------------------------------------------------------
    async def run(self, goal, goal_handle) -> RunEpisodes.Result:
        problem = self.bridge.problem
        if getattr(problem, 'kind', '') == 'robot':
            return await self.run_robot(goal, goal_handle)
        if getattr(problem, 'kind', '') != 'tabular':
            return RunEpisodes.Result(success=False, message=f'the topic transport runs tabular and robot '
                                                             f'policies, not {problem.kind!r}')
        return await self.run_tabular(goal, goal_handle)

    async def run_tabular(self, goal, goal_handle) -> RunEpisodes.Result:
        bridge, waits, problem = self.bridge, self.bridge.waits, self.bridge.problem
        phi, version, _ = conversions.policy_from_msg(goal.policy, problem.phi_size())
        pi, log_pi = problem.policy_table(phi)
        rng = np.random.default_rng()
        horizon = int(problem.real_horizon)
        n = int(goal.n_episodes)
        states = np.zeros((n, horizon + 1), dtype=np.int64)
        actions = np.zeros((n, horizon), dtype=np.int64)
        rewards = np.zeros((n, horizon))
        timeout = bridge.parameters['step_timeout_s']
        for episode in range(n):
            self.latest_state = None
            reset = await self.reset_robot()
            if not reset.success:
                return RunEpisodes.Result(success=False, message=f'reset failed: {reset.message}')
            if not await waits.until(lambda: self.latest_state is not None, timeout):
                return RunEpisodes.Result(success=False, message='no joint_states after reset')
            states[episode, 0] = int(self.latest_state[0])
            for t in range(horizon):
                action = int(rng.choice(pi.shape[1], p=pi[states[episode, t]]))
                actions[episode, t] = action
                self.latest_state, reward_count = None, len(self.rewards)
                estop = bridge.send_command([float(action)])
                if estop is not None:
                    return RunEpisodes.Result(success=False, message=f'E-STOP: {estop}')
                arrived = await waits.until(
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

    async def run_robot(self, goal, goal_handle) -> RunEpisodes.Result:
        """Continuous policies, one command per fresh joint_states, every command through the
        CommandFilter (effort clamp, rate limit).  Stale joint_states (watchdog), a joint outside
        its bounds, an e-stop or a deactivation: zero command and the whole goal fails with the
        reason -- an aborted episode is never returned as data."""
        import torch
        from ..safety import CommandFilter, state_violation
        bridge, waits, problem = self.bridge, self.bridge.waits, self.bridge.problem
        phi, version, _ = conversions.policy_from_msg(goal.policy, problem.phi_size())
        phi_t = torch.as_tensor(phi, dtype=torch.float64)
        std = float(np.exp(problem.policy.log_std(phi_t).numpy())[0])
        command_filter = CommandFilter(bridge.parameters['effort_limit'], bridge.parameters['max_effort_rate'],
                                       joints=len(bridge.joints))
        rng = np.random.default_rng()
        horizon, n = int(problem.horizon), int(goal.n_episodes)
        states = np.zeros((n, horizon + 1, 2))
        actions = np.zeros((n, horizon, 1))
        watchdog = bridge.parameters['watchdog_timeout_s']
        limits = (bridge.parameters['position_limit'], bridge.parameters['velocity_limit'])

        def fail(reason: str) -> RunEpisodes.Result:
            bridge.send_zero_command()
            bridge.set_reason(f'episode aborted: {reason}', DiagnosticStatus.WARN)
            return RunEpisodes.Result(success=False, message=f'{reason}; zero command sent, episode discarded '
                                                             f'(filter: {command_filter.counts()})')

        for episode in range(n):
            self.latest_state = None
            reset = await self.reset_robot()
            if not reset.success:
                return fail(f'reset failed: {reset.message}')
            if not await waits.until(lambda: self.latest_state is not None, watchdog):
                return fail(f'watchdog: no joint_states within {watchdog} s of the reset')
            command_filter.reset()
            for t in range(horizon + 1):
                states[episode, t] = (self.latest_state[0], self.latest_velocity[0])
                violation = state_violation(bridge.joints, self.latest_state, self.latest_velocity, *limits)
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
                estop = bridge.send_command([float(c) for c in command])
                if estop is not None:
                    return fail(f'E-STOP: {estop}')
                if not await waits.until(lambda: self.latest_state is not None, watchdog):
                    if bridge.estopped:
                        return fail(f'E-STOP: {bridge.estop_reason}')
                    return fail(f'watchdog: joint_states stale for {watchdog} s (episode {episode}, step {t})')
            goal_handle.publish_feedback(RunEpisodes.Feedback(episodes_done=episode + 1))
        bridge.send_zero_command()
        counts = command_filter.counts()
        if any(counts.values()):
            bridge.get_logger().warning(f'command filter changed commands in these episodes: {counts}')
        bridge.filter_counts = counts
        rewards, log_probs = problem.score_episodes(phi, states, actions)
        dones = np.zeros((n, horizon), dtype=bool)
        dones[:, -1] = True
        batch = Trajectories(states=states, actions=actions, rewards=rewards, dones=dones, log_probs=log_probs,
                             source='real', policy_version=version)
        return RunEpisodes.Result(success=True, trajectories=conversions.trajectories_to_msg(batch),
                                  message=f'command filter: {counts}')
