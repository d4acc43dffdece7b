"""A goal in flight when its action server's process is killed and restarted (as a node restart
does) is found lost and sent again quickly, not after the whole result timeout: real rclpy, real
DDS on this test's domain, the servers in their own processes (SIGKILL, then a new one)."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

SERVER = textwrap.dedent('''
    import sys, time, rclpy
    from rclpy.action import ActionServer
    from rclpy.executors import SingleThreadedExecutor
    from sim2real_bilevel_interfaces.action import TrainPolicy
    finish = sys.argv[1] == 'finish'
    rclpy.init()
    node = rclpy.create_node('train_server')

    def execute(handle):
        print('executing', flush=True)
        if not finish:
            time.sleep(600.0)                   # killed long before
        handle.succeed()
        return TrainPolicy.Result(success=True, message='restarted server', iterations=7)

    server = ActionServer(node, TrainPolicy, 'train', execute)
    print('ready', flush=True)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    executor.spin()
''')


def start_server(mode: str, env: dict) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, '-c', SERVER, mode], env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == 'ready'
    return process


def test_a_goal_lost_with_its_killed_and_restarted_server_is_sent_again(ros_env, ros_context):
    from rclpy.action import ActionClient
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sim2real_bilevel_interfaces.action import TrainPolicy

    from sim2real_bilevel.nodes.action_calls import ActionCaller

    env = dict(os.environ, **ros_env)
    servers = [start_server('hold', env)]
    executor = SingleThreadedExecutor(context=ros_context)
    node = Node('caller', context=ros_context)
    executor.add_node(node)
    client = ActionClient(node, TrainPolicy, 'train')
    caller = ActionCaller(node, {'goal_timeout_s': 10.0, 'action_timeout_s': 120.0, 'action_retries': 3,
                                 'server_timeout_s': 30.0, 'intra_process_actions': False})
    caller.executor = executor
    restarted = {}

    def kill_and_restart():                          # once the first server runs the goal
        if servers[0].stdout.readline().strip() != 'executing':
            return
        servers[0].send_signal(signal.SIGKILL)
        servers[0].wait(10.0)
        servers.append(start_server('finish', env))
        restarted['at'] = time.monotonic()

    killer = threading.Thread(target=kill_and_restart, daemon=True)
    killer.start()
    try:
        result = caller.call(client, TrainPolicy.Goal(), 'train_policy')
        done = time.monotonic()
        killer.join(30.0)
    finally:
        for process in servers:
            if process.poll() is None:
                process.kill()
                process.wait(10.0)
    assert 'at' in restarted, 'the first server never ran the goal'
    assert result.success and result.message == 'restarted server' and result.iterations == 7
    assert caller.retries >= 1
    # asked again 2 s after sending, then 4, 8, 16 ... s later: well within a minute of the
    # restart, against the 120 s result timeout a caller without the probe waits
    assert done - restarted['at'] < 60.0, done - restarted['at']
