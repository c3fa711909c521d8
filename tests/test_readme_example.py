"""README's *Reusing a neck module in another model* example runs as written (the block is read from README.md,
so the two cannot drift)."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEADING = "### Reusing a neck module in another model"


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(HEADING, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block under {HEADING!r} in README.md"
    return match.group(1)


def test_readme_reuse_example_runs():
    namespace = {"__name__": "readme_example"}
    exec(compile(readme_block(), "README.md", "exec"), namespace)   # noqa: S102 - our own README
    assert namespace["logits"].shape == (2, 2)
