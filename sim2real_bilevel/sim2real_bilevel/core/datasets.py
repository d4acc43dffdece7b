"""Recorded real data as a fixed dataset: what the offline outer loop (``core/offline.py``) learns from.

A ``Dataset`` is a list of real ``Trajectories`` batches (rectangular: one horizon per batch) and
what is known about the policy that collected them (the *behaviour* policy):

- ``behaviour_known``: True when every batch's ``log_probs`` are the behaviour policy's
  log pi_b(a_t|s_t) (this package's run folders and bags, generated datasets); False for
  recordings of another controller (teleoperation, a PID loop), whose probabilities cannot be
  known -- their ``log_probs`` are NaN, and an estimator that needs them (importance weights)
  refuses with ``BehaviourUnknownError`` (``Dataset.require_behaviour_probabilities``).  The
  tabular and LQR offline estimators never need them: counts / LSTD-Q are valid for any
  behaviour, and the coverage report fits the behaviour from the actions themselves.

Where datasets come from:
- ``load_run_folder``: RUN_DIR/real/batch_NNNNNN.npz files (``solve --run-dir``, the
  outer_optimizer node, ``sim2real-bilevel dataset``), also below a ``solve`` run dir
  (RUN_DIR/<method>/seed<k>/real/);
- ``tools/recordings.py``: MCAP bags (this package's ``real_trajectories``, or any robot's
  ``joint_states`` + ``<controller>/commands``, cut into episodes by ``cut_episodes``);
- ``generate_dataset``: a generated or hand-written problem's real system sampled with a chosen
  behaviour policy (the nominal policy, or a noisier one).

``save_dataset`` writes a dataset in the run-folder layout, so every reader above reads it back.

Episodes that end before the task's horizon (``fit_to_horizon``, called by kinds whose estimators need
one horizon: robot, urdf): kept and padded when they end at a terminal state of the task (as the
bridge and the stand-in pad: ``problem.pad_episodes``), dropped with a warning when truncated; the
counts are in ``Dataset.padded`` / ``dropped`` and ``describe()``.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from . import checkpoint
from .problem import Trajectories, pad_episodes

DATASET_FILE = 'dataset.json'


class DatasetError(ValueError):
    """Recorded data that cannot be used: names the file, the field or topic, the value and what
    was expected."""


class BehaviourUnknownError(DatasetError):
    """An estimator needs the behaviour policy's probabilities, which the recording cannot give."""


@dataclass
class Dataset:
    """Real episodes collected by some behaviour policy, and where they came from."""
    batches: list[Trajectories]
    behaviour_known: bool = True
    """Whether ``log_probs`` hold the behaviour policy's log-probabilities (see the module docstring)."""
    sources: list[str] = field(default_factory=list)
    """The files or folders read, in order."""
    behaviour: str = ''
    """What collected the data, in words (e.g. 'nominal policy, temperature x2', 'recorded controller')."""
    notes: list[str] = field(default_factory=list)
    """What the readers did that a user should know (episodes dropped, how they were cut)."""
    origins: list[Optional[list['EpisodeOrigin']]] = field(default_factory=list)
    """Per batch, where each of its episodes came from (recordings cut into episodes), or None / absent
    (run folders, generated data: named by source, batch and episode number)."""
    padded: int = 0
    """Episodes that ended early at a terminal state of the task, padded to the horizon (``fit_to_horizon``)."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Episodes dropped, by reason (``fit_to_horizon``; none is dropped silently)."""

    @property
    def episodes(self) -> int:
        return int(sum(b.rewards.shape[0] for b in self.batches))

    @property
    def transitions(self) -> int:
        return int(sum(b.n_transitions for b in self.batches))

    def require_behaviour_probabilities(self, what: str) -> None:
        """Raise ``BehaviourUnknownError`` when ``what`` (an estimator) needs log pi_b and the
        recording cannot give it."""
        if not self.behaviour_known:
            raise BehaviourUnknownError(
                f'{what} needs the behaviour policy\'s action probabilities, and the data from '
                f'{", ".join(self.sources) or "the recording"} was collected by a controller whose probabilities '
                'cannot be known (recorded joint_states / commands); use an estimator that does not need them')

    def describe(self) -> str:
        known = 'known' if self.behaviour_known else 'unknown (recorded controller)'
        kept = f'{self.episodes} episodes ({self.padded} ended early at a terminal state, padded to the horizon)' \
            if self.padded else f'{self.episodes} episodes'
        dropped = ''
        if self.dropped:
            dropped = (f'; {sum(self.dropped.values())} dropped ('
                       + ', '.join(f'{count} {reason}' for reason, count in self.dropped.items()) + ')')
        return (f'{kept}, {self.transitions} transitions in {len(self.batches)} batch(es){dropped}; '
                f'behaviour {self.behaviour or "?"}, probabilities {known}')

    def with_batches(self, batches: list[Trajectories]) -> 'Dataset':
        """The same dataset (sources, behaviour, notes, counts) with its batches checked or converted
        one for one (a kind's ``prepare_dataset``)."""
        return replace(self, batches=batches)

    def origin(self, batch: int, episode: int) -> str:
        """Where episode ``episode`` of batch ``batch`` (0-based) came from, in words."""
        origins = self.origins[batch] if batch < len(self.origins) else None
        if origins is not None and origins[episode] is not None:
            return origins[episode].describe()
        return f'{", ".join(self.sources) or "dataset"} batch {batch + 1} episode {episode}'


def merge(datasets: Sequence[Dataset]) -> Dataset:
    """One dataset of several (behaviour known only where every part knows it)."""
    return Dataset(batches=[b for d in datasets for b in d.batches],
                   behaviour_known=all(d.behaviour_known for d in datasets),
                   sources=[s for d in datasets for s in d.sources],
                   behaviour='; '.join(dict.fromkeys(d.behaviour for d in datasets if d.behaviour)),
                   notes=[n for d in datasets for n in d.notes],
                   origins=[o for d in datasets for o in _origins(d)],
                   padded=sum(d.padded for d in datasets),
                   dropped=_add_counts(d.dropped for d in datasets))


def _origins(dataset: Dataset) -> list:
    """One entry per batch (None where unknown)."""
    return list(dataset.origins) + [None] * (len(dataset.batches) - len(dataset.origins))


def _add_counts(counts) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in counts:
        for reason, count in part.items():
            total[reason] = total.get(reason, 0) + count
    return total


# --- run folders -----------------------------------------------------------------------------------------------
def real_folders(path: Path) -> list[Path]:
    """The real/ folders holding batch files at or below ``path``: path/real, or
    path/<method>/seed<k>/real of a ``solve`` run dir (sorted)."""
    path = Path(path)
    if (path / checkpoint.REAL_DIR).is_dir():
        return [path / checkpoint.REAL_DIR]
    if path.name == checkpoint.REAL_DIR and path.is_dir():
        return [path]
    return sorted(p for p in path.glob(f'*/*/{checkpoint.REAL_DIR}') if p.is_dir())


def load_run_folder(path: str | Path) -> Dataset:
    """Every real batch of a run folder (``real_folders``), in batch-number order per folder.
    A corrupt batch file is an error (real data is never silently dropped)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f'{path}: no such file or folder (expected a run folder holding real/batch_*.npz, '
                           'or an MCAP bag folder)')
    folders = real_folders(path)
    batches, sources, behaviours, known = [], [], [], True
    for folder in folders:
        for file in sorted(folder.glob('batch_*.npz')):
            try:
                meta, arrays = checkpoint.read(file)
                batch = checkpoint.batch_from_arrays(meta['batch'], arrays)
            except (checkpoint.CheckpointError, KeyError, TypeError) as err:
                raise DatasetError(f'{file}: not a readable real batch ({err})') from None
            if batch.source != 'real':
                raise DatasetError(f'{file}: batch source {batch.source!r}, expected \'real\'')
            batches.append(batch)
            sources.append(str(file))
            behaviours.append(str(meta.get('behaviour', 'the run\'s policies')))
            known = known and bool(meta.get('behaviour_known', True))
    if not batches:
        raise DatasetError(f'{path}: no real/batch_*.npz files at {path}/real or {path}/<method>/seed<k>/real '
                           '(expected a run folder, a dataset written by `sim2real-bilevel dataset`, or a bag folder)')
    return Dataset(batches=batches, behaviour_known=known, sources=[str(path)],
                   behaviour='; '.join(dict.fromkeys(behaviours)),
                   notes=[f'{path}: {len(batches)} real batch file(s) from {len(folders)} real/ folder(s)'])


def save_dataset(dataset: Dataset, out: str | Path, policy_phi: Optional[np.ndarray] = None,
                 description: Optional[dict] = None) -> Path:
    """Write ``dataset`` as OUT/real/batch_NNNNNN.npz (the run-folder layout; ``policy_phi``: the
    behaviour policy's parameters when one policy collected it) and OUT/dataset.json (what it is).
    Refuses a folder that already holds batches (never overwrites recorded data)."""
    out = Path(out)
    if (out / checkpoint.REAL_DIR).is_dir() and any((out / checkpoint.REAL_DIR).glob('batch_*.npz')):
        raise DatasetError(f'{out}/{checkpoint.REAL_DIR}: already holds real batches; choose an empty --out folder')
    for index, batch in enumerate(dataset.batches, start=1):
        checkpoint.save_real_batch(out, index, batch, {'behaviour': dataset.behaviour,
                                                       'behaviour_known': dataset.behaviour_known}, policy_phi)
    document = {'behaviour': dataset.behaviour, 'behaviour_known': dataset.behaviour_known,
                'episodes': dataset.episodes, 'transitions': dataset.transitions, **(description or {})}
    checkpoint.atomic_write_bytes(out / DATASET_FILE, json.dumps(document, indent=1).encode())
    return out


# --- recordings: cutting streams into episodes -------------------------------------------------------------------
EPISODE_RULES = ('gap', 'reset', 'length')


@dataclass
class EpisodeRule:
    """How a continuous recording is cut into episodes.

    - 'gap' (default): a new episode starts where the time between two consecutive commands
      exceeds ``gap_s`` (None: 5 x the median command interval -- a robot paused for a reset);
    - 'reset': a new episode starts at every message of ``reset_topic`` (commands before the
      first one are dropped);
    - 'length': consecutive runs of ``length`` commands (a shorter tail is dropped).
    Episodes with fewer than ``min_steps`` commands are dropped (and counted in the notes)."""
    rule: str = 'gap'
    gap_s: Optional[float] = None
    reset_topic: Optional[str] = None
    length: Optional[int] = None
    min_steps: int = 2

    def validate(self) -> None:
        if self.rule not in EPISODE_RULES:
            raise DatasetError(f'episode rule {self.rule!r}: expected one of {list(EPISODE_RULES)}')
        if self.rule == 'reset' and not self.reset_topic:
            raise DatasetError("episode rule 'reset' needs a reset topic (--reset-topic NAME)")
        if self.rule == 'length' and (self.length is None or self.length < 1):
            raise DatasetError(f"episode rule 'length' needs a length >= 1 (--episode-length), got {self.length!r}")
        if self.gap_s is not None and not (self.gap_s > 0 and math.isfinite(self.gap_s)):
            raise DatasetError(f'episode gap {self.gap_s!r} s: expected a finite number > 0')
        if self.min_steps < 1:
            raise DatasetError(f'min_steps {self.min_steps!r}: expected an integer >= 1')


ENDS = {'rule': 'the cutting rule ended it',
        'recording': 'the recording stops mid-episode (the bag ends, or no joint state after its last command)'}


@dataclass(frozen=True)
class EpisodeOrigin:
    """Where a recorded episode came from: the recording, its index among the episodes cut from it
    (0-based, before any was dropped) and what ended it (``ENDS``: 'rule' or 'recording')."""
    source: str
    index: int
    end: str = 'rule'

    def describe(self) -> str:
        return f'{self.source} episode {self.index}'


@dataclass
class Streams:
    """What a recording holds, as time-ordered arrays (times in ns): joint states (positions and
    velocities in the order of the chosen joints), commands, and optionally rewards and resets."""
    state_times: np.ndarray
    states: np.ndarray          # (K, d)
    command_times: np.ndarray
    commands: np.ndarray        # (C, m)
    reward_times: Optional[np.ndarray] = None
    rewards: Optional[np.ndarray] = None
    reset_times: Optional[np.ndarray] = None


def episode_bounds(command_times: np.ndarray, rule: EpisodeRule,
                   reset_times: Optional[np.ndarray] = None) -> tuple[list[tuple[int, int]], str]:
    """[(first, end)) command index ranges of the episodes, and the rule in words."""
    count = len(command_times)
    if count == 0:
        return [], 'no commands'
    if rule.rule == 'length':
        n = count // rule.length
        return [(i * rule.length, (i + 1) * rule.length) for i in range(n)], \
            f'fixed length {rule.length} commands ({count - n * rule.length} trailing commands dropped)'
    if rule.rule == 'reset':
        resets = np.sort(np.asarray(reset_times if reset_times is not None else [], dtype=np.int64))
        if resets.size == 0:
            raise DatasetError(f'reset topic {rule.reset_topic}: no messages in the recording (expected one per '
                               'episode start)')
        episode_of = np.searchsorted(resets, command_times, side='right') - 1       # -1: before the first reset
        starts = [int(i) for i in np.flatnonzero(np.diff(episode_of, prepend=-2)) if episode_of[i] >= 0]
        bounds = [(s, e) for s, e in zip(starts, starts[1:] + [count])]
        return bounds, f'a new episode at each message of {rule.reset_topic}'
    intervals = np.diff(command_times)
    gap_ns = rule.gap_s * 1e9 if rule.gap_s is not None else (5.0 * float(np.median(intervals)) if intervals.size else 0)
    cuts = [0] + [int(i) + 1 for i in np.flatnonzero(intervals > gap_ns)] + [count]
    words = f'a new episode after a pause of more than {gap_ns / 1e9:.4g} s between commands'
    if rule.gap_s is None:
        words += ' (5 x the median command interval)'
    return list(zip(cuts[:-1], cuts[1:])), words


def cut_episodes(streams: Streams, rule: EpisodeRule, source: str = 'the recording') -> tuple[list[dict], list[str]]:
    """Episodes of a recording as dicts {'states' (T+1, d), 'actions' (T, m), 'rewards' (T,) or None,
    'origin' (``EpisodeOrigin``)}, and notes saying what was done.  An episode's end is 'recording'
    (truncated: nothing says it ended) when no joint state follows its last commands, or when it is
    the recording's last episode under the 'gap' or 'reset' rule; else 'rule'.

    Per command t of an episode: s_t is the last joint state at or before the command, a_t the
    command, s_{t+1} the last joint state before the next command (for the episode's last
    command: the last one within one median command interval after it -- the robot may report
    its reset before the next episode's first command), r_t the sum of the reward messages from
    command t up to that next command (or that interval's end).  Commands before the first
    joint state are dropped; an episode ends early at a step whose next state is no newer than
    its own (no joint state arrived after the command: its outcome is not recorded)."""
    rule.validate()
    notes = []
    order = np.argsort(streams.state_times, kind='stable')
    state_times, states = np.asarray(streams.state_times)[order], np.asarray(streams.states)[order]
    command_times, commands = np.asarray(streams.command_times), np.asarray(streams.commands)
    bounds, words = episode_bounds(command_times, rule, streams.reset_times)
    notes.append(f'{source}: episodes cut by {words}')
    episodes, short, unobserved = [], 0, 0
    for index, (first, end) in enumerate(bounds):
        times, actions = command_times[first:end], commands[first:end]
        before = np.searchsorted(state_times, times, side='right') - 1
        keep = before >= 0
        times, actions, before = times[keep], actions[keep], before[keep]
        end_time = command_times[end] if end < len(command_times) else np.iinfo(np.int64).max
        period = int(np.median(np.diff(times))) if len(times) > 1 else 0
        boundaries = np.append(times[1:], min(end_time, times[-1] + period + 1) if len(times) else end_time)
        after = np.searchsorted(state_times, boundaries, side='left') - 1
        observed = after > before
        steps = len(times) if observed.all() else int(np.argmin(observed))
        unobserved += len(times) - steps
        truncated = steps < len(times) or (index == len(bounds) - 1 and rule.rule != 'length')
        if steps < rule.min_steps:
            short += 1
            continue
        times, actions, before, boundaries = times[:steps], actions[:steps], before[:steps], boundaries[:steps]
        episode_states = np.concatenate([states[before], states[after[steps - 1]:after[steps - 1] + 1]], axis=0)
        rewards = None
        if streams.rewards is not None:
            reward_times = np.asarray(streams.reward_times)
            cells = np.searchsorted(times, reward_times, side='right') - 1
            inside = (cells >= 0) & (reward_times < boundaries[np.maximum(cells, 0)])
            rewards = np.bincount(cells[inside], weights=np.asarray(streams.rewards)[inside], minlength=steps)
        episodes.append({'states': episode_states, 'actions': actions, 'rewards': rewards,
                         'origin': EpisodeOrigin(source, index, 'recording' if truncated else 'rule')})
    if unobserved:
        notes.append(f'{source}: {unobserved} command(s) without a joint state after them dropped (episodes end there)')
    if short:
        notes.append(f'{source}: {short} episode(s) with fewer than {rule.min_steps} commands dropped')
    if not episodes:
        raise DatasetError(f'{source}: no episode of at least {rule.min_steps} commands (rule: {words}; '
                           f'{len(command_times)} commands, {len(state_times)} joint states)')
    return episodes, notes


def batches_from_episodes(episodes: list[dict]) -> tuple[list[Trajectories], list[list[EpisodeOrigin]]]:
    """Rectangular real batches of episodes of varying length: one batch per horizon, in order of
    first appearance; ``log_probs`` NaN (the recorded controller's probabilities are unknown); and
    each batch's episode origins (``Dataset.origins``).  Episodes shorter than the task's horizon
    are fitted to it by the problem (``fit_to_horizon``)."""
    by_length: dict[int, list[dict]] = {}
    for episode in episodes:
        by_length.setdefault(len(episode['actions']), []).append(episode)
    batches = []
    for horizon, group in by_length.items():
        rewards = np.stack([e['rewards'] if e['rewards'] is not None else np.full(horizon, np.nan) for e in group])
        batches.append(Trajectories(states=np.stack([e['states'] for e in group]),
                                    actions=np.stack([e['actions'] for e in group]),
                                    rewards=rewards, dones=np.zeros((len(group), horizon), dtype=bool),
                                    log_probs=np.full((len(group), horizon), np.nan), source='real'))
    return batches, [[e.get('origin') for e in group] for group in by_length.values()]


# --- episodes that end before the horizon ------------------------------------------------------------------------
def fit_to_horizon(dataset: Dataset, horizon: int,
                   termination_reason: Callable[[np.ndarray], Optional[str]]) -> Dataset:
    """The dataset with every episode shorter than ``horizon`` steps made a valid episode or dropped:

    - one whose states reach a terminal state of the task (``termination_reason``, the problem's: the
      first such state s_j, j >= 1) ended there: it is kept, cut at s_j (steps recorded after it --
      e.g. the bridge's zero command -- are not the policy's) and padded to ``horizon`` as the bridge
      and the stand-in pad (``pad_episodes``: s_j held, zero actions, zero rewards), ``dones`` at
      step j - 1;
    - one that ends at a state the task does not end was truncated (the recording stops
      mid-episode, or the cutting rule ended it early for a reason the task does not state).
      Truncation is not termination, and ``Trajectories`` cannot mark an episode as cut short
      without calling its last state terminal (``dones``), which estimators would read as "no
      reward after it": it is DROPPED, with a warning naming the file and episode.
    Episodes of ``horizon`` steps or more are kept as they are (the kind checks them).  Counts of
    padded and dropped episodes go into ``Dataset.padded`` / ``dropped`` and the notes."""
    batches, origins, notes = [], [], list(dataset.notes)
    padded, dropped = dataset.padded, dict(dataset.dropped)
    extra_steps = 0
    for number, batch in enumerate(dataset.batches):
        length = batch.actions.shape[1]
        origin = _origins(dataset)[number]
        if length >= horizon:
            batches.append(batch)
            origins.append(origin)
            continue
        keep, ends = [], []
        for i in range(batch.actions.shape[0]):
            where = dataset.origin(number, i)
            terminal = next((j for j in range(1, length + 1) if termination_reason(batch.states[i, j]) is not None),
                            None)
            if terminal is None:
                end = origin[i].end if origin is not None and origin[i] is not None else 'recording'
                reason = ('truncated (the recording stops mid-episode)' if end == 'recording'
                          else 'ended early by the cutting rule at a non-terminal state')
                message = (f'{where}: {length} of {horizon} steps, ending at a state the task\'s termination does not '
                           f'end: {reason}; dropped (truncation is not termination: a padded episode would mark its '
                           'last state terminal)')
                warnings.warn(message, stacklevel=2)
                notes.append(message)
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            keep.append(i)
            ends.append(terminal)
            extra_steps += length - terminal
        if not keep:
            continue
        states, actions = pad_episodes([batch.states[i, :j + 1] for i, j in zip(keep, ends)],
                                       [batch.actions[i, :j] for i, j in zip(keep, ends)], horizon,
                                       batch.states.shape[2:], batch.actions.shape[2:], where=dataset.origin(number, 0))
        rewards = np.zeros((len(keep), horizon))
        log_probs = np.zeros((len(keep), horizon))
        dones = np.zeros((len(keep), horizon), dtype=bool)
        for row, (i, j) in enumerate(zip(keep, ends)):
            rewards[row, :j], log_probs[row, :j], dones[row, j - 1] = batch.rewards[i, :j], batch.log_probs[i, :j], True
        batches.append(Trajectories(states=states, actions=actions, rewards=rewards, dones=dones, log_probs=log_probs,
                                    source=batch.source, policy_version=batch.policy_version))
        origins.append(None if origin is None else [origin[i] for i in keep])
        padded += len(keep)
    if padded > dataset.padded:
        notes.append(f'{padded - dataset.padded} episode(s) ended early at a terminal state of the task, padded to '
                     f'{horizon} steps (state held, zero action and reward, done at the end)'
                     + (f'; {extra_steps} step(s) recorded after their terminal state ignored' if extra_steps else ''))
    if not batches:
        raise DatasetError(f'{", ".join(dataset.sources) or "dataset"}: every episode was dropped '
                           f'({_add_counts([dropped])}): episodes shorter than the task\'s {horizon} steps must end at '
                           'a terminal state of the task (cut the recording into episodes of the horizon: '
                           f'`--episode-length {horizon}`)')
    return replace(dataset, batches=batches, notes=notes, origins=origins, padded=padded, dropped=dropped)
