"""The child process of kdjax/tools/benchmark/torch_peer.py: PyTorch's benchmark steps, its ops alone (--profile) or
the original's whole loops (--study), from parity/speed.py, under the allocator its environment chose.

    python -m parity.torch_child    (reads one JSON request a line on stdin, answers one JSON line on stdout)
"""

import json
import os
import sys


def serve() -> None:
  import ml_collections
  import numpy as np
  import torch

  from parity import speed

  runners = []
  for line in sys.stdin:
    request = json.loads(line)
    try:
      if request["command"] == "info":
        answer = {"torch": torch.__version__, "malloc": {key: value for key, value in os.environ.items()
                                                         if key.startswith("MALLOC_")},
                  "tensorflow_datasets_imported": "tensorflow_datasets" in sys.modules}
      elif request["command"] == "make":
        with np.load(request["batch"]) as batch:
          images, labels = batch["image"], batch["label"]
        runners.append(speed.torch_step(request["phase"], images, labels, np.asarray(request["mean"], np.float32),
                                        np.asarray(request["std"], np.float32), request["num_classes"],
                                        request["threads"], request["channels_last"]))
        answer = {"id": len(runners) - 1}
      elif request["command"] == "op_timers":
        answer = speed.op_seconds(request["op"], request["num_classes"], request["repeats"],
                                  request["thread_counts"])
      elif request["command"] == "study":
        config = ml_collections.ConfigDict(json.loads(request["config"]))
        answer = speed.reference_study(config, request["names"], request["threads"])
      else:
        runners[request["id"]](request["steps"])
        answer = {"done": True}
    except Exception as error:  # sent to the parent, which raises it
      answer = {"error": f"{type(error).__name__}: {error}"}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
  serve()
