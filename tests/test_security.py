"""TLS, mutual TLS and bearer tokens: real servers on loopback, real handshakes, the real clients."""

from __future__ import annotations

import collections
import shutil
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from certificates import Certificates, make_certificates
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from serve_process import ServeProcess

from dreamstream.cli import main
from dreamstream.client import DreamClient, Frame, ServerUnavailable, Unauthenticated
from dreamstream.cmdline import EXIT_REFUSED
from dreamstream.server.security import SecurityError, TlsFiles, read_tokens, token_matches
from dreamstream.v1 import dream_pb2, dream_pb2_grpc

SMALL = {"max_size": 64, "octaves": 2, "steps_per_octave": 1}
TOKENS = (b"old-token-still-valid", b"new-token")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def secure_server(start_server, repository, certificates: Certificates):
    tls = TlsFiles(certificates.server_cert, certificates.server_key)
    return start_server(repository, tls=tls, tokens=TOKENS, reflection=False)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text("new-token\n")
    return path


def final_frame(client: DreamClient) -> Frame:
    return [event for event in client.dream(None, width=64, height=48, **SMALL) if isinstance(event, Frame)][-1]


def test_a_tls_server_with_tokens_serves_a_client_with_the_ca_and_a_token(
    secure_server, certificates: Certificates, token_file: Path
) -> None:
    with DreamClient(secure_server.target, ca_file=certificates.ca, token_file=token_file) as client:
        assert final_frame(client).final
        assert client.models()
    # Either line of the token file is accepted: tokens rotate without a restart of the clients.
    with DreamClient(secure_server.target, ca_file=certificates.ca, token="old-token-still-valid") as client:
        assert client.models()


@pytest.mark.parametrize(
    ("token", "reason"),
    [(None, "MISSING_TOKEN"), ("wrong-token", "WRONG_TOKEN"), ("new-token-but-longer", "WRONG_TOKEN"), ("", None)],
)
def test_without_or_with_a_wrong_token_calls_are_unauthenticated(
    secure_server, certificates: Certificates, token: str | None, reason: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DREAMSTREAM_TOKEN", raising=False)
    with DreamClient(secure_server.target, ca_file=certificates.ca, token=token) as client:
        with pytest.raises(Unauthenticated, match="authorization: Bearer") as dreaming:
            final_frame(client)
        with pytest.raises(Unauthenticated) as listing:
            client.models()
    for refusal in (dreaming.value, listing.value):  # the details every error status carries
        assert refusal.reason in ((reason,) if reason else ("MISSING_TOKEN", "WRONG_TOKEN"))
        assert refusal.request_id


def test_the_token_may_come_from_the_environment(
    secure_server, certificates: Certificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DREAMSTREAM_TOKEN", "new-token")
    with DreamClient(secure_server.target, ca_file=certificates.ca) as client:
        assert client.models()


def test_health_answers_without_a_token_and_reflection_can_be_switched_off(
    secure_server, certificates: Certificates
) -> None:
    credentials = grpc.ssl_channel_credentials(certificates.ca.read_bytes())
    with grpc.secure_channel(secure_server.target, credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as refused:
            list(reflection.ServerReflectionInfo(iter([request]), timeout=10))
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_plain_client_cannot_talk_to_a_tls_server(secure_server) -> None:
    with DreamClient(secure_server.target, token="new-token") as client, pytest.raises(ServerUnavailable):
        client.models(timeout=10)


def test_mutual_tls_serves_only_clients_with_a_certificate_of_the_ca(
    start_server, repository, certificates: Certificates
) -> None:
    tls = TlsFiles(certificates.server_cert, certificates.server_key, client_ca=certificates.ca)
    server = start_server(repository, tls=tls)
    with DreamClient(
        server.target, ca_file=certificates.ca, cert_file=certificates.client_cert, key_file=certificates.client_key
    ) as client:
        assert client.models()
    with DreamClient(server.target, ca_file=certificates.ca) as client, pytest.raises(ServerUnavailable):
        client.models(timeout=10)


def test_token_files_skip_blank_and_comment_lines_and_an_empty_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# rotated monthly\n\nfirst\n  second  \n")
    assert read_tokens(path) == (b"first", b"second")
    path.write_text("# nothing\n\n")
    with pytest.raises(SecurityError, match="holds no token"):
        read_tokens(path)


def test_tokens_compare_whole() -> None:
    assert token_matches(b"new-token", TOKENS)
    assert not token_matches(b"new-toke", TOKENS)
    assert not token_matches(b"new-token2", TOKENS)
    assert not token_matches(b"", TOKENS)


def test_serve_with_tls_and_a_token_file_serves_the_cli_with_the_ca_and_token_and_refuses_without(
    lite0_dir: Path, certificates: Certificates, token_file: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.delenv("DREAMSTREAM_TOKEN", raising=False)
    tokens = tmp_path / "tokens"
    tokens.write_text("# one token per line\nnew-token\n")
    server = ServeProcess(
        lite0_dir.parent,
        *("--tls-cert", str(certificates.server_cert), "--tls-key", str(certificates.server_key)),
        *("--auth-token-file", str(tokens), "--no-reflection"),
    )
    try:
        out = tmp_path / "dream.png"
        flags = ["--server", server.target, "--ca-file", str(certificates.ca), "--noise", "64x48", "-q", "--steps", "1"]
        assert main(["dream", "-o", str(out), *flags, "--token-file", str(token_file)]) == 0
        assert out.is_file()
        assert main(["dream", "-o", str(out), *flags]) == EXIT_REFUSED
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        wrong = tmp_path / "wrong"
        wrong.write_text("not-the-token\n")
        assert main(["dream", "-o", str(out), *flags, "--token-file", str(wrong)]) == EXIT_REFUSED
        assert "UNAUTHENTICATED" in capsys.readouterr().err
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log


def wait_until(condition, timeout: float = 15.0) -> bool:
    """Whether `condition()` turned true within `timeout` seconds, asked every tenth of a second."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def accepted(target: str, token: str, ca: Path | None = None) -> bool:
    try:
        with DreamClient(target, token=token, ca_file=ca) as client:
            client.models(timeout=10)
        return True
    except Unauthenticated:
        return False


class Traffic:
    """Calls in a loop on one connection with the token of the moment, counting each outcome."""

    def __init__(self, target: str, token: str) -> None:
        self.token = token
        self.outcomes: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._client = DreamClient(target)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        channel = grpc.insecure_channel(self._client.target)
        stub = dream_pb2_grpc.DreamServiceStub(channel)
        while not self._stop.is_set():
            try:
                stub.ListModels(dream_pb2.ListModelsRequest(), metadata=[("authorization", f"Bearer {self.token}")])
                self.outcomes["OK"] += 1
            except grpc.RpcError as error:
                self.outcomes[error.code().name] += 1
            time.sleep(0.02)
        channel.close()

    def move_to(self, token: str) -> None:
        """The clients move to `token`: returns once calls carrying it went through (none in flight with the old)."""
        self.token = token
        done = self.outcomes["OK"]
        assert wait_until(lambda: self.outcomes["OK"] >= done + 2)

    def stop(self) -> collections.Counter[str]:
        self._stop.set()
        self._thread.join(30)
        self._client.close()
        return self.outcomes


def test_tokens_rotate_live_under_traffic_and_a_broken_file_keeps_the_tokens_in_force(
    lite0_dir: Path, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("old-token\n")
    server = ServeProcess(lite0_dir.parent, "--auth-token-file", str(tokens), "--no-warm-start")
    traffic = Traffic(server.target, "old-token")
    try:
        tokens.write_text("old-token\nnew-token\n")  # rewritten in place, as an editor does
        assert wait_until(lambda: accepted(server.target, "new-token")), "the added token is not accepted"
        traffic.move_to("new-token")
        replacement = tmp_path / "tokens.next"
        replacement.write_text("new-token\n")
        replacement.replace(tokens)  # replaced by a rename, as Kubernetes updates a mounted secret
        assert wait_until(lambda: not accepted(server.target, "old-token")), "the removed token still works"
        assert accepted(server.target, "new-token")

        tokens.write_text("")  # truncated on its way to new content: never locks everyone out
        assert wait_until(lambda: server.count("token file not reloaded") >= 1)
        assert accepted(server.target, "new-token")
        tokens.write_text("new-token\nnewest-token\n")
        server.process.send_signal(signal.SIGHUP)  # read again at once; the server lives on
        assert wait_until(lambda: accepted(server.target, "newest-token"))
        traffic.move_to("newest-token")
        tokens.write_text("newest-token\n")
        assert wait_until(lambda: not accepted(server.target, "new-token"))
        time.sleep(0.5)
    finally:
        outcomes = traffic.stop()
        assert server.stop() == 0
    assert outcomes["OK"] > 10 and set(outcomes) == {"OK"}, outcomes  # no call of the moving clients refused
    assert "Traceback" not in server.log


def test_tls_certificates_are_taken_up_at_the_next_handshake_without_a_restart(
    lite0_dir: Path, certificates: Certificates, tmp_path: Path
) -> None:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    shutil.copy(certificates.server_cert, cert)
    shutil.copy(certificates.server_key, key)
    (tmp_path / "renewed").mkdir()
    renewed = make_certificates(tmp_path / "renewed")  # another CA: tells the two certificates apart
    server = ServeProcess(lite0_dir.parent, "--tls-cert", str(cert), "--tls-key", str(key), "--no-warm-start")
    try:
        assert accepted(server.target, "", certificates.ca)
        cert.write_text("-----BEGIN CERTIFICATE-----\n")  # half-written: the certificate in force stays
        assert accepted(server.target, "", certificates.ca)
        shutil.copy(renewed.server_cert, cert)  # the new chain before its key: not a pair yet
        assert accepted(server.target, "", certificates.ca)
        shutil.copy(renewed.server_key, key)
        assert wait_until(lambda: _handshakes(server.target, renewed.ca))
        assert not _handshakes(server.target, certificates.ca)
        server.process.send_signal(signal.SIGHUP)  # without a token file too, SIGHUP never stops the server
        assert wait_until(lambda: server.count("SIGHUP") >= 1)
        assert _handshakes(server.target, renewed.ca)
    finally:
        assert server.stop() == 0
    assert server.count("TLS files not reloaded") >= 1 and "Traceback" not in server.log


def _handshakes(target: str, ca: Path) -> bool:
    try:
        return accepted(target, "", ca)
    except ServerUnavailable:
        return False
