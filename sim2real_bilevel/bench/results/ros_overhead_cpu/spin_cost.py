"""One spin of the learning container's executor (simulator, inner trainer, sensitivity and
outer optimizer of discrete_3s2a on one SingleThreadedExecutor, no peers): a guard condition
triggered before each spin_once, so the wait returns at once; median of 2 000 spins.

    .venv/bin/python sim2real_bilevel/bench/results/ros_overhead_cpu/spin_cost.py          # as shipped
    .venv/bin/python sim2real_bilevel/bench/results/ros_overhead_cpu/spin_cost.py default  # rclpy's default
        QoS event handlers on the learning side's publishers (runtime.internal_publisher as plain create_publisher)

Each in a fresh interpreter (ROS_DOMAIN_ID 77 unless set)."""
import importlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault('ROS_DOMAIN_ID', '77')
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402

from sim2real_bilevel.nodes import runtime  # noqa: E402
from sim2real_bilevel.nodes.container import MEMBERS  # noqa: E402

variant = sys.argv[1] if len(sys.argv) > 1 else 'shipped'
if variant == 'default':
    runtime.internal_publisher = lambda node, message_type, topic, qos: node.create_publisher(message_type, topic, qos)
names = ['differentiable_simulator', 'inner_trainer', 'sensitivity', 'outer_optimizer']
params = Path(__file__).resolve().parents[3] / 'config' / 'discrete_3s2a_params.yaml'
run_dir = tempfile.mkdtemp(prefix='spin-cost-')
rclpy.init(args=['spin_cost', *names, '--ros-args', '--params-file', str(params), '-p', 'problem:=discrete_3s2a',
                 '-p', f'run_dir:={run_dir}', '-p', 'record_bag:=false'])
nodes = [getattr(importlib.import_module(f'sim2real_bilevel.nodes.{name}'), MEMBERS[name])() for name in names]
executor = SingleThreadedExecutor()
for node in nodes:
    executor.add_node(node)
guard = nodes[-1].create_guard_condition(lambda: None)
times = []
for index in range(2050):
    guard.trigger()
    started = time.perf_counter()
    executor.spin_once(timeout_sec=0.1)
    if index >= 50:
        times.append(time.perf_counter() - started)
from rclpy.event_handler import EventHandler  # noqa: E402
handlers = sum(isinstance(w, EventHandler) for node in nodes for w in node.waitables)
print(f'{variant:8s} event-handler waitables {handlers:3d}   one spin: median {1e3 * statistics.median(times):.3f} ms, '
      f'p90 {1e3 * sorted(times)[int(0.9 * len(times))]:.3f} ms')
for node in nodes:
    node.destroy_node()
rclpy.try_shutdown()
