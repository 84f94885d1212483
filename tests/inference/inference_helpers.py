"""Helpers of the inference tests (importable: pytest puts this folder on sys.path)."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd


def prob_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("prob_")]


def readme_code(readme: Path) -> str:
    """The python block of an export's README.md, without its final example call."""
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README shows one python block"
    return "\n".join(line for line in blocks[0].splitlines()
                     if not line.startswith("print(predict("))
