"""The README is the manual: its two commands and its config reference must stay true."""

import os
import re

from pipeline.contract.config import Config, TaskConfig


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


def test_every_config_key_is_documented(repo_root):
    prose = re.sub(r"```.*?```", "", _readme(repo_root), flags=re.S)
    spans = re.findall(r"`([^`]+)`", prose)
    words = {w for span in spans for w in re.findall(r"[A-Za-z_]+", span)}
    missing = []
    for section_name, field in Config.model_fields.items():
        section = field.annotation
        if section_name == "finetune":
            section = TaskConfig
        for key in section.model_fields:
            if key not in words:
                missing.append(f"{section_name}.{key}")
    assert not missing, f"undocumented config keys: {missing}"
