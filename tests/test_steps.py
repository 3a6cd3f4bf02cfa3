"""Tests of cowmix_jax/steps.py on simulated CPU devices (see conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from cowmix_jax import evaluator, mixing, models, optimizers, sharding, steps
from cowmix_jax.models.feature_dropout import split_if_doubled, with_dropped_copy
from cowmix_jax.state import create_train_state

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")


def _make_sample_fn(config, mesh):
  """Jitted ``sample(key, unlabelled_images) -> the perturbation's draws`` (sharded)."""
  sample = steps.make_perturbation_fns(mixing.make_perturbation(config), mesh).sample
  return jax.jit(sample, in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
                 out_shardings=sharding.batch_sharded(mesh))


def _setup(config, num_classes=6):
  model = models.build_model(config.model, num_classes)
  tx = optimizers.make_optimizer(config)
  size = config.data.image_size
  state = create_train_state(model, tx, jax.random.PRNGKey(config.seed), (1, size, size, 3))
  return model, tx, state


def _host_copy(tree):
  return jax.tree.map(lambda x: np.array(x), tree)


@pytest.mark.parametrize("method,mix", [
    ("cowmix", "cow"), pytest.param("fixmatch", "box", marks=pytest.mark.slow),
    ("unimatch", "cow")])
def test_eight_devices_equal_one_device_for_the_same_batch_and_masks(method, mix, tiny_config,
                                                                     synthetic_batch):
  """Also for the strong views (colour draws on each device) and UniMatch's feature
  dropout (drawn from one key for the whole batch)."""
  tiny_config.method, tiny_config.mask.mix = method, mix
  tiny_config.confidence.mode = "none"  # keep the consistency term active from step 1
  tiny_config.pseudo_label_threshold = 0.0
  model, tx, state = _setup(tiny_config)
  batch = synthetic_batch(tiny_config)
  mesh8, mesh1 = sharding.make_mesh(8), sharding.make_mesh(1)
  # Masks and partners drawn on 8 devices (partners stay inside each shard), replayed on 1.
  draws = _host_copy(_make_sample_fn(tiny_config, mesh8)(
      jax.random.PRNGKey(1),
      jax.device_put(batch["unlabelled_image"], sharding.batch_sharded(mesh8))))
  assert np.all(draws["partner"] // 2 == np.arange(16) // 2), "partners inside shards of 2"
  results = []
  for mesh in (mesh8, mesh1):
    update = jax.jit(steps.make_update_fn(model, tx, tiny_config, mesh),
                     in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh),
                                   sharding.batch_sharded(mesh)))
    new_state, aux = update(jax.device_put(state, sharding.replicated(mesh)),
                            jax.device_put(batch, sharding.batch_sharded(mesh)),
                            jax.device_put(draws, sharding.batch_sharded(mesh)))
    results.append((_host_copy(new_state), _host_copy(aux)))
  (state8, aux8), (state1, aux1) = results
  assert aux1["consistency_loss"] > 0
  np.testing.assert_allclose(aux8["loss"], aux1["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state8), jax.tree.leaves(state1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # The step really moved the weights (the comparison is not between two no-ops).
  moved = [np.abs(a - np.asarray(b)).max()
           for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state.params))]
  assert max(moved) > 1e-4


def test_sharded_mask_generator_has_no_collectives(tiny_config):
  tiny_config.method = "cowmix"
  mesh = sharding.make_mesh(8)
  images = jnp.zeros((16, 64, 64, 3))
  sample = _make_sample_fn(tiny_config, mesh)
  hlo = sample.lower(jax.random.PRNGKey(0), images).compile().as_text()
  assert "fft" in hlo.lower(), "the compiled module should contain the FFT blur"
  for collective in COLLECTIVES:
    assert collective not in hlo, collective
  # Each device draws its own masks: no two shards are equal.
  masks = np.asarray(sample(jax.random.PRNGKey(0), images)["mask"])
  assert len({m.tobytes() for m in masks}) == 16


@pytest.mark.parametrize("method", sorted(mixing.PERTURBATIONS))
def test_every_method_trains_with_finite_losses(method, tiny_config, synthetic_batch):
  tiny_config.method = method
  tiny_config.confidence.mode = "none"
  tiny_config.pseudo_label_threshold = 0.0  # every pixel counts from the first step
  model, tx, state = _setup(tiny_config)
  initial = _host_copy(state.params)
  mesh = sharding.make_mesh(2)
  train_step = steps.make_train_step(model, tx, tiny_config, mesh)
  state = jax.device_put(state, sharding.replicated(mesh))
  for seed in range(3):
    batch = synthetic_batch(tiny_config, seed)
    state, aux = train_step(state, jax.device_put(batch, sharding.batch_sharded(mesh)))
    aux = _host_copy(aux)
    assert all(np.isfinite(v) for v in aux.values()), aux
    if method == "supervised":
      assert aux["consistency_loss"] == 0
    else:
      assert aux["consistency_loss"] > 0
  assert int(state.step) == 3
  changes = [np.abs(np.asarray(a) - b).max()
             for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(initial))]
  assert max(changes) > 0


def test_teacher_is_ema_of_student_after_a_step(tiny_config, synthetic_batch):
  tiny_config.method = "cowmix"
  tiny_config.teacher_alpha = 0.9
  model, tx, state = _setup(tiny_config)
  mesh = sharding.make_mesh(1)
  before = _host_copy(state)
  train_step = steps.make_train_step(model, tx, tiny_config, mesh)
  batch = jax.device_put(synthetic_batch(tiny_config), sharding.batch_sharded(mesh))
  state, _ = train_step(jax.device_put(state, sharding.replicated(mesh)), batch)
  after = _host_copy(state)
  for student, teacher_before, teacher_after in zip(
      jax.tree.leaves(after.params), jax.tree.leaves(before.teacher_params),
      jax.tree.leaves(after.teacher_params)):
    np.testing.assert_allclose(teacher_after, 0.9 * teacher_before + 0.1 * student,
                               rtol=1e-5, atol=1e-7)
  for student, teacher_before, teacher_after in zip(
      jax.tree.leaves(after.batch_stats), jax.tree.leaves(before.teacher_batch_stats),
      jax.tree.leaves(after.teacher_batch_stats)):
    np.testing.assert_allclose(teacher_after, 0.9 * teacher_before + 0.1 * student,
                               rtol=1e-5, atol=1e-7)


def test_running_bn_statistics_come_from_the_chosen_passes(tiny_config, synthetic_batch):
  tiny_config.method = "cowmix"
  model, tx, state = _setup(tiny_config)
  mesh = sharding.make_mesh(1)
  batch = synthetic_batch(tiny_config)

  def stats_after(images, stats):  # one training-mode pass, as the step makes it
    _, updates = model.apply({"params": state.params, "batch_stats": stats}, images,
                             train=True, mutable=["batch_stats"])
    return updates["batch_stats"]

  labelled_only = _host_copy(stats_after(batch["image"], state.batch_stats))
  perturbed_pass_too = _host_copy(stats_after(batch["unlabelled_image"],
                                              stats_after(batch["image"], state.batch_stats)))
  # The two differ (the unlabelled images are other images), so the check below can fail.
  assert any(not np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(
      jax.tree.leaves(perturbed_pass_too), jax.tree.leaves(labelled_only)))
  tiny_config.model.bn_running_stats = "labelled_pass"
  train_step = steps.make_train_step(model, tx, tiny_config, mesh)
  new_state, _ = train_step(
      jax.device_put(jax.tree.map(jnp.copy, state), sharding.replicated(mesh)),
      jax.device_put(batch, sharding.batch_sharded(mesh)))
  for got, want in zip(jax.tree.leaves(_host_copy(new_state.batch_stats)),
                       jax.tree.leaves(labelled_only)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  tiny_config.model.bn_running_stats = "unlabelled"
  with pytest.raises(ValueError, match="bn_running_stats='unlabelled'"):
    steps.make_train_step(model, tx, tiny_config, mesh)


def test_step_key_depends_on_seed_and_step(tiny_config, synthetic_batch):
  """Same seed, same first step; the second step draws new masks."""
  tiny_config.method = "cowmix"
  tiny_config.confidence.mode = "none"
  model, tx, state = _setup(tiny_config)
  state = _host_copy(state)  # the step donates its input: keep a host copy
  mesh = sharding.make_mesh(1)
  train_step = steps.make_train_step(model, tx, tiny_config, mesh)
  batch = jax.device_put(synthetic_batch(tiny_config), sharding.batch_sharded(mesh))
  losses = []
  for _ in range(2):
    s, aux_first = train_step(jax.device_put(state, sharding.replicated(mesh)), batch)
    s = s.replace(params=jax.device_put(state.params, sharding.replicated(mesh)))
    _, aux_second = train_step(s, batch)  # same weights, same batch, next step's key
    losses.append((float(aux_first["consistency_loss"]), float(aux_second["consistency_loss"])))
  assert losses[0] == losses[1], "deterministic"
  assert losses[0][0] != losses[0][1], "a new step draws new masks"


def test_eval_step_confusion_matches_numpy(tiny_config):
  model, _, state = _setup(tiny_config)
  mesh = sharding.make_mesh(2)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
  labels = rng.integers(0, 6, size=(4, 32, 32)).astype(np.int32)
  labels[0, :5] = 255
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  _, confusion = evaluator.make_predict_fn(model, mesh, 6)(
      variables, images, labels)
  predictions = np.asarray(model.apply(variables, images, train=False)).argmax(-1)
  valid = labels != 255
  expected = np.bincount(6 * labels[valid] + predictions[valid], minlength=36).reshape(6, 6)
  np.testing.assert_array_equal(confusion, expected)


@pytest.mark.parametrize("method", ["cowmix", "cutout", "aug"])
def test_padded_unlabelled_pixels_carry_no_consistency_loss(method, tiny_config,
                                                              synthetic_batch):
  tiny_config.method = method
  tiny_config.confidence.mode = "none"
  model, tx, state = _setup(tiny_config)
  mesh = sharding.make_mesh(2)
  update = jax.jit(steps.make_update_fn(model, tx, tiny_config, mesh))
  batch = synthetic_batch(tiny_config)
  draws = _make_sample_fn(tiny_config, mesh)(jax.random.PRNGKey(3),
                                                    batch["unlabelled_image"])
  host_state = _host_copy(state)

  def consistency(valid):
    _, aux = update(jax.device_put(host_state), dict(batch, unlabelled_valid=valid), draws)
    return float(aux["consistency_loss"])

  ones = np.ones_like(batch["unlabelled_valid"])
  without = dict(batch)
  del without["unlabelled_valid"]
  _, aux = update(jax.device_put(host_state), without, draws)
  np.testing.assert_allclose(consistency(ones), float(aux["consistency_loss"]), rtol=1e-6)
  assert consistency(ones) > 0
  assert consistency(np.zeros_like(ones)) == 0
  half = ones.copy()
  half[:, :, 16:] = 0  # the right half is padding
  assert 0 < consistency(half) < consistency(ones)


def _bilinear_upsample_numpy(x, factor):
  """``[B, h, w, C]`` -> ``[B, f h, f w, C]`` by hand: output pixel ``o`` samples input
  coordinate ``(o + 0.5) / f - 0.5`` (half-pixel centres), clamped at the borders."""

  def weights(size):
    coords = np.clip((np.arange(size * factor) + 0.5) / factor - 0.5, 0, size - 1)
    low = np.floor(coords).astype(int)
    high = np.minimum(low + 1, size - 1)
    matrix = np.zeros((size * factor, size))
    np.add.at(matrix, (np.arange(size * factor), low), 1 - (coords - low))
    np.add.at(matrix, (np.arange(size * factor), high), coords - low)
    return matrix

  rows, cols = weights(x.shape[1]), weights(x.shape[2])
  return np.einsum("ih,jw,bhwc->bijc", rows, cols, x)


def test_logits_are_resized_to_full_resolution_labels(tiny_config):
  model, _, state = _setup(tiny_config)
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
  labels = np.zeros((2, 20, 28), np.int32)
  np.testing.assert_allclose(steps.resize_to_labels(jnp.asarray(logits), labels),
                             _bilinear_upsample_numpy(logits, 4), atol=1e-5)
  same = steps.resize_to_labels(jnp.asarray(logits), labels[:, :5, :7])
  np.testing.assert_array_equal(same, logits)
  # The eval step scores upsampled logits against the full-resolution labels.
  mesh = sharding.make_mesh(1)
  images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  labels = rng.integers(0, 6, size=(2, 64, 64)).astype(np.int32)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  _, confusion = evaluator.make_predict_fn(model, mesh, 6)(
      variables, images, labels)
  small = np.asarray(model.apply(variables, images, train=False))
  predictions = _bilinear_upsample_numpy(small, 2).argmax(-1)
  expected = np.bincount(6 * labels.ravel() + predictions.ravel(), minlength=36).reshape(6, 6)
  np.testing.assert_array_equal(confusion, expected)


class _LinearHead(nn.Module):
  """Logits = a 1x1 convolution of the input: every logit of a pass is known in numpy.
  With a feature_dropout_key the input itself is the "feature map" that is dropped."""

  num_classes: int

  @nn.compact
  def __call__(self, x, train=False, feature_dropout_key=None):
    if feature_dropout_key is not None:
      x = with_dropped_copy({"x": x}, feature_dropout_key, ("x",))["x"]
    logits = nn.Dense(self.num_classes)(x)
    return split_if_doubled(logits, feature_dropout_key is not None)


def _softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _ce(logits, labels):
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs = log_probs - np.log(np.exp(log_probs).sum(-1, keepdims=True))
  return -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]


def _unimatch_loss_numpy(method, weights, x, y, weak, valid, strong_unmixed, boxes, partner,
                         dropped, threshold):
  """One step's loss transcribed from UniMatch's unimatch.py / fixmatch.py with numpy:
  the student's weak prediction (no gradient) gives conf_u_w and mask_u_w; each strong
  view pastes the mix image's strong view and pseudo-labels where its box is 1; each
  unlabelled loss is CE * ((conf >= thresh) & (ignore != 255)), summed and divided by
  the count of (ignore != 255)."""
  w, b = weights

  def head(images):
    return images @ w + b

  loss_x = _ce(head(x), y).mean()
  pred_u_w = head(weak)
  conf_u_w, mask_u_w = _softmax(pred_u_w).max(-1), pred_u_w.argmax(-1)
  view_losses = []
  for view in range(strong_unmixed.shape[1]):
    box = boxes[:, view] == 1
    img = strong_unmixed[:, view].copy()
    img[box] = strong_unmixed[partner, view][box]
    mask_cutmixed, conf_cutmixed, ignore_cutmixed = mask_u_w.copy(), conf_u_w.copy(), valid.copy()
    mask_cutmixed[box] = mask_u_w[partner][box]
    conf_cutmixed[box] = conf_u_w[partner][box]
    ignore_cutmixed[box] = valid[partner][box]
    loss = _ce(head(img), mask_cutmixed) * ((conf_cutmixed >= threshold) & (ignore_cutmixed == 1))
    view_losses.append(loss.sum() / (ignore_cutmixed == 1).sum())
  if method == "fixmatch":
    return (loss_x + view_losses[0]) / 2.0
  loss_fp = _ce(head(dropped), mask_u_w) * ((conf_u_w >= threshold) & (valid == 1))
  loss_fp = loss_fp.sum() / (valid == 1).sum()
  return (loss_x + 0.25 * view_losses[0] + 0.25 * view_losses[1] + 0.5 * loss_fp) / 2.0


@pytest.mark.parametrize("method,mix,complementary", [
    ("fixmatch", "box", False), pytest.param("fixmatch", "cow", False, marks=pytest.mark.slow),
    pytest.param("unimatch", "box", False, marks=pytest.mark.slow),
    pytest.param("unimatch", "cow", False, marks=pytest.mark.slow), ("unimatch", "cow", True)])
def test_strong_view_loss_equals_unimatchs_loss_in_numpy(method, mix, complementary,
                                                          tiny_config, synthetic_batch):
  """The step's loss on a linear head (logits known in numpy), with padding in the weak
  views, equals UniMatch's loss transcribed with numpy, to 1e-6."""
  from cowmix_jax import strong_augment
  from cowmix_jax.models.feature_dropout import drop_channels

  config = tiny_config
  config.method, config.mask.mix, config.mask.complementary = method, mix, complementary
  config.pseudo_label_threshold = 0.6
  config.mask.mix_probability = 0.7
  model = _LinearHead(6)
  batch = synthetic_batch(config)
  valid = np.ones(batch["unlabelled_valid"].shape, np.float32)
  valid[::3, -7:] = 0  # padded rows at the bottom of every third crop
  batch["unlabelled_valid"] = valid
  tx = optimizers.make_optimizer(config)
  state = create_train_state(model, tx, jax.random.PRNGKey(3), (1, 32, 32, 3))
  # Logits spread enough that some pixels pass the threshold and some do not.
  state = state.replace(params=jax.tree.map(lambda p: 6 * p, state.params))
  mesh = sharding.make_mesh(1)
  perturbation = mixing.make_perturbation(config)
  sample = steps.make_perturbation_fns(perturbation, mesh).sample
  draws = _host_copy(sample(jax.random.PRNGKey(4), batch["unlabelled_image"]))
  _, aux = jax.jit(steps.make_update_fn(model, tx, config, mesh))(state, batch, draws)

  weak = batch["unlabelled_image"]
  rgb = weak * 0.25 + 0.5  # the "grey" normalisation
  views = 2 if method == "unimatch" else 1
  strong_unmixed = np.stack([(np.asarray(strong_augment.apply(
      rgb, {k: v[:, view] for k, v in draws["colour"].items()})) - 0.5) / 0.25
      for view in range(views)], axis=1)
  key = jax.random.fold_in(jax.random.fold_in(state.key, state.step),
                           steps.FEATURE_DROPOUT_STREAM)
  dropped = np.asarray(drop_channels({"x": jnp.asarray(weak)}, key)["x"])
  params = state.params["Dense_0"]
  expected = _unimatch_loss_numpy(
      method, (np.asarray(params["kernel"]), np.asarray(params["bias"])), batch["image"],
      batch["label"], weak, valid, strong_unmixed, draws["mask"], draws["partner"], dropped,
      config.pseudo_label_threshold)
  assert float(aux["loss"]) == pytest.approx(expected, rel=1e-6, abs=1e-6)
  masks = draws["mask"]
  assert set(np.unique(masks)) == {0.0, 1.0}
  if complementary:
    np.testing.assert_array_equal(masks[:, 1], 1 - masks[:, 0])
  counted = float(aux["confidence"])
  assert 0.05 < counted < 0.95, "the threshold should split the pixels"


def test_pseudo_label_source_follows_config_teacher(tiny_config):
  tiny_config.method = "fixmatch"
  assert steps.pseudo_label_source(tiny_config) == "student"  # auto: UniMatch V1
  tiny_config.teacher = "ema"
  assert steps.pseudo_label_source(tiny_config) == "ema"
  tiny_config.method, tiny_config.teacher = "cowmix", "auto"
  assert steps.pseudo_label_source(tiny_config) == "ema"
  tiny_config.teacher = "student"
  with pytest.raises(ValueError, match="config.teacher=student: config.method=cowmix"):
    steps.pseudo_label_source(tiny_config)
  tiny_config.teacher = "mean"
  with pytest.raises(ValueError, match="config.teacher='mean'"):
    steps.pseudo_label_source(tiny_config)


def test_ema_teacher_of_strong_view_methods_warms_up_as_unimatch_v2(tiny_config,
                                                                    synthetic_batch):
  """decay = min(1 - 1/(t + 1), teacher_alpha): 0 at the first step (the teacher becomes
  the student), 0.5 at the second; the mean-teacher methods keep teacher_alpha."""
  tiny_config.method, tiny_config.teacher, tiny_config.teacher_alpha = "fixmatch", "ema", 0.996
  decays = [float(steps.teacher_decay(tiny_config, jnp.asarray(t))) for t in (0, 1, 9, 10**4)]
  np.testing.assert_allclose(decays, [0.0, 0.5, 0.9, 0.996], rtol=1e-6)
  model, tx, state = _setup(tiny_config)
  mesh = sharding.make_mesh(1)
  train_step = steps.make_train_step(model, tx, tiny_config, mesh)
  batch = jax.device_put(synthetic_batch(tiny_config), sharding.batch_sharded(mesh))
  state, _ = train_step(jax.device_put(state, sharding.replicated(mesh)), batch)
  for student, teacher in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.teacher_params)):
    np.testing.assert_array_equal(student, teacher)
  tiny_config.method = "cowmix"
  assert steps.teacher_decay(tiny_config, jnp.asarray(0)) == 0.996
  tiny_config.method, tiny_config.teacher = "fixmatch", "student"
  assert steps.teacher_decay(tiny_config, jnp.asarray(0)) == 0.996


def test_visualise_shows_each_strong_view_with_its_mask_and_pseudo_labels(tiny_config,
                                                                          synthetic_batch):
  """unimatch with complementary cow masks: one picture set per view; each pixel shows
  the image's own pseudo-label in exactly one view, and those equal the argmax of the
  student's prediction on the weak view (the V1 source, in evaluation mode)."""
  from cowmix_jax import reporting

  tiny_config.method, tiny_config.mask.mix, tiny_config.mask.complementary = (
      "unimatch", "cow", True)
  model, _, state = _setup(tiny_config)
  mesh = sharding.make_mesh(1)
  batch = synthetic_batch(tiny_config)
  visuals = _host_copy(steps.make_visualise_fn(model, tiny_config, mesh)(state, batch))
  assert visuals["student_input"].shape == (16, 2, 32, 32, 3)
  masks, targets = visuals["mask"], visuals["teacher_target"]
  np.testing.assert_array_equal(masks[:, 0] + masks[:, 1], 1.0)
  own = np.where(masks[:, 0] == 0, targets[:, 0], targets[:, 1])
  weak = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                     batch["unlabelled_image"], train=False)
  np.testing.assert_array_equal(own, np.argmax(np.asarray(weak), -1))
  pictures = reporting.visual_summaries(visuals, batch, reporting.default_palette(6), "grey")
  per_view = ["student_input", "teacher_target", "student_prediction", "loss_mask", "mask"]
  expected = {"labelled/image", "labelled/ground_truth", "labelled/teacher_prediction",
              "unlabelled/image"} | {f"unlabelled/{name}_view{v}" for name in per_view
                                     for v in (1, 2)}
  assert set(pictures) == expected
  assert pictures["unlabelled/mask_view1"].shape == (4, 32, 32, 3)
