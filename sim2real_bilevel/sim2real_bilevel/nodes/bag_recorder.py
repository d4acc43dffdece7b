"""Record topics to an MCAP rosbag2 folder (``metadata.yaml`` + ``<name>_0.mcap``).

The messages are never deserialised: rclpy ``raw=True`` subscriptions hand over the CDR
bytes, which go into the MCAP file unchanged, with the ``ros2msg`` schema text that
``ros2 bag``, Foxglove and ``mcap_ros2`` decode them with.  The folder follows rosbag2's
layout (metadata version 9, storage ``mcap``), so ``ros2 bag info RUN_DIR/bag`` reads it.
"""
from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Optional

import yaml

PRIMITIVE_TYPES = {
    'bool', 'byte', 'char', 'float32', 'float64', 'int8', 'uint8', 'int16', 'uint16', 'int32',
    'uint32', 'int64', 'uint64', 'string', 'wstring',
}
SEPARATOR = '=' * 80
RMW_DURATION_INFINITE = {'sec': 9223372036, 'nsec': 854775807}


# --- message definitions -----------------------------------------------------------------------------
def type_name(message_class) -> str:
    """'std_msgs/msg/Float64' for ``std_msgs.msg.Float64``."""
    package, kind = message_class.__module__.split('.')[:2]
    return f'{package}/{kind}/{message_class.__name__}'


def share_directories() -> list[Path]:
    """Install prefixes' share/ folders: the ament prefixes, then this interpreter's."""
    import os
    prefixes = [p for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    prefixes.append(sys.prefix)
    return [Path(p) / 'share' for p in dict.fromkeys(prefixes)]


def find_definition(full_type: str) -> str:
    """The text of ``pkg/msg/Type.msg`` from the first share/ that has it."""
    package, kind, name = full_type.split('/')
    for share in share_directories():
        candidate = share / package / kind / f'{name}.msg'
        if candidate.is_file():
            return candidate.read_text()
    raise FileNotFoundError(f'no definition of {full_type}: looked for {package}/{kind}/{name}.msg '
                            f'under {[str(s) for s in share_directories()]}')


def _field_types(definition: str, package: str) -> list[str]:
    """The non-primitive field types of a .msg text, as 'pkg/msg/Type'."""
    found = []
    for line in definition.splitlines():
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 2 or '=' in parts[1]:    # constants: "int32 FOO=1"
            continue
        base = re.sub(r'\[.*\]$', '', parts[0])
        base = re.sub(r'<=\d+$', '', base)       # bounded strings
        if base in PRIMITIVE_TYPES:
            continue
        if base == 'Header':                      # ROS 1 shorthand still accepted by the parsers
            base = 'std_msgs/Header'
        pieces = base.split('/')
        if len(pieces) == 1:
            found.append(f'{package}/msg/{pieces[0]}')
        elif len(pieces) == 2:
            found.append(f'{pieces[0]}/msg/{pieces[1]}')
        else:
            found.append(base)
    return found


def full_definition(full_type: str) -> str:
    """The concatenated definition (root, then every nested type once) used by rosbag2's
    MCAP storage and by Foxglove: sections separated by '=' * 80 and 'MSG: pkg/Type'."""
    root = find_definition(full_type)
    sections, seen = [root.rstrip('\n')], {full_type}
    pending = _field_types(root, full_type.split('/')[0])
    while pending:
        nested = pending.pop(0)
        if nested in seen:
            continue
        seen.add(nested)
        text = find_definition(nested)
        package, _, name = nested.split('/')
        sections.append(f'{SEPARATOR}\nMSG: {package}/{name}\n{text.rstrip(chr(10))}')
        pending.extend(_field_types(text, package))
    return '\n'.join(sections) + '\n'


def qos_yaml(qos) -> list[dict]:
    """One offered QoS profile in rosbag2's version-9 form."""
    def duration(value):
        nanoseconds = value.nanoseconds
        if nanoseconds == 0 or nanoseconds >= 2 ** 63 - 1:
            return dict(RMW_DURATION_INFINITE) if nanoseconds else {'sec': 0, 'nsec': 0}
        return {'sec': nanoseconds // 10 ** 9, 'nsec': nanoseconds % 10 ** 9}
    return [{
        'history': qos.history.name.lower(),
        'depth': int(qos.depth),
        'reliability': qos.reliability.name.lower(),
        'durability': qos.durability.name.lower(),
        'deadline': duration(qos.deadline),
        'lifespan': duration(qos.lifespan),
        'liveliness': qos.liveliness.name.lower(),
        'liveliness_lease_duration': duration(qos.liveliness_lease_duration),
        'avoid_ros_namespace_conventions': bool(qos.avoid_ros_namespace_conventions),
    }]


# --- the recorder ---------------------------------------------------------------------------------------
class BagRecorder:
    """Subscribes (raw) to ``topics`` on ``node`` and writes what arrives to ``folder``.

    ``topics``: (topic name as given to create_subscription, message class, QoS profile).
    Names are resolved against the node's namespace for the bag.  Call ``close()`` at the
    end: it finishes the MCAP file and writes metadata.yaml."""

    def __init__(self, node, folder: str | Path, topics: Iterable[tuple[str, type, object]],
                 direct: Iterable[str] = ()):
        """``direct``: names (as in ``topics``) this process writes itself with ``write`` instead
        of subscribing to them (what it publishes: no DDS hop, and no publish at all when nobody
        else listens)."""
        from mcap.writer import CompressionType, Writer
        from rclpy.event_handler import SubscriptionEventCallbacks

        self.node = node
        self.folder = Path(folder)
        if self.folder.exists() and any(self.folder.iterdir()):
            raise FileExistsError(f'bag folder {self.folder} exists and is not empty')
        self.folder.mkdir(parents=True, exist_ok=True)
        self.file_name = f'{self.folder.name}_0.mcap'
        self._stream = open(self.folder / self.file_name, 'wb')
        self._writer = Writer(self._stream, compression=CompressionType.ZSTD)
        self._writer.start(profile='ros2', library='sim2real_bilevel recorder')
        self._topics: dict[str, dict] = {}
        self._subscriptions = []
        self.first_ns: Optional[int] = None
        self.last_ns: Optional[int] = None
        self.closed = False
        self.lock = threading.Lock()       # the subscriptions' thread and ``write`` callers
        direct = set(direct)
        schema_ids: dict[str, int] = {}
        for name, message_class, qos in topics:
            resolved = node.resolve_topic_name(name)
            if resolved in self._topics:
                continue
            full_type = type_name(message_class)
            if full_type not in schema_ids:
                schema_ids[full_type] = self._writer.register_schema(
                    name=full_type, encoding='ros2msg', data=full_definition(full_type).encode())
            offered = qos_yaml(qos)
            channel = self._writer.register_channel(
                topic=resolved, message_encoding='cdr', schema_id=schema_ids[full_type],
                metadata={'offered_qos_profiles': yaml.safe_dump(offered, sort_keys=False),
                          'topic_type_hash': ''})
            self._topics[resolved] = {'type': full_type, 'channel': channel, 'count': 0, 'qos': offered}
            if name in direct:
                continue
            # the profile each topic is published with: no mismatch to warn of, and no QoS event
            # handlers to add to every spin's wait set (runtime.internal_publisher)
            self._subscriptions.append(node.create_subscription(
                message_class, name, lambda data, topic=resolved: self.record_callback(topic, data),
                qos, raw=True, event_callbacks=SubscriptionEventCallbacks(use_default_callbacks=False)))

    def records(self, topic: str) -> bool:
        """Whether ``topic`` (fully qualified) is one of the recorded topics."""
        return topic in self._topics

    def count(self, topic: str) -> int:
        """Messages of ``topic`` (fully qualified) recorded so far."""
        entry = self._topics.get(topic)
        return 0 if entry is None else entry['count']

    @property
    def message_count(self) -> int:
        return sum(t['count'] for t in self._topics.values())

    def write(self, topic: str, message) -> None:
        """Record ``message`` on ``topic`` (fully qualified; a ``direct`` topic) now."""
        from rclpy.serialization import serialize_message
        self.record_callback(topic, serialize_message(message))

    def record_callback(self, topic: str, data: bytes) -> None:
        with self.lock:
            self._record(topic, data)

    def _record(self, topic: str, data: bytes) -> None:
        if self.closed:
            return
        now = time.time_ns()
        entry = self._topics[topic]
        self._writer.add_message(channel_id=entry['channel'], log_time=now, publish_time=now,
                                 data=bytes(data), sequence=entry['count'])
        entry['count'] += 1
        self.first_ns = now if self.first_ns is None else self.first_ns
        self.last_ns = now

    def close(self) -> Path:
        """Finish the MCAP file and write metadata.yaml; returns the bag folder."""
        with self.lock:
            if self.closed:
                return self.folder
            self.closed = True
        for subscription in self._subscriptions:
            self.node.destroy_subscription(subscription)
        self._subscriptions = []
        self._writer.finish()
        self._stream.close()
        start = self.first_ns or time.time_ns()
        duration = (self.last_ns - self.first_ns) if self.first_ns is not None else 0
        information = {
            'version': 9,
            'storage_identifier': 'mcap',
            'duration': {'nanoseconds': int(duration)},
            'starting_time': {'nanoseconds_since_epoch': int(start)},
            'message_count': self.message_count,
            'topics_with_message_count': [
                {'topic_metadata': {'name': topic, 'type': entry['type'], 'serialization_format': 'cdr',
                                    'offered_qos_profiles': entry['qos'], 'type_description_hash': ''},
                 'message_count': entry['count']}
                for topic, entry in self._topics.items()],
            'compression_format': '',
            'compression_mode': '',
            'relative_file_paths': [self.file_name],
            'files': [{'path': self.file_name,
                       'starting_time': {'nanoseconds_since_epoch': int(start)},
                       'duration': {'nanoseconds': int(duration)},
                       'message_count': self.message_count}],
            'custom_data': {},
            'ros_distro': 'jazzy',
        }
        with open(self.folder / 'metadata.yaml', 'w') as stream:
            yaml.safe_dump({'rosbag2_bagfile_information': information}, stream, sort_keys=False)
        return self.folder
