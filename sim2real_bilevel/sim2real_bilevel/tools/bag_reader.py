"""Read an MCAP rosbag2 folder (what the optimizer records, ``nodes/bag_recorder.py``) back
into messages, with the schemas stored in the files: no ROS installation needed."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import yaml


def read_bag(folder: str | Path, topics: Optional[Iterable[str]] = None):
    """Yield (topic, log_time_ns, decoded message) from a bag folder's MCAP files, using
    only the schemas stored in the files (no ROS installation needed)."""
    from mcap_ros2.reader import read_ros2_messages

    folder = Path(folder)
    metadata = yaml.safe_load((folder / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    wanted = None if topics is None else set(topics)
    for relative in metadata['relative_file_paths']:
        for item in read_ros2_messages(str(folder / relative)):
            topic = item.channel.topic
            if wanted is None or topic in wanted:
                yield topic, item.log_time_ns, item.ros_msg
