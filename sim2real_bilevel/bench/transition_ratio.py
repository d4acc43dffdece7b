"""Issue 11 item 6: real transitions to 0.95, one method against others, from suite job records.

Two ratios, so a reader sees both:
- medians: the median of METHOD's transitions-to-0.95 (over its runs that reached 0.95) over the
  median of each other method's (the best black-box method is the one with the smallest median);
- paired: per problem, METHOD's transitions-to-0.95 (median over its run seeds that reached it) over
  the other method's, on the problems both reached; the median of those ratios.

    python sim2real_bilevel/bench/transition_ratio.py --method bilevel --against cmaes,spsa \\
        OUT_A/jobs.jsonl OUT_B/jobs.jsonl [--problems 50]
Files may be gzipped; a job key seen twice keeps its last record.
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
from collections import defaultdict


def read_jobs(paths: list[str]) -> dict:
    jobs = {}
    for path in paths:
        opener = gzip.open if path.endswith('.gz') else open
        with opener(path, 'rt') as handle:
            for number, line in enumerate(handle, 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise SystemExit(f'{path}:{number}: not a JSON line ({err})')
                if record.get('type') == 'job':
                    jobs[record['key']] = record
    return jobs


def per_problem(jobs: dict, method: str, problems: int) -> dict:
    """problem seed -> median transitions to 0.95 over the run seeds that reached it."""
    reached = defaultdict(list)
    for record in jobs.values():
        if record['method'] == method and record['problem_seed'] < problems and record['status'] == 'ok' \
                and record.get('transitions_to_target') is not None:
            reached[record['problem_seed']].append(record['transitions_to_target'])
    return {seed: statistics.median(values) for seed, values in reached.items()}


def all_reached(jobs: dict, method: str, problems: int) -> list:
    return [r['transitions_to_target'] for r in jobs.values() if r['method'] == method and r['status'] == 'ok'
            and r['problem_seed'] < problems and r.get('transitions_to_target') is not None]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('files', nargs='+', help='suite jobs.jsonl files (.gz allowed)')
    parser.add_argument('--method', default='bilevel')
    parser.add_argument('--against', default='cmaes,spsa', help='comma list (default cmaes,spsa)')
    parser.add_argument('--problems', type=int, default=50, help='problem seeds 0..N-1 (default 50)')
    args = parser.parse_args(argv)
    jobs = read_jobs(args.files)
    mine = all_reached(jobs, args.method, args.problems)
    if not mine:
        raise SystemExit(f'no run of {args.method!r} reached 0.95 in {args.files}')
    own = statistics.median(mine)
    print(f'{args.method}: {len(mine)} runs reached 0.95, median {own:g} real transitions')
    mine_per = per_problem(jobs, args.method, args.problems)
    for other in args.against.split(','):
        theirs = all_reached(jobs, other, args.problems)
        if not theirs:
            print(f'{other}: no run reached 0.95')
            continue
        their_per = per_problem(jobs, other, args.problems)
        both = sorted(set(mine_per) & set(their_per))
        paired = [mine_per[p] / their_per[p] for p in both]
        paired_text = (f'paired median {statistics.median(paired):.3f} over {len(both)} problems both reached '
                       f'(range {min(paired):.3f}-{max(paired):.3f})' if paired else 'no problem both reached')
        print(f'{other}: {len(theirs)} runs reached 0.95, median {statistics.median(theirs):g}; '
              f'ratio of medians {own / statistics.median(theirs):.3f}; {paired_text}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
