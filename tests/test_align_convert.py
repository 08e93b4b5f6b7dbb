"""``python -m align.convert sail``: SAIL checkpoints of every head kind become align heads that give SAIL's
embeddings, and ``recipes/sail-reference.yaml`` sets SAIL's own training defaults.

The SAIL state dicts are built here from SAIL's key names (``vision_layer_norm``, ``vision_mapping_network.f1``,
..., ``text_mapping_network.layers.12``, ``logit_scale``), saved with ``torch.save`` the way SAIL's ``main.py``
saves them, converted through the CLI, and compared with a float64 forward of SAIL's formula written out below
(LayerNorm -> mapping -> L2 normalise), independent of our head code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from align import AlignedModel, AlignmentHead, HeadConfig
from align.config import TrainConfig
from align.convert import SAIL_LAYOUTS, main, star_f2_bound
from align.train import check_config
from core.cli import ConfigParser

REPO = Path(__file__).resolve().parents[1]
IMAGE_MODEL, TEXT_MODEL = "facebook/dinov2-large", "nvidia/NV-Embed-v2"
D_IMAGE, D_TEXT, TARGET = 12, 8, 6
LOG_SCALE, BIAS = math.log(17.5), -9.25


# ----- SAIL state dicts, from SAIL's key names ------------------------------------------------------------------
def _linear(sd: dict, prefix: str, rows: int, cols: int, gen: torch.Generator, gain: float = 1.0) -> None:
    sd[f"{prefix}.weight"] = torch.randn(rows, cols, generator=gen) * gain / math.sqrt(cols)
    sd[f"{prefix}.bias"] = torch.randn(rows, generator=gen) * 0.5


def _layer_norm(sd: dict, prefix: str, dim: int, gen: torch.Generator) -> None:
    sd[f"{prefix}.weight"] = 1 + 0.5 * torch.randn(dim, generator=gen)
    sd[f"{prefix}.bias"] = 0.3 * torch.randn(dim, generator=gen)


def sail_state(
    kind: str,
    seed: int = 0,
    d_image: int = D_IMAGE,
    d_text: int = D_TEXT,
    target: int = TARGET,
    width: int = 2,
    hidden: int | None = None,
) -> dict[str, Tensor]:
    """A SAIL ``AlignmentLayer`` (linear / mlp / star) or ``ShareLockAlignmentLayer`` state dict, random values."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}
    if kind == "sharelock":  # no vision layers; the text MLP maps into the image features (target = d_image)
        h = hidden or 16
        _layer_norm(sd, "text_layer_norm", d_text, gen)
        rows = d_text
        for linear in (0, 4, 8):
            _linear(sd, f"text_mapping_network.layers.{linear}", h, rows, gen, gain=2.0)
            bn = f"text_mapping_network.layers.{linear + 1}"
            sd[f"{bn}.weight"] = 1 + 0.3 * torch.randn(h, generator=gen)
            sd[f"{bn}.bias"] = 0.3 * torch.randn(h, generator=gen)
            sd[f"{bn}.running_mean"] = 0.5 * torch.randn(h, generator=gen)
            sd[f"{bn}.running_var"] = 0.5 + torch.rand(h, generator=gen)
            sd[f"{bn}.num_batches_tracked"] = torch.tensor(1234)
            rows = h
        _linear(sd, "text_mapping_network.layers.12", d_image, h, gen)
        sd["logit_scale"] = torch.tensor(LOG_SCALE)  # ShareLock: shape []
        sd["logit_bias"] = torch.tensor(BIAS)
        return sd
    for modality, dim in (("vision", d_image), ("text", d_text)):
        _layer_norm(sd, f"{modality}_layer_norm", dim, gen)
        net = f"{modality}_mapping_network"
        if kind == "linear":
            _linear(sd, net, target, dim, gen)
        elif kind == "mlp":
            h = hidden or 4 * dim
            _linear(sd, f"{net}.proj.0", h, dim, gen, gain=2.0)
            _linear(sd, f"{net}.proj.2", target, h, gen)
        else:
            _linear(sd, f"{net}.f1", width * dim, dim, gen, gain=4.0)  # wide enough to cross 0 and 6
            _linear(sd, f"{net}.f2", width * dim, dim, gen, gain=2.0)
            _linear(sd, f"{net}.g", target, width * dim, gen)
    sd["logit_scale"] = torch.tensor([LOG_SCALE])  # AlignmentLayer: shape [1]
    sd["logit_bias"] = torch.tensor([BIAS])
    return sd


# ----- SAIL's forward, written out in float64 --------------------------------------------------------------------
def _lin(sd: dict, prefix: str, x: Tensor) -> Tensor:
    return x @ sd[f"{prefix}.weight"].double().T + sd[f"{prefix}.bias"].double()


def _layer_norm_ref(sd: dict, prefix: str, x: Tensor) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * sd[f"{prefix}.weight"].double() + sd[
        f"{prefix}.bias"
    ].double()


def _gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def sail_embed(sd: dict, kind: str, modality: str, x: Tensor, gates: list | None = None) -> Tensor:
    """SAIL's ``AlignmentLayer`` / ``ShareLockAlignmentLayer`` embedding of features ``x``, L2-normalised."""
    x = x.double()
    name = "vision" if modality == "image" else "text"
    if kind == "sharelock" and modality == "image":
        y = x
    elif kind == "sharelock":
        y = _layer_norm_ref(sd, "text_layer_norm", x)
        for linear in (0, 4, 8):
            y = _lin(sd, f"text_mapping_network.layers.{linear}", y)
            bn = f"text_mapping_network.layers.{linear + 1}"  # eval mode: running statistics; dropout is off
            y = (y - sd[f"{bn}.running_mean"].double()) / torch.sqrt(sd[f"{bn}.running_var"].double() + 1e-5)
            y = torch.relu(y * sd[f"{bn}.weight"].double() + sd[f"{bn}.bias"].double())
        y = _lin(sd, "text_mapping_network.layers.12", y)
    else:
        y = _layer_norm_ref(sd, f"{name}_layer_norm", x)
        net = f"{name}_mapping_network"
        if kind == "linear":
            y = _lin(sd, net, y)
        elif kind == "mlp":
            y = _lin(sd, f"{net}.proj.2", _gelu(_lin(sd, f"{net}.proj.0", y)))
        else:
            x1 = _lin(sd, f"{net}.f1", y).clamp(-1e3, 1e3)
            x2 = _lin(sd, f"{net}.f2", y).clamp(-1e3, 1e3)
            if gates is not None:
                gates.append(x1)
            y = _lin(sd, f"{net}.g", x1.clamp(0.0, 6.0) * x2)  # ReLU6(f1 x) * f2 x -> g
    return y / y.norm(dim=-1, keepdim=True)


# ----- how SAIL's main.py saves ---------------------------------------------------------------------------------
def _training_checkpoint(sd: dict, prefix: str = "") -> dict:
    lion = {
        "state": {
            i: {"exp_avg": torch.zeros_like(v)} for i, v in enumerate(sd.values()) if v.is_floating_point()
        },
        "param_groups": [
            {"lr": 1e-5, "betas": (0.9, 0.99), "weight_decay": 1e-4, "params": list(range(len(sd)))}
        ],
    }
    return {
        "epoch": 100,
        "name": "sail_l_nv2_merged23m",
        "state_dict": {prefix + k: v for k, v in sd.items()},
        "optimizer": lion,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000},
    }


WRAPPERS = {
    "bare state dict": lambda sd: dict(sd),
    "training checkpoint": _training_checkpoint,
    "DDP (module.)": lambda sd: _training_checkpoint(sd, "module."),
    "compiled (_orig_mod.)": lambda sd: {"_orig_mod." + k: v for k, v in sd.items()},
    "DDP + compiled": lambda sd: _training_checkpoint(sd, "module._orig_mod."),
}


def convert(tmp_path: Path, saved: object, *extra: str, name: str = "converted") -> tuple[int, Path]:
    checkpoint = tmp_path / f"{name}.pt"
    torch.save(saved, checkpoint)
    out = tmp_path / name
    argv = [
        "sail",
        str(checkpoint),
        "--image-model",
        IMAGE_MODEL,
        "--text-model",
        TEXT_MODEL,
        "--out",
        str(out),
    ]
    return main([*argv, *extra]), out


def features(rows: int, dim: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(rows, dim, generator=gen) + torch.randn(dim, generator=gen)


# ----- equivalence -----------------------------------------------------------------------------------------------
def test_every_sail_layout_maps_onto_exactly_our_heads_keys():
    for kind, specs in SAIL_LAYOUTS.items():
        config = HeadConfig(
            head=kind, image_dim=5, text_dim=4, target_dim=5, hidden_dim=7 if kind == "sharelock" else None
        )
        assert {s.ours for s in specs} == set(AlignmentHead(config).state_dict()), kind
        assert len({s.sail for s in specs}) == len(specs)


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize("kind", ["linear", "mlp", "star", "sharelock"])
def test_converted_head_gives_sails_embeddings(tmp_path, kind, wrapper):
    sd = sail_state(kind, d_image=TARGET if kind == "sharelock" else D_IMAGE)
    code, out = convert(tmp_path, WRAPPERS[wrapper](sd))
    assert code == 0
    d_image = TARGET if kind == "sharelock" else D_IMAGE
    image, text = features(9, d_image, seed=1), features(9, D_TEXT, seed=2)
    gates: list[Tensor] = []
    want_image = sail_embed(sd, kind, "image", image, gates)
    want_text = sail_embed(sd, kind, "text", text, gates)
    if kind == "star":  # the inputs exercise both ends of ReLU6
        assert all((g < 0).any() and (g > 6).any() and ((g > 0) & (g < 6)).any() for g in gates)

    model = AlignedModel.from_pretrained(out)  # float32, as evaluate runs it
    assert model.config["head"]["head"] == kind
    torch.testing.assert_close(model.encode_image_features(image).double(), want_image, atol=2e-6, rtol=0)
    torch.testing.assert_close(model.encode_text_features(text).double(), want_text, atol=2e-6, rtol=0)
    exact = AlignedModel.from_pretrained(out).double()  # same weights in float64: SAIL's formula to rounding
    torch.testing.assert_close(exact.head.encode_image(image.double()), want_image, atol=1e-12, rtol=0)
    torch.testing.assert_close(exact.head.encode_text(text.double()), want_text, atol=1e-12, rtol=0)
    assert model.logit_scale == pytest.approx(17.5, rel=1e-6)  # SAIL keeps the log; so do we
    assert model.logit_bias == pytest.approx(BIAS, rel=1e-6)


def test_config_records_the_head_backbones_and_source(tmp_path):
    sd = sail_state("star", width=3)
    code, out = convert(tmp_path, WRAPPERS["DDP (module.)"](sd), "--text-max-length", "1024", name="sail_l")
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "align-head" and config["format_version"] == 1
    assert config["head"] == {
        "head": "star",
        "image_dim": D_IMAGE,
        "text_dim": D_TEXT,
        "target_dim": TARGET,
        "width_factor": 3,
        "hidden_dim": None,
        "logit_scale": pytest.approx(17.5, rel=1e-6),
        "logit_bias": pytest.approx(BIAS, rel=1e-6),
    }
    # the keys align.data.backbone_info writes; revision / normalized are unknown without --check-backbones
    assert config["image_backbone"] == {
        "model": IMAGE_MODEL,
        "revision": None,
        "pooling": "concat",
        "dim": D_IMAGE,
        "normalized": None,
    }
    assert config["text_backbone"] == {
        "model": TEXT_MODEL,
        "revision": None,
        "pooling": "latent_attention",
        "dim": D_TEXT,
        "normalized": None,
        "instruction": None,
        "max_length": 1024,
    }
    source = config["converted_from"]
    checkpoint = tmp_path / "sail_l.pt"
    assert source["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert source["file"] == str(checkpoint.resolve()) and source["bytes"] == checkpoint.stat().st_size
    assert source["layout"] == "star" and source["prefixes_stripped"] == ["module."]
    assert source["container"] == "training checkpoint (state_dict)"
    assert source["epoch"] == 100 and source["name"] == "sail_l_nv2_merged23m"
    assert source["key_mapping"]["vision_mapping_network.g.weight"] == "image.mapping.out.weight"
    assert source["key_mapping"]["logit_scale"] == "log_logit_scale"
    assert (
        source["star_clamp"]["image"]["clamp_never_acts"] and source["star_clamp"]["text"]["clamp_never_acts"]
    )
    assert source["backbones_checked"] is False

    from evaluate.models import load_model  # the evaluate tasks' loader takes the folder

    assert isinstance(load_model(str(out)), AlignedModel)


def test_pooling_and_instruction_flags_are_recorded(tmp_path):
    args = ["--image-pooling", "cls", "--text-pooling", "mean", "--text-instruction", "Retrieve images"]
    code, out = convert(tmp_path, sail_state("linear"), *args)
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["image_backbone"]["pooling"] == "cls"
    assert config["text_backbone"]["pooling"] == "mean"
    assert config["text_backbone"]["instruction"] == "Retrieve images"
    assert config["text_backbone"]["max_length"] == 32768  # NV-Embed-v2's known limit


@pytest.mark.parametrize(
    ("kind", "kwargs", "expected"),
    [
        ("star", {"width": 1}, {"width_factor": 1, "hidden_dim": None}),
        ("star", {"width": 4}, {"width_factor": 4, "hidden_dim": None}),
        ("mlp", {}, {"hidden_dim": None}),  # 4 x input dim per modality, SAIL's SiglipMLP default
        ("mlp", {"hidden": 10}, {"hidden_dim": 10}),
        ("sharelock", {"hidden": 24, "d_image": 9}, {"hidden_dim": 24, "image_dim": 9, "target_dim": 9}),
    ],
)
def test_width_factor_hidden_width_and_dims_follow_the_shapes(tmp_path, kind, kwargs, expected):
    code, out = convert(tmp_path, sail_state(kind, **kwargs))
    assert code == 0
    head = json.loads((out / "config.json").read_text())["head"]
    assert {k: head[k] for k in expected} == expected


def test_star_clamp_bound_holds_and_a_large_f2_is_flagged(tmp_path, caplog):
    sd = sail_state("star")
    gen = torch.Generator().manual_seed(5)
    x = torch.cat([features(4000, D_IMAGE, seed=3), 1e4 * torch.randn(100, D_IMAGE, generator=gen)])
    normed = torch.nn.functional.layer_norm(
        x.double(), (D_IMAGE,), sd["vision_layer_norm.weight"].double(), sd["vision_layer_norm.bias"].double()
    )
    f2 = (
        normed @ sd["vision_mapping_network.f2.weight"].double().T
        + sd["vision_mapping_network.f2.bias"].double()
    )
    bound = star_f2_bound(
        *(
            sd[k]
            for k in (
                "vision_layer_norm.weight",
                "vision_layer_norm.bias",
                "vision_mapping_network.f2.weight",
                "vision_mapping_network.f2.bias",
            )
        )
    )
    assert f2.abs().max() <= bound < 1e3

    sd["text_mapping_network.f2.weight"] *= 1e4  # SAIL's clamp of f2 x at +-1000 may act now
    with caplog.at_level(logging.WARNING):
        code, out = convert(tmp_path, sd)
    assert code == 0
    clamp = json.loads((out / "config.json").read_text())["converted_from"]["star_clamp"]
    assert clamp["image"]["clamp_never_acts"] and not clamp["text"]["clamp_never_acts"]
    assert "text star head" in caplog.text and "clamp" in caplog.text


# ----- refusals --------------------------------------------------------------------------------------------------
def test_an_unknown_layout_is_refused_naming_the_keys(tmp_path, caplog):
    sd = sail_state("linear")
    for modality in ("vision", "text"):  # SAIL's SwiGLU, which its AlignmentLayer never builds
        sd.pop(f"{modality}_mapping_network.weight")
        sd.pop(f"{modality}_mapping_network.bias")
        sd[f"{modality}_mapping_network.linear1.weight"] = torch.randn(TARGET, 4)
        sd[f"{modality}_mapping_network.linear2.weight"] = torch.randn(TARGET, 4)
    code, out = convert(tmp_path, {"module." + k: v for k, v in sd.items()})
    assert code == 2 and not out.exists()
    message = caplog.text
    assert "fits none of SAIL's head layouts" in message
    assert (
        "vision_mapping_network.linear1.weight" in message
        and "text_mapping_network.linear2.weight" in message
    )
    assert "lacks: text_mapping_network.bias, text_mapping_network.weight" in message


def test_a_missing_key_is_named(tmp_path, caplog):
    sd = sail_state("star")
    del sd["text_mapping_network.g.bias"]
    code, _ = convert(tmp_path, sd)
    assert code == 2
    assert "Closest is 'star'" in caplog.text and "lacks: text_mapping_network.g.bias" in caplog.text


def test_a_file_that_needs_arbitrary_unpickling_is_refused(tmp_path, caplog):
    saved = {"state_dict": sail_state("linear"), "args": argparse.Namespace(lr=1e-5)}
    code, out = convert(tmp_path, saved)
    assert code == 2 and not out.exists()
    assert "argparse.Namespace" in caplog.text and "weights_only=True" in caplog.text
    assert "head_only.pt" in caplog.text  # says how to get a loadable file


def test_a_file_that_is_not_a_torch_checkpoint_is_refused(tmp_path, caplog):
    path = tmp_path / "notes.pt"
    path.write_bytes(b"not a checkpoint")
    assert (
        main(["sail", str(path), "--image-model", "a", "--text-model", "b", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "is not a torch.save file" in caplog.text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda sd: sd.update({"text_mapping_network.g.weight": torch.randn(TARGET + 1, 2 * D_TEXT),
                               "text_mapping_network.g.bias": torch.randn(TARGET + 1)}),
         "(target), but other tensors of the head give target = 6"),
        (lambda sd: sd.update({"text_mapping_network.f1.weight": torch.randn(3 * D_TEXT, D_TEXT),
                               "text_mapping_network.f1.bias": torch.randn(3 * D_TEXT),
                               "text_mapping_network.f2.weight": torch.randn(3 * D_TEXT, D_TEXT),
                               "text_mapping_network.f2.bias": torch.randn(3 * D_TEXT),
                               "text_mapping_network.g.weight": torch.randn(TARGET, 3 * D_TEXT)}),
         "width factors 2 (image) and 3 (text)"),
        (lambda sd: sd.update({"logit_scale": torch.zeros(2)}), "logit_scale has shape [2]"),
        (lambda sd: sd["vision_mapping_network.g.weight"].__setitem__((0, 0), float("nan")), "non-finite values"),
    ],
)  # fmt: skip
def test_tensors_that_do_not_form_one_head_are_refused(tmp_path, caplog, change, message):
    sd = sail_state("star")
    change(sd)
    code, _ = convert(tmp_path, sd)
    assert code == 2 and message in caplog.text


def test_an_existing_output_is_kept_unless_overwrite(tmp_path, caplog):
    code, out = convert(tmp_path, sail_state("linear"))
    assert code == 0
    first = (out / "head.safetensors").read_bytes()
    code, _ = convert(tmp_path, sail_state("linear", seed=1))
    assert code == 2 and "--overwrite" in caplog.text and (out / "head.safetensors").read_bytes() == first
    code, _ = convert(tmp_path, sail_state("linear", seed=1), "--overwrite")
    assert code == 0 and (out / "head.safetensors").read_bytes() != first


def test_help_describes_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["sail", "--help"])
    text = capsys.readouterr().out
    for flag in ("--out", "--image-model", "--image-pooling", "--text-model", "--text-pooling", "--text-instruction",
                 "--text-max-length", "--check-backbones", "--device", "--trust-remote-code", "--overwrite"):  # fmt: skip
        assert flag in text


# ----- real backbones: --check-backbones and an evaluate task ----------------------------------------------------
def test_checked_backbones_are_recorded_like_training_and_evaluate_runs(tmp_path):
    from evaluate_helpers import PALETTE, write_imagefolder

    from align.data import backbone_info
    from encode.backbones import load_image_backbone, load_text_backbone
    from encode.store import StoreMeta
    from evaluate.cli import main as evaluate_main
    from evaluate.results import EvalResult

    sd = sail_state(
        "linear", d_image=1280, d_text=384
    )  # efficientnet-lite0 (gap) and all-MiniLM-L6-v2 (mean)
    checkpoint = tmp_path / "sail.pt"
    torch.save(sd, checkpoint)
    out = tmp_path / "converted"
    argv = [
        "sail",
        str(checkpoint),
        "--image-model",
        "efficientnet-lite0",
        "--text-model",
        "all-MiniLM-L6-v2",
    ]
    assert main([*argv, "--out", str(out), "--check-backbones"]) == 0
    config = json.loads((out / "config.json").read_text())
    image, text = load_image_backbone("efficientnet-lite0"), load_text_backbone("all-MiniLM-L6-v2")
    assert config["image_backbone"] == backbone_info(StoreMeta(**image.meta()))
    assert config["text_backbone"] == backbone_info(StoreMeta(**text.meta()))
    assert config["converted_from"]["backbones_checked"] is True

    red, green, blue = PALETTE[:3]
    data = write_imagefolder(tmp_path / "inet", {"n1": [red], "n2": [green], "n3": [blue]})
    (tmp_path / "templates.txt").write_text("a photo of a {}.\n")
    result_file = tmp_path / "result.json"
    code = evaluate_main(
        ["zeroshot", "--model", str(out), "--data", str(data), "--templates", str(tmp_path / "templates.txt"),
         "--output", str(result_file), "--cache-dir", str(tmp_path / "cache")]
    )  # fmt: skip
    assert code == 0
    result = EvalResult.load(result_file)
    assert result.counts["images"] == 3 and result.model["config"]["converted_from"]["layout"] == "linear"


def test_a_backbone_of_another_dim_is_refused(tmp_path, caplog):
    sd = sail_state("linear", d_image=1000, d_text=384)
    checkpoint = tmp_path / "sail.pt"
    torch.save(sd, checkpoint)
    argv = [
        "sail",
        str(checkpoint),
        "--image-model",
        "efficientnet-lite0",
        "--text-model",
        "all-MiniLM-L6-v2",
    ]
    assert main([*argv, "--out", str(tmp_path / "o"), "--check-backbones"]) == 2
    assert "gives 1280-d features, but the head takes 1000-d image features" in caplog.text
    assert not (tmp_path / "o").exists()


# ----- recipes/sail-reference.yaml -------------------------------------------------------------------------------
SAIL_REFERENCE = REPO / "recipes" / "sail-reference.yaml"


def test_sail_reference_recipe_sets_sails_training_defaults():
    recipe = ConfigParser(TrainConfig).recipe_values(SAIL_REFERENCE)
    assert recipe == {
        "head": "star",
        "width_factor": 8,
        "target_dim": 1024,
        "loss": "siglip",
        "batch_size": 32768,
        "optimizer": "lion",
        "lr": 1e-5,
        "wd": 1e-4,
        "decay_norm_and_bias": True,  # SAIL's Lion(model.parameters(), weight_decay=wd) decays every parameter
        "betas": (0.9, 0.99),  # SAIL's --beta1 / --beta2 defaults, also used by its AdamW
        "epochs": 100,
        "warmup": 0.1,
        "logit_scale": 20.0,
        "logit_bias": -10.0,
        "precision": "amp_fp16",  # SAIL's default --precision amp: fp16 autocast + GradScaler
        "grad_clip": None,
        "seed": 42,
        "save_every": 500,
        "val_every": 500,
    }


def test_sail_reference_recipe_builds_a_valid_training_config():
    parser = ConfigParser(TrainConfig, prog="python -m align.train")
    cfg = parser.parse(
        [
            "--config",
            str(SAIL_REFERENCE),
            "--image-features",
            "i.h5",
            "--text-features",
            "t.h5",
            "--output-dir",
            "o",
        ]
    )
    check_config(cfg)
    assert cfg.decay_norm_and_bias and cfg.betas == (0.9, 0.99) and cfg.precision == "amp_fp16"
    off = parser.parse(
        ["--config", str(SAIL_REFERENCE), "--image-features", "i.h5", "--text-features", "t.h5", "--output-dir", "o",
         "--optimizer", "adamw", "--decay-norm-and-bias", "false"]
    )  # fmt: skip
    assert off.optimizer == "adamw" and not off.decay_norm_and_bias  # SAIL's AdamW spares norms and biases


def test_our_siglip_loss_is_n_times_sails_mean_and_lion_steps_the_same():
    """SAIL's SigLipLoss is ``-mean(logsigmoid(labels * logits))`` over the N x N pairs; ours is the paper's
    sum / N. Lion steps by the sign of its momentum mix, so the factor N changes neither update."""
    import torch.nn.functional as F

    from core.losses import siglip_loss
    from core.optim import build_optimizer, param_groups

    n = 16
    labels = 2 * torch.eye(n) - 1

    def sail_loss(image: Tensor, text: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
        return -torch.mean(F.logsigmoid(labels * (scale * image @ text.T + bias)))

    heads = []
    for ours in (True, False):
        torch.manual_seed(0)
        head = AlignmentHead(HeadConfig(head="linear", image_dim=D_IMAGE, text_dim=D_TEXT, target_dim=TARGET))
        optimizer = build_optimizer("lion", param_groups(head, 1e-4, True), lr=1e-3, betas=(0.9, 0.99))
        for step in range(4):
            image_emb, text_emb, _ = head(
                features(n, D_IMAGE, seed=10 + step), features(n, D_TEXT, seed=20 + step)
            )
            if ours:
                loss = siglip_loss(image_emb, text_emb, head.logit_scale, head.logit_bias).loss
                sail = sail_loss(image_emb, text_emb, head.logit_scale, head.logit_bias)
                assert float(loss.detach()) == pytest.approx(n * float(sail.detach()), rel=1e-5)
            else:
                loss = sail_loss(image_emb, text_emb, head.logit_scale, head.logit_bias)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        heads.append(head)
    for (name, a), b in zip(heads[0].state_dict().items(), heads[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
