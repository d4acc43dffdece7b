"""Cost of the bridge's per-command check of who publishes on the command topic (issue 13):
the full ROS-graph query (``runtime.command_publishers``) against the kept names re-read only
when the publisher count changes (``runtime.PublisherNames``, what the bridge and the emulator
call per command), in one process, best of ``--repeat`` rounds of ``--calls`` calls each:

    python sim2real_bilevel/bench/commander_check.py

Runs on a ROS domain of its own (soak.claim_domain_id); timings are upper bounds on a loaded machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PACKAGE_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import claim_domain_id  # noqa: E402


def best_per_call(function, calls: int, repeat: int) -> float:
    rounds = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(calls):
            function()
        rounds.append((time.perf_counter() - started) / calls)
    return min(rounds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--calls', type=int, default=2000)
    parser.add_argument('--repeat', type=int, default=5)
    args = parser.parse_args(argv)
    domain, lock = claim_domain_id()
    os.environ['ROS_DOMAIN_ID'] = str(domain)
    import rclpy
    from std_msgs.msg import Float64MultiArray
    from sim2real_bilevel.nodes.runtime import ROBOT_STREAM, PublisherNames, command_publishers
    rclpy.init()
    node = rclpy.create_node('hardware_bridge')
    try:
        publisher = node.create_publisher(Float64MultiArray, 'forward_command_controller/commands', ROBOT_STREAM)
        topic = publisher.topic_name
        deadline = time.monotonic() + 10.0
        while command_publishers(node, topic) != ['/hardware_bridge'] and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        kept = PublisherNames(node, topic)
        full = best_per_call(lambda: command_publishers(node, topic), args.calls, args.repeat)
        cached = best_per_call(kept, args.calls, args.repeat)
        count = best_per_call(lambda: node.count_publishers(topic), args.calls, args.repeat)
        print(f'full graph query {full * 1e6:.1f} us/call, kept names (count + names) {cached * 1e6:.1f} us/call '
              f'({full / cached:.1f}x less), the count alone {count * 1e6:.1f} us/call; names {kept()}, '
              f'{kept.reads} full read(s) in {args.calls * args.repeat + 1} calls')
    finally:
        node.destroy_node()
        rclpy.shutdown()
        lock.close()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
