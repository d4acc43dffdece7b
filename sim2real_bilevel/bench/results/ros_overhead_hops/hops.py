"""Split the optimizer's run_episode_batch calls into their hops (bench/results/ros_overhead_hops).

Reads service_calls.txt (per call: perf_counter at the send, at the answer, spins in between) and
bridge_callbacks.txt (per call: perf_counter at the bridge callback's start and end), written by a
run with trace.patch applied; perf_counter is CLOCK_MONOTONIC, one clock for both processes."""
import sys
from pathlib import Path

import numpy as np

here = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
calls = np.loadtxt(here / 'service_calls.txt', usecols=(0, 1, 2))
bridge = np.loadtxt(here / 'bridge_callbacks.txt')
n = min(len(calls), len(bridge))
calls, bridge = calls[-n:], bridge[-n:]
parts = {
    'send -> bridge callback starts': bridge[:, 0] - calls[:, 0],
    'bridge callback': bridge[:, 1] - bridge[:, 0],
    'bridge callback ends -> answer in': calls[:, 1] - bridge[:, 1],
    'whole call': calls[:, 1] - calls[:, 0],
}
print(f'{n} calls; ms: p50, mean, p90')
for name, seconds in parts.items():
    ms = 1e3 * seconds
    print(f'{name:36s} {np.median(ms):6.2f} {ms.mean():6.2f} {np.percentile(ms, 90):6.2f}')
print(f'{"executor spins while waiting":36s} {np.median(calls[:, 2]):6.2f} {calls[:, 2].mean():6.2f} '
      f'{np.percentile(calls[:, 2], 90):6.2f}')
