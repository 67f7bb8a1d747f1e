"""Training logs: JSON lines and CSV always, TensorBoard when it is installed.

Rows are grouped by kind ("train", "validation"): `<kind>.jsonl` and `<kind>.csv` in the log folder. A
resumed run first drops the rows logged after its checkpoint, so the logs read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
from pathlib import Path
from typing import Any

from rgbd_portrait.files import write_bytes_atomically


def read_log_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of one `<kind>.jsonl` log file; none when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLogger:
    def __init__(self, directory: str | os.PathLike, *, resume_step: int = 0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in self.directory.glob("*.jsonl"):
            self._truncate(path.stem, after_step=resume_step)
        self._tensorboard = None
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.directory / "tensorboard"), purge_step=resume_step + 1)

    def read(self, kind: str) -> list[dict[str, Any]]:
        return read_log_rows(self.directory / f"{kind}.jsonl")

    def _write_all(self, kind: str, rows: list[dict[str, Any]]) -> None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        write_bytes_atomically(self.directory / f"{kind}.csv", text.getvalue().encode())
        jsonl = "".join(json.dumps(row) + "\n" for row in rows)
        write_bytes_atomically(self.directory / f"{kind}.jsonl", jsonl.encode())

    def _truncate(self, kind: str, *, after_step: int) -> None:
        rows = self.read(kind)
        kept = [row for row in rows if row["step"] <= after_step]
        if len(kept) != len(rows):
            self._write_all(kind, kept)

    def log(self, kind: str, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **values}
        jsonl = self.directory / f"{kind}.jsonl"
        csv_path = self.directory / f"{kind}.csv"
        header = csv_path.read_text().splitlines()[0].split(",") if csv_path.is_file() else None
        if header is not None and header != list(row):
            # A new column (or a new order): rewrite both files so the CSV keeps one consistent header.
            self._write_all(kind, [*self.read(kind), row])
        else:
            with jsonl.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            with csv_path.open("a", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(row))
                if header is None:
                    writer.writeheader()
                writer.writerow(row)
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
