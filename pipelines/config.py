"""Settings shared by commands and tests. One place says where the real data sets live."""
from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "DRIFTLINE_DATA_DIR"
DEFAULT_DATA_DIR = "../shared/data"


class DataDirMissing(FileNotFoundError):
    """The real data sets are not where the data setting points."""


def data_dir(explicit: str | os.PathLike | None = None, need: str | None = None) -> Path:
    """Where the real data sets are: ``explicit`` (a CLI option), else $DRIFTLINE_DATA_DIR,
    else ``../shared/data`` from the working directory or from the project root.

    ``need`` is a file below it that must exist (for example ``talkingdata/train_sample.csv``).
    Raises DataDirMissing with a message that says how to point the setting at the data.
    """
    if explicit is not None:
        candidates = [Path(explicit)]
    elif os.environ.get(DATA_DIR_ENV):
        candidates = [Path(os.environ[DATA_DIR_ENV])]
    else:
        project_root = Path(__file__).resolve().parent.parent
        candidates = [Path.cwd() / DEFAULT_DATA_DIR, project_root / DEFAULT_DATA_DIR]
    for c in candidates:
        if c.is_dir() and (need is None or (c / need).is_file()):
            return c.resolve()
    looked = ", ".join(str(c) for c in candidates)
    what = f"{need} under " if need else ""
    raise DataDirMissing(
        f"driftline's real data sets were not found (looked for {what}{looked}). "
        f"Set {DATA_DIR_ENV}=/path/to/data or pass --data-dir; the folder holds "
        f"talkingdata/train_sample.csv and elec2/electricity.csv (see ../shared/data/README.md).")
