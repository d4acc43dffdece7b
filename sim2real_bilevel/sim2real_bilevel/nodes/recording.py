"""The optimizer's recording of its run to RUN_DIR/bag (MCAP, nodes/bag_recorder.py).

The recorder gets its own node and executor thread, so its subscriptions stay out of the wait
set the outer loop spins on between actions."""
from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Mapping

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor


def bag_folder(run_dir: Path) -> Path:
    """RUN_DIR/bag, or RUN_DIR/bag.resumed-N for the N-th resumed session of the run."""
    folder, resumed = run_dir / 'bag', 0
    while folder.exists() and any(folder.iterdir()):
        resumed += 1
        folder = run_dir / f'bag.resumed-{resumed}'
    return folder


class RunRecording:
    """Records ``topics`` ((name, type, QoS) triples) to ``folder`` from a node of its own,
    named ``name`` in ``namespace``, until ``stop``; those named in ``direct`` are written by
    this process (``PublicationLog``) rather than received."""

    def __init__(self, name: str, namespace: str, folder: Path, topics: list, direct=()):
        from .bag_recorder import BagRecorder
        # no global arguments: the command line's __node remap must not rename this node too
        self.node = rclpy.create_node(name, namespace=namespace, use_global_arguments=False,
                                      start_parameter_services=False)
        self.recorder = BagRecorder(self.node, folder, topics, direct)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.recording = True
        self.thread = threading.Thread(target=self._spin, daemon=True, name='recorder')
        self.thread.start()

    def _spin(self) -> None:
        try:
            while self.recording and self.executor.context.ok():
                self.executor.spin_once(timeout_sec=0.1)
        except ExternalShutdownException:      # SIGINT / SIGTERM: the context went down under us
            pass

    def stop(self, expected: Mapping[str, int] = {}, timeout_s: float = 5.0) -> dict:
        """Stop once the recorder holds at least ``expected[topic]`` messages of each recorded
        topic (what this process published: ``PublicationLog.counts``), or after ``timeout_s``;
        returns {topic: messages missing} for the topics that fell short."""
        def missing() -> dict:
            return {topic: count - self.recorder.count(topic) for topic, count in expected.items()
                    if self.recorder.records(topic) and self.recorder.count(topic) < count}
        deadline = time.monotonic() + timeout_s
        while missing() and time.monotonic() < deadline and self.executor.context.ok():
            time.sleep(0.02)
        short = missing()
        self.recording = False
        self.thread.join(timeout=5.0)
        self.recorder.close()
        self.executor.remove_node(self.node)
        self.node.destroy_node()
        return short


class PublicationLog:
    """Publishes and counts what this process published per topic, so that the recording can
    wait for exactly those messages before it closes the bag.

    A topic ``record_directly``'d goes into the bag by a direct write (no DDS hop to the
    recorder) and is published over DDS only while somebody subscribes to it (rqt_plot,
    ``ros2 topic echo``): the loop's own metrics cost nothing when nobody listens."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.direct: dict = {}             # fully qualified topic -> write(message)
        self.skipped = 0
        """Publishes left out: a directly recorded topic nobody subscribed to."""

    def record_directly(self, recording: 'RunRecording', topics) -> None:
        """Write ``topics`` (fully qualified names) into ``recording``'s bag from now on."""
        for topic in topics:
            self.direct[topic] = lambda message, topic=topic: recording.recorder.write(topic, message)

    def stop_recording_directly(self) -> None:
        self.direct = {}

    def publish(self, publisher, message) -> None:
        write = self.direct.get(publisher.topic_name)
        if write is None:
            publisher.publish(message)
            self.counts[publisher.topic_name] += 1
            return
        write(message)
        if publisher.get_subscription_count() > 0:
            publisher.publish(message)
        else:
            self.skipped += 1
