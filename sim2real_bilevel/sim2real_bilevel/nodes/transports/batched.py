"""The batched transport: the goal is forwarded to the robot emulator's ``run_episodes`` action
(sim-only loops, where one DDS round trip per transition would dominate) -- by a direct call when
the emulator runs in the bridge's process (``containers:=robot``, ``intra_process_actions``).

The emulator runs whole episodes, so the bridge's per-step checks (command filter, state bounds)
are not applied to them: the returned episodes are replayed through them
(``safety.checks_on_episodes``), and what they would have changed on the topic transport -- the
transport of hardware -- is said in the result's message, warned in the log and counted on
/diagnostics (``unapplied_checks``): a sim-only run shows whether the user's limits would bind."""
from __future__ import annotations

from typing import Optional

import numpy as np
from rclpy.action import ActionClient
from sim2real_bilevel_interfaces.action import RunEpisodes

from ...core.problem import alive_mask
from .. import conversions
from ..action_calls import GoalRejected, PeerLost, call_async, call_in_process_async, find_in_process_endpoint
from ..episode_ends import EpisodeEnds
from ..runtime import LogThrottle
from ..safety import checks_on_episodes
from .base import Transport

CHECKS_WARN_S = 60.0
"""The unapplied checks' warning: at most one line per this many seconds (a sim-only loop runs a goal per iteration)."""


class BatchedTransport(Transport):

    def __init__(self, bridge):
        super().__init__(bridge)
        self.client = ActionClient(bridge, RunEpisodes, bridge.parameters['emulator_action'])
        self.endpoints: dict = {}          # executor -> the emulator's in-process endpoint there, or None
        self.efforts: Optional[bool] = None    # the problem's commands are efforts (checked at the first goal)
        self.checks_log = LogThrottle(CHECKS_WARN_S)

    def destroy(self) -> None:
        self.client.destroy()

    async def run(self, goal, goal_handle) -> RunEpisodes.Result:
        """The episodes on the emulator's action, every wait bounded: a goal or result message
        lost before DDS matched both ends would otherwise hold this goal (and every re-send of
        its request_id) forever.  A result that does not come although the emulator's status says
        the goal finished is asked for again."""
        bridge, waits = self.bridge, self.bridge.waits
        name = bridge.parameters['emulator_action']
        # the request_id goes along: a bridge restarted while the emulator ran gets those episodes
        forwarded = RunEpisodes.Goal(policy=goal.policy, n_episodes=goal.n_episodes, request_id=goal.request_id)
        endpoint = self.in_process_endpoint()
        try:
            if endpoint is not None:       # the emulator in this process (containers:=robot): a direct call
                result = await call_in_process_async(endpoint, forwarded)
                bridge.in_process_calls += 1
            else:
                result = (await call_async(self.client, forwarded, name, waits.until, waits.future,
                                           bridge.parameters['episode_timeout_s'], on_done=waits.wake,
                                           stopped=lambda: not bridge.active or bridge.estopped)).result
        except GoalRejected:
            return RunEpisodes.Result(success=False, message='the emulator rejected the episodes (its log says why)')
        except PeerLost as err:
            return RunEpisodes.Result(success=False, message=str(err))
        if result.success:                 # episodes the emulator stopped at a terminal state: reported here too
            ends = EpisodeEnds(bridge, 0)
            ends.from_batch(result.trajectories)
            unapplied = self.unapplied_checks(goal, result.trajectories)
            if ends.ends or unapplied:     # a new message: an in-process result is the emulator's kept one
                message = ends.message(int(goal.n_episodes)) + result.message
                if unapplied:
                    message = (message + ' ' if message else '') + f'Not applied on this transport: {unapplied}.'
                result = RunEpisodes.Result(success=True, trajectories=result.trajectories, timing=result.timing,
                                            message=message)
        return result

    def unapplied_checks(self, goal, batch) -> str:
        """The topic transport's checks replayed on the emulator's episodes: '' when they would
        have changed nothing (or the commands are not efforts), else in words, warned (at most
        one line per CHECKS_WARN_S) and counted on /diagnostics."""
        bridge = self.bridge
        if self.efforts is None:
            try:
                phi, _, _ = conversions.policy_from_msg(goal.policy, bridge.problem.phi_size())
                self.efforts = bool(bridge.problem.controller(phi, np.random.default_rng(0)).commands_are_efforts)
            except NotImplementedError:    # a problem without a step-by-step controller: nothing to check
                self.efforts = False
        if not self.efforts:
            return ''
        try:
            episodes = conversions.trajectories_from_msg(batch)
            bounds = bridge.joint_bounds()
        except ValueError:                 # MessageValidationError included
            return ''                      # a malformed batch is the receiver's to refuse; bad limits, configure's
        checks = checks_on_episodes(bounds, np.asarray(episodes.states, dtype=np.float64),
                                    np.asarray(episodes.actions, dtype=np.float64).reshape(*episodes.rewards.shape, -1),
                                    alive_mask(np.asarray(episodes.dones, dtype=bool)))
        words = checks.describe(int(batch.n_episodes))
        totals = bridge.unapplied_checks
        for key, count in checks.filter_counts.items():
            totals[key] = totals.get(key, 0) + count
        totals['commands'] = totals.get('commands', 0) + checks.commands
        totals['episodes_out_of_bounds'] = totals.get('episodes_out_of_bounds', 0) + len(checks.crossings)
        if words:
            self.checks_log(bridge.get_logger().warning,
                            f'sim-only episodes ran without the bridge\'s checks (transport batched): {words}; on '
                            'the topic transport (hardware) these limits would bind: raise them to the actuator '
                            'range the policy is trained on, or set the simulator to the robot\'s (docs/hardware.md)')
        return words

    def in_process_endpoint(self):
        """The emulator's action served on this bridge's executor (a robot container), when
        ``intra_process_actions`` is on; else None (DDS)."""
        bridge = self.bridge
        if not bridge.parameters['intra_process_actions']:
            return None
        executor = bridge.executor
        if executor not in self.endpoints:
            self.endpoints[executor] = find_in_process_endpoint(executor, bridge, bridge.parameters['emulator_action'])
        return self.endpoints[executor]
