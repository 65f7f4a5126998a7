"""Building the AST: random initialisation, loading a local checkpoint at another input length
(position embeddings cropped or interpolated, never zeroed), the new head, attention backends."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from packaging.version import Version
from settings_helpers import feature_settings, model_settings
from training_helpers import in_quick_project, quick_project, restore_torch_globals  # noqa: F401
from transformers import ASTForAudioClassification

from audiopetl.core import compat
from audiopetl.core.config import load_config
from audiopetl.core.errors import TrainingError
from audiopetl.core.settings import FeatureSettings, ModelSettings
from audiopetl.features.cache import read_metadata
from audiopetl.models.backbones import ast as ast_backbone
from audiopetl.models.build import adapt_position_embeddings, build_model, grid_shape
from audiopetl.study import Study

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

ARCH = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 16,
    "frequency_stride": 16,
    "time_stride": 16,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
MEL = 128  # 8 frequency patches
DONOR_LENGTH = 128  # 8 time patches


def model_cfg(attn: str = "sdpa", pretrained: str | None = None) -> dict[str, Any]:
    return {"pretrained": pretrained, "attn_implementation": attn, "architecture": dict(ARCH)}


def settings_of(block: dict[str, Any], name: str = "test-ast") -> ModelSettings:
    return model_settings(block, name)


def features(length: int, mel: int = MEL) -> FeatureSettings:
    return feature_settings({"target_length": length, "num_mel_bins": mel})


def pos_embeddings(model: torch.nn.Module) -> torch.Tensor:
    return model.audio_spectrogram_transformer.embeddings.position_embeddings.detach().clone()


def time_grid(pos: torch.Tensor, freq: int) -> torch.Tensor:
    """(1, 2 + F*T, H) -> (F, T, H): the patch part of a position embedding as a grid."""
    return pos[0, 2:].reshape(freq, -1, pos.shape[-1])


@pytest.fixture(scope="module")
def donor(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """A tiny AST at max_length 128 saved with save_pretrained; its position embeddings."""
    torch.manual_seed(1234)
    model = build_model(settings_of(model_cfg()), features(DONOR_LENGTH), num_classes=3)
    folder = tmp_path_factory.mktemp("donor") / "ast-128"
    model.save_pretrained(str(folder))
    return folder, pos_embeddings(model)


def test_random_init_from_architecture(restore_torch_globals: None) -> None:  # noqa: F811
    torch.manual_seed(0)
    model = build_model(settings_of(model_cfg()), features(64), num_classes=7)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (32, 2, 64)
    assert (cfg.max_length, cfg.num_mel_bins, cfg.num_labels) == (64, MEL, 7)
    assert len(ast_backbone.module_layout().modules_for(model, "q")) == 2
    emb = model.audio_spectrogram_transformer.embeddings
    # transformers zero-initialises these three; a model trained from scratch must not start
    # without positional information (the reference study's defect 1).
    for name in ("position_embeddings", "cls_token", "distillation_token"):
        value = getattr(emb, name).detach()
        assert value.abs().max() > 0, name
        assert 0.01 < value.std().item() < 0.03, name
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all() and param.abs().max() < 10, name
    logits = model.eval()(input_values=torch.randn(2, 64, MEL)).logits
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    # Seeded: the same seed builds the same model.
    torch.manual_seed(0)
    again = build_model(settings_of(model_cfg()), features(64), num_classes=7)
    for (n, a), (_, b) in zip(model.named_parameters(), again.named_parameters(), strict=True):
        assert torch.equal(a, b), n


def test_same_length_copies_everything(donor: tuple[Path, torch.Tensor]) -> None:
    folder, donor_pos = donor
    torch.manual_seed(0)
    model = build_model(settings_of(model_cfg()), features(DONOR_LENGTH), 5, pretrained=str(folder))
    assert torch.equal(pos_embeddings(model), donor_pos)
    source = ASTForAudioClassification.from_pretrained(str(folder)).state_dict()
    for name, value in model.state_dict().items():
        if not name.startswith("classifier."):
            assert torch.equal(value, source[name]), name


def test_shorter_input_keeps_the_centre_of_the_time_axis(
    donor: tuple[Path, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, donor_pos = donor
    calls: list[dict[str, Any]] = []
    original = ASTForAudioClassification.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(ASTForAudioClassification, "from_pretrained", spy)
    model = build_model(settings_of(model_cfg()), features(64), 5, pretrained=str(folder))
    assert calls and all(not c.get("ignore_mismatched_sizes") for c in calls)

    pos = pos_embeddings(model)
    assert pos.shape == (1, 2 + 8 * 4, 32)
    assert model.config.max_length == 64 and grid_shape(model.config) == (8, 4)
    assert torch.equal(pos[:, :2], donor_pos[:, :2])  # [CLS] and [DIST] positions
    # Time patches 2..5 of 0..7: the centre crop, exactly.
    assert torch.equal(time_grid(pos, 8), time_grid(donor_pos, 8)[:, 2:6])
    assert torch.equal(pos, adapt_position_embeddings(donor_pos, (8, 8), (8, 4)))
    assert pos.abs().mean() > 0.5 * donor_pos.abs().mean()  # nothing re-initialised to zero


def test_longer_input_interpolates_the_time_axis(donor: tuple[Path, torch.Tensor]) -> None:
    folder, donor_pos = donor
    model = build_model(settings_of(model_cfg()), features(256), 5, pretrained=str(folder))
    pos = pos_embeddings(model)
    assert pos.shape == (1, 2 + 8 * 16, 32)
    assert torch.equal(pos, adapt_position_embeddings(donor_pos, (8, 8), (8, 16)))
    assert torch.equal(pos[:, :2], donor_pos[:, :2])
    new, old = time_grid(pos, 8), time_grid(donor_pos, 8)
    assert new.abs().mean() > 0.5 * old.abs().mean()  # not zero, same scale
    # Bilinear, align_corners=False, x2: the end columns are the old end columns and the
    # second column lies a quarter of the way from the first old column to the second.
    torch.testing.assert_close(new[:, 0], old[:, 0])
    torch.testing.assert_close(new[:, -1], old[:, -1])
    torch.testing.assert_close(new[:, 1], 0.75 * old[:, 0] + 0.25 * old[:, 1])
    # Every new column lies between the two old columns it is interpolated from.
    for j in range(new.shape[1]):
        src = min(max((j + 0.5) / 2 - 0.5, 0.0), old.shape[1] - 1.0)
        a, b = old[:, int(src)], old[:, min(int(src) + 1, old.shape[1] - 1)]
        assert (new[:, j] >= torch.minimum(a, b) - 1e-6).all(), j
        assert (new[:, j] <= torch.maximum(a, b) + 1e-6).all(), j
    logits = model.eval()(input_values=torch.randn(2, 256, MEL)).logits
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()


def test_other_frequency_grid_is_refused(donor: tuple[Path, torch.Tensor]) -> None:
    folder, _ = donor
    with pytest.raises(TrainingError, match="frequency grid"):
        build_model(settings_of(model_cfg()), features(64, mel=64), 5, pretrained=str(folder))


def test_missing_checkpoint_is_a_training_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="cannot load pretrained"):
        build_model(settings_of(model_cfg()), features(64), 5, pretrained=str(tmp_path / "nothing"))


def test_new_head_is_sized_for_the_dataset_and_initialised(
    donor: tuple[Path, torch.Tensor],
    in_quick_project: Path,  # noqa: F811
) -> None:
    study = Study(load_config("config/config.yaml", "quick"))
    classes = read_metadata(study.cache_path("synthetic"))["class_names"]
    assert len(classes) == 4
    folder, _ = donor
    donor_head = ASTForAudioClassification.from_pretrained(str(folder)).classifier
    assert donor_head.dense.out_features == 3
    torch.manual_seed(5)
    model = build_model(
        settings_of(model_cfg()), features(64), len(classes), pretrained=str(folder)
    )
    head = model.classifier
    assert model.config.num_labels == len(classes) == head.dense.out_features
    assert len(model.config.id2label) == len(classes)
    weight = head.dense.weight.detach()
    assert torch.isfinite(weight).all()
    std = float(model.config.initializer_range)
    assert 0.6 * std < weight.std().item() < 1.4 * std
    assert torch.equal(head.dense.bias, torch.zeros_like(head.dense.bias))
    assert torch.equal(head.layernorm.weight, torch.ones_like(head.layernorm.weight))
    assert torch.equal(head.layernorm.bias, torch.zeros_like(head.layernorm.bias))
    # The project's own pretrained tiny AST builds for the dataset the same way.
    quick_model = study.model("tiny-ast")
    pretrained = "results/quick/pretrain/tiny-ast/pretrained"
    built = build_model(
        quick_model, study.features("synthetic"), len(classes), pretrained=pretrained
    )
    assert built.config.num_labels == 4


@pytest.mark.skipif(
    Version("4.36") > compat.TRANSFORMERS_VERSION,
    reason="transformers < 4.36 has eager attention only",
)
def test_eager_and_sdpa_agree(donor: tuple[Path, torch.Tensor]) -> None:
    folder, _ = donor
    torch.manual_seed(3)
    eager = build_model(
        settings_of(model_cfg("eager")), features(64), 5, pretrained=str(folder)
    ).eval()
    torch.manual_seed(3)
    sdpa = build_model(
        settings_of(model_cfg("sdpa")), features(64), 5, pretrained=str(folder)
    ).eval()
    assert eager.config._attn_implementation == "eager"
    assert sdpa.config._attn_implementation == "sdpa"
    for (n, a), (_, b) in zip(eager.named_parameters(), sdpa.named_parameters(), strict=True):
        assert torch.equal(a, b), n
    x = torch.randn(4, 64, MEL)
    with torch.no_grad():
        diff = (eager(input_values=x).logits - sdpa(input_values=x).logits).abs().max()
    assert diff < 1e-5


def test_models_do_not_share_or_mutate_their_config() -> None:
    cfg = model_cfg("eager")
    before = copy.deepcopy(cfg)
    first = build_model(settings_of(cfg), features(64), 3)
    cfg["attn_implementation"] = "sdpa"
    second = build_model(settings_of(cfg), features(128), 6)
    assert cfg == {**before, "attn_implementation": "sdpa"}
    assert first.config is not second.config
    # Building the second model changed nothing of the first.
    if Version("4.36") <= compat.TRANSFORMERS_VERSION:  # before, there is no attention choice
        assert first.config._attn_implementation == "eager"
    assert (first.config.max_length, first.config.num_labels) == (64, 3)
    assert (second.config.max_length, second.config.num_labels) == (128, 6)
