"""Per-iteration table of a suite run: median (minimum) normalised real return over the problems after 5, 10, 20, 50
outer iterations, and the problems where the first two methods end > 0.02 apart.  Usage: table.py JOBS.jsonl[.gz] M1,M2[,M3...]"""
import json, sys, numpy as np
from collections import defaultdict
import gzip
opener = gzip.open if sys.argv[1].endswith(".gz") else open
jobs = [json.loads(l) for l in opener(sys.argv[1], "rt") if '"job"' in l]
methods=sys.argv[2].split(',')
cur=defaultdict(dict)
for j in jobs:
    if j['status']=='ok': cur[(j['kind'],j['problem_seed'])][j['method']]=j
print('| kind | method | 5 | 10 | 20 | 50 | reached 0.95 |')
print('|---|---|---|---|---|---|---|')
for kind in ('tabular','lqr'):
    for m in methods:
        row=[]
        for it in (5,10,20,50):
            vals=np.array([d[m]['curve'][min(it,len(d[m]['curve'])-1)] for (k,p),d in cur.items() if k==kind and m in d])
            row.append(f'{np.median(vals):.3f} ({vals.min():.3f})')
        n=sum(1 for (k,p),d in cur.items() if k==kind and m in d and d[m]['iterations_to_target'] is not None)
        print(f'| {kind} | {m} | '+' | '.join(row)+f' | {n} / {sum(1 for (k,p) in cur if k==kind)} |')
print()
for (k,p),d in sorted(cur.items()):
    a,b=d[methods[0]]['final'],d[methods[1]]['final']
    if abs(a-b)>0.02: print(f'- {k} {p}: {methods[0]} {a:.3f}, {methods[1]} {b:.3f}, ' + ', '.join(f'{m} {d[m]["final"]:.3f}' for m in methods[2:] if m in d))
