"""The LQR simulator family: theta -> (A_hat, B_hat, Q_hat, R_hat) as one pure torch function
(coordinates described in the package docstring)."""
from __future__ import annotations

import math

import numpy as np
import torch

from .maths import DTYPE, correlation_of


class SimulatorFamily:
    """theta -> (A_hat, B_hat, Q_hat, R_hat), see the package docstring.  Every matrix is
    written with bases over the FULL theta vector, so the map is one pure torch function."""

    def __init__(self, *, a, learn_a, b, learn_b, q, learn_q, r, learn_r, dynamics_bounds: dict,
                 cost_scale_bound: float, correlation_bounds: dict):
        self.n, self.m = b.shape
        names, kinds, nominal, lower, upper, matrix_of = [], [], [], [], [], []

        def add(name, kind, value, low, high, matrix):
            names.append(name)
            kinds.append(kind)
            nominal.append(value)
            lower.append(low)
            upper.append(high)
            matrix_of.append(matrix)

        for label, values, mask in (('A', a, learn_a), ('B', b, learn_b)):
            bound = dynamics_bounds[label]
            for i, j in np.argwhere(mask):
                add(f'{label}[{i}][{j}]', 'linear', values[i, j], values[i, j] - bound, values[i, j] + bound, label)
        log_scale = math.log(cost_scale_bound)
        for label, values, mask in (('Q', q, learn_q), ('R', r, learn_r)):
            diagonal = np.diag(values)
            for i, j in np.argwhere(np.triu(mask)):
                if i == j:
                    add(f'{label}[{i}][{i}]', 'log', math.log(diagonal[i]), math.log(diagonal[i]) - log_scale,
                        math.log(diagonal[i]) + log_scale, label)
                else:
                    bound = correlation_bounds[label]
                    add(f'{label}[{i}][{j}]', 'correlation', correlation_of(values)[i, j], -bound, bound, label)
        self.names = names
        self.kinds = kinds
        self.nominal = np.asarray(nominal, dtype=np.float64)
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        self.matrix_of = np.asarray(matrix_of)
        size = len(names)
        index = {name: d for d, name in enumerate(names)}

        def linear_basis(label, values, mask):
            fixed = np.where(mask, 0.0, values)
            basis = np.zeros((size,) + values.shape)
            for i, j in np.argwhere(mask):
                basis[index[f'{label}[{i}][{j}]'], i, j] = 1.0
            return torch.as_tensor(fixed), torch.as_tensor(basis)

        def cost_basis(label, values, mask):
            k = values.shape[0]
            learn_diagonal = np.diag(mask).astype(bool)
            fixed_scale = np.where(learn_diagonal, 0.0, np.sqrt(np.maximum(np.diag(values), 0.0)))
            log_basis = np.zeros((size, k))
            correlation_basis = np.zeros((size, k, k))
            fixed_correlation = correlation_of(values)
            for i, j in np.argwhere(np.triu(mask)):
                d = index[f'{label}[{i}][{j}]']
                if i == j:
                    log_basis[d, i] = 0.5           # the scale is sqrt(diagonal) = exp(theta / 2)
                else:
                    correlation_basis[d, i, j] = correlation_basis[d, j, i] = 1.0
                    fixed_correlation[i, j] = fixed_correlation[j, i] = 0.0
            return tuple(torch.as_tensor(x) for x in (fixed_scale, learn_diagonal.astype(np.float64), log_basis,
                                                       fixed_correlation, correlation_basis))

        self.a_parts = linear_basis('A', a, learn_a)
        self.b_parts = linear_basis('B', b, learn_b)
        self.q_parts = cost_basis('Q', q, learn_q)
        self.r_parts = cost_basis('R', r, learn_r)

    @property
    def size(self) -> int:
        return len(self.names)

    def group(self, labels: str) -> np.ndarray:
        return np.isin(self.matrix_of, list(labels)) if self.size else np.zeros(0, dtype=bool)

    def matrices_torch(self, theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(A_hat, B_hat, Q_hat, R_hat) as a pure differentiable function of theta."""
        return (_linear(theta, *self.a_parts), _linear(theta, *self.b_parts),
                _scaled_correlation(theta, *self.q_parts), _scaled_correlation(theta, *self.r_parts))

    def matrices(self, theta: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.no_grad():
            return tuple(x.numpy().copy() for x in self.matrices_torch(torch.as_tensor(theta, dtype=DTYPE)))

    def jacobians(self, theta: np.ndarray) -> tuple[np.ndarray, ...]:
        """(dA, dB, dQ, dR), each (D, rows, cols): derivatives w.r.t. each theta coordinate."""
        jac = torch.func.jacfwd(self.matrices_torch)(torch.as_tensor(theta, dtype=DTYPE))
        return tuple(np.moveaxis(j.detach().numpy(), -1, 0) for j in jac)


def _linear(theta, fixed, basis):
    return fixed + torch.einsum('d,dij->ij', theta, basis)


def _scaled_correlation(theta, fixed_scale, learn_diagonal, log_basis, fixed_correlation, correlation_basis):
    scale = fixed_scale + learn_diagonal * torch.exp(theta @ log_basis)
    correlation = fixed_correlation + torch.einsum('d,dij->ij', theta, correlation_basis)
    return scale[:, None] * correlation * scale[None, :]
