"""Chi et al.'s PushT protocol figures: best evaluation and mean of the last 10, per training seed and averaged.

Trains (or, with --report-only, reads) one run per seed of a protocol experiment and reads the closed-loop test
evaluations the training loop logged (``eval/avg_max_reward`` and ``eval/success_rate`` on seeds 100000-100049 in
metrics.jsonl). Chi et al. (2023) report max / mean of the last 10 checkpoints, each averaged over 3 training seeds.

    OMP_NUM_THREADS=2 python benchmarks/policy_chi_protocol.py --experiment pusht_chi_cpu --seeds 0 1 2
    python benchmarks/policy_chi_protocol.py --experiment pusht_chi --seeds 0 1 2 --report-only   # after GPU runs
    python benchmarks/policy_chi_protocol.py --run runs/pusht_image      # one finished run: scores and the curve

The curve is each evaluation's score against the training time spent to reach it (summed from the logged steps/s,
which leave evaluations and checkpoints out; runs logged before 2026-12-07's trainer fix counted them in). A run that
also scored other samplers at each evaluation (``policy.eval.samplers``, e.g. DDPM-10 in the 1.39 M recipe of the
README) gets one table per sampler, from the same checkpoints (with a ``from_step``, only those from that step on:
DDPM-100 on the last 10; with an ``every``, only the multiples of it: DDPM-10 every 300 steps, DDPM-100 every 60 over
the last 10 checkpoints); a sampler section with its own ``seed`` scores them on other initial states, and
``--select LABEL`` (e.g. validation seeds 200000-200049 logged as ``valseeds``) then also reports the test score of
the checkpoint that scored best on those: a best checkpoint chosen without looking at the test seeds.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path


# A logged rollout score: eval/avg_max_reward for the run's own sampler, eval/<label>/avg_max_reward for one of
# policy.eval.samplers (group 1: the label).
SCORE_KEY = re.compile(r"eval/(?:(\w+)/)?avg_max_reward")


def evaluations(run_dir: Path) -> list[dict]:
    """The logged closed-loop evaluations of a run, in step order (the last record of a step wins on resume): every
    record with a rollout score, of the run's own sampler or of any of ``policy.eval.samplers`` (which may be scored
    at steps the run's own is not: ``every``)."""
    by_step: dict[int, dict] = {}
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}: train it first (drop --report-only)")
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if any(SCORE_KEY.fullmatch(key) for key in record):
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def training_seconds(run_dir: Path) -> dict[int, float]:
    """Step -> cumulative training seconds, from the logged steps/s of each logging interval (the last record of a
    step wins on resume)."""
    rates: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("steps_per_s"):
            rates[record["step"]] = record["steps_per_s"]
    elapsed, previous, total = {}, 0, 0.0
    for step in sorted(rates):
        total += (step - previous) / rates[step]
        elapsed[step], previous = total, step
    return elapsed


def sampler_labels(evals: list[dict]) -> list[str]:
    """The score prefixes of a run's evaluations: "" for the run's own sampler, then "<label>/" for each sampler of
    ``policy.eval.samplers``, in the order logged."""
    labels = {"": None}
    for e in evals:
        for key in e:
            match = SCORE_KEY.fullmatch(key)
            if match and match.group(1):
                labels.setdefault(match.group(1) + "/", None)
    return list(labels)


def sampler_scores(evals: list[dict], label: str = "") -> list[tuple[int, float, float]]:
    """(step, avg max coverage, success) of the evaluations scored by the run's own sampler or, with ``label``
    ("ddpm10/"), by that one of ``policy.eval.samplers``; evaluations that did not score it are left out."""
    return [(e["step"], e[f"eval/{label}avg_max_reward"], e.get(f"eval/{label}success_rate", float("nan")))
            for e in evals if f"eval/{label}avg_max_reward" in e]


def curve(run_dir: Path) -> list[tuple[int, float, float, float]]:
    """(step, training hours, avg max coverage, success) of each closed-loop evaluation of a run."""
    elapsed = training_seconds(run_dir)
    rows = []
    for step, score, success in sampler_scores(evaluations(run_dir)):
        logged = [s for s in elapsed if s <= step]
        rows.append((step, elapsed[max(logged)] / 3600 if logged else 0.0, score, success))
    return rows


def protocol_scores(evals: list[dict], last: int = 10, label: str = "") -> dict[str, float]:
    """Best and mean-of-last-``last`` average max coverage (and success) over a run's evaluations, scored by the
    run's own sampler or, with ``label`` ("ddpm10/"), by that one of ``policy.eval.samplers``."""
    rows = sampler_scores(evals, label)
    if not rows:
        raise ValueError(f"the run logged no closed-loop evaluation{' with ' + label[:-1] if label else ''} "
                         "(policy.eval.episodes, policy.eval.samplers and trainer.eval_every)")
    steps, scores, success = zip(*rows)
    best = max(range(len(scores)), key=scores.__getitem__)
    return {"best": scores[best], "best_step": steps[best], "best_success": success[best],
            "last_mean": statistics.fmean(scores[-last:]), "last_success": statistics.fmean(success[-last:]),
            "evaluations": len(scores)}


def chosen_on(evals: list[dict], select: str, label: str = "") -> dict[str, float]:
    """The step that scored best under ``select`` ("valseeds/") and that checkpoint's score under ``label`` (the
    run's own sampler and seeds by default): model selection on other seeds, reported on the test seeds."""
    scored = {step: (score, success) for step, score, success in sampler_scores(evals, label)}
    candidates = [(score, step) for step, score, _ in sampler_scores(evals, select) if step in scored]
    if not candidates:
        raise ValueError(f"the run logged no evaluation with {select[:-1]!r} at a step it also scored "
                         f"{label[:-1] or 'with its own sampler'}")
    step = max(candidates)[1]
    return {"step": step, "score": scored[step][0], "success": scored[step][1]}


def seed_range(spec: dict, label: str = "") -> str:
    """"first-last" episode seeds of the evaluations logged under ``label``, from a run's ``policy.eval`` section."""
    from scidiff.policy.train import eval_seed

    first = eval_seed(spec, label)
    return f"{first}-{first + int(spec.get('episodes', 0)) - 1}"


def eval_spec(run_dir: Path) -> dict:
    """A run's ``policy.eval`` section, from its saved config."""
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())["policy"]["eval"]


def eval_seeds(run_dir: Path, label: str = "") -> str:
    """The first and last episode seed of the evaluations logged under ``label``, from the run's saved config."""
    return seed_range(eval_spec(run_dir), label)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="pusht_chi_cpu", help="protocol experiment (default pusht_chi_cpu)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--runs", default="runs", help="parent folder of the runs (default runs)")
    parser.add_argument("--report-only", action="store_true", help="read finished runs, train nothing")
    parser.add_argument("--run", type=Path, default=None, help="report this one run folder (scores and curve) only")
    parser.add_argument("--select", default=None, metavar="LABEL",
                        help="also report the test score of the checkpoint that scored best under this "
                             "policy.eval.samplers label (e.g. valseeds: validation seeds)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. trainer.max_steps=2000)")
    args = parser.parse_args(argv)

    if args.run:
        evals = evaluations(args.run)
        for label in sampler_labels(evals):
            scores = protocol_scores(evals, label=label)
            print(json.dumps({"run": str(args.run), "sampler": label[:-1] or "the run's sampler", **scores}))
        print("| step | training h | avg max coverage | success |\n|---|---|---|---|")
        for step, hours, score, success in curve(args.run):
            print(f"| {step} | {hours:.2f} | {score:.3f} | {success:.0%} |")
        return 0
    runs = []
    for seed in args.seeds:
        run_dir = Path(args.runs) / f"{args.experiment}_seed{seed}"
        if not args.report_only:  # a rerun resumes each run from its last checkpoint
            cmd = ["scidiff", "train", f"experiment={args.experiment}", f"trainer.seed={seed}",
                   f"trainer.out_dir={run_dir}", "trainer.progress=false", *args.overrides]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        runs.append((seed, evaluations(run_dir)))
    from scidiff.policy.train import eval_schedule

    spec = eval_spec(Path(args.runs) / f"{args.experiment}_seed{args.seeds[0]}")
    for label in sampler_labels([e for _, evals in runs for e in evals]):
        rows = [(seed, protocol_scores(evals, label=label)) for seed, evals in runs]
        name = label[:-1] or "the run's sampler"
        from_step, every = eval_schedule(spec, label)
        print(f"\n{args.experiment}, {name}: avg max coverage on seeds {seed_range(spec, label)} "
              f"{f'every {every} steps ' if every else ''}"
              f"{f'at the checkpoints from step {from_step} ' if from_step else ''}(success in brackets)")
        print("| training seed | best (step) | mean of last 10 | evaluations |\n|---|---|---|---|")
        for seed, r in rows:
            print(f"| {seed} | {r['best']:.3f} [{r['best_success']:.0%}] ({r['best_step']}) | "
                  f"{r['last_mean']:.3f} [{r['last_success']:.0%}] | {r['evaluations']} |")
        best = statistics.fmean(r["best"] for _, r in rows)
        last = statistics.fmean(r["last_mean"] for _, r in rows)
        print(f"| mean of {len(rows)} | {best:.3f} | {last:.3f} | |")
    if args.select:
        select = args.select.rstrip("/") + "/"
        rows = [(seed, chosen_on(evals, select)) for seed, evals in runs]
        print(f"\nbest checkpoint chosen on {select[:-1]} ({seed_range(spec, select)}), "
              f"scored on seeds {seed_range(spec)}")
        print("| training seed | chosen step | avg max coverage [success] |\n|---|---|---|")
        for seed, r in rows:
            print(f"| {seed} | {r['step']} | {r['score']:.3f} [{r['success']:.0%}] |")
        print(f"| mean of {len(rows)} | | {statistics.fmean(r['score'] for _, r in rows):.3f} |")
    print("Chi et al. 2023 (CNN, state PushT): 0.95 / 0.91")
    return 0


if __name__ == "__main__":
    sys.exit(main())
