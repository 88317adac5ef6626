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
}


def _train(args: argparse.Namespace) -> int:
    from .commands import check_output, set_threads
    from .core.checkpoint import atomic_write
    from .core.config import build_diffusion, build_sampler, compose_checked
    from .core.trainer import TrainConfig, check_resume

    cfg = compose_checked(args.overrides)
    task = cfg.get("task")
    if task not in TRAINERS:
        raise ValueError(f"task: unknown task {task!r}; choose one of {', '.join(TRAINERS)}")
    # Validate every section, the output folder and the run a rerun would resume before anything is written.
    build_diffusion(cfg["process"])
    build_sampler(cfg["sampler"])
    trainer = TrainConfig.from_mapping(cfg["trainer"])
    out_dir = check_output(trainer.out_dir, "trainer.out_dir", folder=True)
    step = check_resume(out_dir, cfg, trainer.max_steps) if trainer.resume else 0
    if trainer.resume and step == trainer.max_steps:
        print(f"scidiff: {out_dir} is already trained to trainer.max_steps={step}: nothing to do (raise "
              "trainer.max_steps to train on)", file=sys.stderr)
        print(json.dumps({"step": step, "loss": None, "out_dir": str(out_dir)}))
        return 0
    set_threads(args.threads)
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(OmegaConf.create(cfg))
    atomic_write(out_dir / "config.yaml", lambda tmp: Path(tmp).write_text(text))
    import torch

    torch.manual_seed(int(cfg["trainer"].get("seed", 0)))  # the same command builds the same initial weights
    module, func = TRAINERS[task].split(":")
    result = getattr(importlib.import_module(module), func)(cfg)
    loss = result.last_loss if math.isfinite(result.last_loss) else None  # JSON has no NaN
    print(json.dumps({"step": result.step, "loss": loss, "out_dir": str(result.out_dir)}))
    return 0


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
    add_threads_option(p)
    p.set_defaults(func=_train)
    p = sub.add_parser("demo", help="sample a 2-D mixture with every sampler of the core and score the samples",
                       formatter_class=HelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides for --train, e.g. process=flow trainer.max_steps=1000")
    p.add_argument("--train", action="store_true", help="retrain the model with the shared loop instead of the bundled one")
    p.add_argument("--samples", type=int, default=5000, help="samples per sampler row")
    p.set_defaults(func=_demo)
    from envs.cli import add_commands as add_envs_commands

    p = sub.add_parser("envs", help="Gymnasium simulators: record scripted-expert demonstrations")
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
