"""Load test of `torchbridge serve` on loopback: concurrent clients, a fixed number of requests each.

    python benchmarks/serve_load.py                       # digits CNN and ResNet-18 -> docs/serve.md
    python benchmarks/serve_load.py --models digits_cnn --clients 64 --requests 50

For each model, batching off/on and 1/2 workers (threads per worker: serve's default unless --threads),
a server is started on 127.0.0.1, warmed up (it answers /health only then), and each client sends its
requests one after the other over its own keep-alive connection (.npy bodies, batch 1). Reported:
throughput, p50/p99 latency, errors (any answer but 200, or a failed connection), and the mean rows of
the batches the requests ran in (from /metrics). Every run is bounded by --requests per client and by
--max-seconds per configuration (a client stops sending at the deadline; the table shows how many
requests were sent). The load generator runs on the same machine and takes CPU from the server.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from torchbridge.bench_report import cpu_name
from torchbridge.serving import default_threads

ROOT = Path(__file__).resolve().parents[1]
MARK_BEGIN, MARK_END = "<!-- serve_load: begin -->", "<!-- serve_load: end -->"




def export_models(names: list[str], folder: Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    import torchbridge as tb

    made = {}
    for name in names:
        torch.manual_seed(0)
        if name == "digits_cnn":
            model, sample = tb.models.digits_cnn().eval(), (1, 8, 8)
        else:
            import torchvision

            model, sample = getattr(torchvision.models, name)().eval(), (3, 224, 224)
        path = folder / f"{name}.pt"
        tb.export(model, (torch.rand(2, *sample),), path)
        made[name] = (path, sample)
    return made


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def start_server(artifact: Path, workers: int, threads: int, max_batch_size: int, batch_timeout_ms: float, log: Path):
    port = free_port()
    command = [sys.executable, "-m", "torchbridge", "serve", str(artifact), "--port", str(port)]
    command += ["--threads", str(threads)]
    command += ["--workers", str(workers), "--max-batch-size", str(max_batch_size)]
    command += ["--batch-timeout", str(batch_timeout_ms), "--timeout", "300"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    started = time.monotonic()
    while time.monotonic() - started < 600:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if get(port, "/health")[0] == 200:
                return process, port, time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(process)
    raise RuntimeError(f"serve not healthy after 600 s: {log.read_text()[-2000:]}")


def stop_server(process) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


def run_clients(port: int, body: bytes, clients: int, requests: int, max_seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        start_gate.wait()
        for _ in range(requests):
            if time.monotonic() > deadline[0]:
                break
            begin = time.perf_counter()
            try:
                connection.request("POST", "/predict", body, {"Content-Type": "application/x-npy"})
                answer = connection.getresponse()
                answer.read()
                status = answer.status
            except (OSError, http.client.HTTPException) as error:
                status = f"{type(error).__name__}: {error}"
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            elapsed = time.perf_counter() - begin
            with lock:
                if status == 200:
                    latencies.append(elapsed)
                else:
                    errors.append(str(status))
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.monotonic() + max_seconds
    began = time.perf_counter()
    start_gate.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    latencies.sort()

    def percentile(q: float) -> float:
        return latencies[min(len(latencies) - 1, max(0, round(q * len(latencies)) - 1))] * 1000 if latencies else 0.0

    return {
        "sent": len(latencies) + len(errors),
        "planned": clients * requests,
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "seconds": round(wall, 2),
        "throughput": round(len(latencies) / wall, 2),
        "p50_ms": round(percentile(0.50), 1),
        "p99_ms": round(percentile(0.99), 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else 0.0,
    }


def npy_body(sample: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).random((1, *sample), dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def batching_ceiling(artifact: Path, sample: tuple[int, ...], threads: int, batch: int, runs: int) -> dict:
    """What batching can gain at most, without HTTP: the Runtime's median time per sample at batch 1 and at
    `batch` (interleaved runs, the Runtime warmed up at both)."""
    import torchbridge as tb

    runtime = tb.Runtime(artifact, threads=threads, warmup_batches=[batch])
    inputs = {size: torch.rand(size, *sample) for size in (1, batch)}
    times: dict[int, list[float]] = {1: [], batch: []}
    for _ in range(runs):
        for size, x in inputs.items():
            begin = time.perf_counter()
            runtime.forward(x)
            times[size].append((time.perf_counter() - begin) / size)
    single, batched = (statistics.median(times[size]) * 1000 for size in (1, batch))
    return {
        "threads": threads,
        "batch": batch,
        "ms_per_sample_1": round(single, 2),
        "ms_per_sample_batch": round(batched, 2),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| model | workers x threads | batching | clients | requests | errors | req/s | p50 ms | p99 ms | batch rows |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        batching = f"up to {r['max_batch_size']}, {r['batch_timeout_ms']:g} ms" if r["max_batch_size"] > 1 else "off"
        sent = f"{r['sent']}" + ("" if r["sent"] == r["planned"] else f" of {r['planned']}")
        lines.append(
            f"| {r['model']} | {r['workers']} x {r['threads']} | {batching} | {r['clients']} | {sent} | "
            f"{r['errors']} | {r['throughput']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['mean_batch_rows'] if r['mean_batch_rows'] is not None else '-'} |"
        )
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[str]:
    notes = []
    for r in rows:
        if r["max_batch_size"] > 1:
            base = next(
                (
                    b
                    for b in rows
                    if b["model"] == r["model"]
                    and b["workers"] == r["workers"]
                    and b["clients"] == r["clients"]
                    and b["max_batch_size"] == 1
                ),
                None,
            )
            if base and base["throughput"]:
                notes.append(
                    f"{r['model']}, {r['workers']} worker(s), {r['clients']} clients: batching on / off = "
                    f"{r['throughput'] / base['throughput']:.2f}x throughput"
                )
    return notes


def write_doc(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else f"# Serving\n\n{MARK_BEGIN}\n{MARK_END}\n"
    if MARK_BEGIN not in text:
        text += f"\n{MARK_BEGIN}\n{MARK_END}\n"
    head, rest = text.split(MARK_BEGIN, 1)
    _, tail = rest.split(MARK_END, 1)
    path.write_text(f"{head}{MARK_BEGIN}\n{section}\n{MARK_END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits_cnn,resnet18")
    parser.add_argument("--clients", default="16,64", help="comma-separated concurrency levels")
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument(
        "--requests-resnet", type=int, default=5, help="requests per client for torchvision models (slower)"
    )
    parser.add_argument("--workers", default="1,2")
    parser.add_argument(
        "--threads", type=int, help="per worker (default: serve's, the cores but one divided by the workers)"
    )
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout", type=float, default=10.0, help="ms")
    parser.add_argument("--max-seconds", type=float, default=120, help="per configuration and concurrency")
    parser.add_argument("--out", default=str(ROOT / "docs" / "serve.md"), help="Markdown file to update ('' : none)")
    parser.add_argument("--json", default=str(ROOT / "docs" / "serve_load.json"))
    parser.add_argument(
        "--earlier-rows",
        help="JSON lines printed by an earlier run, put in the table before this run's rows (and said so)",
    )
    parser.add_argument(
        "--ceiling",
        type=int,
        metavar="RUNS",
        help="only measure the Runtime's time per sample at batch 1 and --max-batch-size (no server), RUNS times",
    )
    args = parser.parse_args()
    if args.ceiling:
        with tempfile.TemporaryDirectory(prefix="serve-load-") as folder:
            for name, (artifact, sample) in export_models(args.models.split(","), Path(folder)).items():
                result = batching_ceiling(artifact, sample, args.threads or 1, args.max_batch_size, args.ceiling)
                ratio = result["ms_per_sample_1"] / result["ms_per_sample_batch"]
                print(json.dumps({"model": name, **result, "ceiling": round(ratio, 2)}), flush=True)
        return 0

    clients_levels = [int(c) for c in args.clients.split(",")]
    workers_levels = [int(w) for w in args.workers.split(",")]
    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    rows = []
    if args.earlier_rows:
        rows = [json.loads(line) for line in Path(args.earlier_rows).read_text().splitlines() if line.startswith("{")]
    earlier = len(rows)
    failed = False
    with tempfile.TemporaryDirectory(prefix="serve-load-") as folder:
        folder = Path(folder)
        models = export_models(args.models.split(","), folder)
        for name, (artifact, sample) in models.items():
            body = npy_body(sample)
            requests = args.requests if name == "digits_cnn" else args.requests_resnet
            for workers in workers_levels:
                for max_batch in (1, args.max_batch_size):
                    threads = args.threads or default_threads(workers)
                    try:
                        process, port, startup = start_server(
                            artifact, workers, threads, max_batch, args.batch_timeout, folder / "serve.log"
                        )
                    except RuntimeError as error:  # reported, and the other configurations still run
                        print(f"{name}, {workers} worker(s), batch {max_batch}: {error}", file=sys.stderr, flush=True)
                        failed = True
                        continue
                    try:
                        for clients in clients_levels:
                            before = json.loads(get(port, "/metrics")[1])
                            result = run_clients(port, body, clients, requests, args.max_seconds)
                            after = json.loads(get(port, "/metrics")[1])
                            row = {
                                "model": name,
                                "workers": workers,
                                "threads": threads,
                                "max_batch_size": max_batch,
                                "batch_timeout_ms": args.batch_timeout,
                                "clients": clients,
                                "startup_s": round(startup, 1),
                                "server_errors": after["errors"] - before["errors"],
                                "mean_batch_rows": after["mean_batch_rows"] if max_batch > 1 else None,
                                **result,
                            }
                            rows.append(row)
                            print(json.dumps(row), flush=True)
                    finally:
                        stop_server(process)
    load_after = os.getloadavg()
    command = "python benchmarks/serve_load.py " + " ".join(sys.argv[1:])
    if earlier:
        command += f" (the first {earlier} rows: an earlier run's, from --earlier-rows)"
    section = "\n".join(
        [
            f"Measured on {cpu_name()} ({cores} cores), torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}; load average before/after "
            f"{load_before[0]:.1f}/{load_after[0]:.1f} (other jobs shared the machine). Command: `{command.strip()}`.",
            "",
            table(rows),
            "",
            *[f"- {note}" for note in ratios(rows)],
        ]
    )
    print(section)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "cores": cores, "rows": rows}, indent=2) + "\n")
    if args.out:
        write_doc(Path(args.out), section)
    return 0 if not failed and all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
