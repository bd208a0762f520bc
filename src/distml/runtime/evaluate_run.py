"""``distml evaluate RUN_DIR``: rebuild a finished run's model, load ``model.pt``, evaluate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from distml.algorithms import ALGORITHMS
from distml.config import parse_config
from distml.errors import UserError
from distml.runtime.build import UserParts, build_model_for, build_source
from distml.runtime.checkpoint import load_tensors, squash
from distml.runtime.evaluate import evaluate
from distml.runtime.rundir import USER_PARTS
from distml.runtime.userparts import rebuild_user_parts


def evaluate_run(run_dir: Path) -> dict[str, Any]:
    """Evaluate the saved model of ``run_dir`` on its data source's test set.

    Raises:
        UserError: the folder has no config.json / model.pt, or the model does not match.
    """
    cfg_path, model_path = run_dir / "config.json", run_dir / "model.pt"
    for p in (cfg_path, model_path):
        if not p.exists():
            raise UserError(f"{p} not found: is {run_dir} a finished distml run?")
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{cfg_path} cannot be read ({e}); is {run_dir} a distml run?") from None
    if not isinstance(raw, dict):
        raise UserError(f"{cfg_path} does not hold a distml config (a JSON object)")
    config = parse_config(raw, where=str(cfg_path))
    model_factory = user_loss = None
    record = run_dir / USER_PARTS      # a Python-API run's own model, loss and data
    if record.exists():
        try:
            model_factory, user_loss = rebuild_user_parts(json.loads(record.read_text()), str(run_dir))
        except ValueError as e:
            raise UserError(f"{record} cannot be read ({e})") from None
    source = build_source(config)
    dtype = getattr(torch, config.train.dtype)
    model = build_model_for(config, source.info, UserParts(model=model_factory))
    # e.g. an ensemble saves K members: rebuild the container the state dict came from
    model = ALGORITHMS.build(config.algorithm.spec()).saved_model(model, config.workers)
    model = model.to(dtype=dtype)
    state = load_tensors(model_path, model_path)     # never unpickles arbitrary objects
    try:
        model.load_state_dict(state)
    except Exception as e:
        raise UserError(f"{model_path} cannot be loaded into the run's model: {squash(e)}") from None
    from distml.models import build_loss
    loss_fn = user_loss or build_loss(config.model.loss, None if model_factory else config.model.name,
                                      source.info)
    result = evaluate(model, source.test(), loss_fn, config.data.test_batch_size,
                      classification=source.info.task == "classification", dtype=dtype)
    return {"run_dir": str(run_dir), **result}
