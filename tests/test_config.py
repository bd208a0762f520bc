"""Config loading: TOML errors with lines, unknown keys listed, ranges, --set overrides."""

import pytest

from distml.config import apply_overrides, load_config, parse_config
from distml.errors import ConfigError


def test_defaults_and_overrides():
    cfg = load_config(base={"optim": {"name": "sgd", "lr": 0.1}},
                      overrides=["optim.lr=0.5", "train.epochs=3", "data.source.path='/x'",
                                 "algorithm.bucket_mb=4"])
    assert cfg.optim.spec() == {"name": "sgd", "lr": 0.5}
    assert cfg.train.epochs == 3
    assert cfg.data.source == {"name": "fashion_mnist", "path": "/x"}
    assert cfg.algorithm.spec() == {"name": "sync_sgd", "bucket_mb": 4}


def test_toml_syntax_error_names_line(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('name = "x"\n[train\nepochs = 1\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: TOML syntax error.*line 2"):
        load_config(p)


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key 'train.epocs'.*valid keys here: epochs"):
        parse_config({"train": {"epocs": 1}})
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*train"):
        parse_config({"trian": {}})


@pytest.mark.parametrize("data,match", [
    ({"workers": 0}, "workers"),
    ({"data": {"batch_size": -1}}, "batch_size"),
    ({"train": {"target_accuracy": 1.5}}, "target_accuracy"),
    ({"comm": {"timeout_s": 0}}, "timeout_s"),
    ({"name": "a/b"}, "folder name"),
])
def test_out_of_range(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(data)


def test_bad_override():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="not a table"):
        apply_overrides({"seed": 1}, ["seed.x=1"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


# ---- include, --set values and blame, optimizer switches (issue 19) ----------------------

def test_include_merges_relative_to_the_including_file(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.toml").write_text(
        'name = "base"\nworkers = 3\n[optim]\nname = "sgd"\nlr = 0.5\nmomentum = 0.9\n')
    (tmp_path / "shared" / "more.toml").write_text('[optim]\nlr = 0.2\n[train]\nepochs = 4\n')
    child = tmp_path / "exp" / "run.toml"
    child.parent.mkdir()
    child.write_text('include = ["../shared/base.toml", "../shared/more.toml"]\nname = "child"\n'
                     '[train]\nepochs = 2\n')
    cfg = load_config(child)
    assert cfg.name == "child" and cfg.workers == 3                   # own keys win, base fills in
    assert cfg.optim.model_extra == {"lr": 0.2, "momentum": 0.9}       # later includes override earlier
    assert cfg.train.epochs == 2
    assert load_config(child, ["optim.lr=0.01"]).optim.model_extra["lr"] == 0.01   # --set last


def test_include_cycles_and_bad_includes_are_refused(tmp_path):
    (tmp_path / "a.toml").write_text('include = "b.toml"\n')
    (tmp_path / "b.toml").write_text('include = ["a.toml"]\n')
    with pytest.raises(ConfigError, match="include cycle: .*a.toml -> .*b.toml -> .*a.toml"):
        load_config(tmp_path / "a.toml")
    (tmp_path / "c.toml").write_text('include = 3\n')
    with pytest.raises(ConfigError, match="include must be a file name or a list"):
        load_config(tmp_path / "c.toml")
    (tmp_path / "d.toml").write_text('include = ["missing.toml"]\n')
    with pytest.raises(ConfigError, match="config file not found: .*missing.toml"):
        load_config(tmp_path / "d.toml")


def test_set_errors_name_set_and_malformed_values_are_errors(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("workers = 2\n")
    with pytest.raises(ConfigError, match=r"^--set workers=0: workers: Input should be greater"):
        load_config(p, ["workers=0"])
    p.write_text("workers = 0\n")
    with pytest.raises(ConfigError, match=r"c.toml: workers"):          # the file's own mistake
        load_config(p, ["seed=1"])
    for bad in ("optim.lr=0.1.2", "model.hidden=[1,2", "name='x", "seed="):
        with pytest.raises(ConfigError, match="not a valid TOML value"):
            load_config(base={}, overrides=[bad])
    assert load_config(base={}, overrides=["model.name=mlp", "data.source.path=data/x.csv"]).model.name == "mlp"


def test_switching_optimizer_drops_the_old_ones_parameters(capsys):
    from distml.api import load_run_config
    base = {"optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True}}
    cfg = load_run_config(base, ["optim.name=adam"])
    assert cfg.optim.name == "adam" and cfg.optim.model_extra == {"lr": 0.1}
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["distml: note: optim.name changed to 'adam': dropped momentum, nesterov "
                   "(parameters of 'sgd' it does not take)"]
    cfg = load_run_config(base, ["optim.name=adam", "optim.betas=[0.8, 0.9]"])  # its own are kept
    assert cfg.optim.model_extra["betas"] == [0.8, 0.9]
    assert load_run_config(base, ["optim.lr=0.2"]).optim.model_extra["momentum"] == 0.9
    assert capsys.readouterr().err.count("note") == 1


def test_version(capsys):
    from distml import __version__
    from distml.cli import main
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"distml {__version__}"
