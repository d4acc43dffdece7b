"""The real episodes (hidden model: bench reporting only) of mixed N = 10 seed 4's offline policies at iterations
0, 9 and 15 (records/N10_seed4.npz): sorted discounted returns, the worst starts, command rms, late |qd|.

    .venv/bin/python sim2real_bilevel/bench/results/mixed_pendulum/warning_rule/true_episodes.py
"""
import sys, json, numpy as np, torch
from pathlib import Path
from sim2real_bilevel.core.config import builtin_config
from sim2real_bilevel.core.problems import load_problem
torch.set_num_threads(1)
p = load_problem(builtin_config('pendulum'))
phis = np.load(Path(__file__).resolve().parent / 'records' / 'N10_seed4.npz')['phis']
seeds = p.evaluation_seed + np.arange(32)
d = p.gamma ** np.arange(p.horizon)
for it in (0, 9, 15):
    out = p.real_episodes(phis[it], seeds)
    states, actions, rewards = out[0], out[1], out[2]
    ret = rewards @ d
    print(it, 'returns sorted', np.sort(ret).round(1))
    print('  init states of 5 worst', states[np.argsort(ret)[:5], 0].round(2).tolist())
    print('  max |q| per worst', np.abs(states[np.argsort(ret)[:5], :, 0]).max(1).round(2), 'action rms', np.sqrt((actions**2).mean()).round(3), 'late |qd| mean', np.abs(states[:, 50:, 1]).mean().round(3))
