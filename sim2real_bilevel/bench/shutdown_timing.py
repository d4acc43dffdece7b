"""Shutdown on SIGINT and SIGTERM of every node in every lifecycle state (issue 13): the time
from the signal to the process's exit, its exit status, and whether a zero command went out.

Runs ``test/test_shutdown_nodes.py`` (real node processes on DDS: each plain node while it
spins -- the optimizer in its wait for the graph --, the hardware bridge unconfigured, inactive
and active; the test asserts the exit within 5 s, the status and, for the active bridge, that the
last command on ``<controller>/commands`` is zero) ``--repeat`` times and tabulates the
``[shutdown]`` lines it prints:

    python sim2real_bilevel/bench/shutdown_timing.py --repeat 5 --out sim2real_bilevel/bench/results/shutdown

Times are upper bounds on a loaded machine: they include the interpreter's and rclpy's teardown.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
TEST = PACKAGE_ROOT / 'test' / 'test_shutdown_nodes.py'
LINE = re.compile(r'\[shutdown\] (?P<node>\S+)\s+(?P<state>\S+)\s+(?P<signal>SIG\w+)\s+exit\s+(?P<status>-?\d+) after\s+'
                  r'(?P<seconds>[\d.]+) s\s+zero command: (?P<zero>.*)$')
STATES = {'unconfigured': 0, 'inactive': 1, 'active': 2, 'running': 3}


def parse(output: str) -> list[dict]:
    rows = []
    for line in output.splitlines():
        match = LINE.search(line)
        if match:
            row = match.groupdict()
            row['status'], row['seconds'] = int(row['status']), float(row['seconds'])
            row['zero'] = row['zero'].strip()
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    groups = defaultdict(list)
    for row in rows:
        groups[(row['node'], row['state'], row['signal'])].append(row)
    lines = ['| node | lifecycle state | signal | runs | time to exit median / max (s) | exit status | zero command |',
             '|---|---|---|---|---|---|---|']
    for (node, state, signum), group in sorted(groups.items(), key=lambda item: (
            item[0][0] != 'hardware_bridge', item[0][0], STATES.get(item[0][1], 9), item[0][2])):
        seconds = [r['seconds'] for r in group]
        statuses = sorted({r['status'] for r in group})
        zeros = sorted({r['zero'] for r in group})
        lines.append(f'| {node} | {state} | {signum} | {len(group)} | {np.median(seconds):.2f} / {max(seconds):.2f} | '
                     f'{", ".join(map(str, statuses))} | {"; ".join(zeros)} |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeat', type=int, default=3, help='runs of the whole test file')
    parser.add_argument('--out', type=Path, default=None, help='folder for table.md and runs.json')
    args = parser.parse_args(argv)
    environment = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    rows, failures = [], 0
    for repeat in range(args.repeat):
        process = subprocess.run([sys.executable, '-m', 'pytest', str(TEST), '-s', '-q', '-p', 'no:cacheprovider'],
                                 cwd=PACKAGE_ROOT.parent, env=environment, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        found = parse(process.stdout)
        for row in found:
            row['repeat'] = repeat
        rows += found
        failures += process.returncode != 0
        print(f'[bench] run {repeat + 1}/{args.repeat}: {len(found)} shutdowns measured, pytest exit '
              f'{process.returncode}', flush=True)
        if process.returncode != 0:
            print(process.stdout[-4000:], flush=True)
    text = table(rows)
    command = ' '.join(['python', 'sim2real_bilevel/bench/shutdown_timing.py', *(argv or sys.argv[1:])])
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / 'table.md').write_text(f'    {command}\n\n{text}\n')
        (args.out / 'runs.json').write_text(json.dumps({'command': command, 'failed_runs': failures, 'rows': rows},
                                                       indent=1))
        print(f'[bench] wrote {args.out / "table.md"} and {args.out / "runs.json"}')
    return 1 if failures or not rows else 0


if __name__ == '__main__':
    raise SystemExit(main())
