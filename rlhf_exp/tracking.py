"""Where a run's results go: ``metrics.jsonl`` and ``samples.jsonl`` in the output folder, and W&B or TensorBoard.

Only the main process writes. The files are flushed line by line, so a run that stops early (an error, Ctrl-C)
keeps everything logged until then. Without W&B credentials the W&B run is offline (synced later with
``wandb sync <run dir>/wandb/offline-run-*``), announced in one line; so is a W&B server that cannot be reached
within ``logger.init_timeout`` seconds. Online mode asked for without credentials is an error before the run starts.
"""
from __future__ import annotations

import json
import math
import netrc
import os
import secrets
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from rlhf_exp.environment import environment


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


def write_summary(output_dir: Path, values: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``<output_dir>/summary.json`` (non-finite floats made JSON-safe), with the run's ``environment``
    (rlhf_exp/environment.py; the world size from ``num_processes``) unless ``values`` has one; returns what was
    written."""
    from rlhf_exp.files import atomic_write_text

    clean = {k: _jsonable(v) for k, v in values.items()}
    if "environment" not in clean:
        clean["environment"] = environment(clean.get("num_processes"))
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(output_dir) / "summary.json", json.dumps(clean, indent=2))  # never half-written
    return clean


def _read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


WANDB_TAG_MAX = 64  # W&B rejects longer tags
WANDB_ID_FILE = "wandb_run_id"  # in the run folder: the id of its W&B run (a resumed run continues it)


def sweep_group(sweep_dir: str, max_len: int = 128) -> str:
    """The W&B group shared by the jobs of one sweep: its sweep folder, relative to the working directory when
    inside it (``multirun/2026-11-22/10-00-00``), keeping the last ``max_len`` characters (W&B's limit)."""
    p = Path(sweep_dir)
    try:
        p = p.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        pass
    return str(p)[-max_len:]


def override_tags(overrides: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """W&B tags of a run: ``extra`` (``logger.tags``), then each command-line override ``key=value`` except the
    logger's own settings and ``run_name``; unique, in order, each cut to W&B's 64 characters."""
    tags: list[str] = []
    for t in list(extra) + [o.lstrip("+~") for o in overrides]:
        key = str(t).split("=", 1)[0]
        if "=" in str(t) and (key == "run_name" or key == "logger" or key.startswith("logger.")):
            continue
        t = str(t)[:WANDB_TAG_MAX]
        if t and t not in tags:
            tags.append(t)
    return tags


def wandb_credentials_present() -> bool:
    """True when W&B can log online: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.path.expanduser("~/.netrc"))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    return rc.authenticators(host) is not None


def wandb_mode(logger_cfg: Mapping[str, Any]) -> str:
    """The W&B mode a run will use: ``logger.mode``, else ``WANDB_MODE``, else online with credentials and offline
    without."""
    mode = logger_cfg.get("mode") or os.environ.get("WANDB_MODE")
    if mode:
        return str(mode)
    return "online" if wandb_credentials_present() else "offline"


def check_logger(logger_cfg: Mapping[str, Any]) -> None:
    """Before anything is written: online W&B logging asked for (``logger.mode=online`` or ``WANDB_MODE=online``)
    without credentials would stop at W&B's interactive login prompt, or fail after the run folder exists."""
    from rlhf_exp.config import ConfigError

    if logger_cfg.get("kind") != "wandb" or wandb_mode(logger_cfg) != "online" or wandb_credentials_present():
        return
    where = "logger.mode=online" if logger_cfg.get("mode") else "WANDB_MODE=online"
    raise ConfigError(f"W&B logging is online ({where}) but no W&B API key was found: run `wandb login` (or set "
                      f"WANDB_API_KEY), or log offline with logger.mode=offline (sync later with `wandb sync`).")


def wandb_base_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


def server_reachable(url: str, timeout: float) -> Optional[str]:
    """None when a TCP connection to ``url``'s host and port opens within ``timeout`` seconds (name lookup
    included), else the reason."""
    import socket
    import threading
    from urllib.parse import urlparse

    u = urlparse(url)
    host, port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
    if not host:
        return f"no host in {url!r}"
    outcome: list[Optional[str]] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(f"{type(e).__name__}: {e}")

    probe = threading.Thread(target=connect, daemon=True)  # a hanging name lookup must not hold the run
    probe.start()
    probe.join(timeout)
    return outcome[0] if outcome else f"no connection within {timeout:g} s"


class Tracker:
    """Logs metrics and sample completions of one run.

    Args:
        output_dir: the run's folder (Hydra's output dir).
        logger_cfg: the ``logger`` config group: ``kind`` (wandb | tensorboard | none), ``project``, ``entity``,
            ``group``, ``tags``, ``mode`` (online | offline | disabled | null=auto).
        run_config: the resolved config, stored with the W&B run.
        run_name: display name of the run.
        enabled: False on every process but the main one.
    """

    def __init__(self, output_dir: Path, logger_cfg: Mapping[str, Any], run_config: Mapping[str, Any],
                 run_name: str, enabled: bool = True):
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self.kind = logger_cfg["kind"]
        self._wandb = None
        self._tb = None
        self._sample_rows: list[list[Any]] = []
        self._metrics_f = None
        self._samples_f = None
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        environment()  # collected now, at the start (the git state of the code that runs), for summary.json
        self._metrics_f = open(self.output_dir / "metrics.jsonl", "a", buffering=1)
        self._samples_f = open(self.output_dir / "samples.jsonl", "a", buffering=1)
        self._sample_rows = [[r["step"], r["split"], r["prompt"], r["completion"], r["reward"]]  # a resumed run's
                             for r in _read_rows(self.output_dir / "samples.jsonl")]             # earlier samples
        if self.kind == "wandb":
            self._init_wandb(logger_cfg, run_config, run_name)
        elif self.kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))
        elif self.kind != "none":
            raise ValueError(f"Unknown logger.kind {self.kind!r}. Valid: wandb, tensorboard, none (logger=<name>).")

    def _init_wandb(self, cfg: Mapping[str, Any], run_config: Mapping[str, Any], run_name: str) -> None:
        import wandb

        mode = wandb_mode(cfg)
        if not (cfg.get("mode") or os.environ.get("WANDB_MODE")) and mode == "offline":
            print(f"[rlhf_exp] No W&B credentials found: logging offline to {self.output_dir / 'wandb'} "
                  f"(sync later with `wandb sync`, or run `wandb login` / set WANDB_API_KEY).", flush=True)
        timeout = float(cfg.get("init_timeout") or 30)
        if mode == "online":
            reason = server_reachable(wandb_base_url(), timeout=min(timeout, 5.0))
            if reason is not None:
                self._offline_notice(f"cannot reach the W&B server {wandb_base_url()} ({reason})")
                mode = "offline"
        tags = [str(t)[:WANDB_TAG_MAX] for t in cfg.get("tags") or []]
        # One W&B run per run folder: its id is kept in the folder, so a resumed run continues the same W&B run.
        id_file = self.output_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else ""
        if not run_id:
            run_id = secrets.token_hex(4)          # not the global random module: that is seeded run state
            id_file.write_text(run_id + "\n")
        kwargs = dict(id=run_id, resume="allow",
                      project=cfg["project"], entity=cfg.get("entity"), group=cfg.get("group"),
                      job_type=cfg.get("job_type"), name=run_name, tags=tags or None, config=dict(run_config),
                      dir=str(self.output_dir), reinit="finish_previous")
        try:
            self._wandb = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=timeout), **kwargs)
        except Exception as e:  # online, but the server did not answer in time (or refused the key)
            if mode != "online":
                raise
            self._offline_notice(f"W&B did not start an online run within {timeout:g} s "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            wandb.teardown()   # the failed online attempt still holds the run id in W&B's service process
            self._wandb = wandb.init(mode="offline", **kwargs)

    def _offline_notice(self, why: str) -> None:
        print(f"[rlhf_exp] {why}: logging offline to {self.output_dir / 'wandb'} instead (sync later with "
              f"`wandb sync`; logger.init_timeout sets the wait).", flush=True)

    # ---------------------------------------------------------------------------------------------- logging
    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._metrics_f.write(json.dumps(row) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def log_samples(self, step: int, prompts: Sequence[str], completions: Sequence[str], rewards: Sequence[float],
                    split: str = "eval") -> None:
        if not self.enabled:
            return
        for p, c, r in zip(prompts, completions, rewards):
            self._samples_f.write(json.dumps({"step": step, "split": split, "prompt": p, "completion": c,
                                              "reward": float(r)}) + "\n")
            self._sample_rows.append([step, split, p, c, float(r)])
        if self._tb is not None:
            text = "\n\n".join(f"**{p}**{c} ({float(r):.2f})" for p, c, r in zip(prompts, completions, rewards))
            self._tb.add_text(f"{split}/samples", text, step)

    def summary(self, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        clean = write_summary(self.output_dir, values)
        if self._wandb is not None:
            for k, v in clean.items():
                self._wandb.summary[k] = v

    def close(self, failed: bool = False) -> None:
        if not self.enabled:
            return
        if self._wandb is not None:
            import wandb

            if self._sample_rows:
                table = wandb.Table(columns=["step", "split", "prompt", "completion", "reward"], data=self._sample_rows)
                self._wandb.log({"samples": table})
            self._wandb.finish(exit_code=1 if failed else 0)
            self._wandb = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        for f in (self._metrics_f, self._samples_f):
            if f is not None:
                f.close()
        self._metrics_f = self._samples_f = None

    @property
    def wandb_run(self) -> Optional[Any]:
        return self._wandb
