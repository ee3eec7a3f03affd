"""Worker of test_launch_exit.py, run under ``torchrun --nproc-per-node 2``: inside ``launch()`` import
``torch._dynamo`` (as diffusers does) and run the object collectives of the library; write the names of this
process's threads inside ``launch()`` and after it exits to OUT_DIR/threads-<rank>.json (Linux: /proc/self/task).

Usage: launch_exit_worker.py OUT_DIR
"""

import json
import os
import sys
from pathlib import Path

from segquant.distributed import all_ranks, gather_list, launch, on_main


def thread_names() -> list[str]:
    tasks = Path("/proc/self/task")
    return sorted((tasks / tid / "comm").read_text().strip() for tid in os.listdir(tasks))


def main(out: Path) -> None:
    with launch("cpu") as (world, _device):
        import torch._dynamo  # noqa: F401 - what a diffusers import does inside a launched run
        gather_list([world.rank])
        all_ranks(lambda: world.rank, "a step")
        on_main(lambda: "merged", "a rank-0 step")
        inside = thread_names()
    threads = {"inside": inside, "after": thread_names()}
    (out / f"threads-{world.rank}.json").write_text(json.dumps(threads))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
