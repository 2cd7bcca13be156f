"""The README's code must run as written."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_math_snippet_runs():
    text = README.read_text()
    section = text.split("Use the math in your own loop", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["loss"].dim() == 0 and bool(namespace["loss"].isfinite())


def test_ci_runs_the_readme_test_command_on_the_cpu_build():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in README.read_text() and 'make test TORCH="torch==2.13.0+cpu"' in ci
    text = README.read_text()
    assert "https://download.pytorch.org/whl/cpu" in text and 'TORCH="torch==2.13.0+cpu"' in text


def test_packaging_metadata():
    """An SPDX license string (no setuptools deprecation warning), and .gitignore does not hide tracked configs."""
    import tomllib

    meta = tomllib.loads((README.parent / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    ignored = (README.parent / ".gitignore").read_text().splitlines()
    assert not [line for line in ignored if line.startswith(("conf", "/conf"))]


def test_readme_documents_every_config_option():
    """Every option of every config group (conf/<group>/<option>.yaml) is named in README.md."""
    from rlhf_exp.config import CONFIG_DIR

    text = README.read_text()
    missing = [f"{group.name}={p.stem}" for group in sorted(CONFIG_DIR.iterdir())
               if group.is_dir() and group.name != "hydra" for p in sorted(group.glob("*.yaml"))
               if f"`{p.stem}`" not in text]
    assert not missing, f"README.md does not mention: {', '.join(missing)}"


# ------------------------------------------------------------------------------- the README's shell commands
# What a user types, as README.md shows it (after the quick start's `source .venv/bin/activate`), run in one bash
# session in a scratch folder that has the clone's files. Each run is shortened (SHORT is appended: 1 step of 8
# samples, 4 eval prompts) and each sweep narrowed to the first value of each swept key; everything else is as
# written, placeholders filled the way a user would (the newest run or sweep folder).
COMMAND_PREFIXES = ("python ", "make ", "source ", "OUT=", "torchrun ", "accelerate ", "sweeps/", "rm ")
SHORT = ["train.steps=1", "train.batch_size=8", "train.mini_batch_size=8", "train.epochs=1", "dataset.train_size=64",
         "dataset.eval_size=4", "eval.batch_size=4", "eval.every=0", "generation.max_new_tokens=4",
         "generation.min_new_tokens=2"]
# Commands not run, each with the reason (matched as the start of the command).
SKIPPED = {
    "make run": "the full default run (150 steps, about 2.5 min); its entry point runs below with short steps",
    "make test": "the test suite itself",
    "make install TORCH=": "downloads PyTorch from download.pytorch.org (network)",
    "make rebuild-assets": "rebuilds the shipped checkpoints, about 4.5 min (pytest -m slow covers it)",
    "python -m pytest -m slow": "the slow tests, about 5 min",
    "torchrun ": "several processes and a hub model (tests/test_distributed.py runs torchrun on 2 CPU processes)",
    "accelerate launch ": "several processes or GPUs (tests/test_distributed.py runs 2 CPU processes)",
}
PLACEHOLDERS = {
    "multirun/<date>/<time>": "$(ls -d multirun/*/* | sort | tail -1)",
    "outputs/<run>": "$(ls -d outputs/*/*/policy | sort | tail -1 | xargs dirname)",
}


def readme_commands(text: str) -> list[str]:
    """The shell commands of README.md's fenced blocks without a language (a block is shell when its first line
    starts with a command), with continuation lines joined and trailing comments dropped, in order."""
    commands = []
    for language, block in _fenced_blocks(text):
        lines = [line for line in block if line.strip()]
        if language:
            continue
        if not lines or not lines[0].startswith(COMMAND_PREFIXES):
            continue
        for line in _join_continuations(lines):
            assert line.startswith(COMMAND_PREFIXES), f"README shell block line is not a command: {line!r}"
            commands.append(re.sub(r"\s+#.*$", "", line).strip())
    return commands


def _fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """``(language, lines)`` of each ```-fenced block of a markdown text."""
    blocks, current, language = [], None, ""
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, language = [], line[3:].strip()
            else:
                blocks.append((language, current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def _join_continuations(lines: list[str]) -> list[str]:
    out: list[str] = []
    pending = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].strip() + " "
            continue
        out.append(pending + line.strip())
        pending = ""
    return out


def _sweep_firsts(sweep: str) -> dict[str, str]:
    """The swept keys of conf/sweep/<sweep>.yaml with their first values."""
    from omegaconf import OmegaConf

    from rlhf_exp.config import CONFIG_DIR

    params = OmegaConf.load(CONFIG_DIR / "sweep" / f"{sweep}.yaml").hydra.sweeper.get("params") or {}
    return {str(k): str(v).split(",")[0].strip() for k, v in params.items()}


def shortened(command: str) -> str:
    """``command`` as the test runs it: runs of the entry point get SHORT (and logger=none unless a logger is
    chosen), sweeps one job (the first value of each swept key), placeholders the newest folder."""
    words = command.split()
    if words[:3] == ["python", "-m", "rlhf_exp"]:
        args = words[3:]
        sweep = next((a.split("=", 1)[1] for a in args if a.startswith("sweep=")), None)
        if "-m" in args:
            args = [a.split(",")[0] if "=" in a and not a.startswith("hydra.") else a for a in args]
        given = {a.split("=", 1)[0] for a in args if "=" in a}
        if sweep:
            args += [f"{k}={v}" for k, v in _sweep_firsts(sweep).items() if k not in given]
        # The command's own settings stay (train.steps=0 stays 0); SHORT fills in the rest.
        args += [s for s in SHORT if s.split("=", 1)[0] not in given or
                 (s.startswith("train.steps=") and not any(a in args for a in ("train.steps=0", "train.steps=1")))]
        args += [] if "logger" in given else ["logger=none"]
        command = " ".join(["python", "-m", "rlhf_exp", *args])
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    return command


def test_readme_shell_blocks_are_commands_and_the_skip_list_is_current():
    commands = readme_commands(README.read_text())
    assert commands[:1] and "source .venv/bin/activate" in commands
    for prefix in SKIPPED:
        assert any(c.startswith(prefix) for c in commands), f"SKIPPED names {prefix!r}, no longer in README.md"
    bare = [c for c in commands if c.startswith((".venv/bin/", "rlhf_exp "))]
    assert not bare, f"one form for the examples (`python -m ...` after activating): {bare}"


@pytest.mark.slow  # about 5-10 min on 2 busy cores: 15 short runs and sweeps, each a fresh process
def test_readme_commands_run_as_written(tmp_path):
    """Every README command not in SKIPPED, in order, in one bash session after the quick start's activation."""
    import os
    import subprocess
    import sys

    repo = README.parent
    for name in ("rlhf_exp", "sweeps", "accelerate_configs", "conf", "docs"):
        (tmp_path / name).symlink_to(repo / name)
    # The quick start first (make run/make test made .venv: here, the environment the tests run in), so the
    # examples above it run too, as the README says they do after the quick start.
    script = ["set -euo pipefail", f"source {sys.prefix}/bin/activate"]
    ran = []
    for command in dict.fromkeys(readme_commands(README.read_text())):  # each distinct command once
        if command.startswith(tuple(SKIPPED)) or command == "source .venv/bin/activate":
            continue
        ran.append(command)
        script += [f"echo '>>> {len(ran)}'", shortened(command)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="1",
               PATH=os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(sys.prefix)))
    proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1200)
    done = len(re.findall(r"^>>> \d+$", proc.stdout, re.M))
    assert proc.returncode == 0, (f"README command {done}: {ran[done - 1] if done else '?'}\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}")
    assert done == len(ran) and len(ran) >= 10
    assert "[rlhf_exp] compare the runs: python -m rlhf_exp.compare multirun/" in proc.stdout
