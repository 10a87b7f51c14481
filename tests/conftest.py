"""Fixtures shared by the test modules: the real data beside the repo and exported models."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
IMAGES = SHARED / "images"
BVLC_WEIGHTS = SHARED / "weights" / "bvlc_googlenet" / "bvlc_googlenet.npz"


def assert_graphs_pass_checker_and_cuda_audit(model_dir: Path) -> None:
    """Every graph of an exported model passes onnx.checker with full checking and uses only
    ops and attributes ONNX Runtime's CUDA provider implements."""
    import onnx
    from cuda_support import cuda_unsupported

    from dreamstream.modeldir import read_manifest

    manifest = read_manifest(model_dir)
    graphs = {
        name
        for layer in manifest.layers
        for name in (layer.graph, layer.step_graph, layer.focus_graph, layer.focus_step_graph, layer.guide_graph)
    }
    for name in sorted(graphs):
        onnx.checker.check_model(str(model_dir / name), full_check=True)
        assert cuda_unsupported(onnx.load(str(model_dir / name), load_external_data=False)) == [], name


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


def wait_until_still(counter, settle: float = 0.5, timeout: float = 10.0) -> int:
    """The counter's value once it has not moved for `settle` seconds."""
    deadline = time.monotonic() + timeout
    value = counter()
    while time.monotonic() < deadline:
        time.sleep(settle)
        if counter() == value:
            return value
        value = counter()
    raise AssertionError("the engine is still stepping")


# --- Serving: the engine, real gRPC servers on loopback, and clients. ---


def shared_image(name: str) -> Path:
    """A photograph of ../shared/images; skips the test when it is absent."""
    return require_shared(IMAGES / name)


@pytest.fixture
def coffee() -> Path:
    return shared_image("coffee.png")


def loaded_repository(directory: Path) -> Any:
    """The models of `directory`, loaded on the CPU."""
    from dreamstream.server.models import ModelRepository

    models = ModelRepository(directory, device="cpu")
    models.load()
    return models


@pytest.fixture(scope="session")
def repository(lite0_dir: Path) -> Any:
    """The models directory holding the real efficientnet-lite0, loaded on the CPU."""
    return loaded_repository(lite0_dir.parent)


@pytest.fixture(scope="session")
def bvlc_repository(googlenet_bvlc_dir: Path) -> Any:
    """The models directory holding googlenet-bvlc (and whatever else the session exported), on the CPU."""
    return loaded_repository(googlenet_bvlc_dir.parent)


@pytest.fixture(scope="session")
def engine(repository: Any) -> Any:
    from dreamstream.server.engine import DreamEngine

    return DreamEngine(repository)


class ServerThread:
    """A DreamServer on 127.0.0.1, port picked by gRPC, run by an event loop in its own thread."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.port = self.run(server.start("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self.port}"

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        """Run `coroutine` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self) -> None:
        self.run(self.server.stop(grace=None))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture(scope="session")
def start_server() -> Iterator[Callable[..., ServerThread]]:
    """start_server(repository, load=True, **DreamServer options) -> a running ServerThread."""
    from dreamstream.server.app import DreamServer

    started: list[ServerThread] = []

    def start(repository: Any, load: bool = True, **options: Any) -> ServerThread:
        thread = ServerThread(DreamServer(repository, **options))
        started.append(thread)
        if load:
            thread.run(thread.server.load())
        return thread

    yield start
    for thread in started:
        thread.stop()


@pytest.fixture(scope="session")
def bvlc_server(start_server: Callable[..., ServerThread], bvlc_repository: Any) -> ServerThread:
    """A server of the googlenet-bvlc repository: one dream at a time, four more may wait."""
    return start_server(bvlc_repository, max_concurrent=1, max_queue=4)


@pytest.fixture(scope="session")
def server(start_server: Callable[..., ServerThread], repository: Any) -> ServerThread:
    """The shared server: one dream at a time, four more may wait."""
    return start_server(repository, max_concurrent=1, max_queue=4)


@pytest.fixture
def client(server: ServerThread) -> Iterator[Any]:
    from dreamstream.client import DreamClient

    with DreamClient(server.target) as dream_client:
        yield dream_client
