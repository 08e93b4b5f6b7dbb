"""CLIs generated from the config dataclasses: a flag per field, YAML recipes with command-line overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from align.config import TrainConfig as AlignConfig
from align.probe import ProbeConfig
from align.probe import build_parser as probe_parser
from align.train import build_parser as align_parser
from core.cli import ConfigParser, flag_name
from vlm2vec.config import TrainConfig as VLM2VecConfig
from vlm2vec.train import build_parser as vlm2vec_parser

REPO = Path(__file__).resolve().parents[1]
PARSERS = {"align.train": align_parser, "vlm2vec.train": vlm2vec_parser, "align.probe": probe_parser}
REQUIRED = {
    "align.train": ["--image-features", "i.h5", "--text-features", "t.h5", "--output-dir", "out"],
    "vlm2vec.train": ["--model", "m", "--data", "d", "--output-dir", "out"],
    "align.probe": ["--image-features", "i.h5", "--text-features", "t.h5", "--val-image-features", "vi.h5",
                    "--val-text-features", "vt.h5", "--output-dir", "out"],
}  # fmt: skip


def option_strings(parser: ConfigParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_config_field_has_a_flag_with_help(name):
    parser = PARSERS[name]()
    options = option_strings(parser)
    for field in dataclasses.fields(parser.config_class):
        assert flag_name(field.name) in options, field.name
        if field.type == "bool" and field.default is True:
            assert f"--no-{field.name.replace('_', '-')}" in options, field.name
        assert field.metadata.get("help"), f"{name}: {field.name} has no help text"
    help_text = parser.format_help()
    assert "--config FILE.yaml" in help_text and "--batch-size" in help_text


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_unset_flags_take_the_dataclass_defaults(name):
    expected = {
        "align.train": AlignConfig(image_features="i.h5", text_features=["t.h5"], output_dir="out"),
        "vlm2vec.train": VLM2VecConfig(model="m", data="d", output_dir="out"),
        "align.probe": ProbeConfig(image_features=["i.h5"], text_features=["t.h5"], val_image_features=["vi.h5"],
                                   val_text_features=["vt.h5"], output_dir="out"),
    }[name]  # fmt: skip
    assert PARSERS[name]().parse(REQUIRED[name]) == expected


def test_config_file_plus_override_round_trips(tmp_path):
    recipe = {
        "image_features": "img.h5", "text-features": ["a.h5", "b.h5"], "output_dir": "runs/x",
        "head": "mlp", "lr": "1e-3", "betas": [0.9, 0.95], "epochs": 7, "progress": False, "grad_clip": 1.0,
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cfg = align_parser().parse(["--config", str(path), "--lr", "5e-4", "--epochs", "9"])
    assert cfg.text_features == ["a.h5", "b.h5"] and cfg.head == "mlp" and cfg.betas == (0.9, 0.95)
    assert cfg.lr == 5e-4 and cfg.epochs == 9  # the command line wins
    assert cfg.progress is False and cfg.grad_clip == 1.0
    # The saved config reads back into the same object, and as a recipe gives the same config again.
    assert AlignConfig.from_dict(cfg.to_dict()) == cfg
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(cfg.to_dict()))
    assert align_parser().parse(["--config", str(again)]) == cfg


def test_dict_and_tuple_fields_from_the_command_line():
    cfg = vlm2vec_parser().parse([*REQUIRED["vlm2vec.train"], "--subset-caps", "WebQA=10", "MSCOCO=3",
                                  "--no-hard-negatives", "--subsets", "WebQA", "MSCOCO"])  # fmt: skip
    assert cfg.subset_caps == {"WebQA": 10, "MSCOCO": 3}
    assert cfg.hard_negatives is False and cfg.subsets == ["WebQA", "MSCOCO"]
    assert VLM2VecConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(SystemExit):
        vlm2vec_parser().parse([*REQUIRED["vlm2vec.train"], "--subset-caps", "WebQA"])


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"learning_rate": 1e-3}, "unknown settings learning_rate"),
        ({"epochs": "many"}, "epochs must be int"),
        ({"head": "transformer"}, "head must be one of"),
        (["not", "a", "mapping"], "must be a mapping"),
    ],
)
def test_bad_recipes_are_refused_naming_the_key(tmp_path, capsys, recipe, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(SystemExit) as exit_info:
        align_parser().parse([*REQUIRED["align.train"], "--config", str(path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_required_setting_is_reported():
    with pytest.raises(SystemExit):
        align_parser().parse(["--text-features", "t.h5", "--output-dir", "out"])


@pytest.mark.parametrize(
    ("file", "config", "values"),
    [
        ("sail.yaml", AlignConfig, {"head": "star", "width_factor": 8, "loss": "siglip", "optimizer": "lion",
                                    "batch_size": 32768, "lr": 1e-5, "wd": 1e-4, "epochs": 100}),
        ("alignment_probing.yaml", ProbeConfig, {"head": "linear", "epochs": 50, "target_dim": 1024}),
        ("quickstart.yaml", AlignConfig, {"head": "mlp", "loss": "clip", "target_dim": 512, "batch_size": 256,
                                          "epochs": 20, "lr": 1e-3, "wd": 0.01, "optimizer": "adamw",
                                          "logit_scale": 10.0}),
        ("vlm2vec.yaml", VLM2VecConfig, {"model": "Qwen/Qwen2-VL-2B-Instruct", "lora_r": 16, "temperature": 0.02,
                                         "batch_size": 1024, "query_chunk_size": 16, "steps": 2000,
                                         "warmup": 200, "dtype": "bfloat16"}),
    ],
)  # fmt: skip
def test_recipes_load_and_set_their_values(file, config, values):
    recipe = ConfigParser(config).recipe_values(REPO / "recipes" / file)
    assert {k: recipe[k] for k in values} == values
