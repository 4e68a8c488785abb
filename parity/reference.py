"""The PyTorch reference: the original's nets, loss and loops, written the original's way (NCHW, OIHW kernels).

  TeacherNet   conv1 (3->12), conv2..conv12 (12->12), 3x3 padding 1, with bias; forward exactly as the seed:
               conv1, conv2, conv3, pool, conv4, conv5, conv6, pool, conv7, conv8, conv9, pool, conv10, conv11,
               conv12, pool, view(-1, 12*s*s), fc. s = image_size // 16 (4 for the original's 64x64 inputs);
               num_classes defaults to the original's 200.
  StudentNet   our student (README): conv1..conv4, each followed by the 2x2 pool; view; fc.
  DistillKL    RepDistiller's / the original's: KLDivLoss(reduction="batchmean")(LogSoftmax(s/T), Softmax(t/T)) * T*T.

The loops (`train_ce`, `train_kd`, `train_kd_ema`) are the original's three, with the per-epoch validation it does;
they take their batches from the caller so that both frameworks see the same batches in the same order.
`StudentWeightsEMA` is the student-weights average (timm's ModelEmaV2), which the seed does not have but kdjax
offers (ema.student_decay).
"""

import copy
import dataclasses
import math
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class TeacherNet(nn.Module):
  """The original's teacher. `activation="relu"` applies ReLU after every conv (kdjax's model.activation)."""

  def __init__(self, num_classes: int = 200, image_size: int = 64, activation: str = "none"):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
    self.conv2 = nn.Conv2d(12, 12, 3, padding=1)
    self.conv3 = nn.Conv2d(12, 12, 3, padding=1)
    self.conv4 = nn.Conv2d(12, 12, 3, padding=1)
    self.conv5 = nn.Conv2d(12, 12, 3, padding=1)
    self.conv6 = nn.Conv2d(12, 12, 3, padding=1)
    self.conv7 = nn.Conv2d(12, 12, 3, padding=1)
    self.conv8 = nn.Conv2d(12, 12, 3, padding=1)
    self.conv9 = nn.Conv2d(12, 12, 3, padding=1)
    self.conv10 = nn.Conv2d(12, 12, 3, padding=1)
    self.conv11 = nn.Conv2d(12, 12, 3, padding=1)
    self.conv12 = nn.Conv2d(12, 12, 3, padding=1)
    self.pool = nn.MaxPool2d(2, 2)
    self.side = image_size // 16
    self.fc = nn.Linear(12 * self.side * self.side, num_classes)
    self.act = _activation(activation)

  def forward(self, x):
    act = self.act
    x = act(self.conv1(x))
    x = act(self.conv2(x))
    x = act(self.conv3(x))
    x = self.pool(x)
    x = act(self.conv4(x))
    x = act(self.conv5(x))
    x = act(self.conv6(x))
    x = self.pool(x)
    x = act(self.conv7(x))
    x = act(self.conv8(x))
    x = act(self.conv9(x))
    x = self.pool(x)
    x = act(self.conv10(x))
    x = act(self.conv11(x))
    x = act(self.conv12(x))
    x = self.pool(x)
    x = x.view(-1, 12 * self.side * self.side)
    return self.fc(x)


class StudentNet(nn.Module):
  """Our student: four 3x3 convs of 12 channels, each followed by the 2x2 pool; then fc."""

  def __init__(self, num_classes: int = 200, image_size: int = 64, activation: str = "none"):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
    self.conv2 = nn.Conv2d(12, 12, 3, padding=1)
    self.conv3 = nn.Conv2d(12, 12, 3, padding=1)
    self.conv4 = nn.Conv2d(12, 12, 3, padding=1)
    self.pool = nn.MaxPool2d(2, 2)
    self.side = image_size // 16
    self.fc = nn.Linear(12 * self.side * self.side, num_classes)
    self.act = _activation(activation)

  def forward(self, x):
    act = self.act
    x = self.pool(act(self.conv1(x)))
    x = self.pool(act(self.conv2(x)))
    x = self.pool(act(self.conv3(x)))
    x = self.pool(act(self.conv4(x)))
    x = x.view(-1, 12 * self.side * self.side)
    return self.fc(x)


class ConvNet(nn.Module):
  """Any kdjax.nets.models.ConvNet in PyTorch (tests build pairs whose shapes mismatch in the middle)."""

  def __init__(self, conv_features: Sequence[int], pool_after: Sequence[int], num_classes: int,
               image_size: int, activation: str = "none", in_channels: int = 3):
    super().__init__()
    self.pool_after = tuple(pool_after)
    channels = in_channels
    for index, features in enumerate(conv_features, start=1):
      setattr(self, f"conv{index}", nn.Conv2d(channels, features, 3, padding=1))
      channels = features
    self.num_convs = len(conv_features)
    self.pool = nn.MaxPool2d(2, 2)
    side = image_size // 2 ** len(self.pool_after)
    self.fc = nn.Linear(channels * side * side, num_classes)
    self.act = _activation(activation)

  def forward(self, x):
    for index in range(1, self.num_convs + 1):
      x = self.act(getattr(self, f"conv{index}")(x))
      if index in self.pool_after:
        x = self.pool(x)
    return self.fc(torch.flatten(x, 1))


NETS = {"teacher": TeacherNet, "student": StudentNet}


def _activation(name: str) -> Callable:
  if name == "none":
    return lambda x: x
  if name == "relu":
    return F.relu
  raise ValueError(f"model.activation must be 'none' or 'relu', got {name!r}")


class DistillKL(nn.Module):
  """KL(softmax(t/T) || softmax(s/T)), summed over classes, averaged over the batch, times T*T."""

  def __init__(self, T: float):
    super().__init__()
    self.T = T
    self.log_softmax = nn.LogSoftmax(dim=1)
    self.softmax = nn.Softmax(dim=1)
    self.kl = nn.KLDivLoss(reduction="batchmean")

  def forward(self, y_s, y_t):
    p_s = self.log_softmax(y_s / self.T)
    p_t = self.softmax(y_t / self.T)
    return self.kl(p_s, p_t) * self.T * self.T


def seed_ema_update(student: nn.Module, teacher: nn.Module, alpha: float) -> None:
  """The original's EMA: pull the teacher toward the student where zip(parameters()) meets equal shapes."""
  with torch.no_grad():
    for s_param, t_param in zip(student.parameters(), teacher.parameters()):
      if s_param.shape == t_param.shape:
        t_param.data = alpha * t_param.data + (1 - alpha) * s_param.data


class StudentWeightsEMA:
  """timm's ModelEmaV2: an averaged copy of the model, ema = decay*ema + (1-decay)*model after each step."""

  def __init__(self, model: nn.Module):
    self.module = copy.deepcopy(model).eval()

  @torch.no_grad()
  def update(self, model: nn.Module, decay: float) -> None:
    for ema_value, value in zip(self.module.state_dict().values(), model.state_dict().values()):
      ema_value.copy_(decay * ema_value + (1.0 - decay) * value)


def warmup_decay(decay: float, update_count: int) -> float:
  """Mean-teacher warm-up: min(1 - 1/(t+1), decay) for the t-th update (t >= 1)."""
  return min(1.0 - 1.0 / (update_count + 1.0), decay)


def make_optimizer(parameters, opt_config, total_steps: int):
  """(optimizer, scheduler or None) from kdjax's optimizer config, in PyTorch's own classes."""
  name, lr, wd = opt_config.name, opt_config.learning_rate, opt_config.weight_decay
  if name == "sgd":
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=opt_config.momentum, weight_decay=wd,
                                nesterov=opt_config.nesterov)
  elif name == "adam":
    optimizer = torch.optim.Adam(parameters, lr=lr, betas=(opt_config.b1, opt_config.b2),
                                 eps=opt_config.eps, weight_decay=wd)
  elif name == "adamw":
    optimizer = torch.optim.AdamW(parameters, lr=lr, betas=(opt_config.b1, opt_config.b2),
                                  eps=opt_config.eps, weight_decay=wd)
  else:
    raise ValueError(f"optimizer.name must be sgd, adam or adamw, got {name!r}")
  if opt_config.schedule == "constant":
    return optimizer, None
  if opt_config.schedule == "cosine":
    # Closed-form cosine to 0 over the phase, stepped once per batch (optax.cosine_decay_schedule).
    steps = max(total_steps, 1)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps)))
  raise ValueError(f"optimizer.schedule must be constant or cosine, got {opt_config.schedule!r}")


# ----------------------------------------------------------------------------------------------- the loops

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # (float32 NCHW normalised images, int64 labels)


@dataclasses.dataclass
class EpochLog:
  """One epoch of a loop: every step's loss (loss.item()), their mean (what the seed prints), validation."""

  step_losses: list
  train_loss: float
  val_correct: int | None = None
  val_top1: float | None = None


@dataclasses.dataclass
class LoopOptions:
  """What the loops need besides nets, optimizer and batches. Decays follow kdjax's ema.* fields."""

  temperature: float = 4.0
  kd_weight: float = 1.0
  ce_weight: float = 0.0
  teacher_decay: float = 0.999     # the original's alpha
  student_decay: float = 0.0       # > 0: keep a StudentWeightsEMA, updated after each step
  warmup: bool = False


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
  model.eval()
  return torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def validate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[int, float]:
  """(correct count, top-1 %) on a whole split, as the original's per-epoch check."""
  correct = int((predict(model, images).argmax(dim=1) == labels).sum())
  return correct, 100.0 * correct / len(labels)


def _run(epochs: Sequence[Batches], step: Callable, model, validation, after_step=None) -> list[EpochLog]:
  logs = []
  count = 0
  for batches in epochs:
    model.train()
    losses = []
    for images, labels in batches:
      count += 1
      losses.append(step(images, labels, count))
      if after_step is not None:
        after_step(count)
    log = EpochLog(step_losses=losses, train_loss=sum(losses) / max(len(losses), 1))
    if validation is not None:
      log.val_correct, log.val_top1 = validate(model, *validation)
    logs.append(log)
  return logs


def train_ce(model, optimizer, epochs: Sequence[Batches], validation=None, scheduler=None,
             options: LoopOptions = LoopOptions(), student_ema: StudentWeightsEMA | None = None):
  """The original's teacher loop (cross-entropy on labels); also kdjax's student_ce."""
  criterion = nn.CrossEntropyLoss()

  def step(images, labels, count):
    optimizer.zero_grad()
    outputs = model(images)
    loss = criterion(outputs, labels)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
      scheduler.step()
    return loss.item()

  return _run(epochs, step, model, validation, _ema_hook(model, student_ema, options))


def train_kd(student, teacher, optimizer, epochs: Sequence[Batches], validation=None, scheduler=None,
             options: LoopOptions = LoopOptions(), student_ema: StudentWeightsEMA | None = None):
  """The original's KD loop against a detached, frozen teacher."""
  criterion_kd, criterion_ce = DistillKL(options.temperature), nn.CrossEntropyLoss()
  teacher.eval()

  def step(images, labels, count):
    with torch.no_grad():
      teacher_outputs = teacher(images)
    optimizer.zero_grad()
    outputs = student(images)
    loss = _student_loss(outputs, teacher_outputs, labels, criterion_kd, criterion_ce, options)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
      scheduler.step()
    return loss.item()

  return _run(epochs, step, student, validation, _ema_hook(student, student_ema, options))


def train_kd_ema(student, teacher, optimizer, epochs: Sequence[Batches], validation=None, scheduler=None,
                 options: LoopOptions = LoopOptions(), student_ema: StudentWeightsEMA | None = None):
  """The original's EMA loop: teacher logits (no_grad), student logits, loss, the original's EMA of the teacher from the
  student's current (pre-step) parameters, then backward and step. `teacher` is updated in place."""
  criterion_kd, criterion_ce = DistillKL(options.temperature), nn.CrossEntropyLoss()
  teacher.eval()

  def step(images, labels, count):
    with torch.no_grad():
      teacher_outputs = teacher(images)
    optimizer.zero_grad()
    outputs = student(images)
    loss = _student_loss(outputs, teacher_outputs, labels, criterion_kd, criterion_ce, options)
    alpha = warmup_decay(options.teacher_decay, count) if options.warmup else options.teacher_decay
    seed_ema_update(student, teacher, alpha)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
      scheduler.step()
    return loss.item()

  return _run(epochs, step, student, validation, _ema_hook(student, student_ema, options))


def _student_loss(outputs, teacher_outputs, labels, criterion_kd, criterion_ce, options: LoopOptions):
  loss = options.kd_weight * criterion_kd(outputs, teacher_outputs)
  if options.ce_weight:
    loss = loss + options.ce_weight * criterion_ce(outputs, labels)
  return loss


def _ema_hook(model, student_ema: StudentWeightsEMA | None, options: LoopOptions):
  if student_ema is None:
    return None

  def after_step(count):
    decay = warmup_decay(options.student_decay, count) if options.warmup else options.student_decay
    student_ema.update(model, decay)

  return after_step
