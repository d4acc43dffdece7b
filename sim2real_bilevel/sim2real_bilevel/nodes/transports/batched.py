"""The batched transport: the goal is forwarded to the robot emulator's ``run_episodes`` action
(sim-only loops, where one DDS round trip per transition would dominate) -- by a direct call when
the emulator runs in the bridge's process (``containers:=robot``, ``intra_process_actions``)."""
from __future__ import annotations

from rclpy.action import ActionClient
from sim2real_bilevel_interfaces.action import RunEpisodes

from ..action_calls import GoalRejected, PeerLost, call_async, call_in_process_async, find_in_process_endpoint
from ..episode_ends import EpisodeEnds
from .base import Transport


class BatchedTransport(Transport):

    def __init__(self, bridge):
        super().__init__(bridge)
        self.client = ActionClient(bridge, RunEpisodes, bridge.parameters['emulator_action'])
        self.endpoints: dict = {}          # executor -> the emulator's in-process endpoint there, or None

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
            if ends.ends:                  # a new message: an in-process result is the emulator's kept one
                result = RunEpisodes.Result(success=True, trajectories=result.trajectories, timing=result.timing,
                                            message=ends.message(int(goal.n_episodes)) + result.message)
        return result

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
