"""The README's Python snippets run as pasted."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_snippet_runs(i, capsys):
    exec(compile(BLOCKS[i], f"README.md block {i}", "exec"), {})
