"""`--compare-torch`: kdjax now and before against the original's PyTorch, NCHW and channels_last, in one run.

Threads. XLA:CPU runs one intra-op thread per core here (timing.core_count(); it has no per-process setting short
of XLA_FLAGS), and PyTorch is timed at that count and at 1 thread. On a shared machine PyTorch's OpenMP pool can
collapse under oversubscription (teacher CE, channels_last, 127 img/s with 2 threads against 420 with 1 at load
average ~3), so every ratio is taken against the FASTER of PyTorch's thread counts: never against a collapsed
baseline. FLOPs count 2 per multiply-add of the convs and the dense layer the step actually executes; the peak is the
best fp32 GFLOP/s of a 2048x2048 matmul measured in the same run (JAX and PyTorch), or --peak_gflops.
"""

from kdjax.config import defaults as config_lib
from kdjax.config import nets as config_nets
from kdjax.tools.benchmark import steps as steps_lib
from kdjax.tools.benchmark import timing
from kdjax.tools.benchmark import torch_peer


def compare_torch(batch_size: int, image_size: int, num_classes: int, steps: int, repeats: int,
                  peak_gflops: float = 0.0, kinds=tuple(steps_lib.KINDS), xla_beside: bool = False,
                  allocators: tuple[str, ...] = ("tuned",)) -> dict:
  """kdjax now and before, PyTorch NCHW and channels_last at 1 and core_count() threads: one table.

  xla_beside: also kdjax with speed.conv "xla" ("kdjax_xla"), where kdjax's default runs the convs in oneDNN.
  allocators: PyTorch's child processes, one per torch_peer.ALLOCATORS entry ("plain", "tuned"): NCHW with the
  first, channels_last with each (the others' variants named torch_channels_last_{n}t_{allocator}); ratios use the
  fastest."""
  load_before = timing.load_average()
  peers = {allocator: torch_peer.Peer(allocator) for allocator in allocators}
  xla_beside = xla_beside and config_nets.conv_engine(config_lib.default_config(), "teacher")[0] != "xla"
  threads = timing.core_count()
  thread_counts = sorted({1, threads})
  peak = {"peak_gflops": peak_gflops, "source": "--peak_gflops"} if peak_gflops else dict(
      timing.measured_peak_gflops(threads), source="measured: best fp32 2048x2048 matmul of JAX and PyTorch, this run")
  batch = steps_lib.random_batch(batch_size, image_size, num_classes)
  mean, std = steps_lib.normalization(config_lib.default_config(), batch, num_classes)
  rows = {}
  try:
    for kind in kinds:
      runners = {"kdjax": steps_lib.kdjax_step(kind, batch, num_classes, fast=True),
                 "kdjax_before": steps_lib.kdjax_step(kind, batch, num_classes, fast=False)}
      if xla_beside:
        runners["kdjax_xla"] = steps_lib.kdjax_step(kind, batch, num_classes, fast=True, conv="xla")
      flops = steps_lib.step_flops(kind, batch["image"].shape[1:], num_classes)   # the seed's inline teacher
      for layout in ("nchw", "channels_last"):
        for count in thread_counts:
          for index, (allocator, peer) in enumerate(peers.items()):
            if index and layout == "nchw":
              continue
            name = f"torch_{layout}_{count}t" + (f"_{allocator}" if index else "")
            runners[name] = peer.runner(steps_lib.KINDS[kind], batch, mean, std, num_classes, count,
                                        layout != "nchw", flops)
      timings = timing.time_alternating(runners, steps, repeats)
      rows[kind] = _row(runners, timings, batch_size, peak, thread_counts, peers)
  finally:
    torch_info = {name: peer.info for name, peer in peers.items()}
    for peer in peers.values():
      peer.close()
  return {"mode": "compare_torch", **timing.shapes(batch_size, image_size, num_classes, steps, repeats),
          "threads": {"jax": threads, "torch": thread_counts,
                      "rule": "ratios use the faster PyTorch thread count (never a collapsed baseline)"},
          "peak": peak, "kinds": rows, "load_average_before": load_before, "load_average_after": timing.load_average(),
          "torch_allocators": torch_info, "conv": config_nets.describe(config_lib.default_config()),
          "environment": dict(timing.environment(), torch=next(iter(torch_info.values()))["torch"])}


def _row(runners: dict, timings: dict, batch_size: int, peak: dict, thread_counts, peers) -> dict:
  """One kind's variants (images/s, ms, GFLOP/s, share of the peak) and its ratios to the fastest PyTorch."""
  row = {name: {"images_per_second": timing.rate(entry, batch_size), "step_ms": 1e3 * entry["step_s"],
                "min_step_ms": 1e3 * entry["min_step_s"],
                "gflops": runners[name].flops_per_image * batch_size / entry["step_s"] / 1e9,
                "compile_s": runners[name].compile_seconds, **runners[name].extra}
         for name, entry in timings.items()}
  for entry in row.values():
    entry["peak_fraction"] = entry["gflops"] / peak["peak_gflops"]
  kdjax = row["kdjax"]["images_per_second"]
  summary = {"vs_kdjax_before": kdjax / row["kdjax_before"]["images_per_second"]}
  for layout in ("nchw", "channels_last"):
    best = max(thread_counts, key=lambda count: row[f"torch_{layout}_{count}t"]["images_per_second"])
    summary[f"torch_{layout}_threads"] = best
    summary[f"vs_torch_{layout}"] = kdjax / row[f"torch_{layout}_{best}t"]["images_per_second"]
  if len(peers) > 1:   # the fastest channels_last over thread counts and allocators
    names = [name for name in row if name.startswith("torch_channels_last_")]
    best_name = max(names, key=lambda name: row[name]["images_per_second"])
    summary["torch_channels_last_variant"] = best_name
    summary["torch_channels_last_allocator"] = next(
        (allocator for allocator in peers if best_name.endswith(f"_{allocator}")), next(iter(peers)))
    summary["vs_torch_channels_last"] = kdjax / row[best_name]["images_per_second"]
  if "kdjax_xla" in row:
    best_cl = row[summary.get("torch_channels_last_variant",
                              f"torch_channels_last_{summary['torch_channels_last_threads']}t")]
    summary["xla_vs_torch_channels_last"] = row["kdjax_xla"]["images_per_second"] / best_cl["images_per_second"]
  return {"variants": row, "summary": summary}


def show(figures: dict) -> None:
  env, peak, threads = figures["environment"], figures["peak"], figures["threads"]
  print(f"kdjax vs PyTorch (parity/reference.py, the original's loops): batch {figures['batch_size']}, input "
        f"{figures['image_shape']}, {figures['num_classes']} classes, Adam; median of {figures['rounds']} "
        f"alternating rounds of {figures['steps_per_round']} steps")
  print(f"jax {env['jax']} on {env['backend']} with {threads['jax']} threads (XLA:CPU, one per core); torch "
        f"{env['torch']} at {threads['torch']} threads: ratios use the faster count. Load average "
        f"{figures['load_average_before']} -> {figures['load_average_after']}")
  print(f"fp32 peak {peak['peak_gflops']:.1f} GFLOP/s ({peak['source']})")
  print(f"kdjax now: fast pool, XLA options {env['xla_cpu_options']}, cached teacher logits (student_kd); "
        f"before: nn.max_pool, XLA defaults, inline teacher; every kdjax row's host memory: {env['host_malloc']}")
  for net, conv in figures.get("conv", {}).items():
    print(f"kdjax {net} convs: {conv['path']} ({conv['why']})")
  allocators = ", ".join(f"{name} ({info['malloc'] or 'glibc defaults'})"
                         for name, info in figures["torch_allocators"].items())
  print(f"PyTorch in child processes, one per allocator (kdjax/tools/benchmark/torch_peer.py): {allocators}; NCHW "
        f"with the first; channels_last ratios use the fastest thread count and allocator")
  print(f"{'kind':<16}{'kdjax img/s':>12}{'before':>9}{'x before':>9}{'torch NCHW':>12}{'x NCHW':>8}"
        f"{'torch CL':>10}{'x CL':>7}{'% peak':>8}{'compile s':>10}")
  for kind, entry in figures["kinds"].items():
    row, summary = entry["variants"], entry["summary"]
    nchw = row[f"torch_nchw_{summary['torch_nchw_threads']}t"]
    cl = row[f"torch_channels_last_{summary['torch_channels_last_threads']}t"]
    print(f"{kind:<16}{row['kdjax']['images_per_second']:>12.0f}{row['kdjax_before']['images_per_second']:>9.0f}"
          f"{summary['vs_kdjax_before']:>9.2f}"
          f"{nchw['images_per_second']:>8.0f} ({summary['torch_nchw_threads']}t){summary['vs_torch_nchw']:>8.2f}"
          f"{cl['images_per_second']:>6.0f} ({summary['torch_channels_last_threads']}t)"
          f"{summary['vs_torch_channels_last']:>7.2f}{100 * row['kdjax']['peak_fraction']:>8.1f}"
          f"{row['kdjax']['compile_s']:>10.2f}")
    if "kdjax_xla" in row:
      print(f"{'  (XLA convs)':<16}{row['kdjax_xla']['images_per_second']:>12.0f}{'':>44}"
            f"{summary['xla_vs_torch_channels_last']:>7.2f}"
            f"{100 * row['kdjax_xla']['peak_fraction']:>8.1f}{row['kdjax_xla']['compile_s']:>10.2f}")
    if "torch_channels_last_variant" in summary:
      print(f"{'':<16}fastest PyTorch channels_last: {summary['torch_channels_last_variant']} "
            f"({row[summary['torch_channels_last_variant']]['images_per_second']:.0f} img/s, "
            f"allocator {summary['torch_channels_last_allocator']})")
  print("PyTorch at each thread count, images/s (NCHW / channels_last):")
  for kind, entry in figures["kinds"].items():
    row = entry["variants"]
    cells = "  ".join(f"{count}t {row[f'torch_nchw_{count}t']['images_per_second']:.0f} / "
                      f"{row[f'torch_channels_last_{count}t']['images_per_second']:.0f}" for count in threads["torch"])
    extra = row["kdjax"].get("cache_images_per_second")
    cache = f"   (kdjax's logit cache: {extra:.0f} img/s, once per phase)" if extra else ""
    print(f"  {kind:<16}{cells}{cache}")
