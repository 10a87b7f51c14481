"""Fixtures shared by the test modules: the real data beside the repo and exported models."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
IMAGES = SHARED / "images"
BVLC_WEIGHTS = SHARED / "weights" / "bvlc_googlenet" / "bvlc_googlenet.npz"


def require_shared(path: Path) -> Path:
    """Skip (not fail) where the shared data beside the checkout is absent."""
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared data folder (../shared beside the repo) is not here")
    return path


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One models directory for the whole session; models are exported into it on demand."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def lite0_dir(models_dir: Path) -> Path:
    """The embedded default model, exported with its real packaged ImageNet weights."""
    from dreamstream.export.api import export_model

    return export_model("efficientnet-lite0", models_dir)


@pytest.fixture(scope="session")
def googlenet_bvlc_dir(models_dir: Path) -> Path:
    """The original DeepDream network with its real weights from ../shared."""
    from dreamstream.export.api import export_model

    return export_model("googlenet-bvlc", models_dir, weights=require_shared(BVLC_WEIGHTS))
