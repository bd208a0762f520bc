"""The text source (standard-library sources, split by file), its windows and contiguous shards."""

import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from distml.errors import ConfigError, DataError
from distml.partition import PARTITIONS, SOURCES, make_loader
from distml.partition.text import corpus_files, split_of
from distml.runtime.evaluate import evaluate

SMALL = {"name": "text", "context": 32, "max_bytes": 200_000}


def test_split_is_by_file_disjoint_and_deterministic():
    files = corpus_files(Path(sysconfig.get_paths()["stdlib"]))
    assert len(files) > 100 and files == sorted(files)
    assert not any("site-packages" in f for f in files)
    splits = {f: split_of(f, 0.05, 0.05) for f in files}
    assert splits == {f: split_of(f, 0.05, 0.05) for f in files}          # a pure function
    by = {s: {f for f, v in splits.items() if v == s} for s in ("train", "validation", "test")}
    assert sum(len(v) for v in by.values()) == len(files)                  # each file in one split
    assert 0.02 < len(by["test"]) / len(files) < 0.09                      # about 5 % by file
    # the streams hold exactly the bytes of their files: the test stream starts with the first
    # test file in sorted order (cut to its share of max_bytes)
    src = SOURCES.build(SMALL)
    first = next(f for f in files if splits[f] == "test")
    head = (Path(sysconfig.get_paths()["stdlib"]) / first).read_bytes()[:1000]
    stream = src.streams["test"]
    assert bytes(stream[:len(head)].tolist()) == head
    assert len(src.streams["train"]) == int(200_000 * 0.9)
    again = SOURCES.build(SMALL)
    assert all(np.array_equal(again.streams[k], v) for k, v in src.streams.items())


def test_windows_are_shifted_by_one_and_consecutive():
    src = SOURCES.build(SMALL)
    assert src.info.task == "language_modeling" and src.info.num_classes == 256
    assert src.info.input_shape == (32,)
    train = src.train()
    assert len(train) == (int(200_000 * 0.9) - 1) // 32
    x, y = train.take(np.array([0, 1, 2]))
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (3, 32)
    assert torch.equal(x[:, 1:], y[:, :-1])                 # y is x shifted by one
    assert torch.equal(y[0, -1], x[1, 0]) and torch.equal(y[1, -1], x[2, 0])   # no gap between windows
    stream = torch.from_numpy(src.streams["train"][:97].astype(np.int64))
    assert torch.equal(torch.cat([x.reshape(-1), y[-1, -1:]]), stream)


def test_contiguous_shards_are_disjoint_stretches_read_in_order():
    src = SOURCES.build(SMALL)
    n = len(src.train())
    world, batch = 2, 4
    seen = []
    for rank in range(world):
        loader = make_loader(src, {"name": "contiguous"}, rank, world, batch, seed=0)
        idx = loader.indices(epoch=0)
        assert np.array_equal(idx, np.arange(rank * (n // world), rank * (n // world) + len(idx)))
        seen.append(set(idx.tolist()))
        b0, b1 = [x for x, _ in zip(loader.batches(0), range(2))][:2]
        # consecutive batches continue the rank's own stretch of text
        assert torch.equal(b0[1][-1, -1], b1[0][0, 0])
    assert not seen[0] & seen[1]
    shuffled = PARTITIONS.build({"name": "contiguous", "reshuffle": "shard"})
    a, b = (shuffled.indices(n, 1, world, e, 0) for e in (0, 1))
    assert sorted(a) == sorted(b) == list(range(n // world, 2 * (n // world))) and not np.array_equal(a, b)


def test_char_tokens_and_validation_split():
    src = SOURCES.build(SMALL | {"tokens": "char", "eval_split": "validation"})
    assert src.info.num_classes == len(src.vocabulary) < 256
    assert np.array_equal(src.test().tokens, src.validation().tokens)
    text = "".join(src.vocabulary[i] for i in src.train().take(np.array([0]))[0][0].tolist())
    assert text.isprintable() or "\n" in text
    test_src = SOURCES.build(SMALL)
    assert len(src.test()) != len(test_src.test()) or not np.array_equal(
        src.streams["validation"], test_src.streams["test"])


@pytest.mark.parametrize("params,err,match", [
    ({"context": 0}, ConfigError, "context must be an int >= 1"),
    ({"tokens": "word"}, ConfigError, "tokens must be one of byte, char"),
    ({"test_fraction": 0.0}, ConfigError, "need test_fraction > 0"),
    ({"eval_split": "train"}, ConfigError, "eval_split must be"),
    ({"max_bytes": 100}, DataError, "fewer than one window"),
    ({"root": "/nonexistent"}, DataError, "no \\*.py files"),
])
def test_text_refuses_bad_params(params, err, match):
    with pytest.raises(err, match=match):
        SOURCES.build(SMALL | params)


def test_dirichlet_refuses_text_windows():
    src = SOURCES.build(SMALL)
    with pytest.raises(ConfigError, match="needs class labels"):
        make_loader(src, {"name": "dirichlet"}, 0, 2, 4, seed=0).indices(0)


class PeekAhead(torch.nn.Module):
    """Cheats at positions t < T-1 by reading x[t+1] (= y[t]); uniform at the last position."""

    def forward(self, x):
        out = torch.zeros(*x.shape, 256, dtype=torch.float64)
        out[:, :-1].scatter_(2, x[:, 1:, None], 100.0)
        return out


def test_evaluate_reports_nats_bits_and_next_token_accuracy():
    src = SOURCES.build(SMALL)
    loss_fn = lambda o, t: torch.nn.functional.cross_entropy(o.reshape(-1, 256), t.reshape(-1))  # noqa
    got = evaluate(PeekAhead(), src.test(), loss_fn, batch_size=50)
    # 31 of 32 positions right (loss ~0), the last uniform (loss ln 256, argmax token 0: wrong)
    assert got["test_accuracy"] == pytest.approx(31 / 32)
    assert got["test_loss"] == pytest.approx(math.log(256) / 32)
    assert got["bits_per_token"] == pytest.approx(8 / 32)
    assert got["perplexity"] == pytest.approx(256 ** (1 / 32))
    assert got["test_tokens"] == len(src.test()) * 32 and got["test_samples"] == len(src.test())
