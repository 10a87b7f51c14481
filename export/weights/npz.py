"""`.npz` archives of named arrays, read with `allow_pickle=False`."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from dreamstream.export.weights.errors import WeightsError


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read an `.npz` of named arrays; object arrays (pickles) are refused."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise WeightsError(f"{path}: cannot read as .npz: {e}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise WeightsError(f"{path}: a single array, not an .npz archive of named arrays")
    with archive:
        try:
            return {name: archive[name] for name in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise WeightsError(f"{path}: cannot read as .npz: {e}") from None
