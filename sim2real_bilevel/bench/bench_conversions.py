"""Benchmark: filling and reading a 10k-double message field, side by side in one run.

Three ways a float64[] field of a ROS message can be filled or read:
  - ``conversions.vector_to_field`` (an ``array.array('d')`` built from the ndarray's memory),
    which every node uses;
  - assigning the ndarray itself (the generated setter then checks element by element);
  - ``conversions.vector_from_field`` (length-checked copy back into an ndarray).
Each is timed over repeated calls; the ratio column is against ``vector_to_field``.

    python sim2real_bilevel/bench/bench_conversions.py [--size 10000] [--repeats 200]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def per_call_us(call, repeats: int) -> float:
    """The best of three timings of ``repeats`` calls, per call (us): the least disturbed one."""
    best = np.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        best = min(best, (time.perf_counter() - start) / repeats * 1e6)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size', type=int, default=10_000)
    parser.add_argument('--repeats', type=int, default=200)
    args = parser.parse_args(argv)

    from sim2real_bilevel.nodes import conversions
    from sim2real_bilevel_interfaces.msg import TrajectoryBatch

    values = np.random.default_rng(0).normal(size=args.size)
    msg = TrajectoryBatch()

    def via_field():
        msg.rewards = conversions.vector_to_field(values)

    def via_ndarray():
        msg.rewards = values

    def read_back():
        conversions.vector_from_field(msg.rewards, 'rewards', args.size)

    rows = [('vector_to_field + assign', per_call_us(via_field, args.repeats)),
            ('assign the ndarray', per_call_us(via_ndarray, max(1, args.repeats // 20))),
            ('vector_from_field (checked copy)', per_call_us(read_back, args.repeats))]
    baseline = rows[0][1]
    print(f'{args.size} doubles, per call')
    print(f'{"way":34s} {"us":>10s} {"x vector_to_field":>18s}')
    for name, us in rows:
        print(f'{name:34s} {us:10.1f} {us / baseline:18.1f}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
