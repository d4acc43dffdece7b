"""The floor under the ROS loop's real-episode phase (issue 13, item 5): one rclpy action round trip
(goal, acceptance, result) against one service round trip, between two processes on loopback,
with nothing executed -- and how the action's cost grows with the goals its server keeps.

An rclpy action server keeps every finished goal for its ``result_timeout`` and publishes the
status of all of them at every change of one; each client converts every entry of every status
message into Python objects.  A loop that sends a goal every few milliseconds therefore pays for
the hundreds of goals still kept (the package's servers keep results ``RESULT_KEPT_S``, so lost
results can be asked for again).

    .venv/bin/python sim2real_bilevel/bench/action_round_trip.py [--calls 300] [--result-timeouts 0.01 1 10]

Prints, per result_timeout, the mean round trip (ms) of two consecutive blocks of ``--calls``
goals each (the second meets the goals the first left on the server), and the service round
trip of the same processes.  Runs on its own ROS_DOMAIN_ID (``--domain``).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

SERVER = 'server'


def serve(result_timeout: float) -> None:
    """The server process: a RunEpisodes action whose goals succeed at once, and a Trigger service."""
    import rclpy
    from rclpy.action import ActionServer
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from sim2real_bilevel_interfaces.action import RunEpisodes
    from std_srvs.srv import Trigger

    rclpy.init()
    node = rclpy.create_node('round_trip_server')

    def execute(handle):
        handle.succeed()
        return RunEpisodes.Result(success=True)
    ActionServer(node, RunEpisodes, 'round_trip', execute_callback=execute, result_timeout=result_timeout)
    node.create_service(Trigger, 'round_trip_service', lambda request, response: response)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    print('ready', flush=True)
    try:
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass


def measure(calls: int, blocks: int = 2) -> list[tuple[float, float]]:
    """(action ms, service ms) per block of ``calls`` round trips, against a running server."""
    import rclpy
    from rclpy.action import ActionClient
    from rclpy.executors import SingleThreadedExecutor
    from sim2real_bilevel_interfaces.action import RunEpisodes
    from std_srvs.srv import Trigger

    from sim2real_bilevel.nodes.runtime import wait_for

    rclpy.init()
    node = rclpy.create_node('round_trip_client')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    action = ActionClient(node, RunEpisodes, 'round_trip')
    service = node.create_client(Trigger, 'round_trip_service')

    def until(future):
        return wait_for(executor, future, 10.0, 'round trip')

    if not action.wait_for_server(timeout_sec=30.0) or not service.wait_for_service(timeout_sec=30.0):
        raise TimeoutError('the server process did not appear within 30 s')
    rows = []
    for _ in range(blocks):
        started = time.perf_counter()
        for _ in range(calls):
            handle = until(action.send_goal_async(RunEpisodes.Goal(n_episodes=1)))
            until(handle.get_result_async())
        action_ms = (time.perf_counter() - started) / calls * 1e3
        started = time.perf_counter()
        for _ in range(calls):
            until(service.call_async(Trigger.Request()))
        rows.append((action_ms, (time.perf_counter() - started) / calls * 1e3))
    node.destroy_node()
    rclpy.try_shutdown()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--calls', type=int, default=300, help='round trips per block (default 300)')
    parser.add_argument('--result-timeouts', type=float, nargs='+', default=[0.01, 1.0, 10.0],
                        help="the server's result_timeout values to compare (s; default 0.01 1 10)")
    parser.add_argument('--domain', type=int, default=93, help='ROS_DOMAIN_ID of both processes (default 93)')
    args = parser.parse_args()
    if args.calls < 1:
        parser.error(f'--calls {args.calls}: expected >= 1')
    if any(t <= 0 for t in args.result_timeouts):
        parser.error(f'--result-timeouts {args.result_timeouts}: expected values > 0')
    os.environ['ROS_DOMAIN_ID'] = str(args.domain)
    print(f'{"result_timeout s":>16} {"action ms, block 1":>19} {"block 2":>8} {"service ms":>11}')
    for result_timeout in args.result_timeouts:
        server = subprocess.Popen([sys.executable, __file__, SERVER, str(result_timeout)], stdout=subprocess.PIPE,
                                  text=True, env=dict(os.environ))
        try:
            if server.stdout.readline().strip() != 'ready':
                raise RuntimeError(f'the server process exited with {server.wait(10.0)} before it was ready')
            rows = measure(args.calls)
        finally:
            server.terminate()
            try:
                server.wait(10.0)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        print(f'{result_timeout:16g} {rows[0][0]:19.2f} {rows[1][0]:8.2f} {min(r[1] for r in rows):11.2f}', flush=True)
    return 0


if __name__ == '__main__':
    if len(sys.argv) == 3 and sys.argv[1] == SERVER:
        serve(float(sys.argv[2]))
    else:
        raise SystemExit(main())
