"""Result records on disk: one JSON file per finished configuration, written atomically.

A re-run skips every configuration whose record exists; a run killed mid-way
leaves no half-written file (``deepliflow_jax.fileio``: a temporary sibling,
``fsync``, then ``os.replace``).
"""

from __future__ import annotations

import json
from pathlib import Path

from deepliflow_jax.fileio import write_json_atomic, write_text_atomic


class RecordStore:
    """``results_dir/records/<id>.json``."""

    def __init__(self, results_dir: Path):
        self.dir = Path(results_dir) / "records"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> dict:
        return json.loads(self.path(key).read_text())

    def put(self, key: str, record: dict) -> dict:
        write_json_atomic(self.path(key), record)
        return record

    def all(self) -> dict[str, dict]:
        return {p.stem: json.loads(p.read_text()) for p in sorted(self.dir.glob("*.json"))}


class RunLog:
    """Training curves: CSV always, TensorBoard events when tensorboardX is installed."""

    def __init__(self, log_dir: Path, name: str):
        self.csv = Path(log_dir) / f"{name}.csv"
        self.csv.parent.mkdir(parents=True, exist_ok=True)
        self._header = None
        try:
            from tensorboardX import SummaryWriter
        except ImportError:  # optional: the CSV has the same numbers
            self._tb = None
        else:
            self._tb = SummaryWriter(str(Path(log_dir) / "tensorboard" / name))
        self._rows: list[str] = []

    def log(self, step: int, values: dict[str, float]) -> None:
        keys = sorted(values)
        if self._header is None:
            self._header = keys
            self._rows.append(",".join(["step", *keys]))
        self._rows.append(",".join([str(step), *(f"{values.get(k, '')}" for k in self._header)]))
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        write_text_atomic(self.csv, "\n".join(self._rows) + "\n")
        if self._tb is not None:
            self._tb.close()


def progress(iterable, total: int, desc: str):
    """tqdm when installed, else the plain iterable with a start line."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        print(f"{desc} ({total})", flush=True)
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)
