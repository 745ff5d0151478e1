"""Reading the NAB corpus: `<data>/<category>/<file>.csv` files and their anomaly windows."""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.nab_score import window_rows

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DataFile:
    name: str
    """`<category>/<file>.csv`, as in combined_windows.json."""
    stamps: list[str]
    timestamps: npt.NDArray[np.datetime64]
    values: FloatArray
    windows: tuple[tuple[int, int], ...]
    """Anomaly windows as inclusive row ranges."""

    @property
    def epoch_seconds(self) -> FloatArray:
        return self.timestamps.astype("datetime64[us]").astype(np.int64) / 1e6


def corpus_files(data: Path, only: Iterable[str] | None = None) -> list[str]:
    """`<category>/<file>.csv` names under `data`, sorted; restricted to `only` if given."""
    names = sorted(f"{path.parent.name}/{path.name}" for path in data.glob("*/*.csv"))
    if only is not None:
        wanted = set(only)
        names = [name for name in names if name in wanted]
    return names


def read_file(data: Path, name: str, windows: dict[str, list[tuple[str, str]]]) -> DataFile:
    path = data / name
    lines = path.read_text().splitlines()
    if not lines or lines[0].strip() != "timestamp,value":
        raise ValueError(f"{path}: expected a `timestamp,value` header")
    stamps, values = [], []
    for line in lines[1:]:
        if line.strip():
            stamp, value = line.split(",")
            stamps.append(stamp.strip())
            values.append(float(value))
    timestamps = np.array(stamps, dtype="datetime64[us]")
    return DataFile(
        name,
        stamps,
        timestamps,
        np.asarray(values, dtype=np.float64),
        window_rows(timestamps, windows.get(name, [])),
    )
