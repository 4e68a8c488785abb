"""`--profile`: where a CE step's time goes, op by op, beside XLA's other ways and PyTorch's (channels_last).

Each op of the step (convs forward, input and weight gradients; pools forward and backward; the dense layer; the loss;
Adam) is jitted and timed alone at the step's shapes (median of repeats), times its count in the step; "other" is
the whole step (steps.kdjax_step) minus their sum. PyTorch's ops run in a child process (torch_peer, parity/speed.py).
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.config import defaults as config_lib
from kdjax.config import nets as config_nets
from kdjax.nets import block_conv
from kdjax.nets import models
from kdjax.nets import onednn_pool
from kdjax.nets import pooling
from kdjax.tools.benchmark import steps as steps_lib
from kdjax.tools.benchmark import timing
from kdjax.tools.benchmark import torch_peer
from kdjax.training import losses
from kdjax.training import xla

# --profile's steps: a CE step, by the net it trains.
PROFILE_KINDS = {"teacher_ce": "teacher", "student_ce": "student"}


def _conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def step_ops(kind: str, batch_size: int, image_size: int, num_classes: int) -> list[dict]:
  """The ops of the CE step `kind` (PROFILE_KINDS) with their shapes and counts: convs (forward, input grad,
  weight grad), pools (forward, backward), the dense layer, the loss, Adam. Each op names its net."""
  name = PROFILE_KINDS[kind]
  net = models.MODEL_FACTORIES[name](num_classes)
  ops, size, channels = [], image_size, 3
  convs: dict[tuple, list[int]] = {}
  for index, features in enumerate(net.conv_features, start=1):
    convs.setdefault((size, channels, features), []).append(index)
    channels = features
    if index in net.pool_after:
      ops.append({"op": "pool", "shape": (batch_size, size, size, channels), "layers": [index], "net": name})
      size //= 2
  for (side, cin, cout), layers in convs.items():
    shape = (batch_size, side, side, cin)
    flops = 2 * batch_size * side * side * cin * cout * 9
    ops.append({"op": "conv forward", "shape": shape, "cout": cout, "layers": layers, "flops": flops, "net": name})
    input_grad_layers = [layer for layer in layers if layer != 1]
    if input_grad_layers:
      ops.append({"op": "conv input grad", "shape": shape, "cout": cout, "layers": input_grad_layers,
                  "flops": flops, "net": name})
    ops.append({"op": "conv weight grad", "shape": shape, "cout": cout, "layers": layers, "flops": flops,
                "net": name})
  features = size * size * channels
  ops.append({"op": "dense (fwd + both grads)", "shape": (batch_size, features), "cout": num_classes,
              "layers": ["fc"], "flops": 3 * 2 * batch_size * features * num_classes, "net": name})
  ops.append({"op": "loss (softmax CE, fwd + grad)", "shape": (batch_size, num_classes), "layers": ["loss"],
              "net": name})
  ops.append({"op": "Adam update", "shape": None, "layers": ["all"], "net": name})
  return ops


def op_timers(op: dict, num_classes: int, options_now, options_default, repeats: int,
               onednn: bool = False) -> list[tuple]:
  """[(variant, seconds)] for one op: kdjax's way, and XLA's default / nn.max_pool's way where they differ.
  onednn: kdjax runs its convs in oneDNN (kdjax.nets.onednn_conv) and their pools too (kdjax.nets.onednn_pool):
  that is kdjax's way, XLA's ways beside it."""
  if onednn and op["op"].startswith("conv"):
    from kdjax.nets import onednn_conv

    xla_ways = op_timers(op, num_classes, options_now, options_default, repeats)
    bias = jnp.zeros(op["cout"], jnp.float32)
    on_onednn = lambda x, k: onednn_conv.conv(x, k, bias)
    seconds = _conv_op_seconds(op, on_onednn, options_now, repeats)
    # XLA's ways: "xla_path" is what speed.conv "xla" runs (blocks or nn.Conv), then nn.Conv, XLA's defaults
    return [("kdjax", seconds), *(("xla_path" if label == "kdjax" else f"xla:{label}", value)
                                  for label, value in xla_ways)]
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape).astype(np.float32))
  compile_with = lambda fn, options: jax.jit(fn, compiler_options=options)
  name = op["op"]
  if name.startswith("conv"):
    n, h, w, cin = op["shape"]
    x, kernel, grad = normal(n, h, w, cin), normal(3, 3, cin, op["cout"]), normal(n, h, w, op["cout"])
    way = {"conv forward": lambda conv: lambda x, k, g: conv(x, k),
           "conv input grad": lambda conv: lambda x, k, g: jax.vjp(lambda x_: conv(x_, k), x)[1](g)[0],
           "conv weight grad": lambda conv: lambda x, k, g: jax.vjp(lambda k_: conv(x, k_), k)[1](g)[0]}[name]
    time_it = lambda fn, options, *args: timing.median_seconds(lambda f=compile_with(fn, options): f(*args), repeats)
    plain = [(label, time_it(way(_conv), options, x, kernel, grad))
             for label, options in (("nn.Conv", options_now), ("xla_default", options_default))]
    per_net = config_lib.default_config().speed.get(f"{op.get('net', 'teacher')}_conv")
    if not (per_net == "blocks" and block_conv.supported(h, w)):
      return [("kdjax", plain[0][1]), plain[1]]
    # One layer as the blocked teacher runs it: aligned blocks in, offset blocks out (pad, 2x2 conv, mask).
    bias = jnp.zeros(op["cout"], jnp.float32)
    blocked = lambda x_, k_: block_conv.conv(x_, k_, bias, "aligned")[0]
    offset_grad = normal(n, h // 2 + 1, w // 2 + 1, 4 * op["cout"])
    return [("kdjax", time_it(way(blocked), options_now, block_conv.to_aligned(x), kernel, offset_grad)), *plain]
  if name == "pool":
    x = normal(*op["shape"])
    n, h, w, c = op["shape"]
    grad = normal(n, h // 2, w // 2, c)
    pooled = pooling.max_pool_2x2(x)
    # kdjax's backward from its residuals (x, pooled), as the step runs it; nn.max_pool's from x alone (its
    # gradient, select-and-scatter over x, needs no forward values).
    backward = {"kdjax": (compile_with(pooling._backward, options_now), ((x, pooled), grad)),
                "nn.max_pool": (compile_with(lambda x, g: jax.vjp(models.POOLS["reduce_window"], x)[1](g)[0],
                                             options_now), (x, grad))}
    ways = [("kdjax", pooling.max_pool_2x2), ("nn.max_pool", models.POOLS["reduce_window"])]
    if onednn:  # after a oneDNN conv kdjax pools in oneDNN too (kdjax.nets.onednn_pool); XLA's pool beside it
      ways = [("kdjax", onednn_pool.max_pool_2x2), ("xla_path", pooling.max_pool_2x2), ways[1]]
      backward["xla_path"] = backward.pop("kdjax")
      workspace = jax.jit(onednn_pool.forward_with_workspace)(x)[1]   # the backward's residual
      backward["kdjax"] = (jax.jit(onednn_pool.backward_from_workspace), (workspace, grad))
    timings = []
    for label, pool in ways:
      forward = compile_with(pool, options_now)
      fn, args = backward[label]
      timings.append((label, timing.median_seconds(lambda: forward(x), repeats),
                      timing.median_seconds(lambda fn=fn, args=args: fn(*args), repeats)))
    return timings
  if name.startswith("dense"):
    n, features = op["shape"]
    x, kernel, grad = normal(n, features), normal(features, num_classes), normal(n, num_classes)
    fn = lambda x, k, g: (x @ k, g @ k.T, x.T @ g)
    return [(label, timing.median_seconds(lambda f=compile_with(fn, options): f(x, kernel, grad), repeats))
            for label, options in (("kdjax", options_now), ("xla_default", options_default))]
  if name.startswith("loss"):
    logits, labels = normal(*op["shape"]), jnp.asarray(rng.integers(0, num_classes, op["shape"][0]))
    fn = compile_with(jax.value_and_grad(losses.cross_entropy), options_now)
    return [("kdjax", timing.median_seconds(lambda: fn(logits, labels), repeats))]
  if name == "Adam update":
    setup = steps_lib.study_setup(config_lib.default_config(), steps_lib.random_batch(2, 64, num_classes),
                                  num_classes)   # the study's initial weights of a 64x64 input
    params = setup.initial_params[op.get("net", "teacher")]
    optimizer = setup.optimizer()
    opt_state = optimizer.init(params)

    def update(grads, opt_state, params):
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return jax.tree_util.tree_map(lambda p, u: p + u, params, updates), opt_state

    fn = compile_with(update, options_now)
    return [("kdjax", timing.median_seconds(lambda: fn(params, opt_state, params), repeats))]
  raise ValueError(name)


def _conv_op_seconds(op: dict, conv: Callable, options, repeats: int) -> float:
  """Median seconds of one conv op ("conv forward" / "conv input grad" / "conv weight grad") of `conv(x, k)`."""
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape).astype(np.float32))
  n, h, w, cin = op["shape"]
  x, kernel, grad = normal(n, h, w, cin), normal(3, 3, cin, op["cout"]), normal(n, h, w, op["cout"])
  fn = {"conv forward": lambda x, k, g: conv(x, k),
        "conv input grad": lambda x, k, g: jax.vjp(lambda x_: conv(x_, k), x)[1](g)[0],
        "conv weight grad": lambda x, k, g: jax.vjp(lambda k_: conv(x, k_), k)[1](g)[0]}[op["op"]]
  compiled = jax.jit(fn, compiler_options=options)
  return timing.median_seconds(lambda: compiled(x, kernel, grad), repeats)


def profile(batch_size: int, image_size: int, num_classes: int, steps: int, repeats: int,
            with_torch: bool = True, kind: str = "teacher_ce") -> dict:
  """Where the CE step `kind`'s time goes (PROFILE_KINDS): each op compiled and timed alone at the step's
  shapes, times its count in the step, against the whole step timed in the same run; GFLOP/s per op."""

  load_before = timing.load_average()
  options_now, options_default = xla.compiler_options(True), None
  onednn = config_nets.conv_engine(config_lib.default_config(), PROFILE_KINDS[kind])[0] != "xla"
  batch = steps_lib.random_batch(batch_size, image_size, num_classes)
  step = steps_lib.kdjax_step(kind, batch, num_classes)
  step_seconds = timing.time_alternating({"step": step}, steps, repeats)["step"]["step_s"]
  rows = []
  op_repeats = max(7, 2 * repeats)  # ops alone take milliseconds: more repeats for a steadier median
  # PyTorch's ops run in a child process (its allocator "tuned"), whose OpenMP workers spin there after each op
  # rather than beside kdjax's ops in this process.
  peer = torch_peer.Peer("tuned") if with_torch else None
  thread_counts = sorted({1, timing.core_count()})
  try:
    for op in step_ops(kind, batch_size, image_size, num_classes):
      count = len(op["layers"])
      timings = op_timers(op, num_classes, options_now, options_default, op_repeats, onednn)
      torch_timings = peer.op_timers(op, num_classes, op_repeats, thread_counts) if peer else {}
      if op["op"] == "pool":
        timings += [(label, *values) for label, values in torch_timings.items()]
        rows.append(_profile_row("pool forward", op, count, {label: fwd for label, fwd, _ in timings}, None))
        rows.append(_profile_row("pool backward", op, count, {label: bwd for label, _, bwd in timings}, None))
        continue
      rows.append(_profile_row(op["op"], op, count, dict(timings, **torch_timings), op.get("flops")))
  finally:
    if peer:
      peer.close()
  accounted = sum(row["total_ms"] for row in rows)
  rows.sort(key=lambda row: -row["total_ms"])
  return {"mode": "profile", "kind": kind, **timing.shapes(batch_size, image_size, num_classes, steps, repeats),
          "method": "each op jitted and timed alone (median of repeats) at the step's shapes, times its count in "
                    "the step; 'other' is the whole step minus their sum (elementwise fusions: normalisation, "
                    "bias adds and their gradients, copies; dispatch). Beside each: XLA's default / nn.max_pool, "
                    "and PyTorch channels_last (oneDNN) on the same op at its faster thread count, in a child process "
                    "(tuned glibc); where kdjax's "
                    "convs run in oneDNN (kdjax.nets.onednn_conv) and their pools too (kdjax.nets.onednn_pool), "
                    "kdjax's way is that and xla_path / xla:* are XLA's ways",
          "step_ms": 1e3 * step_seconds, "accounted_ms": accounted, "other_ms": 1e3 * step_seconds - accounted,
          "step_gflops": step.flops_per_image * batch_size / step_seconds / 1e9, "ops": rows,
          "xla_options": options_now, "load_average_before": load_before, "load_average_after": timing.load_average(),
          "environment": timing.environment()}


def _profile_row(name: str, op: dict, count: int, seconds: dict, flops) -> dict:
  now = seconds["kdjax"]
  row = {"op": name, "shape": list(op["shape"]) if op["shape"] else None, "cout": op.get("cout"),
         "layers": op["layers"], "count": count, "ms": 1e3 * now, "total_ms": 1e3 * now * count,
         "gflops": flops / now / 1e9 if flops else None}
  for label, value in seconds.items():
    if label != "kdjax":
      row[f"{label}_ms"] = 1e3 * value
  return row


def show(figures: dict) -> None:
  print(f"{figures['kind']} step, batch {figures['batch_size']}, input {figures['image_shape']}: "
        f"{figures['step_ms']:.1f} ms ({figures['step_gflops']:.1f} GFLOP/s); load average "
        f"{figures['load_average_before']} -> {figures['load_average_after']}")
  print(f"method: {figures['method']}")
  print(f"{'op':<30}{'input':>20}{'x':>3}{'ms each':>9}{'ms total':>10}{'% step':>8}{'GFLOP/s':>9}  "
        f"other ways, ms each")
  for row in figures["ops"]:
    shape = "x".join(map(str, row["shape"][1:])) + (f"->{row['cout']}" if row.get("cout") else "") \
        if row["shape"] else ""
    gflops = f"{row['gflops']:.1f}" if row["gflops"] else ""
    others = ", ".join(f"{key[:-3]} {value:.2f}" for key, value in row.items()
                       if key.endswith("_ms") and key not in ("total_ms",))
    print(f"{row['op']:<30}{shape:>20}{row['count']:>3}{row['ms']:>9.2f}{row['total_ms']:>10.1f}"
          f"{100 * row['total_ms'] / figures['step_ms']:>8.1f}{gflops:>9}  {others}")
  print(f"{'other (elementwise, dispatch)':<30}{'':>32}{figures['other_ms']:>10.1f}"
        f"{100 * figures['other_ms'] / figures['step_ms']:>8.1f}")
