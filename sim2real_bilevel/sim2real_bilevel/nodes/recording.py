"""The optimizer's recording of its run to RUN_DIR/bag (MCAP, nodes/bag_recorder.py).

The recorder gets its own node and executor thread, so its subscriptions stay out of the wait
set the outer loop spins on between actions."""
from __future__ import annotations

import threading
import time
from pathlib import Path

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
    named ``name`` in ``namespace``, until ``stop``."""

    def __init__(self, name: str, namespace: str, folder: Path, topics: list):
        from .bag_recorder import BagRecorder
        # no global arguments: the command line's __node remap must not rename this node too
        self.node = rclpy.create_node(name, namespace=namespace, use_global_arguments=False,
                                      start_parameter_services=False)
        self.recorder = BagRecorder(self.node, folder, topics)
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

    def stop(self) -> None:
        drain_until = time.monotonic() + 0.5        # let the recorder take the last messages
        while time.monotonic() < drain_until and self.executor.context.ok():
            time.sleep(0.05)
        self.recording = False
        self.thread.join(timeout=5.0)
        self.recorder.close()
        self.executor.remove_node(self.node)
        self.node.destroy_node()
