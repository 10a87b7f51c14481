"""The import directions between the parts, read from the source with ast.

README's "How it is built" table states them; this test keeps them true. A
module's imports inside functions count too, except where a rule says
"at module level" (the client may load a part lazily, as the command does).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Folder -> the dreamstream package its modules are.
PARTS = {
    "client": "dreamstream.client",
    "server": "dreamstream.server",
    "export": "dreamstream.export",
    "dreamstream": "dreamstream",
}


def imports(path: Path, module_level_only: bool = False) -> set[str]:
    """Every module `path` imports (absolute names), at module level only if asked."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if module_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules_of(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def offending(folder: str, forbidden: tuple[str, ...], module_level_only: bool = False) -> dict[str, list[str]]:
    """{module path: forbidden imports it has} over every module of `folder`."""
    found = {}
    for path in modules_of(folder):
        bad = sorted(
            name for name in imports(path, module_level_only) if name.startswith(forbidden) or name in forbidden
        )
        if bad:
            found[str(path.relative_to(REPO))] = bad
    return found


@pytest.mark.parametrize("folder", ["server", "export"])
def test_server_and_export_never_import_the_client(folder: str) -> None:
    assert offending(folder, ("dreamstream.client",)) == {}


def test_the_client_imports_no_server_or_export_at_module_level() -> None:
    assert offending("client", ("dreamstream.server", "dreamstream.export"), module_level_only=True) == {}


def test_export_and_server_know_nothing_of_each_other() -> None:
    assert offending("export", ("dreamstream.server",)) == {}
    assert offending("server", ("dreamstream.export",)) == {}


def test_the_engine_knows_nothing_of_grpc() -> None:
    assert offending("server/engine", ("grpc", "dreamstream.v1")) == {}


# Modules of a transport: the data plane, and all it imports, use none of them.
TRANSPORTS = ("grpc", "grpc_status", "grpc_health", "grpc_reflection", "google.rpc", "dreamstream.v1")
TRANSPORTS += ("starlette", "uvicorn", "aiohttp", "fastapi", "http.server", "prometheus_client")


def server_module_path(name: str) -> Path | None:
    """The source file of a dreamstream.server module, None for any other."""
    if not name.startswith("dreamstream.server."):
        return None
    relative = name.removeprefix("dreamstream.server.").replace(".", "/")
    for candidate in (REPO / "server" / f"{relative}.py", REPO / "server" / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_closure(path: Path) -> dict[Path, set[str]]:
    """{module: its imports} for `path` and every server module it reaches (the shared modules of
    `dreamstream/`, such as wire.py's image formats, are checked by their own rule)."""
    seen: dict[Path, set[str]] = {}
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen[current] = imports(current)
        todo.extend(found for name in seen[current] if (found := server_module_path(name)) is not None)
    return seen


def test_the_data_plane_knows_nothing_of_any_transport() -> None:
    closure = imported_closure(REPO / "server" / "dataplane.py")
    assert REPO / "server" / "admission.py" in closure  # the walk follows the data plane's imports
    bad = {
        str(path.relative_to(REPO)): sorted(n for n in names if n.startswith(TRANSPORTS))
        for path, names in closure.items()
    }
    assert {path: names for path, names in bad.items() if names} == {}


def test_the_shared_modules_import_no_part() -> None:
    parts = ("dreamstream.client", "dreamstream.server", "dreamstream.export")
    shared = {path.name for path in modules_of("dreamstream")} - {"__init__.py", "cli.py"}
    assert shared == {"cmdline.py", "modeldir.py", "wire.py"}
    for name in shared:
        assert not [m for m in imports(REPO / "dreamstream" / name) if m.startswith(parts)], name


def test_the_model_directory_contract_needs_only_the_standard_library() -> None:
    third_party = {name.split(".")[0] for name in imports(REPO / "dreamstream" / "modeldir.py")}
    assert third_party <= {"__future__", "json", "collections", "dataclasses", "pathlib"}


def test_the_command_dispatcher_loads_the_parts_lazily() -> None:
    parts = ("dreamstream.client", "dreamstream.server", "dreamstream.export")
    assert not [m for m in imports(REPO / "dreamstream" / "cli.py") if m.startswith(parts)]


def test_every_part_folder_is_checked() -> None:
    # A new top-level folder of code must say where it stands.
    code_folders = {path.parent.name for path in REPO.glob("*/*.py")} - {"tests", "benchmarks", "proto", "scripts"}
    assert code_folders <= set(PARTS)


def test_every_package_folder_is_in_the_wheel() -> None:
    # The editable install finds sub-packages by path; a wheel (the container image's)
    # holds only those pyproject.toml lists.
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {**PARTS, "proto/dreamstream/v1": "dreamstream.v1"}
    found = set()
    for folder, package in folders.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            found.add(".".join([package, *relative.parts]))
    assert found == listed


HTTP_GATEWAY = ("server/gateway.py", "server/http_requests.py", "server/http_errors.py", "server/http_server.py")


@pytest.mark.parametrize("module", HTTP_GATEWAY)
def test_the_http_gateway_goes_through_the_data_plane_never_the_grpc_servicer(module: str) -> None:
    # Like the gRPC servicer, the gateway converts and hands every call to the data plane;
    # only http_errors names gRPC's status codes (the table HTTP statuses are mapped from).
    found = imports(REPO / module)
    assert not [
        name for name in found if name.startswith(("dreamstream.server.service", "dreamstream.server.animations"))
    ]
    if module != "server/http_errors.py":
        assert not [name for name in found if name == "grpc" or name.startswith("grpc.")]


def test_the_data_plane_and_the_engine_know_nothing_of_http() -> None:
    web = ("starlette", "uvicorn", "multipart", "dreamstream.server.gateway", "dreamstream.server.http_")
    assert offending("server/engine", web) == {}
    assert not [name for name in imports(REPO / "server/dataplane.py") if name.startswith(web)]
