"""MLP Gaussian policy, functional: the parameters are one flat vector phi.

a ~ N(mu_phi(s), diag(exp(2 log_std))), mu an MLP with tanh (or relu) hidden layers and a
state-independent log_std that is part of phi.  Every method takes phi explicitly, so the
policy composes with torch.func (grad, jvp, vmap) and with implicit differentiation.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

ACTIVATIONS = {'tanh': torch.tanh, 'relu': torch.relu}


class MLPGaussianPolicy:
    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (64, 64),
                 activation: str = 'tanh', log_std_init: float = -0.5):
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f'obs_dim = {obs_dim}, act_dim = {act_dim}: expected integers >= 1')
        if activation not in ACTIVATIONS:
            raise ValueError(f'activation = {activation!r}: expected one of {sorted(ACTIVATIONS)}')
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.log_std_init = log_std_init
        sizes = (obs_dim, *self.hidden, act_dim)
        self.layer_shapes = [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)]
        self.num_params = sum(o * i + o for o, i in self.layer_shapes) + act_dim

    # --- parameters ----------------------------------------------------------------------------
    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        """Scaled-normal weights (fan-in), zero biases, small last layer, log_std_init."""
        chunks = []
        for index, (out_dim, in_dim) in enumerate(self.layer_shapes):
            gain = 0.01 if index == len(self.layer_shapes) - 1 else 1.0
            chunks.append(gain * rng.standard_normal(out_dim * in_dim) / math.sqrt(in_dim))
            chunks.append(np.zeros(out_dim))
        chunks.append(np.full(self.act_dim, self.log_std_init))
        return np.concatenate(chunks)

    def unflatten(self, phi: torch.Tensor):
        if phi.shape[-1] != self.num_params:
            raise ValueError(f'phi has {phi.shape[-1]} entries; this policy has {self.num_params}')
        layers, offset = [], 0
        for out_dim, in_dim in self.layer_shapes:
            weight = phi[offset:offset + out_dim * in_dim].reshape(out_dim, in_dim)
            offset += out_dim * in_dim
            bias = phi[offset:offset + out_dim]
            offset += out_dim
            layers.append((weight, bias))
        return layers, phi[offset:offset + self.act_dim]

    # --- distribution ---------------------------------------------------------------------------
    def mean(self, phi: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        layers, _ = self.unflatten(phi)
        activation = ACTIVATIONS[self.activation]
        x = obs
        for index, (weight, bias) in enumerate(layers):
            x = x @ weight.T + bias
            if index < len(layers) - 1:
                x = activation(x)
        return x

    def log_std(self, phi: torch.Tensor) -> torch.Tensor:
        return self.unflatten(phi)[1]

    def log_prob(self, phi: torch.Tensor, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """log pi(act|obs), summed over action dimensions; shape obs.shape[:-1]."""
        mean = self.mean(phi, obs)
        log_std = self.log_std(phi)
        z = (act - mean) * torch.exp(-log_std)
        return (-0.5 * z ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample(self, phi, obs, rng: np.random.Generator) -> np.ndarray:
        phi_t = torch.as_tensor(np.asarray(phi), dtype=torch.float64)
        obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float64)
        with torch.no_grad():
            mean = self.mean(phi_t, obs_t).numpy()
            std = np.exp(self.log_std(phi_t).numpy())
        return mean + std * rng.standard_normal(mean.shape)
