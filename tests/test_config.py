from pathlib import Path

import pytest

from amnet.config import DEFAULTS, config_from_dict, load_config
from amnet.errors import AMNetError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_paper_config_has_the_papers_settings():
    cfg = load_config(CONFIGS / "thumos14_i3d.yaml")
    assert cfg["model"]["embd_dim"] == 512
    assert cfg["model"]["n_ame_layers"] == 2 and cfg["model"]["n_heads"] == 4
    assert cfg["dataset"]["max_seq_len"] == 2304 and cfg["dataset"]["num_classes"] == 20
    assert (
        cfg["dataset"]["default_fps"],
        cfg["dataset"]["feature_stride"],
        cfg["dataset"]["num_frames"],
    ) == (30.0, 4, 16)


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert set(cfg) == set(DEFAULTS)


def test_ablation_files_override_only_their_keys():
    base = load_config(CONFIGS / "thumos14_i3d.yaml")
    dim = load_config(CONFIGS / "ablations" / "dim_1024.yaml")
    heads = load_config(CONFIGS / "ablations" / "layers2_heads8.yaml")
    assert dim["model"]["embd_dim"] == 1024 and dim["dataset"] == base["dataset"]
    assert heads["model"]["n_heads"] == 8 and heads["model"]["embd_dim"] == 512


def test_anet_uses_its_tiou_range():
    cfg = load_config(CONFIGS / "anet_i3d.yaml")
    assert (
        cfg["test_cfg"]["tiou_thresholds"][0] == 0.5
        and cfg["test_cfg"]["tiou_thresholds"][-1] == 0.95
    )
    assert cfg["dataset"]["num_classes"] == 200


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  embd_dims: 256\n")
    with pytest.raises(AMNetError, match=r"unknown config key 'model.embd_dims'"):
        load_config(bad)


@pytest.mark.parametrize(
    "text, message",
    [
        ("model: [1, 2]\n", "must be a section"),
        ("model:\n  n_heads: 3\n", "n_heads"),
        # Model values of the wrong type are named, not a TypeError from a comparison.
        ("model:\n  embd_dim: '64'\n", "model.embd_dim must be an integer, got '64'"),
        ("model:\n  use_gam: yes please\n", "model.use_gam must be true or false"),
        ("model:\n  dropout: .nan\n", "model.dropout must be a finite number"),
        ("model:\n  mlp_ratio: 0\n", "model.mlp_ratio must be >= 1"),
        ("model:\n  center_sample_radius: -1\n", "model.center_sample_radius must be >= 0"),
        (
            "model:\n  regression_range: [[0, 4], [8, 4], [8, 16], [16, 32], [32, 64], [64, 10000]]\n",
            "0 <= lo < hi",
        ),
        ("dataset:\n  max_seq_len: 100\n", "max_seq_len"),
        ("- a\n- b\n", "mapping"),
        ("model: {embd_dim: 64\n", "malformed YAML"),
        # A key given twice: YAML loaders keep the last value silently; the line is named.
        (
            "opt:\n  learning_rate: 1.0e-3\n  learning_rate: 5.0\n",
            r"malformed YAML \(key 'learning_rate' given twice, line 3\)",
        ),
        ("model: {embd_dim: 64, embd_dim: 128}\n", "key 'embd_dim' given twice"),
        ("model:\n  <<: {embd_dim: 64}\n  n_heads: 4\n  n_heads: 2\n", "key 'n_heads' given twice"),
        # A name, not a structure (an alias tree there expanded to gigabytes on export).
        ("dataset_name: [1, {a: 2}]\n", "dataset_name must be a short non-empty name, got list"),
        ("dataset_name: ''\n", "dataset_name must be a short non-empty name"),
        # Python tags are never constructed (no code runs from a config).
        ("opt: !!python/object/apply:os.system ['true']\n", "could not determine a constructor"),
        ("base: missing.yaml\n", "not found"),
        # Feature file names: never a path out of the feature folder.
        ("dataset:\n  file_prefix: ../v_\n", "file_prefix must be text without path"),
        ("dataset:\n  file_ext: .npy/x\n", "file_ext must be text without path"),
        ("dataset:\n  file_ext: 3\n", "file_ext must be text"),
        ("dataset:\n  force_upsampling: yes please\n", "force_upsampling must be true or false"),
        # Training settings: refused when read, not trained with or found at the first validation.
        ("dataset:\n  crop_ratio: [1.2, 0.5]\n", "dataset.crop_ratio must be null or"),
        ("dataset:\n  train_split: [3]\n", "dataset.train_split must be a subset name"),
        ("dataset:\n  trunc_thresh: 2\n", "dataset.trunc_thresh must be in"),
        ("opt:\n  learning_rate: -1.0e-4\n", "opt.learning_rate must be > 0"),
        ("opt:\n  epochs: 2.5\n", "opt.epochs must be an integer"),
        ("opt:\n  weight_decay: .nan\n", "opt.weight_decay must be >= 0"),
        ("loader:\n  batch_size: 0\n", "loader.batch_size must be an integer >= 1"),
        ("train_cfg:\n  ema_decay: 1.5\n", "train_cfg.ema_decay must be in"),
        ("train_cfg:\n  amp: 'yes'\n", "train_cfg.amp must be true or false"),
        ("train_cfg:\n  eval_every: -1\n", "train_cfg.eval_every must be an integer"),
        ("test_cfg:\n  nms_method: greedy\n", "test_cfg: postprocess.nms_method"),
        ("test_cfg:\n  score_thresh: 2\n", "score_thresh must be in .0, 1."),  # keeps nothing
        ("test_cfg:\n  tiou_thresholds: [0.5, 1.5]\n", "test_cfg.tiou_thresholds must be"),
        ("test_cfg:\n  tiou_thresholds: [0.5, 0.7, 0.5]\n", "a non-empty list of distinct numbers"),
    ],
)
def test_bad_configs_give_one_line_errors(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(AMNetError, match=message) as info:
        load_config(bad)
    assert "\n" not in str(info.value)


def test_yaml_merge_keys_work_and_explicit_keys_override_them(tmp_path):
    good = tmp_path / "merge.yaml"
    good.write_text("model:\n  <<: {embd_dim: 64, n_heads: 2}\n  n_heads: 4\n")
    cfg = load_config(good)
    assert (cfg["model"]["embd_dim"], cfg["model"]["n_heads"]) == (64, 4)


def test_base_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(AMNetError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_config_from_partial_dict():
    cfg = config_from_dict({"model": {"embd_dim": 64, "head_dim": 64}})
    assert cfg["model"]["embd_dim"] == 64 and cfg["model"]["n_heads"] == 4


def test_model_defaults_have_one_source_and_every_key_is_honoured_or_refused(tmp_path):
    from dataclasses import fields

    from amnet.config import DEFAULTS
    from amnet.model.config import ModelConfig

    assert DEFAULTS["model"] == ModelConfig().to_dict()
    assert set(DEFAULTS["model"]) == {f.name for f in fields(ModelConfig)}
    bad = tmp_path / "bad.yaml"
    bad.write_text("opt:\n  type: SGD\n")
    with pytest.raises(AMNetError, match=r"opt\.type must be AdamW"):
        load_config(bad)
    bad.write_text("model:\n  offset_activation: exp\n")
    with pytest.raises(AMNetError, match="offset_activation"):
        load_config(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text("opt:\n  type: adamw\nmodel:\n  offset_activation: relu\n")
    assert load_config(ok)["model"]["offset_activation"] == "relu"


def test_the_training_api_checks_a_config_mapping_as_a_file_is_checked(tmp_path):
    """``train(cfg, ...)`` takes a mapping: a partial one is completed from the defaults and
    checked like a YAML file, before anything is written; anything else is one line."""
    from amnet.train import train

    run = tmp_path / "run"
    with pytest.raises(AMNetError, match=r"opt\.learning_rate must be > 0, got 'x'"):
        train({"opt": {"learning_rate": "x"}}, tmp_path, run, epochs=0, progress=False)
    with pytest.raises(AMNetError, match="unknown config key 'modle'"):
        train({"modle": {}}, tmp_path, run, epochs=0, progress=False)
    with pytest.raises(AMNetError, match="the config must be a mapping"):
        train(None, tmp_path, run, epochs=0, progress=False)  # type: ignore[arg-type]
    assert not run.exists()
