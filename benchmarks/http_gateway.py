"""What the HTTP gateway costs: the same dream through gRPC and through HTTP (Server-Sent Events).

One `dreamstream serve --http-port` subprocess on loopback; the two sides take turns, one
dream each, never at once: the Python gRPC client, and httpx posting the picture as a form
and reading the event stream (frames as base64 in JSON). Prints each side's median wall
time, time to the first frame and bytes received, and the ratio of HTTP to gRPC.

    python -m benchmarks.http_gateway [--models DIR] [--image PATH] [--size 512] [--repeats 5] [--device auto]
                                      [--octaves N --steps N]  (default: the server's, 4 x 10)
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import httpx

from benchmarks.serving import CLI, DEFAULT_IMAGE, models_dir, timed_stream
from dreamstream.client import DreamClient, Frame
from dreamstream.server.models import DEFAULT_MODEL

SIDES = ("grpc", "http")


class Gateway:
    """A serve process with both ports; one dream at a time through either."""

    def __init__(self, root: Path, device: str, picture: bytes, options: dict[str, int]) -> None:
        self._server = subprocess.Popen(
            [*CLI, "serve", "--models", str(root), "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
             "--device", device],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        ports = {}
        for line in self._server.stderr:
            if match := re.search(r"(listening|http) on [^ ]+:(\d+)", line):
                ports[match.group(1)] = int(match.group(2))
            if "serving" in line:
                break
        self._client = DreamClient(f"127.0.0.1:{ports['listening']}")
        self._url = f"http://127.0.0.1:{ports['http']}/api/dreams"
        self._picture, self._options = picture, {"model": DEFAULT_MODEL, **options}

    def grpc(self) -> tuple[float, float, int]:
        """(seconds to the first frame, seconds to the end, bytes of frames received)."""
        stream = self._client.dream(self._picture, **self._options)
        first, total, events = timed_stream(stream, lambda event: isinstance(event, Frame))
        return first, total, sum(len(event.data) for event in events if isinstance(event, Frame))

    def http(self) -> tuple[float, float, int]:
        """The same through the gateway; the bytes are the whole event stream's."""
        fields = {name: str(value) for name, value in self._options.items()}
        files = {"image": ("picture", self._picture)}
        received = 0

        def lines():
            nonlocal received
            with httpx.stream("POST", self._url, files=files, data=fields, timeout=600) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    received += len(line) + 1
                    yield line

        first, total, _ = timed_stream(lines(), lambda line: line == "event: frame")
        return first, total, received

    def close(self) -> None:
        self._client.close()
        self._server.send_signal(signal.SIGTERM)
        self._server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="a models directory holding the default model")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--size", type=int, default=512, help="longer side of the picture (default 512)")
    parser.add_argument("--repeats", type=int, default=5, help="dreams per side (default 5)")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--octaves", type=int, help="octaves of the dream (default: the server's)")
    parser.add_argument("--steps", type=int, help="steps per octave (default: the server's)")
    args = parser.parse_args()
    options = {"max_size": args.size, "octaves": args.octaves, "steps_per_octave": args.steps}
    options = {name: value for name, value in options.items() if value is not None}

    runs: dict[str, list[tuple[float, float, int]]] = {side: [] for side in SIDES}
    with models_dir(args.models) as root:
        gateway = Gateway(root, args.device, args.image.read_bytes(), options)
        try:
            gateway.grpc()  # one dream first, so that neither side pays for the first one
            for _ in range(args.repeats):
                for side in SIDES:
                    runs[side].append(getattr(gateway, side)())
        finally:
            gateway.close()
    medians = {side: [statistics.median(run[i] for run in runs[side]) for i in range(3)] for side in SIDES}
    dream = f"{args.octaves or 'default'} octaves x {args.steps or 'default'} steps"
    print(f"{args.image.name} at {args.size} px, {dream}, median of {args.repeats} dreams per side, taking turns")
    print("| through | wall | first frame | received (gRPC: frames, HTTP: the whole stream) |")
    print("| --- | ---: | ---: | ---: |")
    for side in SIDES:
        first, wall, received = medians[side]
        print(f"| {side} | {wall:.3f} s | {first:.3f} s | {received / 2**20:.2f} MiB |")
    ratio = medians["http"][1] / medians["grpc"][1]
    print(f"HTTP / gRPC wall time: {ratio:.3f}")
    print("rerun: python -m benchmarks.http_gateway " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
