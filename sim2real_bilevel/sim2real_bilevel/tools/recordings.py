"""Real data from recordings, for ``solve --real-data PATH [PATH ...]`` (``core/datasets.py``).

A PATH is one of
- a run folder (or a dataset folder): its real/batch_NNNNNN.npz files, exact as the run stored
  them (``core.datasets.load_run_folder``; a run folder's bag/ is then not read again);
- an MCAP rosbag2 folder (metadata.yaml + .mcap files) of this package: its ``real_trajectories``
  messages (the outer_optimizer's record of every real batch, with the policy's log-probabilities);
- any MCAP rosbag2 folder of a robot, holding ``joint_states`` (sensor_msgs/JointState) and
  ``<controller>/commands`` (std_msgs/Float64MultiArray), optionally ``reward``
  (std_msgs/Float64) and a reset topic: cut into episodes by ``EpisodeRule`` (time gaps, a reset
  topic or a fixed length; see ``core.datasets.cut_episodes`` for how steps are paired).  The
  controller that drove the robot is unknown, so the dataset is marked ``behaviour_known=False``
  and estimators that need the behaviour's probabilities refuse it.

Messages are decoded by the mcap / mcap-ros2-support readers with the schemas stored in the
files (``tools/bag_reader.py``); times are the bag's log (receive) times, one clock for every topic.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import yaml

from ..core.datasets import (Dataset, DatasetError, EpisodeRule, Streams, batches_from_episodes, cut_episodes,
                             load_run_folder, merge, real_folders)
from .bag_reader import read_bag

TRAJECTORY_TYPE = 'sim2real_bilevel_interfaces/msg/TrajectoryBatch'
JOINT_STATE_TYPE = 'sensor_msgs/msg/JointState'


@dataclass
class RecordingOptions:
    """How a robot's bag is read (``solve --real-data`` options)."""
    joint_states_topic: str = '/joint_states'
    commands_topic: Optional[str] = None
    """None: the bag's one topic named '.../commands'."""
    reward_topic: Optional[str] = '/reward'
    """Read when the bag has it (a tabular problem needs it; LQR computes its cost)."""
    joints: Optional[Sequence[str]] = None
    """Joint names in state order, mapped by name (None: every joint of the first message, in its order)."""
    velocities: bool = False
    """States are [positions, velocities] instead of positions."""
    rule: EpisodeRule = field(default_factory=EpisodeRule)


def load_real_data(paths: Sequence[str | Path], options: Optional[RecordingOptions] = None) -> Dataset:
    """One dataset of every PATH (module docstring), in the order given."""
    if not paths:
        raise DatasetError('--real-data: no path given')
    return merge([load_path(Path(p), options or RecordingOptions()) for p in paths])


def load_path(path: Path, options: RecordingOptions) -> Dataset:
    if not path.exists():
        raise DatasetError(f'{path}: no such file or folder (expected a run folder, a dataset folder or an MCAP bag '
                           'folder)')
    if real_folders(path):
        return load_run_folder(path)
    if (path / 'metadata.yaml').is_file():
        topics = bag_topics(path)
        trajectories = [name for name, kind in topics.items() if kind == TRAJECTORY_TYPE]
        if trajectories:
            return load_trajectory_bag(path, trajectories)
        return load_robot_bag(path, topics, options)
    raise DatasetError(f'{path}: neither a run folder (real/batch_*.npz) nor a bag folder (metadata.yaml)')


def bag_topics(folder: Path) -> dict[str, str]:
    """{topic: message type} of a rosbag2 folder, from its metadata.yaml."""
    try:
        information = yaml.safe_load((folder / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
        return {entry['topic_metadata']['name']: entry['topic_metadata']['type']
                for entry in information['topics_with_message_count']}
    except (KeyError, TypeError, yaml.YAMLError) as err:
        raise DatasetError(f'{folder}/metadata.yaml: not a rosbag2 metadata file ({type(err).__name__}: {err})') from None


def load_trajectory_bag(folder: Path, topics: list[str]) -> Dataset:
    """This package's bag: every real batch published on ``real_trajectories``."""
    from ..nodes.conversions import MessageValidationError, trajectories_from_msg
    batches = []
    for topic, _, message in read_bag(folder, topics):
        try:
            batch = trajectories_from_msg(message)
        except MessageValidationError as err:
            raise DatasetError(f'{folder}: {topic}: {err}') from None
        if batch.source == 'real':
            batches.append(batch)
    if not batches:
        raise DatasetError(f'{folder}: no real batch on {topics}')
    return Dataset(batches=batches, behaviour_known=True, sources=[str(folder)], behaviour='the run\'s policies',
                   notes=[f'{folder}: {len(batches)} real batch(es) from {", ".join(topics)}'])


def _resolve(name: Optional[str], topics: dict[str, str]) -> Optional[str]:
    """The bag's spelling of topic ``name`` (with or without the leading slash), or None."""
    if name is None:
        return None
    for candidate in (name, '/' + name.lstrip('/')):
        if candidate in topics:
            return candidate
    return None


def load_robot_bag(folder: Path, topics: dict[str, str], options: RecordingOptions) -> Dataset:
    """A robot's bag of joint_states and commands, cut into episodes (module docstring)."""
    listing = ', '.join(f'{name} ({kind})' for name, kind in sorted(topics.items())) or 'none'
    joint_topic = _resolve(options.joint_states_topic, topics)
    if joint_topic is None:
        raise DatasetError(f'{folder}: no topic {options.joint_states_topic!r} (sensor_msgs/JointState) in the bag; '
                           f'its topics: {listing}')
    if options.commands_topic is not None:
        command_topic = _resolve(options.commands_topic, topics)
        if command_topic is None:
            raise DatasetError(f'{folder}: no topic {options.commands_topic!r} in the bag; its topics: {listing}')
    else:
        found = [name for name in topics if name.endswith('/commands')]
        if len(found) != 1:
            raise DatasetError(f'{folder}: {"no" if not found else len(found)} topic(s) named <controller>/commands '
                               f'({found or "none"}); name one with --commands-topic; the bag\'s topics: {listing}')
        command_topic = found[0]
    reward_topic = _resolve(options.reward_topic, topics)
    reset_topic = None
    if options.rule.rule == 'reset':
        reset_topic = _resolve(options.rule.reset_topic, topics)
        if reset_topic is None:
            raise DatasetError(f'{folder}: no reset topic {options.rule.reset_topic!r} in the bag; its topics: {listing}')

    joints = list(options.joints) if options.joints else None
    state_times, states, command_times, commands, reward_times, rewards, reset_times = [], [], [], [], [], [], []
    wanted = [t for t in (joint_topic, command_topic, reward_topic, reset_topic) if t]
    for topic, time_ns, message in read_bag(folder, wanted):
        if topic == joint_topic:
            names = list(message.name)
            if joints is None:
                joints = names
            missing = [j for j in joints if j not in names]
            if missing:
                raise DatasetError(f'{folder}: {joint_topic} at {time_ns} ns has no joint {missing[0]!r} '
                                   f'(its joints: {names}; expected {joints})')
            index = [names.index(j) for j in joints]
            row = [float(message.position[i]) for i in index]
            if options.velocities:
                if len(message.velocity) != len(names):
                    raise DatasetError(f'{folder}: {joint_topic} at {time_ns} ns has {len(message.velocity)} velocities '
                                       f'for {len(names)} joints (--velocities needs one per joint)')
                row += [float(message.velocity[i]) for i in index]
            state_times.append(time_ns)
            states.append(row)
        elif topic == command_topic:
            command_times.append(time_ns)
            commands.append([float(v) for v in message.data])
        elif topic == reward_topic:
            reward_times.append(time_ns)
            rewards.append(float(message.data))
        else:
            reset_times.append(time_ns)
    if not states:
        raise DatasetError(f'{folder}: no message on {joint_topic}')
    if not commands:
        raise DatasetError(f'{folder}: no message on {command_topic}')
    widths = {len(c) for c in commands}
    if len(widths) != 1:
        raise DatasetError(f'{folder}: {command_topic} messages of different lengths {sorted(widths)}')
    streams = Streams(state_times=np.array(state_times, dtype=np.int64), states=np.array(states),
                      command_times=np.array(command_times, dtype=np.int64), commands=np.array(commands),
                      reward_times=np.array(reward_times, dtype=np.int64) if reward_topic else None,
                      rewards=np.array(rewards) if reward_topic else None,
                      reset_times=np.array(reset_times, dtype=np.int64) if reset_topic else None)
    episodes, notes = cut_episodes(streams, options.rule, source=str(folder))
    notes.append(f'{folder}: states = {"positions and velocities" if options.velocities else "positions"} of '
                 f'{joints} from {joint_topic}; actions from {command_topic}; rewards '
                 f'{"from " + reward_topic if reward_topic else "not recorded"}')
    batches, origins = batches_from_episodes(episodes)
    return Dataset(batches=batches, behaviour_known=False, sources=[str(folder)],
                   behaviour=f'recorded controller on {command_topic}', notes=notes, origins=origins)
