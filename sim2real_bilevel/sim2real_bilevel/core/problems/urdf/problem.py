"""``UrdfProblem``: a robot from its URDF, the task as data (see the package docstring)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from ...problem import JointLimits
from ...urdf_model import UrdfModel
from ...urdf_robot import RigidBodyDynamics
from ..robot.problem import RobotProblem
from .config import read_problem_file


class UrdfProblem(RobotProblem):
    """``RobotProblem``'s machinery (CRN rollouts, inner solvers, sensitivities, real gradient
    estimators, baselines, step-by-step real system and controller) on ``UrdfModel`` and the
    pybullet stand-in ``robots.urdf_robot.UrdfEmulator``."""

    kind = 'urdf'

    def __init__(self, *, urdf_path, joint_names, description, settings, physical, reward_terms,
                 transition_noise_std, real_parameters, real_substeps: int, **arguments):
        self.urdf_path = urdf_path
        self.joint_names = tuple(joint_names)
        self.settings = settings
        self.description = description
        joints = [description.joints[name] for name in joint_names]
        dynamics = RigidBodyDynamics(urdf_path, joint_names, gravity=settings.gravity)
        delays = [math.exp(arguments['upper_full'][i]) for i, entry in enumerate(physical) if entry.kind == 'delay']
        model = UrdfModel(dynamics, settings, physical, reward_terms, transition_noise_std,
                          default_damping=[j.damping for j in joints], default_friction=[j.friction for j in joints],
                          joint_lower=[j.lower for j in joints], joint_upper=[j.upper for j in joints],
                          angular=[j.type != 'prismatic' for j in joints], max_delay=max(delays, default=0.0))
        super().__init__(geometry=None, real_parameters=real_parameters, real_substeps=real_substeps,
                         transition_noise_std=transition_noise_std, model=model, **arguments)

    @property
    def control_period(self) -> float:
        return float(self.settings.control_period)

    def joints(self) -> tuple[JointLimits, ...]:
        """The controlled joints with the limits of their URDF ``<limit>`` (inf where none)."""
        return tuple(JointLimits(j.name, effort=j.effort, lower=j.lower, upper=j.upper, velocity=j.velocity)
                     for j in (self.description.joints[name] for name in self.joint_names))

    def actuator_range(self) -> tuple[float, ...]:
        """The simulator's smooth command saturation per controlled joint (``UrdfModel``'s U)."""
        return tuple(float(u) for u in self.settings.effort_limit)

    def models_actuation_delay(self) -> bool:
        """Whether the simulator has a ``delay`` entry (fixed or learnable)."""
        return any(entry.kind == 'delay' for entry in self.model.physical)

    def robot_description(self) -> str:
        return Path(self.urdf_path).read_text()

    def link_transforms(self, position) -> tuple[str, dict[str, np.ndarray]]:
        """Every link's pose in the root link (adam's forward kinematics; other moving joints at 0)."""
        import torch
        dynamics = self.model.dynamics
        q = torch.as_tensor(np.asarray(position, dtype=np.float64).reshape(1, -1), dtype=dynamics.dtype)
        with torch.no_grad():
            poses = dynamics.link_poses(q)
        return dynamics.link_names[0], {name: pose[0].cpu().numpy().astype(np.float64) for name, pose in poses.items()}

    @classmethod
    def from_dict(cls, data: dict, source: str, policy=None) -> 'UrdfProblem':
        return cls(policy=policy, **read_problem_file(data, source))

    def oracle_theta_full(self) -> np.ndarray:
        """The true value of every theta entry and the task's reward weights (reporting only).
        A joint entry shared by several joints takes their mean true value; a true value of
        zero maps to the entry's lower bound."""
        truth = self._real_parameters
        per_joint = {'damping': truth.damping, 'coulomb_friction': truth.coulomb_friction,
                     'armature': truth.armature, 'motor_gain': truth.motor_gain}
        logs = []
        for index, entry in enumerate(self.model.physical):
            if entry.kind == 'delay':
                value = truth.actuation_delay_steps * self.settings.control_period
            elif entry.kind == 'mass_scale':
                value = truth.mass_scale.get(entry.link, 1.0)
            elif entry.kind == 'payload_mass':
                value = truth.payloads.get(entry.link, (0.0, None))[0]
            elif entry.kind == 'payload_distance':     # the true centre's component along the direction
                direction = np.asarray(entry.center_of_mass, dtype=np.float64)
                center = truth.payloads.get(entry.link, (0.0, (0.0, 0.0, 0.0)))[1]
                value = float(np.dot(center, direction) / np.linalg.norm(direction))
            else:
                value = float(np.mean([per_joint[entry.kind][j] for j in entry.joints]))
            logs.append(math.log(value) if value > 0 else self._lower_full[index])
        return np.concatenate([logs, np.log(self.task_weights)])

    def make_emulator(self):
        """A fresh pybullet stand-in with the hidden true parameters."""
        from ...robots.urdf_robot import UrdfEmulator
        return UrdfEmulator(self.urdf_path, self.joint_names, self._real_parameters, gravity=self.settings.gravity,
                            control_period=self.settings.control_period, physics_substeps=self._real_substeps,
                            initial_position_range=self.initial.position,
                            initial_velocity_range=self.initial.velocity,
                            gravity_compensation=self.settings.gravity_compensation)
