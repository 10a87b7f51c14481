"""A private Docker daemon for the container tests, as ../shared/docs/CONTAINERS.md describes.

Debian's docker.io daemon, started by the test with its own data root and socket, leaves the
host's network alone (no bridge, no iptables rules): every build and container uses the
host's network, and the containers listen on loopback addresses only. Docker Hub is out of
reach, so the base image is a minimal Debian made with mmdebstrap.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from system_packages import require_programs

# The client is Debian's (BuildKit built in); an older `docker` earlier on PATH may lack it.
DOCKER = "/usr/bin/docker"
DEBIAN_SUITE = "bookworm"
DEBIAN_SOURCES = (
    f"deb http://deb.debian.org/debian {DEBIAN_SUITE} main",
    f"deb http://deb.debian.org/debian {DEBIAN_SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {DEBIAN_SUITE}-security main",
)


class DockerError(RuntimeError):
    """A docker command failed; the message carries its output."""


class DockerEngine:
    """dockerd on a socket of its own; `engine("run", ...)` runs a docker command against it."""

    def __init__(self) -> None:
        require_programs({"dockerd": "docker.io", DOCKER: "docker.io", "mmdebstrap": "mmdebstrap"})
        # Short paths: containerd's sockets live under the exec root (108-byte limit).
        self.root = Path(tempfile.mkdtemp(prefix="ds-docker-"))
        self.socket = self.root / "d.sock"
        self._log = open(self.root / "dockerd.log", "wb")  # noqa: SIM115 (closed in stop)
        self._daemon = subprocess.Popen(
            ["dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "x")]
            + ["--pidfile", str(self.root / "d.pid"), "-H", f"unix://{self.socket}"]
            + ["--bridge=none", "--iptables=false", "--ip6tables=false"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_until_ready(timeout=60)

    def __call__(self, *args: str, timeout: float = 600, input: bytes | None = None, stderr_too: bool = False) -> str:
        """The command's output (with its stderr after it, where `docker logs` writes a container's stderr)."""
        result = subprocess.run(
            [DOCKER, "-H", f"unix://{self.socket}", *args],
            capture_output=True,
            input=input,
            timeout=timeout,
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise DockerError(f"docker {' '.join(args[:2])} failed ({result.returncode}):\n{output[-4000:]}")
        return (result.stdout + (result.stderr if stderr_too else b"")).decode(errors="replace")

    def import_debian_base(self, tag: str) -> str:
        """A minimal Debian image (no Docker Hub needed) tagged `tag`."""
        rootfs = self.root / "rootfs.tar"
        subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=minbase", DEBIAN_SUITE, str(rootfs), *DEBIAN_SOURCES],
            check=True,
            timeout=900,
        )
        self("import", "-c", "ENV LANG=C.UTF-8", str(rootfs), tag)
        rootfs.unlink()
        return tag

    def stop(self) -> None:
        """Stop the daemon (and so its containers) and remove everything it kept."""
        self._daemon.send_signal(signal.SIGTERM)
        try:
            self._daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._daemon.kill()
            self._daemon.wait()
        self._log.close()
        # dockerd leaves its network namespace mounted under the exec root.
        for mount_point in self._mount_points():
            subprocess.run(["umount", "--lazy", mount_point], check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _mount_points(self) -> list[str]:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        return [line.split()[1] for line in mounts if line.split()[1].startswith(f"{self.root}/")]

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self("version", timeout=10)
                return
            except (DockerError, subprocess.TimeoutExpired) as error:
                if self._daemon.poll() is not None or time.monotonic() > deadline:
                    log = (self.root / "dockerd.log").read_text(errors="replace")[-3000:]
                    self.stop()
                    raise DockerError(f"dockerd did not start:\n{log}") from error
            time.sleep(0.5)
