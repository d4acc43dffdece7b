"""Do real transitions say the commands act a control period late?  Sysid's fit with the commands
as sent against its fit with each command shifted one step later (the first step under a zero
command), on the same real episodes: mean log-likelihood per transition of each fit and the paired
t statistic of the difference, and the package's own ``actuation_delay_evidence`` on the same episodes.
Usage: delay_check.py TASK POLICY [seeds=0,1,2] [episodes=10]; POLICY: an .npy policy, a gap run's
policies.npz (its nominal_seed0), or ``nominal`` (a cold solve at the nominal theta, as the loop's first
policy)"""
import dataclasses, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.core.problem import alive_mask
from sim2real_bilevel.core.problems.robot.simulator import DTYPE

task, policy = sys.argv[1], sys.argv[2]
options = dict(a.split('=', 1) for a in sys.argv[3:])
seeds = [int(s) for s in options.get('seeds', '0,1,2').split(',')]
episodes = int(options.get('episodes', 10))
problem = load_problem(task)
theta0 = problem.theta0()
if policy == 'nominal':
    phi = problem.inner_solve(theta0, None).phi
else:
    phi = np.load(policy) if policy.endswith('.npy') else np.load(policy)['nominal_seed0']
delay = getattr(problem, '_real_parameters', None)
print(f'{task}: robot delay {getattr(delay, "actuation_delay_steps", "?")} step(s), family delays commands: '
      f'{problem.models_actuation_delay()}', flush=True)


def log_likelihoods(batch, theta):
    """Log-likelihood (episodes, T) of the batch's transitions at theta, 0 after each episode's end."""
    n = problem.model.state_dim
    states = torch.as_tensor(batch.states[:, :-1].reshape(-1, n), dtype=DTYPE)
    following = torch.as_tensor(batch.states[:, 1:].reshape(-1, n), dtype=DTYPE)
    actions = torch.as_tensor(batch.actions.reshape(-1, problem.model.action_dim), dtype=DTYPE)
    theta_phys = problem.model.split(problem.full_theta(torch.as_tensor(theta, dtype=DTYPE)))[0]
    with torch.no_grad():
        values = problem.model.log_prob(following, states, actions, theta_phys).numpy().reshape(batch.dones.shape)
    return np.where(alive_mask(batch.dones), values, 0.0)


for seed in seeds:
    batch = problem.sample_real(phi, episodes, np.random.default_rng(seed))
    shifted = dataclasses.replace(batch, actions=np.concatenate([np.zeros_like(batch.actions[:, :1]),
                                                                  batch.actions[:, :-1]], axis=1))
    t0 = time.perf_counter()
    fits = {name: problem.system_identification([b], theta0) for name, b in (('as sent', batch), ('one step later', shifted))}
    seconds = time.perf_counter() - t0
    ll = {name: log_likelihoods(b, fits[name]) for name, b in (('as sent', batch), ('one step later', shifted))}
    alive = alive_mask(batch.dones)
    difference = (ll['one step later'] - ll['as sent'])[alive]
    t = difference.mean() / (difference.std(ddof=1) / np.sqrt(difference.size))
    per_episode = (ll['one step later'] - ll['as sent']).sum(1) / alive.sum(1)
    t_episodes = per_episode.mean() / (per_episode.std(ddof=1) / np.sqrt(per_episode.size))
    print(f'{task} seed {seed}: log-likelihood per transition as sent {ll["as sent"][alive].mean():.3f}, one step '
          f'later {ll["one step later"][alive].mean():.3f}; difference {difference.mean():+.3f} (paired t {t:+.1f} over '
          f'{difference.size} transitions, {t_episodes:+.1f} over {per_episode.size} episodes: '
          f'{int((per_episode > 0).sum())} favour one step later); two fits {seconds:.1f} s', flush=True)
    evidence = problem.actuation_delay_evidence([batch], theta0)
    print(f'  actuation_delay_evidence: significant {evidence.significant}; '
          f'{evidence.describe(problem.control_period)}', flush=True)
