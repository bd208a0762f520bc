"""Hypothesis strategies for config documents and ``--set`` overrides, drawn from the real schema.

Documents start from small valid configs (every one a dry run of well under a second) and
are mutated with the keys of :class:`distml.config.RunConfig`, the registry names and the
factories' parameters (``distml list``), given wrong types, out-of-range values, unknown
keys and unknown names; raw garbage text and damaged TOML are drawn too.

Sizes are drawn from a bounded set (at most 10**5, plus values so large that allocating
them fails at once): a fuzzer that asks for a 10**9-sample data set would only measure
how long the machine takes to generate it.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from hypothesis import strategies as st
from pydantic import BaseModel

from distml.config import RunConfig
from distml.runtime.build import registries

# registry kind of each spec in the config
SPEC_KIND = {("data", "source"): "source", ("data", "partition"): "partition",
             ("model",): "model", ("model", "loss"): "loss", ("optim",): "optimizer",
             ("optim", "schedule"): "schedule", ("algorithm",): "algorithm",
             ("comm", "codec"): "codec"}
# parameters the runtime sets itself; giving them is an error we also want to hit sometimes
CONTEXT = {"params", "input_shape", "num_classes", "task", "seed", "optimizer", "total_steps",
           "codec", "worker_rank"}


def make_data_files(folder: Path) -> dict[str, str]:
    """Small csv / npz / svmlight files the base documents point at."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    csv = folder / "t.csv"
    csv.write_text("a,b,c,d,y\n" + "".join(",".join(f"{v:.3f}" for v in r) + f",{c}\n"
                                         for r, c in zip(x, y)))
    npz = folder / "t.npz"
    np.savez(npz, x=x, y=y)
    svm = folder / "t.svm"
    svm.write_text("".join(f"{2 * c - 1} " + " ".join(f"{j + 1}:{v:.3f}" for j, v in enumerate(r)) + "\n"
                           for r, c in zip(x, y)))
    return {"csv": str(csv), "npz": str(npz), "svmlight": str(svm), "dir": str(folder)}


def base_documents(files: dict[str, str]) -> list[dict[str, Any]]:
    """Valid small configs, one per family of sources / models / algorithms."""
    train = {"max_steps": 3, "progress": False}
    return [
        {"name": "fz", "workers": 2, "data": {"source": {"name": "sklearn", "dataset": "iris"},
                                               "batch_size": 8},
         "model": {"name": "mlp", "hidden": [8]}, "optim": {"name": "sgd", "lr": 0.1},
         "algorithm": {"name": "sync_sgd"}, "train": train},
        {"name": "fz", "workers": 2,
         "data": {"source": {"name": "synthetic", "kind": "logistic_regression", "n_train": 200,
                             "n_test": 50, "dim": 5}, "batch_size": 16},
         "model": {"name": "softmax"}, "optim": {"name": "adam", "lr": 0.01},
         "algorithm": {"name": "ps", "pace": {"name": "ssp", "staleness": 2}},
         "comm": {"codec": {"name": "topk", "ratio": 0.5}}, "train": train},
        {"name": "fz", "workers": 2, "data": {"source": {"name": "csv", "path": files["csv"]},
                                               "batch_size": 4},
         "model": {"name": "linear_svm"}, "optim": {"name": "gd", "lr": 0.1},
         "algorithm": {"name": "admm"}, "train": train},
        {"name": "fz", "workers": 2, "data": {"source": {"name": "npz", "path": files["npz"]},
                                               "batch_size": 4,
                                               "partition": {"name": "dirichlet", "alpha": 1.0}},
         "model": {"name": "mlp", "hidden": [4]}, "optim": {"name": "sgd", "lr": 0.1,
                                                          "schedule": {"name": "cosine"}},
         "algorithm": {"name": "local_sgd", "period": 2}, "train": train},
        {"name": "fz", "workers": 2, "data": {"source": {"name": "svmlight", "path": files["svmlight"]},
                                               "batch_size": 4},
         "model": {"name": "softmax"}, "optim": {"name": "sgd", "lr": 0.1},
         "algorithm": {"name": "gossip", "graph": "ring"}, "train": train},
        {"name": "fz", "workers": 2,
         "data": {"source": {"name": "synthetic", "kind": "linear_regression", "n_train": 100,
                             "n_test": 20, "dim": 6, "mode": "online"},
                  "samples_per_epoch": 64, "batch_size": 8},
         "model": {"name": "least_squares"}, "optim": {"name": "sgd", "lr": 0.01},
         "algorithm": {"name": "feature_split"}, "train": train},
        {"name": "fz", "workers": 2, "data": {"source": {"name": "sklearn", "dataset": "digits"},
                                               "batch_size": 16},
         "model": {"name": "cnn", "channels": [2], "hidden": 8}, "optim": {"name": "sgd"},
         "algorithm": {"name": "ensemble"}, "train": train},
    ]


# ---- values -------------------------------------------------------------------------------
NAMES = {kind: reg.names() for kind, reg in registries().items()}
INTS = st.one_of(st.integers(-3, 130), st.sampled_from([1000, 10**5, -(2**31), 2**31, 2**62,
                                                        2**63 - 1, -(2**63)]))
FLOATS = st.one_of(st.floats(-10, 10), st.sampled_from([0.0, -0.0, 1e-300, 1e300, -1e300,
                                                        math.inf, -math.inf, math.nan, 1e-9, 0.5]))
TEXT = st.one_of(st.text(max_size=12),
                 st.sampled_from(["", "auto", "none", "/", "/dev/null", "/dev/zero", "/proc/self/status",
                                  "/nonexistent/x", "..", "a/b", "\0", "ssp", "bsp", "asp",
                                  "global", "shard", "offline", "online", "relu", "gpipe",
                                  *sorted({n for names in NAMES.values() for n in names})]))
SCALARS = st.one_of(INTS, FLOATS, TEXT, st.booleans())
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["name", "x", "ratio", "staleness", "k"])
                                                 | st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)


def value_like(example: Any) -> st.SearchStrategy:
    """Mostly a value of ``example``'s type (a default or a type), sometimes anything."""
    t = example if isinstance(example, type) else type(example)
    if t is bool:
        typed = st.booleans()
    elif t is int:
        typed = INTS
    elif t is float:
        typed = st.one_of(FLOATS, INTS)
    elif t is str:
        typed = TEXT
    elif t in (list, tuple):
        typed = st.lists(st.one_of(INTS, st.integers(1, 16)), max_size=3)
    else:
        typed = SCALARS
    return st.one_of(typed, typed, typed, VALUES)


def _annotation_example(ann: Any) -> Any:
    args = [a for a in getattr(ann, "__args__", ()) if a is not type(None)]
    if getattr(ann, "__origin__", None) is Literal:
        return st.one_of(st.sampled_from(list(ann.__args__)), TEXT)
    if ann in (int, float, str, bool):
        return value_like(ann)
    if args and all(isinstance(a, type) for a in args):
        return value_like(args[0])
    return VALUES


def _section_fields(model: type[BaseModel]) -> dict[str, Any]:
    return {k: f.annotation for k, f in model.model_fields.items()}


def _closed_paths(model: type[BaseModel] = RunConfig, prefix: tuple = ()) -> list[tuple[str, ...]]:
    """Every key path of the config's closed sections (and the specs' own keys)."""
    out = []
    for key, ann in _section_fields(model).items():
        path = prefix + (key,)
        out.append(path)
        sub = next((a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type)
                    and issubclass(a, BaseModel)), None)
        if sub is not None:
            out += _closed_paths(sub, path)
    return out


CLOSED_PATHS = _closed_paths()


def _annotation_at(path: tuple) -> Any:
    model: Any = RunConfig
    ann = None
    for part in path:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return None
        ann = fields[part].annotation
        model = next((a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type)
                      and issubclass(a, BaseModel)), None)
    return ann


FIELD_VALUES = {p: _annotation_example(_annotation_at(p)) for p in CLOSED_PATHS}
SPEC_SECTIONS = [p for p, k in SPEC_KIND.items()]


def spec_params(kind: str, name: str) -> list[str]:
    try:
        return [p for p in registries()[kind].parameters(name)]
    except Exception:
        return []


def _get(doc: dict, path: tuple) -> Any:
    node: Any = doc
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(doc: dict, path: tuple, value: Any) -> None:
    node = doc
    for part in path[:-1]:
        child = node.get(part)
        if isinstance(child, str):
            child = {"name": child}
        if not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    node[path[-1]] = value


def _delete(doc: dict, path: tuple) -> None:
    parent = _get(doc, path[:-1]) if len(path) > 1 else doc
    if isinstance(parent, dict):
        parent.pop(path[-1], None)


@st.composite
def mutation(draw, doc: dict) -> None:
    """Apply one random mutation to ``doc`` in place."""
    op = draw(st.sampled_from(["field", "field", "spec_param", "spec_param", "spec_param",
                               "spec_name", "spec_name", "unknown", "delete", "context"]))
    if op == "field":
        path = draw(st.sampled_from(CLOSED_PATHS))
        _set(doc, path, draw(FIELD_VALUES[path]))
    elif op in ("spec_param", "context"):
        path = draw(st.sampled_from(SPEC_SECTIONS))
        spec = _get(doc, path)
        name = spec.get("name") if isinstance(spec, dict) else spec if isinstance(spec, str) else None
        if path == ("comm", "codec") and isinstance(spec, list) and spec:
            spec = spec[0]
            name = spec.get("name") if isinstance(spec, dict) else spec
        params = spec_params(SPEC_KIND[path], name) if isinstance(name, str) else []
        pool = [p for p in params if (p in CONTEXT) == (op == "context")] or ["x"]
        key = draw(st.sampled_from(pool))
        default = registries()[SPEC_KIND[path]].parameters(name).get(key) if key in params else None
        if isinstance(spec, str) or spec is None:
            spec = {"name": spec or draw(st.sampled_from(NAMES[SPEC_KIND[path]]))}
        if isinstance(spec, dict):
            spec = dict(spec)
            spec[key] = draw(VALUES if default is inspect.Parameter.empty else value_like(default))
        _set(doc, path, spec)
    elif op == "spec_name":
        path = draw(st.sampled_from(SPEC_SECTIONS))
        kind = SPEC_KIND[path]
        name = draw(st.one_of(st.sampled_from(NAMES[kind]), TEXT))
        spec = _get(doc, path)
        if isinstance(spec, dict) and draw(st.booleans()):
            spec = {**spec, "name": name}
        else:
            spec = name
        _set(doc, path, spec)
    elif op == "unknown":
        path = draw(st.sampled_from([(), *[p for p in CLOSED_PATHS if len(p) == 1]]))
        _set(doc, path + (draw(st.text(min_size=1, max_size=8)),), draw(VALUES))
    else:
        _delete(doc, draw(st.sampled_from(CLOSED_PATHS)))


@st.composite
def documents(draw, bases: list[dict]) -> dict:
    doc = json.loads(json.dumps(draw(st.sampled_from(bases))))
    for _ in range(draw(st.integers(1, 3))):
        draw(mutation(doc))
    return doc


# ---- TOML text ------------------------------------------------------------------------------
def toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes would write astral characters as surrogate pairs)."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(doc: dict) -> str:
    """A document as TOML: scalars first, then one ``[table]`` per dict (inline below that)."""
    lines = [f"{toml_string(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{toml_string(k)}]")
            lines += [f"{toml_string(kk)} = {toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


@st.composite
def damaged(draw, text: str) -> str:
    """TOML text with a few characters deleted, inserted or swapped."""
    chars = list(text)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, max(0, len(chars) - 1)))
        op = draw(st.sampled_from(["del", "ins", "dup"]))
        if op == "del" and chars:
            del chars[i]
        elif op == "ins":
            chars.insert(i, draw(st.sampled_from(list("[]{}=\"'.,#\n\\ 0x-+eE"))))
        elif chars:
            chars.insert(i, chars[i])
    return "".join(chars)


GARBAGE = st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")))


@st.composite
def overrides(draw) -> list[str]:
    """``--set KEY=VALUE`` items: schema keys (and junk keys), TOML or junk values."""
    out = []
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.one_of(st.sampled_from(CLOSED_PATHS).map(".".join),
                              st.sampled_from(SPEC_SECTIONS).flatmap(
                                  lambda p: st.sampled_from(
                                      [".".join(p + (k,)) for k in
                                       ["name", "x", *sorted({q for n in NAMES[SPEC_KIND[p]]
                                                              for q in spec_params(SPEC_KIND[p], n)})]])),
                              st.text(max_size=10)))
        value = draw(st.one_of(VALUES.map(toml_value), st.text(max_size=10)))
        sep = draw(st.sampled_from(["=", "=", "=", "=", "", "==", " = "]))
        out.append(f"{path}{sep}{value}")
    return out
