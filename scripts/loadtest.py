"""A bounded load test on loopback: the app started as its own process, N gradio_client clients sending a fixed
number of mixed requests (attribute, steer, sweep on the toy examples), then stopped. Prints one JSON object:
latency percentiles, errors (must be 0), requests per second, and the server's peak resident memory.

    python -m scripts.loadtest                       # 8 clients, 200 requests, the toy default
    python -m scripts.loadtest --clients 16 --requests 400 --concurrency 2
    python -m scripts.loadtest --url http://127.0.0.1:7860/   # against a running server (no memory figure)

It stops by itself: every client takes requests from one shared counter until the total is reached.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(str(p) for p in (ROOT / "assets" / "examples").glob("*.png"))
LABELS = "circle, square, triangle, cross"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request_mix(handle_file) -> list[tuple[str, tuple]]:
    """The requests cycled through: attribution, steering in both modes, a sweep, on every example."""
    mix = []
    for k, path in enumerate(EXAMPLES):
        image = handle_file(path)
        mix += [
            ("/attribute", (image, LABELS, "a {}", "", "logit_difference", 10)),
            ("/steer", (image, LABELS, "a {}", str(3 + k), "0", "scale", "")),
            ("/steer", (image, LABELS, "a {}", str(40 + k), "4", "add", "")),
            ("/sweep", (image, LABELS, "a {}", 3 + k, -1, 3, 16, "scale", "", "logit_difference")),
        ]
    return mix


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set (VmHWM), in MB; None where /proc is not available."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_server(port: int, concurrency: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "app.py", "--port", str(port), "--concurrency", str(concurrency)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_until_up(url: str, server: subprocess.Popen | None, timeout_s: float = 120) -> None:
    from urllib.request import urlopen

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            with urlopen(url + "gradio_api/info", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the server at {url} did not answer within {timeout_s} s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=1, help="the server's --concurrency")
    parser.add_argument("--url", help="a running server instead of starting one")
    args = parser.parse_args(argv)
    from gradio_client import Client, handle_file

    server = None
    url = args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        server = start_server(port, args.concurrency)
    try:
        wait_until_up(url, server)
        mix = request_mix(handle_file)
        counter = itertools.count()
        latencies: dict[str, list[float]] = {}
        errors: list[str] = []
        lock = threading.Lock()
        rss_samples: list[float] = []
        done = threading.Event()

        def sample_memory():
            while server is not None and not done.is_set():
                value = rss_mb(server.pid)
                if value is not None:
                    rss_samples.append(value)
                time.sleep(0.2)

        def client_loop():
            client = Client(url, verbose=False)
            while (i := next(counter)) < args.requests:
                api_name, inputs = mix[i % len(mix)]
                began = time.perf_counter()
                try:
                    client.predict(*inputs, api_name=api_name)
                except Exception as error:  # noqa: BLE001 - every failure is counted and reported
                    with lock:
                        errors.append(f"{api_name}: {str(error)[:200]}")
                    continue
                with lock:
                    latencies.setdefault(api_name, []).append(time.perf_counter() - began)

        sampler = threading.Thread(target=sample_memory, daemon=True)
        sampler.start()
        began = time.perf_counter()
        threads = [threading.Thread(target=client_loop) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
        done.set()
        every = [s for values in latencies.values() for s in values]
        result = {
            "clients": args.clients,
            "requests": args.requests,
            "server_concurrency": args.concurrency,
            "completed": len(every),
            "errors": len(errors),
            "error_examples": errors[:5],
            "wall_s": round(wall, 2),
            "requests_per_s": round(len(every) / wall, 2),
            "latency_p50_s": round(statistics.median(every), 3) if every else None,
            "latency_p95_s": round(percentile(every, 0.95), 3) if every else None,
            "latency_max_s": round(max(every), 3) if every else None,
            "by_endpoint_p50_s": {k: round(statistics.median(v), 3) for k, v in sorted(latencies.items())},
            "server_peak_rss_mb": round(peak_rss_mb(server.pid), 1) if server is not None else None,
            "server_rss_mb_first_last": [round(rss_samples[0], 1), round(rss_samples[-1], 1)] if rss_samples else None,
            "cpu_count": os.cpu_count(),
        }
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    outcome = main()
    sys.exit(1 if outcome["errors"] else 0)
