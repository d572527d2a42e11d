"""Everything a command writes goes through this module, under one policy:

- **A file the user did not name is never replaced.** ``export`` writes over an existing file only with
  ``--overwrite``, and never over one of its own inputs.
- **Nothing a run did not write is deleted.** ``--overwrite`` of a run folder removes the files a run
  writes (:data:`RUN_FILES`, ``teacher/``'s, ``*_adder.onnx`` and ``*_adder_int8.onnx``, stale
  temporaries) and keeps every other file.
- **The old run goes only once the new one has something to show.** ``--overwrite`` first moves the old
  run's files into :data:`REPLACED` inside the folder (:class:`ReplacedRun`); they are deleted once the new
  run has written a checkpoint or finished, and moved back when it fails (or is interrupted) before that.
  A run killed outright (SIGKILL, out of memory) leaves them in :data:`REPLACED`, a run folder of its own,
  which the next ``--overwrite`` of the folder keeps as the old run while the new one has no checkpoint.
- **A folder is a run folder by evidence,** never by a file name alone: the marker :data:`MARKER` every
  run and import writes first, or a checkpoint of this tool (``last.pt``, ``best.pt``,
  ``teacher/last.pt``) that reads back as one.
- **Files are written to a temporary file beside them and renamed into place**
  (:func:`adderconvert.checkpoint.write_atomic`), so a killed command leaves the old file or the new one.
- **Every output path is checked before the work starts:** an existing folder where a file is asked for,
  a path under a file, a folder that is not writable, a file where a folder is asked for.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from adderconvert.checkpoint import CheckpointError, read_meta, write_atomic

__all__ = [
    "MARKER",
    "RUN_FILES",
    "REPLACED",
    "OutputError",
    "ReplacedRun",
    "RunFolder",
    "check_is_run",
    "check_output_file",
    "check_run_folder",
    "check_writable_folder",
    "clear_run",
    "discard_new_run",
    "find_run",
    "mark_run",
    "run_files",
    "write_bytes",
    "write_text",
    "write_through",
]

MARKER = ".adderconvert-run"
# Where --overwrite keeps the old run's files (same relative paths) until the new run has a checkpoint.
REPLACED = ".adderconvert-replaced"
# What a run (or an import) writes at the top of its folder, and in teacher/.
RUN_FILES = (
    MARKER,
    "config.yaml",
    "summary.json",
    "last.pt",
    "best.pt",
    "metrics.csv",
    "report.html",
    "report.json",
)
TEACHER_FILES = ("last.pt", "best.pt", "metrics.csv")
ONNX_PATTERNS = ("*_adder.onnx", "*_adder_int8.onnx")  # the main job's and import-official's models
_TEMPORARIES = ".*.tmp"  # checkpoint.write_atomic's temporaries, and the best.pt link's
_CHECKPOINTS = ("last.pt", "best.pt", "teacher/last.pt", "teacher/best.pt")


class OutputError(ValueError):
    """An output path cannot be written as asked; the message names it and says what to do."""


def _first_existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists() or p == p.parent)


def check_writable_folder(folder: str | os.PathLike, what: str) -> Path:
    """``folder`` is a writable folder, or can be created as one; else :class:`OutputError`."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder} is a file, not a folder")
    existing = _first_existing(folder)
    if not existing.is_dir():
        raise OutputError(f"{what} {folder} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        verb = "written" if existing == folder else "created"
        raise OutputError(f"{what} {folder} cannot be {verb}: {existing} is not a writable folder")
    return folder


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(
    path: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable[str | os.PathLike] = (), what: str = "-o"
) -> Path:
    """Check before any work that ``path`` can be written as a new file: not a folder, not under a file,
    in a writable folder, none of ``inputs`` (the same file under any name, hard links included), and not
    an existing file unless ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; name the file to write (e.g. {path / 'model.onnx'})")
    for source in inputs:
        if _same(path, Path(source)) or path.resolve() == Path(source).resolve():
            raise OutputError(f"{what} {path} is the input {source}: writing it would destroy it; choose another file")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists; pass --overwrite to replace it, or choose another {what}")
    check_writable_folder(path.parent, f"{what} {path}: the folder")
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file that is renamed into place."""
    return write_atomic(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_through(path: str | os.PathLike, produce: Callable[[Path], object]) -> Path:
    """Write a file that a function writes by path (``produce(tmp)``, e.g. an ONNX export): it goes to a
    private temporary folder first and is copied into place through :func:`write_atomic` only when
    ``produce`` returned, so a failed or killed export leaves ``path`` as it was."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="adderconvert-") as tmp:
        staged = Path(tmp) / path.name
        produce(staged)
        with open(staged, "rb") as src:
            write_atomic(path, lambda f: shutil.copyfileobj(src, f, 1 << 20))
    return path


@dataclass
class RunFolder:
    """A folder that holds a run of this tool, and the evidence for it."""

    path: Path
    model: str | None  # the model its marker or checkpoint names
    evidence: str  # the file that shows it is a run


def mark_run(folder: str | os.PathLike, model: str, command: str) -> Path:
    """Write the marker that makes ``folder`` a run folder of ``model`` (written before anything else)."""
    data = {"tool": "adderconvert", "model": model, "command": command}
    return write_text(Path(folder) / MARKER, json.dumps(data) + "\n")


def _read_marker(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "adderconvert" else None


def find_run(folder: str | os.PathLike) -> RunFolder | None:
    """The run in ``folder``: its marker, else a checkpoint of this tool that reads back; ``None`` when
    neither is there (a folder with only a ``config.yaml`` is not a run)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    marker = _read_marker(folder / MARKER)
    if marker is not None:
        return RunFolder(folder, marker.get("model"), MARKER)
    for name in _CHECKPOINTS:
        path = folder / name
        if path.is_file():
            try:
                meta = read_meta(path)
            except CheckpointError:
                continue
            return RunFolder(folder, meta.model_name, name)
    return None


def check_is_run(folder: str | os.PathLike, what: str) -> RunFolder:
    """The run in ``folder``, for a command that only reads and adds to a run (``report``); else
    :class:`OutputError` naming what a run folder is."""
    found = find_run(folder)
    if found is None:
        raise OutputError(
            f"{what} {folder} is not a run folder of adderconvert (no {MARKER} marker and no checkpoint of "
            "adderconvert: last.pt, best.pt or teacher/last.pt); a run folder is the --output of a training run "
            "(`adderconvert MODEL --output DIR`) or of `adderconvert import-official`"
        )
    return found


def run_files(folder: str | os.PathLike) -> list[Path]:
    """The files in ``folder`` that a run writes (those that are there). The ONNX models go by the name
    of the run's model where its marker or checkpoint names it, else by :data:`ONNX_PATTERNS`."""
    folder = Path(folder)
    found = [folder / n for n in RUN_FILES if (folder / n).is_file()]
    run = find_run(folder)
    model = run.model if run is not None and run.model else "*"
    patterns = [pattern.replace("*", model, 1) for pattern in ONNX_PATTERNS]
    found += sorted(p for pattern in patterns for p in folder.glob(pattern) if p.is_file())
    found += sorted(p for p in folder.glob(_TEMPORARIES) if p.is_file())
    teacher = folder / "teacher"
    if teacher.is_dir():
        found += [teacher / n for n in TEACHER_FILES if (teacher / n).is_file()]
        found += sorted(p for p in teacher.glob(_TEMPORARIES) if p.is_file())
    return found


def clear_run(folder: str | os.PathLike) -> list[Path]:
    """Remove what a run wrote in ``folder`` (the marker last) and nothing else; ``teacher/`` goes when
    nothing else is left in it. Returns what was removed."""
    folder = Path(folder)
    removed = [p for p in run_files(folder) if p.name != MARKER]
    for path in removed:
        path.unlink(missing_ok=True)
    teacher = folder / "teacher"
    if teacher.is_dir() and not any(teacher.iterdir()):
        teacher.rmdir()
    if (folder / MARKER).is_file():
        (folder / MARKER).unlink()
        removed.append(folder / MARKER)
    return removed


def _has_results(folder: Path) -> bool:
    """A run in ``folder`` has something to show: a checkpoint (it can be resumed) or its summary."""
    return any(p.suffix == ".pt" or p.name == "summary.json" for p in run_files(folder))


def _move_files(files: Iterable[Path], source: Path, target: Path) -> int:
    """Move ``files`` (under ``source``) to the same relative paths under ``target``, by rename."""
    moved = 0
    for path in files:
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(dest))  # a rename on one file system: nothing is copied
        moved += 1
    teacher = source / "teacher"
    if teacher.is_dir() and not any(teacher.iterdir()):
        teacher.rmdir()
    return moved


def _files_under(folder: Path) -> list[Path]:
    """The files under ``folder``, the marker last (it goes last and comes back last)."""
    return sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p == folder / MARKER)


class ReplacedRun:
    """The old run that ``--overwrite`` replaces, kept in ``FOLDER/`` :data:`REPLACED` until the new run
    has written a checkpoint (:meth:`settle`) or finished (:meth:`drop`), and put back by :meth:`restore`
    when it fails before. Only the run's own files move (:func:`run_files`); every other file stays.

    Each step can be killed at any point without losing a file: the files move through a folder
    (``REPLACED.partial``) that is renamed to :data:`REPLACED` once complete, so a partial one always means
    "these go back", and a complete one whose new run has no checkpoint nor summary is still the old run.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.aside = self.folder / REPLACED
        self._partial = self.folder / (REPLACED + ".partial")
        self._deleting = self.folder / (REPLACED + ".deleting")
        if self._deleting.is_dir():  # a drop that was killed: the new run had replaced these
            shutil.rmtree(self._deleting)
        if self._partial.is_dir():  # a move (aside or back) that was killed: the rest is still in the folder
            _move_files(_files_under(self._partial), self._partial, self.folder)
            shutil.rmtree(self._partial)
        if self.aside.is_dir():
            # An earlier --overwrite was killed after it moved the old run aside: a new run with results had
            # replaced it; without, what that run wrote (marker, config.yaml) goes and the old run stays aside.
            if not _has_results(self.folder):
                clear_run(self.folder)
                self.moved = len(_files_under(self.aside))
                return
            self.drop()
        files = [p for p in run_files(self.folder) if p != self.folder / MARKER]
        if (self.folder / MARKER).is_file():
            files.append(self.folder / MARKER)  # last: until then the folder is still a run by its marker
        self.moved = _move_files(files, self.folder, self._partial)
        if self._partial.is_dir():
            os.replace(self._partial, self.aside)

    def drop(self) -> None:
        """The new run has replaced the old one: delete the old run's files."""
        if self.aside.is_dir():
            os.replace(self.aside, self._deleting)
            shutil.rmtree(self._deleting)

    def settle(self) -> None:
        """Delete the old run's files once the new run has written a checkpoint (it can be resumed)."""
        if self.aside.is_dir() and _has_results(self.folder):
            self.drop()

    def restore(self) -> None:
        """The new run failed: remove what it wrote (:func:`clear_run`) and move the old run's files back."""
        clear_run(self.folder)
        if not self.aside.is_dir():
            return
        os.replace(self.aside, self._partial)
        _move_files(_files_under(self._partial), self._partial, self.folder)
        shutil.rmtree(self._partial)


def discard_new_run(folder: str | os.PathLike, created: bool) -> None:
    """After a run failed before its first checkpoint: remove what it wrote, and the folder when this run
    created it and nothing else is in it."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    clear_run(folder)
    if created and not any(folder.iterdir()):
        folder.rmdir()


def check_run_folder(
    folder: str | os.PathLike,
    *,
    model: str,
    overwrite: bool = False,
    resume: bool = False,
    resumable: bool = True,
    what: str = "--output",
) -> RunFolder | None:
    """Check before any work that a run of ``model`` may write ``folder``; return the run already there.

    A new run needs a new or empty folder; a folder holding a run needs ``resume`` (a run of the same
    model; ``resumable`` runs only) or ``overwrite`` (which later removes only the run's own files); a
    folder of other files is refused either way.
    """
    folder = check_writable_folder(folder, what)
    found = find_run(folder)
    hint = f"pass --resume to continue it, --overwrite to replace it, or another {what}"
    if not resumable:
        hint = f"pass --overwrite to replace it, or another {what}"
    if resume:
        if found is None:
            raise OutputError(
                f"--resume: {folder} holds no run to continue (no marker and no checkpoint of adderconvert)"
            )
        if found.model is not None and found.model != model:
            raise OutputError(
                f"--resume: {folder} holds a run of {found.model} ({found.evidence}), not of {model}; "
                f"start the {model} run in another --output"
            )
        return found
    for aside in (REPLACED, REPLACED + ".partial"):  # an --overwrite killed while it moved the old run aside
        if found is None and overwrite:
            found = find_run(folder / aside)
    if found is not None:
        if not overwrite:
            raise OutputError(f"{folder} already holds a run; {hint}")
        return found
    if folder.is_dir() and any(folder.iterdir()):
        raise OutputError(
            f"{what} {folder} is a folder of other files, not a run folder (no marker and no checkpoint of "
            "adderconvert); choose an empty or new one"
        )
    return None
