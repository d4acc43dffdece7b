"""How the hardware bridge runs episodes on the robot: one ``Transport`` per parameter value of
``transport`` (``batched``: the robot emulator's action; ``topics``: the ros2_control topics)."""
from __future__ import annotations

from .base import BridgeFacilities, RobotWaits, Transport
from .batched import BatchedTransport
from .topics import TopicTransport

TRANSPORTS: dict[str, type[Transport]] = {'batched': BatchedTransport, 'topics': TopicTransport}

__all__ = ['TRANSPORTS', 'BatchedTransport', 'BridgeFacilities', 'RobotWaits', 'TopicTransport', 'Transport']
