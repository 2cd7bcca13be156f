"""``python -m rlhf_exp [group=option ...] [key=value ...]``: compose the config, build, run, log.

Examples::

    python -m rlhf_exp                                    # objective=ppo kl=adaptive on the embedded task
    python -m rlhf_exp objective=ppo kl=fixed kl.kl_coef=0.05 train.steps=50
    python -m rlhf_exp -m kl.kl_coef=0.01,0.1 seed=0,1    # Hydra multirun sweep
    python -m rlhf_exp -m sweep=kl_grid                   # a ready sweep from conf/sweep/ (docs/sweeps.md)
    python -m rlhf_exp objective=dpo                      # offline objectives: sft | reward | dpo | kto
    python -m rlhf_exp.compare multirun/<date>/<time>     # table + reward-vs-KL frontier + curves of a sweep

``python -m rlhf_exp --help`` lists the config groups with their options (conf/hydra/help/rlhf_exp.yaml).
"""
from __future__ import annotations

import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from rlhf_exp.config import CONFIG_DIR, OFFLINE, ConfigError, check_overrides, validate
from rlhf_exp.cli import command_line_overrides, discard_unstarted_run, fail, print_sweep_report
from rlhf_exp.distributed import hydra_overrides_for_rank, launcher_rank, shared_output_dir


def _output_dir(cfg: DictConfig) -> Path:
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.get("output_dir") or "outputs/manual")


def _run_name(cfg: DictConfig) -> str:
    if cfg.get("run_name"):
        return str(cfg.run_name)
    base = f"{cfg.objective.name}-{cfg.kl.controller}"
    if HydraConfig.initialized():
        overrides = HydraConfig.get().job.override_dirname
        if overrides:
            return f"{base}[{overrides}]"
    return base


def _group_and_tags(cfg: DictConfig) -> None:
    """Fill ``logger.group`` and ``logger.tags`` for W&B: the jobs of a Hydra multirun share a group named after the
    sweep folder (unless ``logger.group`` is set), and every run is tagged with its command-line overrides."""
    from hydra.types import RunMode

    from rlhf_exp.tracking import override_tags, sweep_group

    if not HydraConfig.initialized() or "group" not in cfg.logger:
        return
    hc = HydraConfig.get()
    with open_dict(cfg):
        if cfg.logger.group is None and hc.mode == RunMode.MULTIRUN:
            cfg.logger.group = sweep_group(hc.sweep.dir)
        cfg.logger.tags = override_tags(list(hc.overrides.task), list(cfg.logger.get("tags") or []))


def _report_failure(output_dir: Path, cfg: DictConfig, error: BaseException, partial: dict[str, Any],
                    wall_s: float) -> None:
    """A failed run still leaves ``summary.json`` (status ``failed: ...``, the error and its traceback) and says so
    loudly: in a sweep the other jobs go on, and ``python -m rlhf_exp.compare`` lists the failure."""
    from rlhf_exp.tracking import write_summary

    status = f"failed: {type(error).__name__}: {error}"
    write_summary(output_dir, {"objective": cfg.objective.get("name"), "kl_controller": cfg.kl.get("controller"),
                               "wall_s": wall_s, **partial, "status": status,
                               "traceback": "".join(traceback.format_exception(error))})
    bar = "!" * 100
    print(f"\n{bar}\n[rlhf_exp] RUN FAILED: {status}\n[rlhf_exp] run folder: {output_dir} (summary.json has the "
          f"traceback)\n{bar}\n", file=sys.stderr, flush=True)


def run(cfg: DictConfig, output_dir: Path | None = None) -> dict[str, Any]:
    """Run one experiment from a composed config; returns the run summary (also in ``summary.json``).

    On an error the run folder gets a ``summary.json`` with ``status: "failed: <error>"`` and the traceback, a banner
    is printed, and the error is raised again (in a Hydra multirun the next jobs still run; see docs/sweeps.md).
    A ``ConfigError`` (a setting that cannot work, or online W&B without credentials, found before anything loads)
    leaves only a short ``summary.json``, no banner; from the command line it is one line and no run folder.
    """
    from rlhf_exp.tracking import Tracker, check_logger
    from rlhf_exp.train.checkpoint import Checkpointer, RunFolderBusy, RunInterrupted
    from rlhf_exp.train.common import make_accelerator, quiet_libraries, seed_everything
    from rlhf_exp.train.online import OnlineTrainer, summary_line

    output_dir = Path(output_dir) if output_dir is not None else _output_dir(cfg)
    t0 = time.perf_counter()
    is_main = launcher_rank() == 0  # until the accelerator says
    tracker = trainer = checkpointer = None
    try:
        validate(cfg)
        check_logger(cfg.logger)
        quiet_libraries()
        seed_everything(int(cfg.seed))
        _group_and_tags(cfg)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        Trainer, line = OnlineTrainer, summary_line
        if cfg.objective.kind == OFFLINE:
            from rlhf_exp.train.offline import OfflineTrainer, offline_summary_line

            Trainer, line = OfflineTrainer, offline_summary_line
        acc = make_accelerator(cfg)
        is_main = acc.is_main_process
        output_dir = shared_output_dir(acc, output_dir)
        checkpointer = Checkpointer(cfg, output_dir, acc)
        plan = checkpointer.open()     # lock the folder; resume from a checkpoint, start fresh, or skip a finished run
        if plan["action"] == "skip":
            checkpointer.close()
            if is_main:
                print(f"[rlhf_exp] {output_dir} holds this run, finished ({plan['summary'].get('steps')} steps): "
                      f"nothing to do. Use another folder to run it again.", flush=True)
            return plan["summary"]
        if is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            _note_config_changes(output_dir / "config_resolved.yaml", resolved, plan)
            OmegaConf.save(OmegaConf.create(resolved), output_dir / "config_resolved.yaml")
        tracker = Tracker(output_dir, cfg.logger, resolved, _run_name(cfg), enabled=is_main)
        trainer = Trainer(cfg, output_dir, tracker, acc)
        trainer.checkpointer = checkpointer
        summary = trainer.train()
    except RunInterrupted as e:      # SIGTERM / SIGINT: a checkpoint was saved at the step boundary
        try:
            trainer.finish(checkpointer.elapsed(), status="interrupted")
        finally:
            tracker.close(failed=True)
            checkpointer.close()
            if is_main:
                print(_resume_hint(output_dir, e), file=sys.stderr, flush=True)
        raise
    except BaseException as e:
        partial: dict[str, Any] = {}
        if isinstance(e, (RunFolderBusy, FileExistsError)) and (checkpointer is None or checkpointer.lock is None):
            raise        # the folder belongs to another run: write nothing into it
        if trainer is not None:
            try:
                partial = trainer.finish(time.perf_counter() - t0, status=f"failed: {type(e).__name__}: {e}")
            except Exception:  # keep the original error
                pass
        if is_main and isinstance(e, ConfigError):  # nothing started: a short summary (a sweep lists it), no banner
            from rlhf_exp.tracking import write_summary

            write_summary(output_dir, {"objective": cfg.objective.get("name"), "kl_controller": cfg.kl.get("controller"),
                                       "status": f"failed: ConfigError: {e}"})
        elif is_main:
            try:
                _report_failure(output_dir, cfg, e, partial, time.perf_counter() - t0)
            except Exception as report_error:  # keep the original error
                print(f"[rlhf_exp] could not write the failure summary: {report_error}", file=sys.stderr)
        if tracker is not None:
            tracker.close(failed=True)
        if checkpointer is not None:
            checkpointer.close()
        raise
    tracker.close()
    checkpointer.close()
    if is_main:
        print(line(summary), flush=True)
        print(f"[rlhf_exp] run folder: {output_dir}", flush=True)
    return summary


def _note_config_changes(saved: Path, resolved: dict[str, Any], plan: dict[str, Any]) -> None:
    """On resume into the same folder, name the settings that differ from the run's first start."""
    from rlhf_exp.train.checkpoint import config_changes

    if plan.get("action") != "resume" or not saved.exists():
        return
    try:
        changes = config_changes(OmegaConf.to_container(OmegaConf.load(saved), resolve=False), resolved)
    except Exception:  # noqa: BLE001 - an unreadable old config only costs the notice
        return
    if changes:
        print(f"[rlhf_exp] resuming with settings that differ from this run's start (the new ones apply; the "
              f"continuation is no longer that of one uninterrupted run): {'; '.join(changes)}", flush=True)


def _resume_hint(output_dir: Path, stop: BaseException) -> str:
    """The line an interrupted run ends with: where its checkpoint is and the command that continues it."""
    from hydra.types import RunMode

    saved = getattr(stop, "checkpoint", None)
    where = f"checkpoint {saved}" if saved else "no new checkpoint (the save failed)"
    signame, step = getattr(stop, "signame", "signal"), getattr(stop, "step", "?")
    head = f"[rlhf_exp] INTERRUPTED ({signame}) after step {step}; {where}."
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return (f"{head}\n[rlhf_exp] To resume: run the same sweep command again with "
                    f"hydra.sweep.dir={hc.sweep.dir} (finished jobs are skipped, this one continues).")
        args = [shlex.quote(o) for o in hc.overrides.task if not o.startswith("hydra.run.dir=")]
        cmd = " ".join(["python -m rlhf_exp", *args, f"hydra.run.dir={shlex.quote(str(output_dir))}"])
        return f"{head}\n[rlhf_exp] To resume (with the same launcher, torchrun or accelerate launch, if any): {cmd}"
    return f"{head}\n[rlhf_exp] To resume: run again with the same output folder {output_dir} (train.resume=auto)."


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    from hydra.types import RunMode

    try:
        summary = run(cfg)
    except ConfigError as e:  # the run never started
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:  # the other jobs go on; summary.json says why this one failed
            print(f"[rlhf_exp] job {hc.job.num} not started: {e}", file=sys.stderr, flush=True)
            raise
        discard_unstarted_run(Path(hc.runtime.output_dir))
        fail(str(e))
    if launcher_rank() > 0:  # the scratch folder Hydra made for this rank (see hydra_overrides_for_rank)
        import shutil

        shutil.rmtree(HydraConfig.get().runtime.output_dir, ignore_errors=True)
    # The return value is what sweepers (Optuna) optimise (reward modelling: its held-out pairwise accuracy).
    return float(summary.get("eval/accuracy_end", summary.get("eval/reward_mean_end", float("nan"))))


def main() -> None:
    try:
        check_overrides(command_line_overrides(sys.argv[1:]))
    except ConfigError as e:
        fail(str(e))
    # Under torchrun/accelerate every rank runs this; only rank 0 lets Hydra create the run folder.
    from rlhf_exp.train.checkpoint import RunInterrupted

    sys.argv.extend(hydra_overrides_for_rank(launcher_rank()))
    try:
        _hydra_main()
    except RunInterrupted as e:   # stopped by SIGTERM / SIGINT after saving a checkpoint: exit 128 + signal number
        sys.exit(e.exit_code)
    finally:  # also when a failed job ended the sweep: its folder and the compare command come last
        print_sweep_report()


if __name__ == "__main__":
    main()
