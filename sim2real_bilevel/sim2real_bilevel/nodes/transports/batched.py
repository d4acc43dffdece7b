"""The batched transport: the goal is forwarded to the robot emulator's ``run_episodes`` action
(sim-only loops, where one DDS round trip per transition would dominate)."""
from __future__ import annotations

from rclpy.action import ActionClient
from sim2real_bilevel_interfaces.action import RunEpisodes

from ..action_calls import GoalRejected, PeerLost, call_async
from .base import Transport


class BatchedTransport(Transport):

    def __init__(self, bridge):
        super().__init__(bridge)
        self.client = ActionClient(bridge, RunEpisodes, bridge.parameters['emulator_action'])

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
        try:
            response = await call_async(self.client, forwarded, name, waits.until, waits.future,
                                        bridge.parameters['episode_timeout_s'], on_done=waits.wake,
                                        stopped=lambda: not bridge.active or bridge.estopped)
        except GoalRejected:
            return RunEpisodes.Result(success=False, message='the emulator rejected the episodes (its log says why)')
        except PeerLost as err:
            return RunEpisodes.Result(success=False, message=str(err))
        return response.result
