"""Generated blocks inside README.md, each between two marker comments.

    <!-- NAME:begin -->
    ...rendered by a generator, never edited by hand...
    <!-- NAME:end -->

The configuration table (`python -m pipeline.config_doc --write`) and the benchmark
table (`python bench/report.py --write`) are such blocks; their tests compare the
README's block with what the generator renders now.
"""

from __future__ import annotations

import os
import re

from pipeline.contract.atomic import atomic_write_text

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {re.escape(name)}:begin -->\n)(.*?)(<!-- {re.escape(name)}:end -->)", flags=re.S)


def read_block(text: str, name: str) -> str:
    """The block's body (without the markers); ValueError when the markers are missing."""
    match = _pattern(name).search(text)
    if match is None:
        raise ValueError(f"README has no <!-- {name}:begin --> ... <!-- {name}:end --> markers")
    return match.group(2)


def replace_block(text: str, name: str, body: str) -> str:
    read_block(text, name)  # the same error when the markers are missing
    body = body if body.endswith("\n") else body + "\n"
    return _pattern(name).sub(lambda m: m.group(1) + body + m.group(3), text, count=1)


def write_block(name: str, body: str, path: str = README) -> bool:
    """Replace the block in `path`; returns whether the file changed."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    new = replace_block(text, name, body)
    if new == text:
        return False
    atomic_write_text(path, new)
    return True
