"""Which algorithms take which codecs is decided at config time (docs/design.md §3.1)."""

import pytest

from distml.config import load_config
from distml.errors import ConfigError
from distml.runtime.build import make_plan, registries

BASE = {"workers": 2, "data": {"source": {"name": "sklearn", "dataset": "digits"}},
        "model": {"name": "softmax"}, "train": {"epochs": 1}}


def _plan(algorithm, comm):
    return make_plan(load_config(base={**BASE, "algorithm": algorithm, "comm": comm}))


def test_codec_registry_is_listed():
    assert "powersgd" in registries()["codec"].names()


@pytest.mark.parametrize("comm", [{"codec": {"name": "powersgd", "rank": 1}},
                                  {"codec": ["topk", "fp16"], "error_feedback": True}])
def test_local_sgd_takes_compressors_and_reducers(comm):
    plan = _plan({"name": "local_sgd", "period": 4}, comm)
    assert plan["algorithm"]["codec"].startswith(("powersgd", "error_feedback(chain(topk"))


@pytest.mark.parametrize("name", ["ensemble", "hogwild"])
def test_algorithms_without_codec_support_refuse_naming_what_composes(name):
    with pytest.raises(ConfigError, match=rf"algorithm '{name}' takes no comm.codec; codecs compose "
                                          r"with .*local_sgd"):
        _plan({"name": name}, {"codec": "fp16"})


def test_one_message_algorithms_refuse_the_multi_round_reducer():
    from distml.algorithms import ALGORITHMS
    takers = [a for a in ALGORITHMS.names() if ALGORITHMS.meta(a).get("codecs") == "compressor"]
    if not takers:
        pytest.skip("no algorithm registered with codecs='compressor'")
    with pytest.raises(ConfigError, match="takes a Compressor, not the multi-round Reducer"):
        _plan({"name": takers[0]}, {"codec": "powersgd"})


def test_a_codec_parameter_in_the_algorithm_table_is_refused():
    with pytest.raises(ConfigError, match="codec is set by distml"):
        _plan({"name": "local_sgd", "codec": "fp16"}, {})
