"""One world that trains many configs in turn: the compatibility matrix's worker script.

Started as ``distml launch -n N matrix_world.py CELLS.json``. Every rank reads the same
list of cells (a config and a run folder each) and trains them one after another with the
worker's own code path (``build_parts`` then ``train_joined``, exactly what ``distml run``
does after joining), so a cell costs its training, not a process start. After each cell,
every worker rank saves its own model's buffers (``rank{r}_buffers.pt``) so the test can
check the saved model's buffers against the algorithm's declared policy. A cell that fails
writes ``error.txt`` and ends the world (its peers may be inside a collective).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import traceback
from pathlib import Path

import torch

import distml
from distml.config import parse_config
from distml.runtime.build import build_parts
from distml.runtime.worker import WorkerJob, train_joined


def main(cells_file: str) -> None:
    cells = json.loads(Path(cells_file).read_text())
    transport = distml.init(timeout_s=60)
    rank, world = transport.rank, transport.world_size
    torch.set_num_threads(1)
    for cell in cells:
        out = Path(cell["out"])
        try:
            config = parse_config(cell["config"])
            parts = build_parts(config, rank, world, "cpu")   # world: processes, as launched
            job = WorkerJob(config=cell["config"], out_dir=str(out))
            if rank == 0:
                out.mkdir(parents=True, exist_ok=True)
                (out / "config.json").write_text(json.dumps(config.to_dict()))
            transport.barrier()
            train_joined(rank, config, parts, transport, job, torch.device("cpu"), "gloo")
            if rank < config.workers:
                torch.save({k: v.detach().clone() for k, v in parts.model.named_buffers()},
                           out / f"rank{rank}_buffers.pt")
            del parts
            gc.collect()
            transport.barrier()
        except BaseException:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"error-rank{rank}.txt").write_text(traceback.format_exc())
            sys.stderr.flush()
            os._exit(1)          # the launcher ends the peers
    transport.close()


if __name__ == "__main__":
    main(sys.argv[1])
