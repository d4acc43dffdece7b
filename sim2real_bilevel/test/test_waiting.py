"""The package's waits on an rclpy executor (runtime.wait_for, runtime.spin_once): callbacks a
wait found ready all run before the next wait set is built, and a wait still ends at its timeout."""
import time

import pytest

pytest.importorskip('rclpy')


def _counting_executor(context):
    """A SingleThreadedExecutor counting the wait sets it builds (``executor.wait_sets``)."""
    from rclpy.executors import SingleThreadedExecutor
    executor = SingleThreadedExecutor(context=context)
    executor.wait_sets = 0
    build = executor._wait_for_ready_callbacks

    def counted(*args, **kwargs):
        executor.wait_sets += 1
        return build(*args, **kwargs)
    executor._wait_for_ready_callbacks = counted
    return executor


def test_callbacks_ready_together_are_run_from_one_wait_set(ros_context):
    from rclpy.node import Node
    from rclpy.task import Future

    from sim2real_bilevel.nodes.runtime import wait_for

    executor = _counting_executor(ros_context)
    node = Node('waiting', context=ros_context)
    executor.add_node(node)
    try:
        ran, done = [], Future()

        def callback(index):
            ran.append(index)
            if len(ran) == 8:
                done.set_result(sorted(ran))
        guards = [node.create_guard_condition(lambda i=i: callback(i)) for i in range(8)]
        for guard in guards:
            guard.trigger()
        executor.wait_sets = 0
        # a deadline closer than the spin period: the remaining time changed from spin to spin
        assert wait_for(executor, done, 0.4, 'eight guards') == list(range(8))
        # one wait finds all eight ready; rclpy drops that generator (and waits again for each
        # callback) whenever the timeout passed to spin_once changes between calls
        assert executor.wait_sets <= 2, f'{executor.wait_sets} wait sets for 8 callbacks ready at once'
    finally:
        node.destroy_node()
        executor.shutdown()


def test_a_wait_still_ends_at_its_timeout_naming_what_it_waited_for(ros_context):
    from rclpy.node import Node
    from rclpy.task import Future

    from sim2real_bilevel.nodes.runtime import SIGNAL_CHECK_S, wait_for

    executor = _counting_executor(ros_context)
    node = Node('waiting', context=ros_context)
    executor.add_node(node)
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match='the answer: no answer within 0.3 s'):
            wait_for(executor, Future(), 0.3, 'the answer')
        waited = time.monotonic() - start
        assert 0.3 <= waited < 0.3 + SIGNAL_CHECK_S + 1.0
    finally:
        node.destroy_node()
        executor.shutdown()
