"""The ``scidiff`` command: mounts the core's, the molecule and the policy commands."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path

# task name -> "module:function" that trains from a resolved config dict; imported only when used.
TRAINERS = {
    "toy": "scidiff.toy:train_from_config",
    "policy": "scidiff.policy.train:train_from_config",
    "mol": "scidiff.mol.train:train_from_config",
    "mol_torsion": "scidiff.mol.torsion_train:train_from_config",
}


def _train(args: argparse.Namespace) -> int:
    if args.multirun:
        return _sweep(args)
    print(json.dumps(_train_run(args.overrides, args.threads)))
    return 0


def _train_run(overrides: list[str], threads: int | None) -> dict:
    """Train one run from Hydra overrides: the one path of `scidiff train`, and of every job of `scidiff train -m`.
    Returns the summary printed as JSON: the step reached, the last loss and the run folder."""
    from .commands import atomic_write, check_output, set_threads
    from .core.config import build_diffusion, build_sampler, compose_checked
    from .core.trainer import TrainConfig, check_resume

    cfg = compose_checked(overrides)
    task = cfg.get("task")
    if task not in TRAINERS:
        raise ValueError(f"task: unknown task {task!r}; choose one of {', '.join(TRAINERS)}")
    # Validate every section, the output folder and the run a rerun would resume before anything is written.
    build_sampler(cfg["sampler"], build_diffusion(cfg["process"]).process)
    trainer = TrainConfig.from_mapping(cfg["trainer"])
    out_dir = check_output(trainer.out_dir, "trainer.out_dir", folder=True)
    step = check_resume(out_dir, cfg, trainer.max_steps) if trainer.resume else 0
    if trainer.resume and step == trainer.max_steps:
        print(f"scidiff: {out_dir} is already trained to trainer.max_steps={step}: nothing to do (raise "
              "trainer.max_steps to train on)", file=sys.stderr)
        return {"step": step, "loss": None, "out_dir": str(out_dir)}
    set_threads(threads)
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(OmegaConf.create(cfg))
    atomic_write(out_dir / "config.yaml", lambda tmp: Path(tmp).write_text(text))
    import torch

    torch.manual_seed(int(cfg["trainer"].get("seed", 0)))  # the same command builds the same initial weights
    module, func = TRAINERS[task].split(":")
    result = getattr(importlib.import_module(module), func)(cfg)
    loss = result.last_loss if math.isfinite(result.last_loss) else None  # JSON has no NaN
    return {"step": result.step, "loss": loss, "out_dir": str(result.out_dir)}


# Where `scidiff train -m` puts each job: runs/sweeps/<the job's overrides>, e.g.
# runs/sweeps/experiment=mixture2d,process=flow. The folder is a function of the command, not of the time, so rerunning
# a sweep resumes every job in place; the overrides a resumed run may change (trainer.max_steps, logging, device,
# ...: RESUME_MAY_CHANGE) and the launcher's settings (hydra.*) are left out of the name, so a rerun with more steps, or
# on SLURM after a local try, continues the same runs.
SWEEP_DIR = "runs/sweeps"
JOB_DIR = "${hydra:runtime.output_dir}"  # a job's trainer.out_dir unless the command gives one


def _sweep(args: argparse.Namespace) -> int:
    """`scidiff train -m`: Hydra's multirun over the overrides (a,b sweeps a setting), each job launched by
    hydra/launcher (basic: one after another in this process; submitit_local, submitit_slurm or the project's slurm:
    as submitit jobs) and trained by `_train_run` in its own folder. Prints one JSON line per job."""
    import functools

    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import CompactHydraException

    from .core.config import config_dir
    from .core.trainer import RESUME_MAY_CHANGE

    try:
        parsed = OverridesParser.create().parse_overrides(list(args.overrides))
    except CompactHydraException as err:  # a malformed override: Hydra's message names it
        raise ValueError(str(err)) from None
    given = {o.key_or_group: o for o in parsed}
    swept = [o.input_line for o in parsed if o.is_sweep_override()]
    out_dir = given.get("trainer.out_dir")
    if swept and out_dir is not None and not out_dir.is_sweep_override() and "${" not in out_dir.input_line:
        raise ValueError(f"{out_dir.input_line} would train every job of the sweep over {', '.join(swept)} in one "
                         f"folder; leave trainer.out_dir out (each job then trains in {SWEEP_DIR}/<its overrides>) "
                         "or make it differ by job, e.g. 'trainer.out_dir=/scratch/runs/${hydra:job.override_dirname}'")
    defaults = {  # the user's own hydra.* overrides replace these
        "hydra.sweep.dir": SWEEP_DIR,
        "hydra.sweep.subdir": "${hydra.job.override_dirname}",
        "hydra.job.name": "train",  # names each job's log (train.log) and its SLURM job
        "hydra.job.config.override_dirname.exclude_keys": f"[{','.join(sorted(RESUME_MAY_CHANGE))}]",
        # stdout carries the JSON lines only, as in a single run; Hydra's log lines go to stderr
        "hydra.hydra_logging.handlers.console.stream": "ext://sys.stderr",
        "hydra.job_logging.handlers.console.stream": "ext://sys.stderr",
    }
    overrides = [f"{key}={value}" for key, value in defaults.items() if key not in given] + list(args.overrides)
    if out_dir is None:  # each job trains in its Hydra output folder (hydra.sweep.dir/hydra.sweep.subdir)
        overrides.append(f"trainer.out_dir={JOB_DIR}")
    version.setbase("1.3")  # as the compose API in core.config: jobs run in the caller's folder (no chdir)
    GlobalHydra.instance().clear()
    try:
        hydra = Hydra.create_main_hydra2(task_name="train",
                                         config_search_path=create_config_search_path(str(config_dir())))
        task = functools.partial(_sweep_job, threads=args.threads)  # picklable: submitit ships it to each job
        returns = hydra.multirun(config_name="config", task_function=task, overrides=[*overrides, "hydra.mode=MULTIRUN"])
    except CompactHydraException as err:  # an override Hydra cannot compose (unknown group or option, bad sweep)
        try:
            import hydra_plugins.hydra_submitit_launcher  # noqa: F401
            hint = ""
        except ImportError:
            hint = "\nThe submitit launchers need hydra-submitit-launcher: pip install 'scidiff[cluster]'"
        raise ValueError(f"{err}{hint if 'submitit' in str(err) else ''}") from None
    finally:
        GlobalHydra.instance().clear()
    for batch in returns:  # the sweeper has already raised the first failed job's error
        for job in batch:
            shown = [o for o in job.overrides if out_dir is not None or not o.startswith("trainer.out_dir=")]
            print(json.dumps({"job": job.hydra_cfg.hydra.job.num, "overrides": shown, **job.return_value}))
    return 0


def _sweep_job(cfg, threads: int | None) -> dict:
    """One job of a sweep, in the launcher's process: its overrides through the single-run path (the same composition,
    checks and resume as `scidiff train`); ``cfg``, Hydra's composition of the same overrides, is not used."""
    import os

    from hydra.core.hydra_config import HydraConfig

    job = HydraConfig.get().job
    if "WORLD_SIZE" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:
            # submitit started this job as several tasks (hydra.launcher.tasks_per_node, nodes) and no torchrun ran:
            # export what torchrun would (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) for init_distributed. Every
            # task keeps all of its node's GPUs visible, as under torchrun: init_distributed picks cuda:LOCAL_RANK.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    try:
        return _train_run(list(HydraConfig.get().overrides.task), threads)
    except (ValueError, FileNotFoundError) as err:  # the user's to fix: name the job it stopped
        raise ValueError(f"sweep job {job.num} ({job.override_dirname or 'no overrides'}): {err}") from None


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.overrides, num_samples=args.samples, retrain=args.train)
    return 0


def _envs(args: argparse.Namespace) -> int:
    from envs.cli import run

    return run(args)


def _mol(args: argparse.Namespace) -> int:
    from .mol.cli import run

    return run(args)


def _policy(args: argparse.Namespace) -> int:
    from .policy.cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    from .commands import HelpFormatter, add_threads_option

    parser = argparse.ArgumentParser(prog="scidiff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train any experiment from the Hydra configs in conf/", formatter_class=HelpFormatter,
                       description="Train with Hydra overrides, e.g. `scidiff train experiment=mixture2d "
                                   "process=flow trainer.max_steps=500`. Rerunning the same command resumes; a rerun into a run folder "
                                   "with other settings (other than trainer.max_steps, logging, device, ...) is refused.")
    p.add_argument("overrides", nargs="*", help="Hydra overrides (group=option, key.sub=value)")
    p.add_argument("-m", "--multirun", action="store_true",
                   help="sweep with Hydra's multirun: a,b runs one job per value (process=vp_cosine,flow); "
                        "hydra/launcher=submitit_local, submitit_slurm or slurm (conf/hydra/launcher/slurm.yaml) "
                        f"launches the jobs (default: one after another here); each trains in {SWEEP_DIR}/<its "
                        "overrides> and a rerun resumes them")
    add_threads_option(p)
    p.set_defaults(func=_train)
    p = sub.add_parser("demo", help="sample a 2-D mixture with every sampler of the core and score the samples",
                       formatter_class=HelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides for --train, e.g. process=flow trainer.max_steps=1000")
    p.add_argument("--train", action="store_true", help="retrain the model with the shared loop instead of the bundled one")
    p.add_argument("--samples", type=int, default=5000, help="samples per sampler row")
    p.set_defaults(func=_demo)
    from envs.cli import add_commands as add_envs_commands

    p = sub.add_parser("envs", help="Gymnasium simulators: record scripted-expert demonstrations; LeRobotDataset import and export")
    add_envs_commands(p.add_subparsers(dest="envs_command", required=True))
    p.set_defaults(func=_envs)
    from .mol.cli import add_commands as add_mol_commands

    p = sub.add_parser("mol", help="molecules: generate and evaluate conformers, build training sets")
    add_mol_commands(p.add_subparsers(dest="mol_command", required=True))
    p.set_defaults(func=_mol)
    from .policy.cli import add_commands as add_policy_commands

    p = sub.add_parser("policy", help="diffusion policies: roll out a checkpoint in a simulator")
    add_policy_commands(p.add_subparsers(dest="policy_command", required=True))
    p.set_defaults(func=_policy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # a setting, an input or an output path: the user's to fix
        print(f"scidiff: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the machine's (a full disk, a read-only folder): named, without a traceback
        print(f"scidiff: error: {err.strerror or err}" + (f": {err.filename}" if err.filename else ""), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
