"""Goals handed to an action server of the same process (``serve_action`` + ``ActionCaller`` with
``intra_process_actions``): an execute callback that finishes without awaiting runs with no spin
of the executor; one that awaits work in a thread goes on as an executor task; errors and
rejections reach the caller as over DDS."""
import threading

import pytest

pytest.importorskip('rclpy')

PARAMETERS = {'intra_process_actions': True, 'goal_timeout_s': 5.0, 'action_timeout_s': 5.0,
              'action_retries': 0, 'server_timeout_s': 5.0}


@pytest.fixture
def peers(ros_context):
    """(caller, client, server node, executor counting its wait sets): a TrainPolicy server and
    its caller, two nodes on one executor."""
    from rclpy.action import ActionClient, GoalResponse
    from rclpy.node import Node
    from sim2real_bilevel_interfaces.action import TrainPolicy

    from sim2real_bilevel.nodes.action_calls import ActionCaller, serve_action
    from test_waiting import _counting_executor

    executor = _counting_executor(ros_context)
    server_node = Node('in_process_server', context=ros_context)
    caller_node = Node('in_process_caller', context=ros_context)
    server_node.behaviour = None
    server_node.accept = True

    async def execute(handle):
        return await server_node.behaviour(handle)

    serve_action(server_node, TrainPolicy, 'train_policy', execute_callback=execute,
                 goal_callback=lambda goal: GoalResponse.ACCEPT if server_node.accept else GoalResponse.REJECT)
    for node in (server_node, caller_node):
        executor.add_node(node)
    caller = ActionCaller(caller_node, PARAMETERS)
    caller.executor = executor
    client = ActionClient(caller_node, TrainPolicy, 'train_policy')
    try:
        yield caller, client, server_node, executor
    finally:
        client.destroy()
        for node in (server_node, caller_node):
            node.destroy_node()
        executor.shutdown()


def _result(message: str, success: bool = True):
    from sim2real_bilevel_interfaces.action import TrainPolicy
    return TrainPolicy.Result(success=success, message=message)


def _goal():
    from sim2real_bilevel_interfaces.action import TrainPolicy
    return TrainPolicy.Goal()


def test_a_callback_that_does_not_await_is_run_without_a_spin(peers):
    caller, client, server, executor = peers

    async def inline(handle):
        handle.succeed()
        return _result('inline')
    server.behaviour = inline
    executor.wait_sets = 0
    assert caller.call(client, _goal(), 'train_policy').message == 'inline'
    assert executor.wait_sets == 0
    assert caller.in_process_calls == 1


def test_a_callback_awaiting_work_in_a_thread_goes_on_as_an_executor_task(peers):
    from rclpy.task import Future
    caller, client, server, executor = peers
    spinning, threads = threading.Event(), []
    build = executor._wait_for_ready_callbacks

    def counted(*args, **kwargs):        # the caller spins: the callback is pending by now
        spinning.set()
        return build(*args, **kwargs)
    executor._wait_for_ready_callbacks = counted

    async def threaded(handle):
        future = Future()

        def work():
            assert spinning.wait(10.0)
            future.set_result('from a thread')
            executor.wake()
        threads.append(threading.Thread(target=work))
        threads[-1].start()
        message = await future
        handle.succeed()
        return _result(message)
    server.behaviour = threaded
    assert caller.call(client, _goal(), 'train_policy').message == 'from a thread'
    assert spinning.is_set() and caller.in_process_calls == 1
    threads[0].join()


def test_failures_of_an_in_process_goal_reach_the_caller_as_over_dds(peers):
    from sim2real_bilevel.nodes.action_calls import ActionFailed
    caller, client, server, executor = peers

    async def failing(handle):
        handle.abort()
        return _result('the solve failed', success=False)
    server.behaviour = failing
    with pytest.raises(ActionFailed, match='the solve failed'):
        caller.call(client, _goal(), 'train_policy')

    async def raising(handle):
        raise FloatingPointError('non-finite policy')
    server.behaviour = raising
    with pytest.raises(FloatingPointError, match='non-finite policy'):
        caller.call(client, _goal(), 'train_policy')

    server.accept = False
    with pytest.raises(ActionFailed, match='goal rejected by /train_policy'):
        caller.call(client, _goal(), 'train_policy')
