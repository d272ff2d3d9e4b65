import os

import pytest
from pydantic import ValidationError

from pipeline.contract.config import DEFAULT_CONFIG, Config, apply_override, flatten, load_config, to_dict
from pipeline.contract.errors import ConfigError


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_demo_config_loads_and_puts_its_data_under_the_run_directory():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.datasets.sotu_tasks  # the demo builds the sotu tasks itself
    built = os.path.join(cfg.run.work_dir, "datasets", "sotu_tasks")
    assert cfg.data.corpus == [os.path.join(built, "pretrain_corpus", "*.txt")]  # train presidents only
    era = cfg.finetune["era"]
    assert (era.train_file, era.dev_file, era.test_file) == tuple(
        os.path.join(built, "era", f"{split}.jsonl") for split in ("train_1k", "dev", "test"))
    assert era.compare_random_init and era.baselines == ["tfidf"] and era.repeats >= 2
    moved = load_config(None, ["run.work_dir=/elsewhere"])  # ${run.work_dir} follows the override
    assert moved.finetune["era"].test_file == "/elsewhere/datasets/sotu_tasks/era/test.jsonl"
    assert os.path.dirname(DEFAULT_CONFIG).endswith("configs")


def test_paths_are_relative_to_the_config_file(tmp_path):
    path = write(tmp_path, "data:\n  corpus: texts/*.txt\nprepare:\n  masking: entity\n  lexicon: lex.txt\n")
    cfg = load_config(path)
    assert cfg.data.corpus == [str(tmp_path / "texts" / "*.txt")] and cfg.prepare.lexicon == str(tmp_path / "lex.txt")


def test_bert_base_config_is_bert_base():
    cfg = load_config(os.path.join(os.path.dirname(DEFAULT_CONFIG), "bert-base.yaml"))
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads) == (768, 12, 12)
    assert cfg.model.intermediate_size == 3072


def test_dotted_overrides_parse_values_as_yaml():
    cfg = load_config(None, ["pretrain.batch_size=64", "prepare.masking=span", "run.stages=[vocab, prepare]"])
    assert cfg.pretrain.batch_size == 64
    assert cfg.prepare.masking == "span"
    assert cfg.run.stages == ["vocab", "prepare"]


def test_override_into_a_task_and_new_section():
    raw = {"finetune": {"a": {"epochs": 1}}}
    apply_override(raw, "finetune.a.epochs=3")
    apply_override(raw, "export.embedding=false")
    assert raw == {"finetune": {"a": {"epochs": 3}}, "export": {"embedding": False}}


@pytest.mark.parametrize(
    "text, needle",
    [
        ("pretrain:\n  batch_sise: 3\n", "pretrain.batch_sise: unknown key"),
        ("pretrain:\n  batch_size: many\n", "pretrain.batch_size: Input should be a valid integer"),
        ("model:\n  hidden_size: 100\n  num_heads: 3\n", "must be divisible by num_heads"),
        ("prepare:\n  max_seq_length: 16\n  max_predictions_per_seq: 20\n", "must be below max_seq_length"),
        ("prepare:\n  masking: entity\n", "needs a lexicon file"),
        ("prepare:\n  max_seq_length: 1024\n", "exceeds model.max_position_embeddings"),
        ("prepare:\n  masking: random\n", "prepare.masking"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("pretrain: [\n", "not valid YAML"),
        # A task's key that its type does not have, or a protocol that cannot hold.
        ("finetune:\n  s:\n    type: classification\n    train_file: x\n    doc_stride: 3\n", "finetune.s.doc_stride: unknown key"),
        ("finetune:\n  s:\n    type: qa\n    train_file: x\n    baselines: [tfidf]\n", "finetune.s.baselines: unknown key"),
        ("finetune:\n  s:\n    type: ner\n    train_file: x\n", "finetune.s"),
        ("finetune:\n  s:\n    type: pair\n    train_file: x\n    best_metric: bleu\n", "not computed for pair tasks"),
        ("finetune:\n  s:\n    type: pair\n    train_file: x\n    dev_fraction: 0\n    early_stopping_patience: 2\n",
         "needs a dev split"),
        ("finetune:\n  s:\n    type: pair\n    train_file: x\n    test_fraction: 0.5\n    dev_fraction: 0.5\n",
         "must leave training rows"),
        ("finetune:\n  s:\n    type: pair\n    train_file: x\n    test_file: y\n    eval_file: y\n", "old name of test_file"),
    ],
)
def test_bad_configs_are_one_line_errors_naming_file_and_key(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert needle in message
    assert path in message
    assert "\n" not in message


def test_bad_override_shape():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["pretrain.batch_size"])
    with pytest.raises(ConfigError, match="is not a section"):
        load_config(None, ["run.seed.x=1"])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/bertpipe.yaml")


def test_config_is_frozen_and_flattens():
    cfg = load_config()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.pretrain.batch_size = 3  # type: ignore[misc]
    flat = flatten(to_dict(cfg))
    assert flat["pretrain.batch_size"] == cfg.pretrain.batch_size
    assert flat["finetune.era.epochs"] == cfg.finetune["era"].epochs


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", ""])
def test_task_names_cannot_escape_the_run_directory(tmp_path, name):
    path = write(tmp_path, f'finetune:\n  "{name}":\n    type: classification\n    train_file: x.jsonl\n')
    with pytest.raises(ConfigError, match="names a directory"):
        load_config(path)


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.dirname(DEFAULT_CONFIG))))
def test_every_shipped_config_loads_and_builds_its_stages(name):
    from pipeline.stages import build_stages

    cfg = load_config(os.path.join(os.path.dirname(DEFAULT_CONFIG), name))
    stages = build_stages(cfg)
    assert [s.name.split(":")[0] for s in stages][0] in ("datasets", "vocab", "finetune")


def test_eval_file_still_works_as_the_old_name_of_test_file_with_a_note(tmp_path):
    import warnings

    from pipeline.contract.config import ConfigNote

    path = write(tmp_path, "finetune:\n  s:\n    type: classification\n    train_file: a.jsonl\n    eval_file: b.jsonl\n")
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        cfg = load_config(path)
    assert cfg.finetune["s"].test_file == str(tmp_path / "b.jsonl")  # resolved next to the YAML, like test_file
    assert [str(n.message) for n in notes if n.category is ConfigNote] == [
        "eval_file is now called test_file (scored once, at the end; a dev split of train_file chooses the checkpoint)"]
    assert cfg.finetune["s"].baselines == ["tfidf"] and cfg.finetune["s"].repeats == 1 and cfg.finetune["s"].dev_fraction == 0.1
