"""Text for language modelling: the Python standard library's own source files.

Every machine with Python has this corpus, so a run needs no download; it depends on
the Python version (workers of one run share one installation). Files are split into
train / validation / test by a hash of their path (never by random windows, which would
put neighbouring text on both sides), read in sorted order and tokenized as bytes
(vocabulary 256) or as characters (the corpus's own alphabet). A sample is a window of
``context + 1`` consecutive tokens of a split's stream: x its first ``context`` tokens,
y the same window shifted by one.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from pathlib import Path

import numpy as np
import torch

from distml.errors import ConfigError, DataError
from distml.partition.base import LANGUAGE_MODELING, SOURCES, DataInfo, Source

SPLITS = ("train", "validation", "test")
TOKENS = ("byte", "char")
# where the stdlib tree holds installed third-party packages, not the standard library
_NOT_STDLIB = {"site-packages", "dist-packages", "__pycache__"}


def split_of(rel_path: str, validation_fraction: float, test_fraction: float) -> str:
    """The split a file belongs to: a pure function of its relative path (a SHA-1 hash)."""
    u = int.from_bytes(hashlib.sha1(rel_path.encode()).digest()[:8], "big") / 2 ** 64
    if u < test_fraction:
        return "test"
    return "validation" if u < test_fraction + validation_fraction else "train"


def corpus_files(root: Path) -> list[str]:
    """The ``*.py`` files under ``root`` (relative POSIX paths, sorted), without installed packages."""
    out = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _NOT_STDLIB]     # prune: site-packages can be huge
        rel = Path(folder).relative_to(root)
        out += [(rel / n).as_posix() for n in names if n.endswith(".py")]
    return sorted(out)


class TokenWindows:
    """Windows of ``context + 1`` tokens of one token stream (the set a loader reads).

    Sample i is ``stream[i·context : (i+1)·context + 1]``: consecutive samples are
    consecutive, non-overlapping stretches of text (the last token of one is the first
    of the next), so a contiguous range of indices is a contiguous stretch of the stream.

    Args:
        tokens: the split's token ids (any integer dtype; batches are int64).
        info: the language-modelling DataInfo (input_shape ``(context,)``).
        rows: the windows this set consists of (a view; None = all).

    Attributes:
        labels: None (windows have no class label; label-based partitions refuse them).
    """

    labels = None

    def __init__(self, tokens: np.ndarray, info: DataInfo, rows: np.ndarray | None = None):
        self.tokens, self.info = tokens, info
        self.context = info.input_shape[0]
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.context if self.rows is None else len(self.rows)

    def subset(self, idx: np.ndarray) -> TokenWindows:
        """A view of the windows ``idx`` of this set."""
        idx = np.asarray(idx, dtype=np.int64)
        return TokenWindows(self.tokens, self.info, idx if self.rows is None else self.rows[idx])

    def take(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The windows ``idx`` as ``(x, y)``, both int64 of shape ``(len(idx), context)``."""
        idx = np.asarray(idx, dtype=np.int64)
        r = idx if self.rows is None else self.rows[idx]
        win = self.tokens[(r * self.context)[:, None] + np.arange(self.context + 1)]
        win = torch.from_numpy(np.ascontiguousarray(win, dtype=np.int64))
        return win[:, :-1].contiguous(), win[:, 1:].contiguous()


class TextSource(Source):
    """The train / validation / test token streams of one corpus.

    ``test()`` returns the split named by ``eval_split``, so a tuning run evaluates on
    the validation split through the ordinary config; :meth:`split` returns any of them.
    """

    online = False

    def __init__(self, info: DataInfo, streams: dict[str, np.ndarray], eval_split: str,
                 vocabulary: list[str] | None):
        self.info, self.streams, self.eval_split = info, streams, eval_split
        self.vocabulary = vocabulary          # char-level: token id -> character

    def split(self, name: str) -> TokenWindows:
        """The windows of split ``name`` (train, validation or test).

        Raises:
            ConfigError: an unknown split.
        """
        if name not in SPLITS:
            raise ConfigError(f"text: split must be one of {', '.join(SPLITS)}, got {name!r}")
        return TokenWindows(self.streams[name], self.info)

    def train(self) -> TokenWindows:
        return self.split("train")

    def validation(self) -> TokenWindows:
        return self.split("validation")

    def test(self) -> TokenWindows:
        return self.split(self.eval_split)


@SOURCES.register("text", summary="language modelling on the Python standard library's own "
                  "source files: byte or char tokens, split by file, windows of context+1 tokens")
def text(context: int = 128, max_bytes: int = 2_000_000, tokens: str = "byte",
         validation_fraction: float = 0.05, test_fraction: float = 0.05,
         eval_split: str = "test", root: str | None = None) -> TextSource:
    """The standard library's ``*.py`` files as a language-modelling corpus (no download).

    Files are split by a hash of their path relative to ``root``; each split then takes
    its files in sorted order until it holds its share of ``max_bytes`` (train
    ``1 − validation_fraction − test_fraction``; the last file is cut), so the same
    parameters give the same streams on every machine with the same Python.

    Args:
        context: tokens a window feeds the model (T); windows hold T + 1 tokens.
        max_bytes: the corpus size cap in bytes, over the three splits together.
        tokens: "byte" (UTF-8 bytes, vocabulary 256) or "char" (the characters that occur
            in the capped corpus, sorted; vocabulary = their number).
        validation_fraction: share of files (and of ``max_bytes``) for validation, in [0, 1).
        test_fraction: share for the test set, in (0, 1).
        eval_split: what ``test()`` returns — "test", or "validation" for tuning runs.
        root: the folder to read (default ``sysconfig.get_paths()["stdlib"]``).

    Returns:
        a :class:`TextSource` with task "language_modeling", num_classes the vocabulary
        and input_shape ``(context,)``.

    Raises:
        ConfigError: a bad size, fraction, tokenization or eval_split.
        DataError: no ``*.py`` files under ``root``, or a split too small for one window.
    """
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ConfigError(f"text: context must be an int >= 1, got {context!r}")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ConfigError(f"text: max_bytes must be an int >= 1, got {max_bytes!r}")
    if tokens not in TOKENS:
        raise ConfigError(f"text: tokens must be one of {', '.join(TOKENS)}, got {tokens!r}")
    if eval_split not in ("test", "validation"):
        raise ConfigError(f"text: eval_split must be 'test' or 'validation', got {eval_split!r}")
    for name, f in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1:
            raise ConfigError(f"text: {name} must be in [0, 1), got {f!r}")
    if not test_fraction > 0 or validation_fraction + test_fraction >= 1:
        raise ConfigError("text: need test_fraction > 0 and validation_fraction + test_fraction < 1, "
                          f"got {validation_fraction} + {test_fraction}")
    if eval_split == "validation" and not validation_fraction > 0:
        raise ConfigError("text: eval_split='validation' needs validation_fraction > 0")
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    files = corpus_files(base) if base.is_dir() else []
    if not files:
        raise DataError(f"text: no *.py files under {base}; set data.source.root to a folder of "
                        "Python sources")
    share = {"validation": round(max_bytes * validation_fraction), "test": round(max_bytes * test_fraction)}
    share["train"] = max_bytes - share["validation"] - share["test"]
    raw: dict[str, bytes] = {}
    for name in SPLITS:
        budget, parts = share[name], []
        for rel in files:
            if budget <= 0:
                break
            if split_of(rel, validation_fraction, test_fraction) == name:
                data = (base / rel).read_bytes()[:budget]
                parts.append(data)
                budget -= len(data)
        raw[name] = b"".join(parts)
    streams, vocabulary = _tokenize(raw, tokens)
    for name, s in streams.items():
        if share[name] > 0 and len(s) < context + 1:
            raise DataError(f"text: the {name} split has {len(s)} tokens, fewer than one window of "
                            f"{context + 1}: raise max_bytes or lower context")
    info = DataInfo(LANGUAGE_MODELING, 256 if vocabulary is None else len(vocabulary), (context,))
    return TextSource(info, streams, eval_split, vocabulary)


def _tokenize(raw: dict[str, bytes], tokens: str) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """Byte ids, or ids into the sorted alphabet of all splits (undecodable bytes replaced).

    Streams are kept compact (uint8 bytes, int32 characters); ``take`` widens a batch.
    """
    if tokens == "byte":
        return {k: np.frombuffer(v, dtype=np.uint8) for k, v in raw.items()}, None
    codes = {k: np.array([ord(c) for c in v.decode("utf-8", errors="replace")], dtype=np.int64)
             for k, v in raw.items()}
    alphabet = np.unique(np.concatenate(list(codes.values())))
    return ({k: np.searchsorted(alphabet, c).astype(np.int32) for k, c in codes.items()},
            [chr(int(c)) for c in alphabet])
