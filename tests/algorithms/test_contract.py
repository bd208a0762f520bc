"""The explicit algorithm contract (algorithms/base.py): declared, not probed."""

import ast
import inspect
from pathlib import Path

import pytest

from distml.algorithms import ALGORITHMS, Algorithm, Supports
from distml.algorithms.base import BUFFER_POLICIES

SRC = Path(__file__).resolve().parents[2] / "src" / "distml"
PRECISIONS = {"fp32", "bf16", "fp16"}


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_every_algorithm_declares_its_buffer_policy_and_what_it_supports(name):
    cls = ALGORITHMS.get(name)
    assert inspect.isclass(cls) and issubclass(cls, Algorithm)
    assert cls.buffers in BUFFER_POLICIES
    assert isinstance(cls.supports, Supports)
    assert "fp32" in cls.supports.precisions and set(cls.supports.precisions) <= PRECISIONS
    assert cls.supports.models in ("any", "sequential", "linear")
    if cls.supports.wrap:        # distml.wrap runs the hooks of the standard loop only
        assert not cls.owns_loop and cls.eval_model is Algorithm.eval_model
        assert cls.loss_terms is Algorithm.loss_terms   # (on_train_end: the wrapper's finish())


def test_the_runtime_calls_hooks_and_never_probes_an_algorithm():
    """No ``getattr(x, "<hook>", ...)`` on a name the base class declares."""
    declared = {n for n in dir(Algorithm) if not n.startswith("__")}
    files = [*(SRC / "runtime").glob("*.py"), SRC / "api.py", SRC / "cli.py"]
    probes = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant) and node.args[1].value in declared):
                probes.append(f"{f.name}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
    assert not probes, probes


def test_the_registry_lives_below_the_algorithms():
    from distml.algorithms.registry import ALGORITHMS as below
    assert below is ALGORITHMS
    for f in (SRC / "algorithms").glob("*.py"):
        if f.name == "__init__.py":
            continue
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "distml.algorithms":
                pytest.fail(f"{f.name} imports the algorithms package it belongs to")


def test_wrap_declarations_match_the_hooks_a_user_loop_skips():
    """``Supports.wrap`` is a declaration; it must agree with what ``distml.wrap`` would
    skip (an algorithm's own loop, or a hook such as ``loss_terms`` no user loop calls)."""
    from distml.algorithms import ALGORITHMS
    from distml.runtime.wrap import why_not_wrappable
    for name in ALGORITHMS.names():
        algo = ALGORITHMS.build({"name": name})
        assert algo.supports.wrap == (why_not_wrappable(algo) == ""), (name, why_not_wrappable(algo))
