"""``scidiff policy`` commands: ``rollout`` scores a checkpoint in a simulator, ``export`` writes a slim policy file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["BUNDLED_WEIGHTS", "BUNDLED_IMAGE_WEIGHTS", "PIXELS_ENV", "add_commands", "run", "default_env", "video_fps", "main"]

# Trained by `scidiff train experiment=pusht_keypoints` on the PushT human demonstrations (see README of the run).
BUNDLED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "pusht_keypoints.safetensors"
# The camera policy (experiment=pusht_image), the default for the pixels env.
BUNDLED_IMAGE_WEIGHTS = BUNDLED_WEIGHTS.with_name("pusht_image.safetensors")
PIXELS_ENV = "scidiff/PushT-pixels-v0"
# A policy's batched chunk is a small network call: one thread is fastest unless told otherwise (43 ms vs 1,490 ms
# with two threads for a PushT chunk on a busy 2-core machine).
ROLLOUT_THREADS = 1


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the policy subcommands (`rollout`, `export`) to an argparse subparsers object."""
    from scidiff.commands import HelpFormatter, add_threads_option

    p = subparsers.add_parser(
        "rollout", formatter_class=HelpFormatter,
        help="roll out a policy checkpoint in vectorised envs and print its score",
        description="Receding-horizon rollouts (predict Tp actions, execute Ta; Chi et al. 2023). Episode i starts "
        "from seed SEED+i; PushT's score is the mean over episodes of the max reward (average max coverage).",
    )
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="policy .safetensors (save_policy file or a run's model.safetensors); default: the bundled "
                        f"PushT image policy for --env {PIXELS_ENV}, else the bundled PushT keypoints policy")
    p.add_argument("--env", default=None,
                   help="Gymnasium id (default: the env the policy was trained for; for files that do not record "
                        "it, scidiff/PushT-keypoints-v0 for 20-d policies); gym_pusht/PushT-v0 works when gym-pusht "
                        "is installed, through a keypoints adapter or, for an image policy, its pixels_agent_pos "
                        "observations")
    p.add_argument("--episodes", type=int, default=50, help="number of episodes (default 50)")
    p.add_argument("--seed", type=int, default=100000, help="seed of episode 0 (default 100000, Chi et al.'s test seeds)")
    p.add_argument("--sampler", default=None,
                   help="core sampler: ddim, ddpm, dpmpp_2m, euler, heun, consistency (default: the policy's own, "
                        "DDIM for a diffusion policy, one consistency call for a distilled student)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps; for a student's consistency sampler, network calls (default: 10 for DDIM, 1 "
                        "for consistency)")
    p.add_argument("--warm-start", type=float, default=None, metavar="T",
                   help="start each chunk after an episode's first from the previous plan shifted by Ta, noised to "
                        "process time T (e.g. 40 of the 100 VP steps), instead of from noise (SDEdit)")
    p.add_argument("--action-steps", type=int, default=None, metavar="N",
                   help="execute the first N of each chunk's Ta actions, then replan (default: the policy's Ta, 8 for "
                        "PushT); fewer means more network calls per episode")
    p.add_argument("--num-envs", type=int, default=10, help="envs stepped together (one batched prediction each)")
    p.add_argument("--noise-seed", type=int, default=0,
                   help="seed of the sampler's noise (default 0); repeat an evaluation with several to see its noise")
    p.add_argument("--max-steps", type=int, default=None, help="episode step limit, >= 1 (default: the env's, 300 for PushT)")
    p.add_argument("--chi-initial-states", action="store_true",
                   help="gym-pusht only: start episode i from Chi et al.'s legacy initial state of seed SEED+i "
                        "(gym-pusht draws other initial states from the same seed)")
    p.add_argument("--video", type=Path, default=None, help="write the first episodes tiled to this .mp4 or .gif")
    p.add_argument("--video-episodes", type=int, default=4, help="episodes shown in the video (default 4)")
    p.add_argument("--json", type=Path, default=None, help="write the JSON summary (with per-episode scores) here")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_threads_option(p, cap=ROLLOUT_THREADS)
    p.set_defaults(policy_run=_run_rollout)

    p = subparsers.add_parser("export", help="write a run's EMA policy as a slim save_policy file",
                              formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="a policy run's model.safetensors")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors")
    p.add_argument("--note", default="", help="provenance note stored in the file, e.g. the training command")
    p.add_argument("--half", action="store_true",
                   help="store the network's parameters in float16 (half the size; normalisers stay float32); score "
                        "the written file, since its weights are rounded")
    p.set_defaults(policy_run=_run_export)


def run(args: argparse.Namespace) -> int:
    """Run the policy subcommand chosen in `args`; returns the exit status."""
    return args.policy_run(args)


def default_env(obs_dim: int) -> str:
    """The env matching a policy's observation size: 20 -> PushT keypoints, 5 -> PushT state, 10 -> Particle."""
    envs_by_dim = {20: "scidiff/PushT-keypoints-v0", 5: "scidiff/PushT-v0", 10: "scidiff/Particle-v0"}
    if obs_dim not in envs_by_dim:
        raise ValueError(f"no default env for a policy with {obs_dim}-d observations; pass --env")
    return envs_by_dim[obs_dim]


def video_fps(env_id: str) -> float:
    """Frames per second of an env's videos: the ``render_fps`` of its metadata (PushT 10, Particle 20)."""
    from .rollout import make_env

    env = make_env(env_id)
    try:
        return env.metadata["render_fps"]
    finally:
        env.close()


def _check_rollout_args(args: argparse.Namespace) -> None:
    """Every setting and output of a rollout, refused before the policy is loaded or an episode runs."""
    from scidiff.commands import check_int, check_output
    from scidiff.core.samplers import check_sampler

    for option, value in (("--episodes", args.episodes), ("--num-envs", args.num_envs),
                          ("--video-episodes", args.video_episodes)):
        check_int(option, value, 1)
    check_int("--max-steps", args.max_steps, 1, optional=True)
    check_int("--action-steps", args.action_steps, 1, optional=True)
    if args.checkpoint is None:
        args.checkpoint = BUNDLED_IMAGE_WEIGHTS if args.env == PIXELS_ENV else BUNDLED_WEIGHTS
    try:
        check_sampler(args.sampler or "ddim", 10 if args.steps is None else args.steps)
    except ValueError as err:
        raise ValueError(f"--sampler/--steps: {err}") from None
    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"no policy checkpoint at {args.checkpoint}")
    if args.video:
        check_output(args.video, "--video", suffixes=(".mp4", ".gif"), written_as="videos are written as MP4 or GIF",
                     inputs=[args.checkpoint])
    if args.json:
        check_output(args.json, "--json", inputs=[args.checkpoint])
    if args.video and args.json and args.video.absolute() == args.json.absolute():
        raise ValueError(f"--video and --json are both {args.json}: give two paths")


def _run_rollout(args: argparse.Namespace) -> int:
    """Roll out, print the summary line and optionally write the JSON and the video."""
    from scidiff.commands import atomic_write, set_threads

    _check_rollout_args(args)
    set_threads(args.threads, cap=ROLLOUT_THREADS)
    from .policy import load_policy
    from .rollout import rollout, summarize

    policy = load_policy(args.checkpoint, device=args.device)
    # Files written before policies recorded their env fall back to the one matching the observation size.
    env_id = args.env or policy.env_id or default_env(policy.obs_dim)
    sampler = policy.sampler_spec(args.sampler, args.steps, {})
    reset_options = None
    if args.chi_initial_states:
        if not env_id.startswith("gym_pusht/"):
            raise ValueError("--chi-initial-states is for gym_pusht envs (scidiff's PushT already uses them)")
        from envs.pusht import legacy_reset_state

        reset_options = lambda seed: {"reset_to_state": legacy_reset_state(seed)}  # noqa: E731
    results, latencies, frames = rollout(
        policy, env_id, episodes=args.episodes, seed=args.seed, sampler=sampler,
        num_envs=args.num_envs, max_steps=args.max_steps, video_episodes=args.video_episodes if args.video else 0,
        reset_options=reset_options, progress=not args.no_progress, warm_start=args.warm_start,
        generator_seed=args.noise_seed, action_steps=args.action_steps,
    )
    regression = policy.objective == "regression"
    summary = summarize(results, latencies, checkpoint=str(args.checkpoint), env=env_id,
                        sampler="regression" if regression else sampler.name,
                        steps=1 if regression else sampler.options.get("calls", sampler.steps),
                        warm_start=args.warm_start, action_steps=args.action_steps or policy.n_action_steps,
                        seed=args.seed, noise_seed=args.noise_seed,
                        num_envs=min(args.num_envs, args.episodes), chi_initial_states=args.chi_initial_states)
    if args.video:
        summary["video"] = str(args.video)
    # The scores first: a video that fails to encode must not cost the rollout's results.
    print(json.dumps({k: v for k, v in summary.items() if k != "per_episode"}))
    if args.json:
        text = json.dumps(summary, indent=2)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    if args.video:
        from envs.video import tile_episodes, write_video

        write_video(tile_episodes(frames), args.video, fps=video_fps(env_id))
    return 0


def _run_export(args: argparse.Namespace) -> int:
    """Load a run's EMA weights (checked strictly) and write them with its run config plus the source and a note."""
    from scidiff.core.checkpoint import load_inference

    from scidiff.commands import check_output

    from .policy import load_policy, save_policy

    check_output(args.out, "--out", suffixes=(".safetensors",), written_as="policies are written as safetensors",
                 inputs=[args.checkpoint])
    policy = load_policy(args.checkpoint)
    run_config = {**load_inference(args.checkpoint)[1], "source": str(args.checkpoint), "note": args.note}
    print(f"wrote {save_policy(policy, args.out, run_config=run_config, half=args.half)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m scidiff.policy.cli rollout ...``."""
    parser = argparse.ArgumentParser(prog="python -m scidiff.policy.cli", description=__doc__)
    add_commands(parser.add_subparsers(required=True, metavar="command"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
