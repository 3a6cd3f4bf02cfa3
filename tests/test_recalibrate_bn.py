"""cowmix_jax/experiments/recalibrate_bn.py: precise BatchNorm statistics."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from cowmix_jax.experiments import recalibrate_bn


class TwoNorms(nn.Module):
  """BatchNorm on the input (momentum 0.9), a fixed scaling, BatchNorm again (0.7)."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="first")(x)
    return nn.BatchNorm(use_running_average=not train, momentum=0.7, name="second")(3 * x + 1)


def test_precise_statistics_are_the_average_of_every_batchs_own_statistics():
  model = TwoNorms()
  rng = np.random.default_rng(0)
  batches = [rng.normal(loc, scale, (6, 2, 2, 3)).astype(np.float32)
             for loc, scale in ((0.0, 1.0), (2.0, 0.5), (-1.0, 3.0))]
  variables = model.init(jax.random.PRNGKey(0), batches[0], train=False)
  # Stale running statistics, which the result must not depend on.
  variables = {"params": variables["params"],
               "batch_stats": jax.tree.map(lambda s: s + 5.0, variables["batch_stats"])}

  def apply_fn(variables, images):
    _, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    return updates["batch_stats"]

  stats = recalibrate_bn.precise_batch_stats(apply_fn, variables, iter(batches))
  # Reference in numpy. The first layer sees the raw batches; the second sees
  # 3 * (batch normalised by its own statistics, eps 1e-5, scale 1, bias 0) + 1.
  flat = [b.reshape(-1, 3) for b in batches]
  np.testing.assert_allclose(stats["first"]["mean"], np.mean([f.mean(0) for f in flat], 0),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stats["first"]["var"], np.mean([f.var(0) for f in flat], 0),
                             rtol=1e-4)
  second_inputs = [3 * (f - f.mean(0)) / np.sqrt(f.var(0) + 1e-5) + 1 for f in flat]
  np.testing.assert_allclose(stats["second"]["mean"], 1.0, atol=1e-4)
  np.testing.assert_allclose(stats["second"]["var"],
                             np.mean([s.var(0) for s in second_inputs], 0), rtol=1e-4)
  with pytest.raises(ValueError, match="no batches"):
    recalibrate_bn.precise_batch_stats(apply_fn, variables, iter([]))
