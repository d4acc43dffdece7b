"""Rigid-body libraries for the URDF simulator, side by side, and the simulator built on the chosen one.

Part 1 (libraries): for each robot (pendulum, acrobot: this package's URDFs; cart-pole, KUKA
iiwa: pybullet_data) and each candidate (adam-robotics 0.5.0 with this project's two fixes;
adam-robotics unpatched; differentiable-robot-model 0.2.3 when installed), whether it loads,
the largest mass-matrix and bias-force error against pybullet (URDF_USE_INERTIA_FROM_FILE,
link damping and default motors off) over random states, the time of M + h + solve forward and
backward at each batch size, and the derivative of sum(M) + sum(h) w.r.t. one link's mass
against a central float64 finite difference.

Part 2 (the simulator, ``core.urdf_model.UrdfModel`` on adam): 1 s rollout error against
pybullet at identical parameters (explicit damping at 1 ms, pybullet's scheme), the gradient
check of one control step w.r.t. (mass scale, damping, Coulomb friction) against central
float64 finite differences, and simulated transitions per second at batch 1024 (one control
period, one substep, forward and forward + backward).

    OMP_NUM_THREADS=1 .venv/bin/python sim2real_bilevel/bench/urdf_dynamics.py [--batches 1 1024] [--repeats 3]
        [--parts libraries simulator problems]

Part 3 (the pendulum task): J_sim and F of config/pendulum.yaml (hand-written model) and
config/pendulum_urdf.yaml (URDF simulator, adam called eagerly = before, and its replayed
recording = after, ``RigidBodyDynamics(traced=...)``) on the same random numbers: value, seconds
and the ratio to the hand-written model.

Part 4 (speed, ``--parts speed``): one control step of ``UrdfModel`` (one substep, a mass scale,
damping and friction in theta) forward and forward + backward at each batch size, adam eager
(before) against the replayed recording (after), side by side with the ratio, and simulated
transitions per second; on CUDA as well when a GPU is present (``torch.cuda.is_available()``).

Part 6 (``--parts compensation``): Part 5 on the CPU with the controller's gravity compensation
computed from M + h at zero velocity (before) and from a recording of the gravity term alone
(after), side by side.

Times are wall-clock medians (Parts 1-2) or the fastest of interleaved repeats (Parts 3-4) in one process (OMP_NUM_THREADS as set by the caller); on a
shared machine they are upper bounds.
"""
from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

SHARE = Path(__file__).resolve().parents[1] / 'urdf'


def robots() -> dict:
    import pybullet_data
    data = Path(pybullet_data.getDataPath())
    return {
        'pendulum': (SHARE / 'pendulum.urdf', ['pendulum_joint'], 'pendulum_link'),
        'acrobot': (SHARE / 'acrobot.urdf', ['shoulder', 'elbow'], 'lower_link'),
        'cartpole': (data / 'cartpole.urdf', ['slider_to_cart', 'cart_to_pole'], 'pole'),
        'iiwa': (data / 'kuka_iiwa' / 'model.urdf', [f'lbr_iiwa_joint_{i}' for i in range(1, 8)], 'lbr_iiwa_link_7'),
    }


def interleaved_best_seconds(functions, repeats: int) -> list[float]:
    """Fastest of ``repeats`` timings of each function, the functions taking turns (so that they
    share the machine's load; the fastest is the least disturbed on a shared machine)."""
    best = [math.inf] * len(functions)
    for _ in range(repeats):
        for index, function in enumerate(functions):
            started = time.perf_counter()
            function()
            best[index] = min(best[index], time.perf_counter() - started)
    return best


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# --- candidates: each gives mass_and_bias(q, qd) -> (M, h) and mass_gradient(q, qd, link) ------------------
class AdamCandidate:
    name = 'adam-robotics (fixed)'

    def __init__(self, path, joints):
        from sim2real_bilevel.core.urdf_robot import RigidBodyDynamics
        self.dynamics = RigidBodyDynamics(path, joints)

    def mass_and_bias(self, q, qd):
        return self.dynamics.mass_matrix_and_bias(q, qd)

    def mass_derivative(self, q, qd, link) -> tuple[float, float]:
        """d(sum M + sum h)/d scale of ``link``'s mass (autograd, and central FD in float64)."""
        def value(scale):
            mass, bias = self.dynamics.mass_matrix_and_bias(q, qd, mass_scale={link: scale})
            return mass.sum() + bias.sum()
        scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        (gradient,) = torch.autograd.grad(value(scale), scale)
        step = 1e-6
        with torch.no_grad():
            difference = (value(torch.tensor(1.0 + step, dtype=torch.float64))
                          - value(torch.tensor(1.0 - step, dtype=torch.float64))) / (2 * step)
        return float(gradient), float(difference)


class DifferentiableRobotModelCandidate:
    name = 'differentiable-robot-model (origin fix)'

    def __init__(self, path, joints):
        import tempfile
        from differentiable_robot_model.robot_model import DifferentiableRobotModel
        from sim2real_bilevel.core.urdf_robot import normalised_urdf_text
        # the same inertial-origin fix as adam gets (the library has the same parsing gap)
        with tempfile.NamedTemporaryFile('w', suffix='.urdf', delete=False) as handle:
            handle.write(normalised_urdf_text(path))
        try:
            self.model = DifferentiableRobotModel(handle.name, device='cpu')
        finally:
            Path(handle.name).unlink()
        names = [self.model._bodies[i].name for i in self.model._controlled_joints]
        if len(names) != len(joints):
            raise RuntimeError(f'controls {len(names)} joints, expected {len(joints)}')

    def mass_and_bias(self, q, qd):
        q, qd = q.float(), qd.float()
        mass = self.model.compute_lagrangian_inertia_matrix(q, include_gravity=True, use_damping=False)
        bias = self.model.compute_non_linear_effects(q, qd, include_gravity=True, use_damping=False)
        return mass, bias

    def mass_derivative(self, q, qd, link):
        """d(sum M + sum h)/d mass of ``link`` through the library's learnable mass (m = l^2),
        and a central FD of the same quantity with the mass set to m +- step."""
        from differentiable_robot_model.rigid_body_params import PositiveScalar
        inertia = self.model._bodies[self.model._name_to_idx_map[link]].inertia
        nominal = float(inertia.mass())        # a callable (or a learnable module) in this library

        def value(mass):
            self.model.make_link_param_learnable(link, 'mass', PositiveScalar(init_param=torch.tensor(mass)))
            m, h = self.mass_and_bias(q, qd)
            return m.sum() + h.sum(), getattr(inertia, 'mass').l
        total, parameter = value(nominal)
        (gradient,) = torch.autograd.grad(total, parameter)
        step = 1e-3 * nominal      # float32: a larger step
        difference = (float(value(nominal + step)[0].detach()) - float(value(nominal - step)[0].detach())) / (2 * step)
        return float(gradient) / (2 * float(parameter)), difference      # d/dm = d/dl / (2 l)


def run_unpatched_adam(path, joints) -> str:
    """adam-robotics with no fix, in a fresh interpreter: 'ok' or the error's first line."""
    code = ('import torch; from adam.pytorch import KinDynComputationsBatch\n'
            f'k = KinDynComputationsBatch({str(path)!r}, {list(joints)!r}, device=torch.device("cpu"), dtype=torch.float64)\n'
            f'k.mass_matrix(torch.eye(4, dtype=torch.float64).expand(2, 4, 4), torch.zeros(2, {len(joints)}, dtype=torch.float64))\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    if result.returncode == 0:
        return 'ok'
    lines = [line for line in result.stderr.strip().splitlines() if 'Error' in line]
    return lines[-1][:70] if lines else f'exit {result.returncode}'


def library_rows(batches, repeats) -> list[dict]:
    from sim2real_bilevel.core.robots.urdf_robot import PybulletRobot, urdf_with_inertials
    rows = []
    for robot, (path, joints, link) in robots().items():
        n = len(joints)
        reference = PybulletRobot(urdf_with_inertials(path, {}, {}), joints, gravity=9.81, time_step=0.001)
        rng = np.random.default_rng(0)
        q, qd = rng.uniform(-1, 1, (5, n)), rng.uniform(-2, 2, (5, n))
        rows.append({'robot': robot, 'library': 'adam-robotics (unpatched)', 'loads': run_unpatched_adam(path, joints)})
        for candidate_class in (AdamCandidate, DifferentiableRobotModelCandidate):
            row = {'robot': robot, 'library': candidate_class.name}
            rows.append(row)
            try:
                candidate = candidate_class(path, joints)
                mass, bias = candidate.mass_and_bias(torch.as_tensor(q), torch.as_tensor(qd))
            except ImportError:
                row['loads'] = 'not installed'
                continue
            except Exception as err:      # a library failing on a robot is a result, not a crash
                row['loads'] = f'{type(err).__name__}: {str(err)[:60]}'
                continue
            row['loads'] = 'ok'
            row['M err'] = max(np.abs(mass[i].detach().double().numpy() - reference.mass_matrix(q[i])).max() for i in range(5))
            row['h err'] = max(np.abs(bias[i].detach().double().numpy() - reference.bias(q[i], qd[i])).max() for i in range(5))
            for batch in batches:
                qb = torch.as_tensor(rng.uniform(-1, 1, (batch, n))).requires_grad_(True)
                qdb = torch.as_tensor(rng.uniform(-1, 1, (batch, n)))
                tau = torch.as_tensor(rng.uniform(-1, 1, (batch, n)))

                def forward():
                    m, h = candidate.mass_and_bias(qb, qdb)
                    return torch.linalg.solve(m, (tau.to(m.dtype) - h).unsqueeze(-1))
                row[f'fwd ms b{batch}'] = 1e3 * median_seconds(forward, repeats)
                row[f'fwd+bwd ms b{batch}'] = 1e3 * median_seconds(lambda: forward().sum().backward(), repeats)
            try:
                gradient, difference = candidate.mass_derivative(torch.as_tensor(q[:2]), torch.as_tensor(qd[:2]), link)
                row['d/dmass vs FD'] = f'{abs(gradient - difference) / max(abs(difference), 1e-12):.1e} rel'
            except Exception as err:
                row['d/dmass vs FD'] = f'{type(err).__name__}'
        reference.close()
    return rows


def simulator_rows(repeats) -> list[dict]:
    from sim2real_bilevel.core.robots.urdf_robot import PybulletRobot, urdf_with_inertials
    from sim2real_bilevel.core.urdf_model import PhysicalEntry, UrdfModel, UrdfSimulatorSettings
    from sim2real_bilevel.core.urdf_robot import RigidBodyDynamics, read_urdf
    rows = []
    for robot, (path, joints, link) in robots().items():
        description = read_urdf(path)
        n = len(joints)
        damping = [description.joints[j].damping for j in joints]
        dynamics = RigidBodyDynamics(path, joints)
        physical = [PhysicalEntry('mass_scale', link=link), PhysicalEntry('damping', joints=tuple(range(n))),
                    PhysicalEntry('coulomb_friction', joints=tuple(range(n)))]

        def model(substeps, implicit):
            settings = UrdfSimulatorSettings(control_period=0.01, physics_substeps=substeps, effort_limit=(1e6,) * n,
                                             implicit_damping=implicit)
            return UrdfModel(dynamics, settings, physical, [], [1e-3] * (2 * n), default_damping=damping,
                             default_friction=[0.0] * n, joint_lower=[-math.inf] * n, joint_upper=[math.inf] * n,
                             angular=[description.joints[j].type != 'prismatic' for j in joints])
        row = {'robot': robot}
        rows.append(row)
        # 1 s rollout at identical parameters (true theta: scale 1, the file's damping, no friction)
        theta_true = torch.log(torch.tensor([1.0, max(damping[0], 1e-300), 1e-300], dtype=torch.float64))
        simulator = model(10, False)
        reference = PybulletRobot(urdf_with_inertials(path, {}, {}), joints, gravity=9.81, time_step=0.001,
                                  joint_damping=damping)
        rng = np.random.default_rng(0)
        q0, qd0 = rng.uniform(-0.4, 0.4, n), rng.uniform(-0.3, 0.3, n)
        extra = rng.uniform(-0.2, 0.2, n)
        reference.set_state(q0, qd0)
        state = torch.as_tensor(np.concatenate([q0, qd0]))[None]
        coefficients = simulator.coefficients(theta_true)
        for _ in range(100):
            # gravity compensation at the reference's state every period + a small random torque:
            # no joint reaches a position limit (pybullet enforces them, the simulator's springs are off)
            torque = reference.bias(reference.state()[0], np.zeros(n)) + extra
            for _ in range(10):
                reference.step(torque)
            state = simulator.step_mean_with(state, torch.as_tensor(torque)[None], coefficients)
        row['1 s rollout err'] = float(np.abs(state[0].numpy() - np.concatenate(reference.state())).max())
        reference.close()
        # gradient check of one control step (implicit damping, 2 substeps) in float64
        stepper = model(2, True)
        theta = torch.log(torch.tensor([1.2, 0.3, 0.05], dtype=torch.float64))
        state = torch.as_tensor(np.concatenate([rng.uniform(-0.4, 0.4, (3, n)), rng.uniform(-0.5, 0.5, (3, n))], -1))
        action = torch.as_tensor(rng.uniform(-0.5, 0.5, (3, n)))
        jacobian = torch.autograd.functional.jacobian(lambda th: stepper.step_mean(state, action, th), theta)
        step = 1e-6
        for k, name in enumerate(('mass', 'damping', 'friction')):
            shift = torch.zeros(3, dtype=torch.float64)
            shift[k] = step
            difference = (stepper.step_mean(state, action, theta + shift)
                          - stepper.step_mean(state, action, theta - shift)) / (2 * step)
            scale = max(float(difference.abs().max()), 1e-12)
            row[f'grad err {name}'] = float((jacobian[..., k] - difference).abs().max()) / scale
        # throughput at batch 1024: one control period, one substep
        fast = model(1, True)
        batch = 1024
        states = torch.as_tensor(np.concatenate([rng.uniform(-0.4, 0.4, (batch, n)), np.zeros((batch, n))], -1))
        actions = torch.as_tensor(rng.uniform(-0.5, 0.5, (batch, n)))
        theta_leaf = theta.clone().requires_grad_(True)
        forward = median_seconds(lambda: fast.step_mean(states, actions, theta_leaf), repeats)
        both = median_seconds(lambda: fast.step_mean(states, actions, theta_leaf).sum().backward(), repeats)
        row['transitions/s fwd b1024'] = batch / forward
        row['transitions/s fwd+bwd b1024'] = batch / both
    return rows


def problem_rows(repeats) -> list[dict]:
    """J_sim (and its phi-gradient F) of config/pendulum.yaml (hand-written model) and
    config/pendulum_urdf.yaml (URDF simulator: adam eager, then replayed) at the same phi, theta
    and random numbers."""
    from sim2real_bilevel.core.problems import load_problem
    config = Path(__file__).resolve().parents[1] / 'config'
    robot, urdf = load_problem(config / 'pendulum.yaml'), load_problem(config / 'pendulum_urdf.yaml')
    phi = torch.as_tensor(robot.policy.init_params(np.random.default_rng(0)))
    theta = torch.as_tensor(robot.theta0())
    noise = urdf._crn
    rows = []
    variants = (('pendulum.yaml (kind: robot)', robot, None),
                ('pendulum_urdf.yaml, adam eager (before)', urdf, False),
                ('pendulum_urdf.yaml, replayed (after)', urdf, True))
    direction = torch.as_tensor(np.random.default_rng(1).standard_normal(phi.numel()))

    def setting(problem, traced):
        if traced is not None:
            problem.model.dynamics.traced = traced

    def objective(problem):
        return lambda: problem.sim_objective(phi, theta, noise)

    def residual(problem):
        def run():
            point = phi.clone().requires_grad_(True)
            return torch.autograd.grad(problem.sim_objective(point, theta, noise), point)[0]
        return run

    def hessian_vector(problem):          # one CG iteration of the sensitivity: d/dphi (F . v)
        def run():
            point = phi.clone().requires_grad_(True)
            (gradient,) = torch.autograd.grad(problem.sim_objective(point, theta, noise), point, create_graph=True)
            return torch.autograd.grad(gradient @ direction, point)[0]
        return run
    for name, problem, traced in variants:
        setting(problem, traced)
        value = float(problem.sim_objective(phi, theta, noise))     # (records on first use)
        for _ in range(2):                                            # torch.jit optimises on the 2nd-3rd call
            residual(problem)()
            hessian_vector(problem)()
        rows.append({'problem': name, 'episodes x steps': f'{noise.initial_states.shape[0]} x {noise.action_noise.shape[0]}',
                     'J_sim': f'{value:.12g}'})
    for column, make in (('J_sim s', objective), ('J_sim + F s', residual), ('F + Hv s', hessian_vector)):
        functions = []
        for name, problem, traced in variants:
            run = make(problem)
            functions.append(lambda run=run, problem=problem, traced=traced: (setting(problem, traced), run()))
        for row, seconds in zip(rows, interleaved_best_seconds(functions, repeats)):
            row[column] = seconds
    for row in rows:
        for column in ('J_sim s', 'J_sim + F s', 'F + Hv s'):
            row[f'{column[:-2]} / hand-written'] = row[column] / rows[0][column]
    return rows


def available_devices() -> list[str]:
    return ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def speed_rows(batches, repeats, robot_names=('pendulum', 'acrobot', 'iiwa'), devices=None) -> list[dict]:
    """One control step of UrdfModel (one substep; theta = mass scale, damping, friction), adam
    eager (before) vs replayed recording (after): ms forward and forward + backward, their ratio,
    and transitions per second after, per device (CUDA too when present)."""
    from sim2real_bilevel.core.urdf_model import PhysicalEntry, UrdfModel, UrdfSimulatorSettings
    from sim2real_bilevel.core.urdf_robot import RigidBodyDynamics, read_urdf
    rows = []
    for device in devices or available_devices():
        synchronise = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
        for robot in robot_names:
            path, joints, link = robots()[robot]
            description = read_urdf(path)
            n = len(joints)
            physical = [PhysicalEntry('mass_scale', link=link), PhysicalEntry('damping', joints=tuple(range(n))),
                        PhysicalEntry('coulomb_friction', joints=tuple(range(n)))]
            settings = UrdfSimulatorSettings(control_period=0.01, physics_substeps=1, effort_limit=(1e6,) * n)
            models = {}
            for traced in (False, True):
                dynamics = RigidBodyDynamics(path, joints, device=device, traced=traced)
                models[traced] = UrdfModel(dynamics, settings, physical, [], [1e-3] * (2 * n),
                                           default_damping=[description.joints[j].damping for j in joints],
                                           default_friction=[0.0] * n, joint_lower=[-math.inf] * n,
                                           joint_upper=[math.inf] * n, angular=[True] * n)
            rng = np.random.default_rng(0)
            theta = torch.log(torch.tensor([1.2, 0.3, 0.05], dtype=torch.float64, device=device)).requires_grad_(True)
            for batch in batches:
                states = torch.as_tensor(rng.uniform(-0.5, 0.5, (batch, 2 * n)), device=device)
                actions = torch.as_tensor(rng.uniform(-0.5, 0.5, (batch, n)), device=device)
                row = {'device': device, 'robot': robot, 'batch': batch}
                forwards, boths = [], []
                for traced in (False, True):
                    model = models[traced]

                    def forward(model=model):
                        model.step_mean(states, actions, theta)
                        synchronise()

                    def both(model=model):
                        model.step_mean(states, actions, theta).sum().backward()
                        synchronise()
                    for _ in range(3):                       # records (after); torch.jit optimises on the 2nd-3rd call
                        forward()
                        both()
                    forwards.append(forward)
                    boths.append(both)
                (row['fwd ms before'], row['fwd ms after'], row['fwd+bwd ms before'],
                 row['fwd+bwd ms after']) = (1e3 * t for t in interleaved_best_seconds(
                     [forwards[0], forwards[1], boths[0], boths[1]], repeats))
                row['fwd speed-up'] = row['fwd ms before'] / row['fwd ms after']
                row['fwd+bwd speed-up'] = row['fwd+bwd ms before'] / row['fwd+bwd ms after']
                row['transitions/s fwd after'] = 1e3 * batch / row['fwd ms after']
                row['transitions/s fwd+bwd after'] = 1e3 * batch / row['fwd+bwd ms after']
                rows.append(row)
    return rows


def inner_rows(batches, repeats, task: str = 'config/iiwa_payload.yaml', devices=None) -> list[dict]:
    """The inner loop's work at batch B on a URDF task (default: the iiwa payload task), per device
    (CUDA too when present): J_sim alone (B rollouts of the task's horizon under its policy), J_sim
    and its gradient in (phi, theta) (one inner Adam step), and the gradient with its graph plus one
    Hessian-vector product in phi (one CG step of the sensitivity solve); simulated transitions per
    second of each.  The problem's own rollout code runs, on ``UrdfModel.to(device)``."""
    from sim2real_bilevel.core.config import load_yaml
    from sim2real_bilevel.core.problems.robot.simulator import CommonNoise
    from sim2real_bilevel.core.problems.urdf import UrdfProblem
    data, source = load_yaml(task)
    problem = UrdfProblem.from_dict(data, source)
    phi0 = torch.as_tensor(problem.policy.init_params(np.random.default_rng(0)))
    theta0 = problem.full_theta(torch.as_tensor(problem.theta0())).detach()
    cpu_model = problem.model
    rows = []
    for device in devices or available_devices():
        synchronise = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
        problem.model = cpu_model.to(device)
        try:
            for batch in batches:
                drawn = CommonNoise.draw(batch, problem.horizon, problem.initial, np.random.default_rng(1))
                noise = CommonNoise(drawn.initial_states.to(device), drawn.action_noise.to(device),
                                    drawn.transition_noise.to(device))
                phi = phi0.to(device).requires_grad_(True)
                theta = theta0.to(device).requires_grad_(True)
                vector = torch.ones_like(phi)

                def forward():
                    with torch.no_grad():
                        problem.sim_objective(phi, theta, noise, full=True)
                    synchronise()

                def gradient():
                    torch.autograd.grad(problem.sim_objective(phi, theta, noise, full=True), (phi, theta))
                    synchronise()

                def hessian_vector():
                    (residual,) = torch.autograd.grad(problem.sim_objective(phi, theta, noise, full=True), phi,
                                                       create_graph=True)
                    torch.autograd.grad(residual, phi, grad_outputs=vector)
                    synchronise()
                for function in (forward, gradient, hessian_vector):      # recordings; jit optimises on 2nd-3rd call
                    function()
                    function()
                seconds = interleaved_best_seconds([forward, gradient, hessian_vector], repeats)
                transitions = batch * problem.horizon
                row = {'device': device, 'task': Path(task).stem, 'batch': batch, 'steps': problem.horizon}
                for name, value in zip(('J_sim', '+ gradient', '+ HVP'), seconds):
                    row[f'{name} s'] = value
                    row[f'{name} transitions/s'] = transitions / value
                rows.append(row)
                print(f'  inner {device} batch {batch}: ' + ', '.join(f'{k} {v:.3g}' for k, v in row.items()
                                                                     if isinstance(v, float)), flush=True)
        finally:
            problem.model = cpu_model
    return rows


def compensation_rows(batches, repeats, task: str = 'config/iiwa_payload.yaml') -> list[dict]:
    """The controller's gravity compensation on the inner loop (CPU): ``inner_rows`` with the
    compensation from M + h at zero velocity (before) and from the recording of the gravity term
    alone (after, ``RigidBodyDynamics.gravity_torque``), side by side with the ratio."""
    from sim2real_bilevel.core.urdf_robot import RigidBodyDynamics
    after_method = RigidBodyDynamics.gravity_torque

    def before_method(self, position, *, mass_scale=None, payloads=None):
        return self.mass_matrix_and_bias(position, torch.zeros_like(position),
                                         mass_scale=mass_scale, payloads=payloads)[1]
    RigidBodyDynamics.gravity_torque = before_method
    try:
        before = inner_rows(batches, repeats, task, ['cpu'])
    finally:
        RigidBodyDynamics.gravity_torque = after_method
    after = inner_rows(batches, repeats, task, ['cpu'])
    rows = []
    for old, new in zip(before, after):
        row = {'task': new['task'], 'batch': new['batch']}
        for name in ('J_sim', '+ gradient', '+ HVP'):
            row[f'{name} s, M + h'] = old[f'{name} s']
            row[f'{name} s, g alone'] = new[f'{name} s']
            row[f'{name} ratio'] = old[f'{name} s'] / new[f'{name} s']
        rows.append(row)
    return rows


def print_table(rows: list[dict], title: str) -> None:
    columns = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    def text(value):
        if not isinstance(value, float):
            return str(value)
        return f'{value:.2e}' if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5) else f'{value:.3g}'
    cells = [[text(row.get(column, '-')) for column in columns] for row in rows]
    widths = [max(len(column), *(len(c[i]) for c in cells)) for i, column in enumerate(columns)]
    print(f'\n{title}')
    print('  '.join(column.ljust(width) for column, width in zip(columns, widths)))
    for cell in cells:
        print('  '.join(value.ljust(width) for value, width in zip(cell, widths)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batches', type=int, nargs='+', default=[1, 1024])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--robots', nargs='+', default=['pendulum', 'acrobot', 'iiwa'], help='robots of --parts speed')
    parser.add_argument('--parts', nargs='+', choices=('libraries', 'simulator', 'problems', 'speed', 'inner',
                                                       'compensation'),
                        default=['libraries', 'simulator', 'problems'])
    parser.add_argument('--task', default='config/iiwa_payload.yaml', help='the URDF task of --parts inner')
    parser.add_argument('--devices', nargs='+', choices=('cpu', 'cuda'), default=None,
                        help='devices of --parts speed and inner (default: cpu, and cuda when present)')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads (default 1: a shared machine)')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f'torch {torch.__version__}, threads {torch.get_num_threads()}, float64 unless the library is float32 only')
    if 'libraries' in args.parts:
        print_table(library_rows(args.batches, args.repeats), 'Part 1: rigid-body libraries vs pybullet '
                    '(errors: max abs over 5 random states; times: M + h + solve, ms)')
    if 'simulator' in args.parts:
        print_table(simulator_rows(args.repeats), 'Part 2: the URDF simulator (adam + project integrator) vs pybullet')
    if 'problems' in args.parts:
        print_table(problem_rows(args.repeats), 'Part 3: the pendulum task, hand-written model vs URDF simulator '
                    '(same phi, theta, random numbers; seconds)')
    if 'speed' in args.parts:
        print_table(speed_rows(args.batches, args.repeats, args.robots, args.devices),
                    'Part 4: one control step, adam eager (before) vs replayed recording (after); ms, float64')
    if 'inner' in args.parts:
        print_table(inner_rows(args.batches, args.repeats, args.task, args.devices),
                    f'Part 5: the inner loop on {args.task}: J_sim, + gradient (phi, theta), + one HVP; '
                    'seconds and simulated transitions/s, float64')
    if 'compensation' in args.parts:
        print_table(compensation_rows(args.batches, args.repeats, args.task),
                    f'Part 6: gravity compensation on {args.task} from M + h (before) vs the gravity term alone '
                    '(after); seconds, CPU, float64')


if __name__ == '__main__':
    main()
