"""The README is the manual: its two commands and its config reference must stay true."""

import os
import re
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from pipeline import config_doc
from pipeline.readme_blocks import read_block


def _readme(repo_root):
    with open(os.path.join(repo_root, "README.md"), encoding="utf-8") as fh:
        return fh.read()


def test_readme_starts_with_exactly_the_two_commands_and_ci_runs_the_second(repo_root):
    readme = _readme(repo_root)
    block = re.search(r"```bash\n(.*?)```", readme, flags=re.S).group(1).strip().splitlines()
    assert len(block) == 2
    assert block[0].endswith("bertpipe run")
    with open(os.path.join(repo_root, ".ci", "run"), encoding="utf-8") as fh:
        ci = fh.read()
    assert block[1] in ci


def test_every_config_key_has_a_description():
    missing = config_doc.missing_descriptions()
    assert not missing, f"give these keys a Field(description=...) in pipeline/contract/config.py: {missing}"


def test_the_readme_config_table_is_the_one_generated_from_the_config_classes(repo_root):
    table = read_block(_readme(repo_root), config_doc.BLOCK)
    assert table == config_doc.render(), (
        f"README.md's configuration table differs from the config classes: run `{config_doc.COMMAND}`")


class _Base(BaseModel):
    """Keys both sections share."""

    rate: float = Field(1e-4, description="a rate")


class _Trainer(_Base):
    steps: int = Field(10, description="steps")


class _Cls(_Base):
    type: Literal["cls"] = Field(description="task type")
    pooling: Literal["mean", "max"] = Field("mean", description="pooling")
    rate: float = Field(5e-5, description="a rate")


class _Qa(_Base):
    type: Literal["qa"] = Field(description="task type")
    stride: int = Field(64, description="window stride")


class _Root(BaseModel):
    train: _Trainer = _Trainer()
    tasks: dict[str, Annotated[_Cls | _Qa, Field(discriminator="type")]] = Field(
        default_factory=dict, json_schema_extra={"placeholder": "<task>"})
    name: str | None = None


def test_the_table_follows_new_sections_unions_and_shared_keys_without_edits_to_the_generator():
    rows = config_doc.render(_Root).splitlines()
    assert rows[2:] == [
        "| `train.*` and `tasks.<task>.*` | | Keys both sections share. |",
        "| `rate` | `1e-4` (`tasks.<task>`: `5e-5` (`type: qa`: `1e-4`)) | a rate |",
        "| `train.steps` | `10` | steps |",
        "| `tasks.<task>.type` | required | task type (`cls`, `qa`) |",
        "| `tasks.<task>.pooling` | `mean` | only with `type: cls`: pooling (`mean`, `max`) |",
        "| `tasks.<task>.stride` | `64` | only with `type: qa`: window stride |",
        "| `name` | unset |  |",
    ]
    assert config_doc.missing_descriptions(_Root) == ["name"]
