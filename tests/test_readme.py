"""The README's code must run as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_math_snippet_runs():
    text = README.read_text()
    section = text.split("## Use the math in your own loop", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["loss"].dim() == 0 and bool(namespace["loss"].isfinite())


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in README.read_text() and "make test" in ci


def test_readme_documents_every_config_option():
    """Every option of every config group (conf/<group>/<option>.yaml) is named in README.md."""
    from rlhf_exp.config import CONFIG_DIR

    text = README.read_text()
    missing = [f"{group.name}={p.stem}" for group in sorted(CONFIG_DIR.iterdir())
               if group.is_dir() and group.name != "hydra" for p in sorted(group.glob("*.yaml"))
               if f"`{p.stem}`" not in text]
    assert not missing, f"README.md does not mention: {', '.join(missing)}"
