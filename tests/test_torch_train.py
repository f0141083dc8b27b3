"""The PyTorch fine-tuning step (``weights_convert.torch_train``) is the JAX step's.

Loss and its gradient on the same flows, the L2 term on the same weights, and one
whole step (loss, gradient norm, Adam's update) against the session's one JAX
train step (``first_adam_step``): no new JAX compile here.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from deepliflow_jax.losses import kitti_loss, l2_regularizer
from deepliflow_jax.profile.inputs import make_ground_truth
from weights_convert import torch_bridge, torch_train
from weights_convert.convert import flax_to_torch_state_dict


def _flows(batch, height, width, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, 0.3, (batch, height >> lv, width >> lv, 4)).astype(np.float32)
            for lv in (6, 5, 4, 3, 2)]


def _nchw(a):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


def test_torch_kitti_loss_and_its_gradient_equal_the_jax_loss():
    flows, gt = _flows(2, 64, 128), make_ground_truth(2, 64, 128)
    want, grads = jax.value_and_grad(kitti_loss)([jnp.asarray(f) for f in flows],
                                                  jnp.asarray(gt))
    t_flows = [_nchw(f).requires_grad_() for f in flows]
    got = torch_train.kitti_loss(t_flows, _nchw(gt))
    got.backward()
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    for level, g, t in zip((6, 5, 4, 3, 2), grads, t_flows, strict=True):
        g = np.asarray(g).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(t.grad.numpy(), g, rtol=1e-4,
                                   atol=1e-5 * np.abs(g).max(), err_msg=f"level {level}")
    with pytest.raises(ValueError, match="flows must hold 5 levels"):
        torch_train.kitti_loss(t_flows[:4], _nchw(gt))


def test_torch_l2_term_selects_the_conv_kernels_as_the_jax_one(variables):
    ref = torch_bridge.load_reference(variables)
    params = torch_train.regularized(ref.module)
    kernels = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]
               if path[-1].key in ("kernel", "kernels")]
    assert len(params) == len(kernels) and all(p.dim() == 4 for p in params)
    assert sum(p.numel() for p in params) == sum(k.size for k in kernels)
    got = float(torch_train.l2_regularizer(params))
    assert got == pytest.approx(float(l2_regularizer(variables["params"])), rel=1e-5)


def test_one_torch_step_is_the_jax_first_adam_step(variables, tiny_data, first_adam_step):
    tuned, history = first_adam_step  # finetune(..., steps=1, l2=False) at lr 1e-4
    batch = tiny_data.train_batch(0, tiny_data.num_samples, reg_scale=0.0)
    assert tiny_data.interp_size in (None, tuple(batch["frames"].shape[2:4]))
    ref = torch_bridge.load_reference(variables)
    step = ref.train_step(batch, lr=1e-4)
    loss = float(step())
    assert loss == pytest.approx(history[0]["loss"], rel=1e-5)
    grads = [p.grad for p in step.model.parameters()]
    grad_norm = float(torch.sqrt(sum(g.double().square().sum() for g in grads)))
    assert grad_norm == pytest.approx(history[0]["grad_norm"], rel=1e-4)
    # Adam's first step moves every entry by lr * g / (|g| + eps): compare the moves
    before = flax_to_torch_state_dict(variables)
    after_jax = flax_to_torch_state_dict(tuned)
    after = {k: v.detach().numpy() for k, v in step.model.state_dict().items()}
    moved = np.concatenate([(after[k] - before[k]).ravel() for k in before])
    want = np.concatenate([(after_jax[k] - before[k]).ravel() for k in before])
    assert np.abs(want).max() == pytest.approx(1e-4, rel=1e-3)
    close = np.abs(moved - want) <= 1e-6  # 1 % of the learning rate
    assert close.mean() > 0.999, (close.mean(), np.abs(moved - want).max())
    # one step cannot tell the betas apart (bias correction): they are optax.adam's
    adam = inspect.signature(optax.adam).parameters
    assert step.optimizer.defaults["betas"] == (adam["b1"].default, adam["b2"].default)
    assert step.optimizer.defaults["eps"] == adam["eps"].default
    # the caller's module is not trained
    assert all(np.array_equal(v.numpy(), before[k])
               for k, v in ref.module.state_dict().items())
