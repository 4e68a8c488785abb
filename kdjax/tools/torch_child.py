"""The child process of kdjax/tools/torch_peer.py: PyTorch's benchmark steps, its ops alone (--profile) or the
original's whole loops (--study), under the allocator its environment chose.

    python -m kdjax.tools.torch_child    (reads one JSON request a line on stdin, answers one JSON line on stdout)
"""

import json
import os
import sys


def serve() -> None:
  from kdjax.tools import benchmark
  import torch

  runners = []
  for line in sys.stdin:
    request = json.loads(line)
    try:
      if request["command"] == "info":
        answer = {"torch": torch.__version__, "malloc": {key: value for key, value in os.environ.items()
                                                         if key.startswith("MALLOC_")},
                  "tensorflow_datasets_imported": "tensorflow_datasets" in sys.modules}
      elif request["command"] == "make":
        batch = benchmark.random_batch(request["batch_size"], request["image_size"], request["num_classes"])
        runner = benchmark.torch_step(request["kind"], batch, request["num_classes"], request["threads"],
                                      request["channels_last"])
        runners.append(runner)
        answer = {"id": len(runners) - 1, "flops_per_image": runner.flops_per_image}
      elif request["command"] == "op_timers":
        answer = benchmark._torch_op_timers(request["op"], request["num_classes"], request["repeats"])
      elif request["command"] == "study":
        import ml_collections
        config = ml_collections.ConfigDict(json.loads(request["config"]))
        answer = benchmark.reference_study(config, request["names"], request["threads"])
      else:
        runners[request["id"]].run(request["steps"])
        answer = {"done": True}
    except Exception as error:  # sent to the parent, which raises it
      answer = {"error": f"{type(error).__name__}: {error}"}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
  serve()
