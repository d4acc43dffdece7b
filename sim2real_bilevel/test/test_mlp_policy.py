import numpy as np
import pytest
import torch

from sim2real_bilevel.core.policies.mlp_gaussian import MLPGaussianPolicy


def test_log_prob_matches_torch_distributions():
    policy = MLPGaussianPolicy(3, 2, hidden=(8, 8))
    phi = torch.as_tensor(policy.init_params(np.random.default_rng(0)))
    obs = torch.randn(5, 3, dtype=torch.float64)
    act = torch.randn(5, 2, dtype=torch.float64)
    reference = torch.distributions.Normal(policy.mean(phi, obs), torch.exp(policy.log_std(phi))).log_prob(act).sum(-1)
    torch.testing.assert_close(policy.log_prob(phi, obs, act), reference)


def test_log_prob_gradcheck_float64():
    policy = MLPGaussianPolicy(2, 1, hidden=(4,))
    phi = torch.as_tensor(policy.init_params(np.random.default_rng(1)) + 0.3, dtype=torch.float64).requires_grad_()
    obs = torch.randn(3, 2, dtype=torch.float64)
    act = torch.randn(3, 1, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: policy.log_prob(p, obs, act), (phi,))


def test_composes_with_torch_func_and_vmap():
    policy = MLPGaussianPolicy(2, 1, hidden=(4,))
    phi = torch.as_tensor(policy.init_params(np.random.default_rng(2)))
    obs = torch.randn(6, 2, dtype=torch.float64)
    act = torch.randn(6, 1, dtype=torch.float64)
    per_sample = torch.func.vmap(torch.func.grad(lambda p, o, a: policy.log_prob(p, o, a)),
                                 in_dims=(None, 0, 0))(phi, obs, act)
    assert per_sample.shape == (6, policy.num_params)
    torch.testing.assert_close(per_sample.sum(0), torch.func.grad(lambda p: policy.log_prob(p, obs, act).sum())(phi))


def test_sample_statistics_and_size():
    policy = MLPGaussianPolicy(2, 1, hidden=(4,), log_std_init=np.log(0.5))
    assert policy.num_params == 4 * 2 + 4 + 4 + 1 + 1
    phi = policy.init_params(np.random.default_rng(3))
    samples = policy.sample(phi, np.zeros((20000, 2)), np.random.default_rng(4))
    assert abs(samples.std() - 0.5) < 0.02


def test_wrong_parameter_count_is_named():
    policy = MLPGaussianPolicy(2, 1)
    with pytest.raises(ValueError, match='7 entries'):
        policy.mean(torch.zeros(7, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64))
