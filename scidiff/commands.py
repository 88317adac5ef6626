"""What every scidiff command shares: checks of its outputs and settings made before any work, the one atomic file
writer, and its thread count.

A command that would fail at its end (an output it cannot write, a setting it cannot use) fails here instead, before
it has run or written anything, with exit status 2 and a message naming the path or the option. Every output file
is written through ``atomic_write``, so a failed or killed run never leaves a truncated file or a changed old one.
Nothing here imports torch: commands that never need it stay light.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = ["check_output", "check_int", "atomic_write", "remove_stale_temps", "add_threads_option", "set_threads",
           "default_threads", "HelpFormatter"]

log = logging.getLogger(__name__)


class HelpFormatter(argparse.HelpFormatter):
    """Help texts that show every option's default (the formatter of every scidiff subcommand); options whose help
    already explains it, and flags and unset options, are left as they are."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or unset or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _nearest_existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists())


def check_output(path: str | Path, option: str, *, folder: bool = False, suffixes: Sequence[str] = (),
                 written_as: str = "", inputs: Iterable[Any] = ()) -> Path:
    """``path`` as an output of the option ``option`` (e.g. ``--json``), refused before any work when a run could not
    write it there or would destroy something: an existing folder where a file goes (or a file where a folder goes),
    another format's suffix (``suffixes``, lower case; ``written_as`` names the format), a parent that is a file or
    cannot be written to, or one of ``inputs`` (a run would overwrite its own input)."""
    path = Path(path)
    if not folder and path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file path such as {path / ('out' + (suffixes or ('',))[0])}")
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file, not a folder; give a new or existing folder")
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"{option} {path}: {written_as or 'it is written as ' + suffixes[0]}; give a "
                         f"{' or '.join(suffixes)} path (got {path.suffix or 'no suffix'!r})")
    parent = _nearest_existing(path.absolute() if folder else path.absolute().parent)  # where the first write goes
    if not parent.is_dir():
        raise ValueError(f"{option} {path}: {parent} is a file, not a folder")
    try:  # the one sure test of writability (permissions, read-only mounts, /proc): an unnamed file, gone at close
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as err:
        raise ValueError(f"{option} {path}: cannot write in {parent} ({err.strerror or err})") from None
    for source in inputs:
        if isinstance(source, (str, Path)) and Path(source).is_file() and path.exists() and path.samefile(source):
            raise ValueError(f"{option} {path} is the input file: the run would overwrite it; choose another {option}")
    return path


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."  # atomic_write's temporary files: .NAME.<random>.tmp<suffix> beside NAME


def _disk_full(err: BaseException) -> bool:
    """A write that failed for want of space: ENOSPC, or torch's zip writer reporting the short write it got."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(err, RuntimeError) and any(s in str(err) for s in ("unexpected pos", "file write failed"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``. On failure the temporary file is removed
    and ``path`` stays as it was; a full disk is an OSError (ENOSPC) naming the path and the free space. The temporary
    file ends in ``path``'s suffix, for writers that choose the format by it (video encoders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file private (0600): give it the mode a plain open() would have (or the old file's).
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _disk_full(err):
            free = shutil.disk_usage(path.parent).free
            kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
            raise OSError(errno.ENOSPC, f"no space left on the disk to write {path} ({free / 2**20:.1f} MiB free in "
                                        f"{path.parent}); {kept}. Free some space and rerun") from err
        raise
    return path


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temporary files of ``atomic_write(path)`` that runs killed mid-write left; returns them."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = sorted(p for p in path.parent.glob(f"{_temp_prefix(path)}*.tmp*") if p.is_file())
    for p in stale:
        log.warning("removing %s (%.1f MiB), left by a run killed while writing %s", p, p.stat().st_size / 2**20, path.name)
        p.unlink(missing_ok=True)
    return stale


def check_int(option: str, value: Any, low: int, *, optional: bool = False) -> Any:
    """``value`` when it is an integer >= ``low`` (or None when ``optional``), else a ValueError naming ``option``."""
    if value is None and optional:
        return value
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{option} must be an integer >= {low}, got {value!r}")
    return value


def default_threads(cap: int = 4) -> int:
    """Threads a command uses unless told otherwise: OMP_NUM_THREADS when set, else half the cores this process may
    use, at most ``cap``. Threads beyond the free cores make small models far slower, not faster (measured on a busy
    2-core machine: a PushT policy chunk 43 ms with 1 thread, 1,490 ms with 2; 8 molecules with the bundled refiner
    4.7 s with 1, 9.5 s with 2), and the models of this project gain little beyond 4."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cap, cores // 2))


def add_threads_option(parser: argparse.ArgumentParser, cap: int = 4) -> None:
    """The ``--threads`` option of a command that runs torch (read by ``set_threads``)."""
    parser.add_argument("--threads", type=int, default=None,
                        help=f"CPU threads for torch (default: OMP_NUM_THREADS when set, else half the available "
                             f"cores, at most {cap})")


def set_threads(threads: int | None, cap: int = 4) -> int:
    """Use ``threads`` (None: ``default_threads(cap)``) CPU threads for torch: set now when torch is loaded, else
    through OMP_NUM_THREADS, which torch reads when it loads. Returns the count."""
    count = default_threads(cap) if threads is None else check_int("--threads", threads, 1)
    os.environ["OMP_NUM_THREADS"] = str(count)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)
    return count
