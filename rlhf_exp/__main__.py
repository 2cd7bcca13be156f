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


# Set by the command line for a single run: the failure is then reported by one line at the very end (after Hydra
# and the libraries are done printing), not by the banner that run() prints for in-process callers and sweeps.
_FAILURE_LINE_AT_END = False
_FAILURE_SUMMARY: list[Path] = []     # where _report_failure wrote the failed run's summary.json (for that line)


def _report_failure(output_dir: Path, cfg: DictConfig, error: BaseException, partial: dict[str, Any],
                    wall_s: float) -> None:
    """A failed run still leaves ``summary.json`` (status ``failed: ...``, the error and its traceback) and says so
    loudly: in a sweep the other jobs go on, and ``python -m rlhf_exp.compare`` lists the failure."""
    from rlhf_exp.tracking import write_summary

    status = f"failed: {type(error).__name__}: {error}"
    write_summary(output_dir, {"objective": cfg.objective.get("name"), "kl_controller": cfg.kl.get("controller"),
                               "wall_s": wall_s, **partial, "status": status,
                               "traceback": "".join(traceback.format_exception(error))})
    _FAILURE_SUMMARY.append(Path(output_dir))
    if _FAILURE_LINE_AT_END:
        return
    bar = "!" * 100
    print(f"\n{bar}\n[rlhf_exp] RUN FAILED: {status}\n[rlhf_exp] run folder: {output_dir} (summary.json has the "
          f"traceback)\n{bar}\n", file=sys.stderr, flush=True)


def _holds_a_run(output_dir: Path) -> bool:
    return any((Path(output_dir) / f).exists() for f in ("metrics.jsonl", "checkpoints", "config_resolved.yaml"))


def _write_hydra_files(output_dir: Path, cfg: DictConfig) -> None:
    """``<run dir>/.hydra/{config,hydra,overrides}.yaml``, as Hydra writes them (conf/config.yaml sets
    ``hydra.output_subdir: null`` so that Hydra itself writes nothing into a folder before the run has checked that
    it may: a refused resume leaves the folder as it was)."""
    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    if hc.output_subdir is not None:   # the user asked Hydra to write them itself
        return
    folder = Path(output_dir) / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    for name, node in (("config.yaml", cfg), ("hydra.yaml", HydraConfig.instance().cfg),
                       ("overrides.yaml", hc.overrides.task)):
        (folder / name).write_text(OmegaConf.to_yaml(node), encoding="utf-8")


def _record_config(output_dir: Path, cfg: DictConfig, resolved: dict[str, Any]) -> None:
    """What the run records about its settings once it has taken its folder: ``config_resolved.yaml`` and
    ``.hydra/``."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(resolved), Path(output_dir) / "config_resolved.yaml")
    _write_hydra_files(output_dir, cfg)


def run(cfg: DictConfig, output_dir: Path | None = None) -> dict[str, Any]:
    """Run one experiment from a composed config; returns the run summary (also in ``summary.json``).

    On an error the run folder gets a ``summary.json`` with ``status: "failed: <error>"`` and the traceback, a banner
    is printed, and the error is raised again (in a Hydra multirun the next jobs still run; see docs/sweeps.md).
    A ``ConfigError`` (a setting that cannot work, or online W&B without credentials, found before anything loads)
    leaves only a short ``summary.json``, no banner; from the command line it is one line and no run folder.
    A folder that holds another run is never written into before this run may continue it: a refused resume
    (:class:`~rlhf_exp.train.checkpoint.ResumeRefused`), a busy folder, or a resume that fails before its checkpoint
    has loaded raise without writing anything (docs/reliability.md).
    """
    from rlhf_exp.tracking import Tracker, check_logger
    from rlhf_exp.train.checkpoint import Checkpointer
    from rlhf_exp.train.run_folder import RunAborted, RunFolderBusy, RunInterrupted
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
        checkpointer = Checkpointer(cfg, output_dir, acc, resolved)
        checkpointer.record_config = lambda: _record_config(output_dir, cfg, resolved)
        plan = checkpointer.open()     # lock the folder; resume from a checkpoint, start fresh, or skip a finished run
        if plan["action"] == "skip":
            checkpointer.close()
            if is_main:
                print(f"[rlhf_exp] {output_dir} holds this run, finished ({plan['summary'].get('steps')} steps): "
                      f"nothing to do. Use another folder to run it again.", flush=True)
            return plan["summary"]
        tracker = Tracker(output_dir, cfg.logger, resolved, _run_name(cfg), enabled=is_main)
        trainer = Trainer(cfg, output_dir, tracker, acc)
        trainer.checkpointer = checkpointer
        summary = trainer.train()
    except (RunInterrupted, RunAborted) as e:  # SIGTERM / SIGINT (a checkpoint was saved at the step boundary), or a
        stop = e                               # second one (stopped at once; the newest complete checkpoint stays)
        try:
            if isinstance(e, RunInterrupted) and trainer is not None:
                trainer.finish(checkpointer.elapsed(), status="interrupted")
            elif checkpointer is not None:
                checkpointer.write_abort_summary(e.signame)
        except RunAborted as again:      # a second signal while the stop was being written
            stop = again
            checkpointer.write_abort_summary(again.signame)
        finally:
            if isinstance(stop, RunAborted) and checkpointer is not None:
                stop.step = checkpointer.step_reached
                stop.checkpoint = checkpointer.last_saved[1] if checkpointer.last_saved else None
            if tracker is not None:
                tracker.close(failed=True)
            if checkpointer is not None:
                checkpointer.close()
            if is_main:
                print(_resume_hint(output_dir, stop), file=sys.stderr, flush=True)
        raise stop from None
    except BaseException as e:
        partial: dict[str, Any] = {}
        if checkpointer is not None and not checkpointer.owns_folder:
            # a refused resume, a busy folder, a resume that could not load: the folder stays as it was
            if tracker is not None:
                tracker.close(failed=True)
            checkpointer.close()
            raise
        if isinstance(e, (RunFolderBusy, FileExistsError)) and checkpointer is None:
            raise
        if trainer is not None:
            try:
                partial = trainer.finish(time.perf_counter() - t0, status=f"failed: {type(e).__name__}: {e}")
            except Exception:  # keep the original error
                pass
        if is_main and isinstance(e, ConfigError):  # nothing started: a short summary (a sweep lists it), no banner
            from rlhf_exp.tracking import write_summary

            if not _holds_a_run(output_dir):      # never over the summary of a run already in the folder
                write_summary(output_dir, {"objective": cfg.objective.get("name"),
                                           "kl_controller": cfg.kl.get("controller"),
                                           "status": f"failed: ConfigError: {e}"})
                _write_hydra_files(output_dir, cfg)
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


def _resume_hint(output_dir: Path, stop: BaseException) -> str:
    """The line an interrupted run ends with: where its checkpoint is and the command that continues it."""
    from hydra.types import RunMode

    from rlhf_exp.train.run_folder import RunAborted

    saved = getattr(stop, "checkpoint", None)
    signame, step = getattr(stop, "signame", "signal"), getattr(stop, "step", "?")
    if isinstance(stop, RunAborted):    # a second signal: stopped at once, the step it was in is lost
        where = f"the newest complete checkpoint is {saved}" if saved else "no checkpoint was written"
        head = f"[rlhf_exp] STOPPED at once by a second {signame} after step {step}; {where}."
    else:
        where = f"checkpoint {saved}" if saved else "no new checkpoint (the save failed)"
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
    global _FAILURE_LINE_AT_END
    from hydra.types import RunMode

    from rlhf_exp.train.checkpoint import ResumeRefused
    from rlhf_exp.train.run_folder import RunFolderBusy

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    _FAILURE_LINE_AT_END = not multirun
    try:
        summary = run(cfg)
    except ConfigError as e:  # the run never started
        if multirun:  # the other jobs go on; summary.json says why this one failed
            print(f"[rlhf_exp] job {hc.job.num} not started: {e}", file=sys.stderr, flush=True)
            raise
        discard_unstarted_run(Path(hc.runtime.output_dir))
        fail(str(e))
    except (ResumeRefused, RunFolderBusy, FileExistsError) as e:  # the folder holds another run: nothing written
        if multirun:
            print(f"[rlhf_exp] job {hc.job.num} not started: {e}", file=sys.stderr, flush=True)
            raise
        folder = Path(hc.runtime.output_dir)
        if folder.is_dir() and not any(folder.iterdir()):   # only the empty folder Hydra made for this command
            discard_unstarted_run(folder)
        fail(str(e))
    except Exception as e:  # noqa: BLE001 - run() wrote summary.json; the one line that explains it comes last
        if multirun:
            raise
        fail_at_end(e, Path(hc.runtime.output_dir))
    if launcher_rank() > 0:  # the scratch folder Hydra made for this rank (see hydra_overrides_for_rank)
        import shutil

        shutil.rmtree(HydraConfig.get().runtime.output_dir, ignore_errors=True)
    # The return value is what sweepers (Optuna) optimise (reward modelling: its held-out pairwise accuracy).
    return float(summary.get("eval/accuracy_end", summary.get("eval/reward_mean_end", float("nan"))))


def fail_at_end(error: BaseException, output_dir: Path) -> None:
    """End a failed single run with its one-line message (exit 1): the traceback is in ``summary.json`` (printed
    above it with ``HYDRA_FULL_ERROR=1``); under torchrun each distinct message is printed once."""
    import os

    from rlhf_exp.cli import one_line, print_once

    full = os.environ.get("HYDRA_FULL_ERROR") == "1"
    if full:
        traceback.print_exception(error)
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1     # the line must be the same on every rank (print_once)
    folder = "rank 0's run folder" if several else f"run folder {output_dir}"
    where = f"{folder}: summary.json has the traceback" if several or _FAILURE_SUMMARY else \
        f"{folder}; no summary.json written"
    print_once(f"[rlhf_exp] RUN FAILED: {type(error).__name__}: {one_line(error)} ({where}"
               f"{'' if full else '; HYDRA_FULL_ERROR=1 prints it'})")
    raise SystemExit(1)


def main() -> None:
    try:
        check_overrides(command_line_overrides(sys.argv[1:]))
    except ConfigError as e:
        fail(str(e))
    # Under torchrun/accelerate every rank runs this; only rank 0 lets Hydra create the run folder.
    from rlhf_exp.train.run_folder import RunAborted, RunInterrupted

    sys.argv.extend(hydra_overrides_for_rank(launcher_rank()))
    try:
        _hydra_main()
    except (RunInterrupted, RunAborted) as e:  # stopped by SIGTERM / SIGINT: exit 128 + signal number
        sys.exit(e.exit_code)
    finally:  # also when a failed job ended the sweep: its folder and the compare command come last
        print_sweep_report()


if __name__ == "__main__":
    main()
