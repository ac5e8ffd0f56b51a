"""Where a command writes: the one guard every writing command goes through.

Two promises (docs/security.md says how each is tested):

1. **No command writes over its own input.** :func:`check_not_input` resolves paths with
   ``realpath`` (a symlinked ``--out`` is its target) and refuses an output that is an input,
   lies inside an input folder, or contains an input (replacing it would delete the input).
2. **A failed run leaves every existing file as it was.** :func:`output_folder` hands the
   command a staging folder beside ``--out`` (``OUT.partial``) and moves it into place only
   when the command finished; an existing non-empty ``--out`` is refused unless the run
   resumes it or ``--overwrite`` was given, and even then it is replaced only at the end, as a
   whole (no stale files of an earlier model survive). :func:`output_file` does the same for
   one file (a temporary name, then ``os.replace``).

A training run killed half-way leaves ``OUT.partial`` with its checkpoints: ``--resume
OUT.partial`` continues it, and a new run into the same ``--out`` is refused until then, so
hours of training are never deleted by a second command.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Union

PARTIAL_SUFFIX = ".partial"
# Written into every folder output_folder moves into place: --overwrite replaces only folders
# that hold it (or are empty), so `--out ~ --overwrite` cannot replace a home directory.
MARKER = ".bertkit-output"
# What a command reads: option -> path, or (option, path) pairs when an option repeats.
Inputs = Union[Mapping[str, Union[str, os.PathLike, None]],
               Iterable[tuple[str, Union[str, os.PathLike, None]]]]
CHECKPOINTS_DIR = "checkpoints"  # where the Trainer keeps resumable state inside a run folder


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def _inside(child: Path, parent: Path) -> bool:
    """True when ``child`` is strictly inside the folder ``parent`` (both real paths)."""
    return child != parent and parent in child.parents


def _same(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)  # also catches hard links and bind mounts
    return _real(a) == _real(b)


def check_not_input(out: str | os.PathLike, inputs: Inputs,
                    out_option: str = "--out") -> None:
    """Refuse ``out`` when it is, lies inside, or contains one of ``inputs``.

    ``inputs`` maps the option that named each input (``"--model"``) to its path (or is a
    list of such pairs); None entries are skipped. Raises ValueError with one line naming both options.
    """
    out_real = _real(out)
    for option, path in (inputs.items() if isinstance(inputs, Mapping) else inputs):
        if path is None:
            continue
        path_real = _real(path)
        if _same(out, path):
            raise ValueError(f"{out_option} {out} is {option} {path}: bertkit never writes over "
                             f"its input; choose another {out_option}")
        if _inside(out_real, path_real):
            raise ValueError(f"{out_option} {out} lies inside {option} {path}: bertkit never "
                             f"writes into its input; choose a folder outside it")
        if _inside(path_real, out_real):
            raise ValueError(f"{option} {path} lies inside {out_option} {out}: writing {out} "
                             f"would replace it; choose another {out_option}")


def partial_path(out: str | os.PathLike) -> Path:
    """The staging folder of ``out``: beside it, so the final rename stays on one filesystem."""
    real = _real(out)
    return real.with_name(real.name + PARTIAL_SUFFIX)


def _has_checkpoints(folder: Path) -> bool:
    checkpoints = folder / CHECKPOINTS_DIR
    return checkpoints.is_dir() and any(checkpoints.iterdir())


def _listing(folder: Path, most: int = 4) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _check_existing(out: Path, staging: Path, *, overwrite: bool, resuming_out: bool,
                    resuming_staging: bool, replaceable_marker: str | None,
                    resumable: bool) -> None:
    if staging.exists() and not (resuming_staging or overwrite):
        if resumable and _has_checkpoints(staging):
            raise ValueError(f"{staging} holds an unfinished run with checkpoints: continue it "
                             f"with --resume {staging}, or delete it (or pass --overwrite) to "
                             "start again")
        raise ValueError(f"{staging} holds the leftovers of an unfinished run: delete it (or "
                         "pass --overwrite) to start again")
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if not any(out.iterdir()) or resuming_out:
        return
    if overwrite and (out / MARKER).is_file():
        return
    if overwrite:
        raise ValueError(f"--out {out} holds files bertkit did not write ({_listing(out)}): "
                         "--overwrite replaces only folders bertkit wrote; choose a new folder, "
                         "or move this one away yourself")
    if replaceable_marker and (out / replaceable_marker).is_file():
        return  # the command's own earlier output (e.g. a previous demo)
    resume_hint = f"continue its run with --resume {out}, " if resumable else ""
    raise ValueError(f"--out {out} already holds files ({_listing(out)}): choose a new folder, "
                     f"{resume_hint}or pass --overwrite to replace it")


def _commit(staging: Path, out: Path) -> None:
    """Move the finished staging folder to ``out``, replacing what was there as a whole."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        os.rename(staging, out)
        return
    # Two renames: at every moment one complete folder exists (the old one, or the new one).
    replaced = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    os.rename(out, replaced)
    os.rename(staging, out)
    shutil.rmtree(replaced, ignore_errors=True)


def check_output_folder(out: str | os.PathLike, *, inputs: Inputs, overwrite: bool = False,
                        resume: str | os.PathLike | None = None,
                        replaceable_marker: str | None = None, resumable: bool = False) -> bool:
    """The checks of :func:`output_folder`, without writing anything: call it before long
    work whose result goes to ``out``. Returns whether ``resume`` continues the run kept in
    ``out``'s staging folder."""
    check_not_input(out, inputs)
    out_real, staging = _real(out), partial_path(out)
    resume_real = _real(resume) if resume is not None else None
    resuming_staging = resume_real is not None and (resume_real == staging
                                                    or _inside(resume_real, staging))
    resuming_out = resume_real is not None and (resume_real == out_real
                                                or _inside(resume_real, out_real))
    _check_existing(out_real, staging, overwrite=overwrite, resuming_out=resuming_out,
                    resuming_staging=resuming_staging, replaceable_marker=replaceable_marker,
                    resumable=resumable)
    return resuming_staging


@contextlib.contextmanager
def output_folder(out: str | os.PathLike, *, inputs: Inputs,
                  overwrite: bool = False, resume: str | os.PathLike | None = None,
                  active: bool = True, replaceable_marker: str | None = None,
                  resumable: bool = False) -> Iterator[Path]:
    """Check ``out``, yield a staging folder to write into, and move it to ``out`` at the end.

    Args:
        out: the folder the command's result should end up in.
        inputs: option -> path of everything the command reads (see :func:`check_not_input`).
        overwrite: replace an existing non-empty ``out`` (at the end, as a whole).
        resume: the ``--resume`` path of a training run: resuming ``out`` (or its staging
            folder) allows the existing folder; resuming the staging folder writes on into it.
        active: False on the non-zero ranks of a torchrun job: they only read, so they get the
            staging path without creating, removing or moving anything.
        replaceable_marker: a file name that marks an existing ``out`` as this command's own
            earlier output, which may be replaced without ``--overwrite``.
        resumable: the command takes ``--resume``: a failed run that left checkpoints keeps its
            staging folder (its path and the ``--resume`` hint go to stderr).

    On an exception the staging folder is removed (unless kept for ``--resume``) and
    everything at ``out`` is left as it was.
    """
    out_real, staging = _real(out), partial_path(out)
    if not active:
        # The other ranks of a torchrun job: rank 0 checks and creates the staging folder
        # (which may already exist when they look, so they do not judge it).
        check_not_input(out, inputs)
        yield staging
        return
    resuming_staging = check_output_folder(out, inputs=inputs, overwrite=overwrite, resume=resume,
                                           replaceable_marker=replaceable_marker,
                                           resumable=resumable)
    if staging.exists() and not resuming_staging:
        shutil.rmtree(staging)  # --overwrite: an abandoned run's leftovers
    staging.mkdir(parents=True, exist_ok=True)
    (staging / MARKER).write_text("written by bertkit; --overwrite may replace this folder\n",
                                  encoding="utf-8")
    try:
        yield staging
    except BaseException:
        if resumable and _has_checkpoints(staging):
            print(f"the unfinished run is kept in {staging}: continue it with --resume {staging} "
                  f"--out {out}", file=sys.stderr)
        else:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    _commit(staging, out_real)


def check_output_file(out: str | os.PathLike, *, inputs: Inputs, overwrite: bool = False,
                      out_option: str = "--out", suffix: str | None = None) -> Path:
    """Check that the file ``out`` may be written (see :func:`output_file`); return its real path.

    ``suffix`` (e.g. ``".onnx"``): the only kind of file this command writes. With it, ``out``
    may sit directly in an input folder (``bertkit export`` writes ``MODEL/model.onnx``): a
    file of that kind is never one of the folder's model files.
    """
    out_real = _real(out)
    if suffix is not None and out_real.suffix != suffix:
        raise ValueError(f"{out_option} {out} must be a {suffix} file")
    if suffix is not None:
        inputs = [(option, path) for option, path in
                  (inputs.items() if isinstance(inputs, Mapping) else inputs)
                  if path is None or _real(path) != out_real.parent]
    check_not_input(out, inputs, out_option)
    if out_real.is_dir():
        raise ValueError(f"{out_option} {out} is a folder, not a file")
    if out_real.exists() and not overwrite:
        raise ValueError(f"{out_option} {out} already exists: choose another name, or pass "
                         "--overwrite to replace it")
    return out_real


@contextlib.contextmanager
def output_file(out: str | os.PathLike, *, inputs: Inputs, overwrite: bool = False,
                out_option: str = "--out") -> Iterator[Path]:
    """Check ``out`` (a file), yield a temporary path beside it, and ``os.replace`` it at the end.

    An existing ``out`` is refused unless ``overwrite``; a failure removes the temporary file
    and leaves ``out`` as it was.
    """
    out_real = check_output_file(out, inputs=inputs, overwrite=overwrite, out_option=out_option)
    out_real.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_real.with_name(f".{out_real.stem}.tmp-{os.getpid()}{out_real.suffix}")
    try:
        yield temporary
        os.replace(temporary, out_real)
    finally:
        if temporary.exists():
            temporary.unlink()


def relocated(path: str | None, staging: str | os.PathLike, out: str | os.PathLike) -> str | None:
    """Where ``path`` (written inside ``staging``) is now that the folder was moved to ``out``."""
    if path is None:
        return None
    relative = os.path.relpath(os.path.realpath(path), os.path.realpath(staging))
    if relative == os.curdir:
        return os.fspath(out)
    return path if relative.startswith(os.pardir) else os.path.join(os.fspath(out), relative)


def as_user_file(path: str | os.PathLike) -> None:
    """Give ``path`` the permissions of any file the user creates (0666 less the umask):
    safetensors writes its files 0600, which hides a shared model folder's weights from
    everyone else who can read the rest of it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
