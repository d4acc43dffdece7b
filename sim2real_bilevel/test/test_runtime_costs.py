"""What the nodes' per-message and per-iteration machinery costs, as properties that could break:
``internal_publisher`` adds nothing to an executor's wait set, while a subscriber with an
incompatible profile is still told; ``BackgroundWork`` keeps one worker thread across
computations; the evaluation server logs fast evaluations as a periodic summary; ``LogThrottle``
holds lines back before rclpy is called."""
import threading
import time

import pytest

pytest.importorskip('rclpy')

from sim2real_bilevel.nodes.evaluation import QuietEvaluations  # noqa: E402 -- after the skip
from sim2real_bilevel.nodes.runtime import BackgroundWork  # noqa: E402


def _event_handlers(node) -> int:
    from rclpy.event_handler import EventHandler
    return sum(isinstance(waitable, EventHandler) for waitable in node.waitables)


@pytest.mark.ros
def test_internal_publishers_add_no_waitable_and_an_incompatible_subscriber_is_still_told(ros_context):
    from rclpy.event_handler import SubscriptionEventCallbacks
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Float64

    from sim2real_bilevel.nodes.runtime import EVENTS, internal_publisher

    publisher_node = Node('internal_publishers', context=ros_context)
    subscriber_node = Node('incompatible_subscriber', context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    for node in (publisher_node, subscriber_node):
        executor.add_node(node)
    try:
        before = _event_handlers(publisher_node)
        for index in range(10):                      # e.g. metrics/theta/* of a 10-entry theta
            internal_publisher(publisher_node, Float64, f'metrics/theta/entry_{index}', EVENTS)
        assert _event_handlers(publisher_node) == before
        publisher_node.create_publisher(Float64, 'metrics/plain', EVENTS)    # rclpy's default: handlers
        assert _event_handlers(publisher_node) > before

        best_effort = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        internal_publisher(publisher_node, Float64, 'incompatible', best_effort)
        told = threading.Event()
        subscriber_node.create_subscription(
            Float64, 'incompatible', lambda message: None, EVENTS,     # reliable: incompatible
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=lambda event: told.set()))
        deadline = time.monotonic() + 20.0
        while not told.is_set() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        assert told.is_set(), 'the reliable subscriber was not told of the best-effort internal publisher'
    finally:
        for node in (subscriber_node, publisher_node):
            node.destroy_node()
        executor.shutdown()


class _Node:
    executor = None

    @staticmethod
    def get_name() -> str:
        return 'costs'


def _wait(future, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert future.done(), 'the computation did not finish'
    return future.result()


def test_background_work_runs_computations_in_order_on_one_thread_that_ends_when_idle():
    work = BackgroundWork(_Node())
    work.IDLE_S = 0.5
    threads, order = [], []

    def computation(index):
        def run():
            threads.append(threading.current_thread())
            order.append(index)
            if index == 2:
                raise ValueError('computation 2 failed')
            return index * 10
        return run
    futures = [work.start(computation(index)) for index in range(4)]
    assert _wait(futures[3]) == 30 and [_wait(f) for f in futures[:2]] == [0, 10]
    assert isinstance(futures[2].exception(), ValueError)
    assert order == [0, 1, 2, 3]
    assert len(set(threads)) == 1 and threads[0] is not threading.current_thread()
    first = threads[0]

    first.join(timeout=10.0)                       # idle for IDLE_S: it ends
    assert not first.is_alive() and work.thread is None
    assert _wait(work.start(computation(5))) == 50
    assert threads[-1] is not first                # a new worker for later work


def test_fast_evaluations_are_summed_up_once_per_period():
    lines = []

    class Logger:
        info = staticmethod(lines.append)
    quiet = QuietEvaluations(Logger(), period_s=0.3)
    for version in range(2, 6):
        quiet.add(version, 0.5)
    assert lines == []                             # within the period: nothing yet
    time.sleep(0.35)
    quiet.add(6, 0.75)
    assert len(lines) == 1 and '5 policies' in lines[0] and 'versions 2-6' in lines[0] and '0.75' in lines[0]
    quiet.add(7, 0.8)                              # a new period starts
    assert len(lines) == 1


def test_a_log_throttle_holds_lines_back_within_its_period_and_counts_them():
    from sim2real_bilevel.nodes.runtime import LogThrottle
    lines = []
    throttle = LogThrottle(0.3)
    assert throttle(lines.append, 'ignored joint_states: a')
    assert not throttle(lines.append, 'ignored joint_states: b') and not throttle(lines.append, 'ignored joint_states: c')
    assert lines == ['ignored joint_states: a']
    time.sleep(0.35)
    assert throttle(lines.append, 'ignored joint_states: d')
    assert lines[-1] == 'ignored joint_states: d (2 more like it since the last such line)'
    assert throttle.held_back == 0
