"""The command line's options are generated from the settings dataclasses: one option per field, its doc as help."""

from __future__ import annotations

import dataclasses
import pkgutil
import re
import importlib

import pytest
import typer.main
from typer.testing import CliRunner

import mtsae.commands
from mtsae.cli import app
from mtsae.commands.analysis import SYNTH_OPTIONS
from mtsae.commands.evaluate import EVAL_OPTIONS
from mtsae.commands.harvest import HARVEST_OPTIONS
from mtsae.commands.options import ConfigOptions, option_name
from mtsae.commands.train import ARCH_OPTIONS, TRAIN_OPTIONS
from mtsae.evaluate.config import EvalConfig
from mtsae.harvest.config import HarvestConfig
from mtsae.harvest.synth import SynthConfig
from mtsae.train import config as train_config

EXPOSED = [("harvest", HARVEST_OPTIONS), ("train", TRAIN_OPTIONS), ("train", ARCH_OPTIONS), ("eval", EVAL_OPTIONS),
           ("synth", SYNTH_OPTIONS)]


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())  # rich's box, wrapped wherever the width falls


def test_every_command_module_options_are_listed_here():
    """A ConfigOptions added to a command module without a line above would escape the checks below."""
    found = []
    for info in pkgutil.iter_modules(mtsae.commands.__path__):
        module = importlib.import_module(f"mtsae.commands.{info.name}")
        found += [value for value in vars(module).values() if isinstance(value, ConfigOptions)]
    assert sorted(map(id, found)) == sorted(id(opts) for _, opts in EXPOSED)


@pytest.mark.parametrize("command,opts", EXPOSED, ids=[f"{c}-{o.config.__name__}" for c, o in EXPOSED])
def test_every_field_is_exactly_one_option_or_deliberately_not_exposed(command, opts):
    params = typer.main.get_command(app).commands[command].params
    for f in dataclasses.fields(opts.config):
        mine = [p for p in params if p.name == f.name]
        if f.name in opts.not_exposed:
            assert not mine and opts.not_exposed[f.name], f.name
            continue
        assert len(mine) == 1, f.name
        param = mine[0]
        if param.param_type_name == "option":
            assert param.opts == [option_name(f.name, opts.forms.get(f.name))], f.name
        assert f.metadata["help"] in param.help, f.name  # the field's doc is its help, word for word
        others = [p.name for p in params if p is not param and f.metadata["help"] in (getattr(p, "help", "") or "")]
        assert not others, (f.name, others)


@pytest.mark.parametrize("command,opts", EXPOSED, ids=[f"{c}-{o.config.__name__}" for c, o in EXPOSED])
def test_help_shows_each_field_doc(command, opts):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert result.exit_code == 0
    text = _flat(result.stdout)
    assert "Examples:" in text or "Example:" in text
    for f in opts.fields():
        assert _flat(f.metadata["help"]) in text, f.name


@pytest.mark.parametrize("opts,config", [(HARVEST_OPTIONS, HarvestConfig), (EVAL_OPTIONS, EvalConfig),
                                         (SYNTH_OPTIONS, SynthConfig)])
def test_options_not_given_give_the_dataclass_defaults(opts, config):
    given = {p.name: p.default for p in opts.parameters()}
    assert config(**opts.values(given)) == config()
    assert not given, "values() takes every field's option"


def test_train_options_not_given_leave_the_config_file_and_defaults_in_charge(tmp_path):
    given = _defaults(TRAIN_OPTIONS)
    assert all(value is None for value in given.values())  # "not given": the TOML file's value applies
    assert train_config.load_config(None, TRAIN_OPTIONS.values(given)) == train_config.TrainConfig()
    given = _defaults(TRAIN_OPTIONS)
    toml = tmp_path / "t.toml"
    toml.write_text('cache = "c"\nlr = 0.01\n[arch_config]\nk = 7\n')
    overrides = {**TRAIN_OPTIONS.values({**given, "lr": 0.5}), "arch_config": {"kernel_size": 5}}
    cfg = train_config.load_config(toml, overrides)
    assert (cfg.cache, cfg.lr, cfg.arch_config["k"], cfg.arch_config["kernel_size"]) == ("c", 0.5, 7, 5)


def test_comma_lists_parse_as_before():
    assert HARVEST_OPTIONS.values({**_defaults(HARVEST_OPTIONS), "layers": " 3, 7,,"})["layers"] == [3, 7]
    assert ARCH_OPTIONS.values({**_defaults(ARCH_OPTIONS), "dilations": "1,3,9"})["dilations"] == [1, 3, 9]
    assert EVAL_OPTIONS.values({**_defaults(EVAL_OPTIONS), "evals": "core, absorption"})["evals"] == ["core", "absorption"]
    with pytest.raises(Exception, match=r"^--layers takes comma-separated integers such as 5,19, got 'five'$"):
        HARVEST_OPTIONS.values({**_defaults(HARVEST_OPTIONS), "layers": "five"})


def _defaults(opts: ConfigOptions) -> dict:
    return {p.name: p.default for p in opts.parameters()}


def _builtin_architectures() -> dict:
    """Registered architectures that ship with mtsae (a test may register a throwaway one beside them)."""
    from mtsae.train.registry import architecture_names, get_architecture

    classes = {name: get_architecture(name) for name in architecture_names()}
    return {name: cls for name, cls in classes.items() if cls.__module__.startswith("mtsae.train.archs.")}


def test_arch_flags_name_the_architectures_that_have_them():
    """Each flag's help names, in its last parentheses, the registered architectures whose config has it."""
    archs = _builtin_architectures()
    for f in ARCH_OPTIONS.fields():
        named = re.findall(r"\(([^()]*)\)\.?$", f.metadata["help"])[-1]
        having = {a for a, cls in archs.items() if f.name in {g.name for g in dataclasses.fields(cls.config_class)}}
        claimed = set(archs) if named == "all" else set(re.findall(r"[a-z0-9]+", named)) & set(archs)
        assert claimed == having, (f.name, named, having)


def test_arch_choices_in_help_are_the_registry():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert f"One of: {', '.join(sorted(_builtin_architectures()))}." in _flat(result.stdout)
