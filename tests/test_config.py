"""params.yaml parsing: the shipped file is valid, and mistakes name the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from medimg.config import ConfigError, WartPolicy, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_parse_and_match_the_official_split():
    params = load_params(ROOT / "params.yaml")
    assert params.validation.expected_split_sizes == {"train": 4708, "val": 524, "test": 624}
    assert params.task.class_names == ("normal", "pneumonia")
    assert params.validation.duplicates_within_split == WartPolicy.WARN


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"train\.epochz: unknown key"):
        parse_params({"train": {"epochz": 3}})


def test_wrong_value_names_key_and_expectation():
    with pytest.raises(ConfigError) as err:
        parse_params({"train": {"epochs": 0}, "validation": {"duplicates_within_split": "ignore"}})
    text = str(err.value)
    assert "train.epochs" in text and "greater than or equal to 1" in text
    assert "validation.duplicates_within_split" in text and "'fail', 'warn' or 'drop'" in text


def test_not_a_mapping(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(bad)


def test_broken_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train: {epochs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_overrides_merge_and_fingerprint_changes():
    base = load_params(ROOT / "params.yaml")
    changed = load_params(ROOT / "params.yaml", {"train": {"epochs": 3}})
    assert changed.train.epochs == 3 and changed.train.lr == base.train.lr
    assert changed.fingerprint() != base.fingerprint()
    assert load_params(ROOT / "params.yaml").fingerprint() == base.fingerprint()
    assert base.flat()["train.epochs"] == str(base.train.epochs)


def test_fingerprint_ignores_where_when_and_whether_to_run():
    base = load_params(ROOT / "params.yaml")
    elsewhere = load_params(
        ROOT / "params.yaml",
        {
            "workspace": {"path": "/tmp/elsewhere"},
            "schedule": {"cron": "30 4 * * *", "collision_strategy": "enqueue"},
            "orchestration": {"task_retries": 5, "notify_webhook_url": "https://example.org/hook"},
            "drift": {"retrain_on": "drift", "psi_threshold": 0.5},
        },
    )
    assert elsewhere.fingerprint() == base.fingerprint()
    for shaping in ({"preprocess": {"size": 64}}, {"gates": {"min_auc": 0.5}}, {"export": {"opset": 17}}):
        assert load_params(ROOT / "params.yaml", shaping).fingerprint() != base.fingerprint(), shaping


def test_a_variant_holds_only_its_differences_and_inherits_the_rest_from_its_base(tmp_path):
    base = load_params(ROOT / "params.yaml")
    kermany = load_params(ROOT / "params" / "kermany64.yaml")
    densenet = load_params(ROOT / "params" / "densenet224.yaml")  # based on kermany64, itself on params.yaml
    assert kermany.preprocess.size == 64 and kermany.data.source == "image_folder"
    assert kermany.train.lr == base.train.lr and kermany.gates == base.gates  # inherited, not copied
    assert densenet.model.architecture == "densenet121" and densenet.preprocess.channels == 3
    assert densenet.data.root == kermany.data.root and densenet.train.early_stopping_patience == 3
    assert densenet.validation.expected_split_sizes is None  # a null in the variant wins over the base's value

    (tmp_path / "variant.yaml").write_text("base: params.yaml\ntrain: {epochs: 2}\n")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    variant = load_params(tmp_path / "variant.yaml")
    assert variant.train.epochs == 2 and variant.train.batch_size == base.train.batch_size


def test_a_missing_or_looping_base_is_a_clear_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: params file not found"):
        load_params(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_params(tmp_path / "b.yaml")
    (tmp_path / "d.yaml").write_text("base: [x]\n")
    with pytest.raises(ConfigError, match="must be a path"):
        load_params(tmp_path / "d.yaml")


def test_the_task_section_says_what_the_model_is_for():
    binary = parse_params({})
    assert binary.task.kind == "binary" and binary.task.positive_index == 1 and binary.task.auc_metric == "roc_auc"
    flipped = parse_params({"task": {"class_names": ["malignant", "benign"], "abnormal": ["malignant"]}})
    assert flipped.task.positive_index == 0
    brain = parse_params(
        {
            "task": {
                "kind": "multiclass",
                "class_names": ["glioma", "meningioma", "notumor", "pituitary"],
                "abnormal": ["pituitary", "glioma", "meningioma"],
            },
            "gates": {"min_class_sensitivity": {"glioma": 0.8}},
        }
    )
    assert brain.task.abnormal_indices == (0, 1, 3) and brain.task.auc_metric == "macro_roc_auc"
    with pytest.raises(ValueError, match="no single positive class"):
        _ = brain.task.positive_index


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"task": {"class_names": ["a", "b", "c"], "abnormal": ["b"]}}, r"task\.kind binary needs exactly two"),
        ({"task": {"abnormal": ["b", "pneumonia"]}}, r"task\.abnormal names \['b'\]"),
        ({"task": {"abnormal": ["normal", "pneumonia"]}}, r"task\.abnormal names every class"),
        ({"task": {"kind": "multiclass"}}, r"task\.kind multiclass needs at least three"),
        ({"task": {"class_names": ["a", "a"], "abnormal": ["a"]}}, r"task\.class_names must be distinct"),
        ({"data": {"class_names": ["a", "b"]}}, r"data\.class_names is now task\.class_names"),
        ({"gates": {"min_class_sensitivity": {"viral": 0.5}}}, r"gates\.min_class_sensitivity names \['viral'\]"),
        ({"gates": {"min_class_sensitivity": {"normal": 1.5}}}, r"gates\.min_class_sensitivity values must lie"),
    ],
)
def test_a_wrong_task_combination_fails_at_load_naming_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


def test_an_unknown_benchmark_fails_at_load_naming_the_key_and_the_known_ids():
    with pytest.raises(ConfigError, match=r"gates\.benchmark\.id: unknown benchmark 'nope'; known: .*seed_target"):
        parse_params({"gates": {"benchmark": {"id": "nope"}}})


def test_data_dask_is_validated_by_key_and_left_out_of_the_fingerprint():
    base = load_params(ROOT / "params.yaml")
    assert base.data.dask.address is None  # the local pool unless a scheduler is named
    on_dask = load_params(ROOT / "params.yaml", {"data": {"dask": {"address": "tcp://127.0.0.1:8786", "min_files": 1}}})
    assert on_dask.data.dask.address == "tcp://127.0.0.1:8786"
    assert on_dask.fingerprint() == base.fingerprint()  # where decoding runs does not change the images
    with pytest.raises(ConfigError) as err:
        load_params(ROOT / "params.yaml", {"data": {"dask": {"address": "localhost", "chunk_files": 0}}})
    assert "data.dask.address" in str(err.value) and "data.dask.chunk_files" in str(err.value)
