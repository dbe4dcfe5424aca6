"""Where a run writes: its folder, the JSON-lines log, the checkpoint and the arguments."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["RunDir", "append_jsonl", "jsonable", "read_jsonl"]


def jsonable(args: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """Arguments as a JSON-serialisable dict (paths as strings)."""
    items = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in items.items()}


def append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    """Append ``record`` as one line of JSON to ``path`` (created if missing)."""
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSON-lines file, in order (blank lines skipped).

    Raises:
        ValueError: a line is not JSON; the message names the file and the line number.
    """
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number} is not a JSON line ({error.msg}); was the file cut short?") from None
    return records


@dataclasses.dataclass(frozen=True)
class RunDir:
    """A run's output folder and the files in it.

    Attributes:
        path: the folder (``--output-dir``).
    """

    path: Path

    CHECKPOINT = "checkpoint.pth"
    LOG = "log.jsonl"
    ARGS = "args.json"

    @property
    def checkpoint(self) -> Path:
        """``path/checkpoint.pth``: the state after the last finished epoch."""
        return self.path / self.CHECKPOINT

    @property
    def log(self) -> Path:
        """``path/log.jsonl``: one JSON record per epoch."""
        return self.path / self.LOG

    def create(self, args: argparse.Namespace | Mapping[str, Any] | None = None, *,
               fresh_log: bool = False) -> RunDir:
        """Make the folder; write ``args.json`` when ``args`` are given; with ``fresh_log``
        remove an old log (a new run, not a resumed one). Call it on the main rank only.

        Returns:
            self, for chaining.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        if fresh_log and self.log.exists():
            self.log.unlink()
        if args is not None:
            (self.path / self.ARGS).write_text(json.dumps(jsonable(args), indent=1) + "\n", encoding="utf-8")
        return self

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record to the log (:func:`append_jsonl`)."""
        append_jsonl(self.log, record)

    def records(self) -> list[dict[str, Any]]:
        """The log's records (:func:`read_jsonl`); empty when there is no log yet."""
        return read_jsonl(self.log) if self.log.exists() else []
