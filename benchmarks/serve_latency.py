"""Serving latency of exported models (``python -m recbole_kd export``): HTTP and in-process.

For each artefact folder: starts ``python -m recbole_kd serve`` in a subprocess, then measures single-request
latency (p50 / p99) and throughput with 1, 2, 4, ... 64 concurrent clients (threads, one keep-alive
``http.client`` connection each), all sending the same fixed requests; plus the in-process latency of the
artefact (no HTTP) for one request at a time. Throughput at equal p99: for each latency bound (``--p99-ms``),
each artefact's best requests/s among its levels within the bound, and the ratio of the first artefact's to
each other's (a student against its teacher: how many more requests it serves under the same latency bound).

    python benchmarks/serve_latency.py ART_STUDENT ART_TEACHER [--histories FILE.jsonl] [--requests 2000]

Requests: ``--histories`` (JSON lines as ``recommend --input`` reads them: {"history": [...]} or {"user": ...}),
or ``--test-histories`` (a dataset's RecBole ``.inter`` file: the test histories of ``--n_requests_pool`` users
drawn with ``--seed``, each user's items in time order before the last one, so the real length distribution),
else ``--n_requests_pool`` histories of ``--history_length`` items (or users, for MF artefacts) drawn from the
artefact's vocabulary with ``--seed``.
"""
from __future__ import annotations

import argparse
import functools
import http.client
import importlib.metadata
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time

from common import REPO, fail, write_outputs


def load_artefact(folder: str):
    sys.path.insert(0, REPO)
    from recbole_kd.serving.artefact import Artefact, ArtefactError

    try:
        return Artefact.load(folder)
    except ArtefactError as exc:
        fail(str(exc))


@functools.lru_cache(maxsize=None)  # read once for all the artefacts of a run
def test_histories(path: str, pool: int, seed: int) -> tuple[tuple[str, ...], ...]:
    """``pool`` users' test histories from a RecBole atomic ``.inter`` file (user_id, item_id, timestamp
    columns): each user's items ordered by timestamp (ties in file order, as RecBole's stable sort), the
    last one (the test target of leave-one-out) left out; users with one interaction are skipped."""
    by_user: dict[str, list[tuple[float, int, str]]] = {}
    n = 1  # the line being read (1: the header)
    try:
        with open(path, encoding="utf-8") as f:
            header = [c.split(":")[0] for c in f.readline().rstrip("\n").split("\t")]
            cols = [header.index(c) for c in ("user_id", "item_id", "timestamp")]
            for n, line in enumerate(f, start=2):
                if line.strip():
                    r = line.rstrip("\n").split("\t")
                    by_user.setdefault(r[cols[0]], []).append((float(r[cols[2]]), n, r[cols[1]]))
    except OSError as exc:
        fail(f"--test-histories {path}: {exc}")
    except (ValueError, IndexError) as exc:
        fail(f"--test-histories {path}, line {n}: {exc}; give a RecBole .inter file with user_id, item_id and "
             "timestamp columns")
    users = sorted(u for u, items in by_user.items() if len(items) > 1)
    chosen = random.Random(seed).sample(users, min(pool, len(users)))
    return tuple(tuple(item for *_, item in sorted(by_user[u])[:-1]) for u in chosen)


def requests_for(art, path: str | None, pool: int, length: int, seed: int, k: int,
                 inter: str | None = None) -> list[dict]:
    if inter:
        if art.kind != "sequential":
            fail(f"--test-histories is for sequential artefacts; {art.folder} is {art.kind}")
        # a client sends what the model reads: the last max_length items (these requests do not exclude seen
        # items, so the cut changes no answer; a full ml-1m history can pass the service's max_history, 413)
        return [{"history": list(h[-art.max_length:]), "k": k} for h in test_histories(inter, pool, seed)]
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError) as exc:
            fail(f"--histories {path}: {exc}")
        field = "history" if art.kind == "sequential" else "user"
        rows = [{field: r[field], "k": k} for r in rows if isinstance(r, dict) and field in r]
        if not rows:
            fail(f"--histories {path} has no line with a {field!r} field for {art.folder}")
        return rows
    rng = random.Random(seed)
    if art.kind == "sequential":
        return [{"history": [rng.choice(art.items[1:]) for _ in range(length)], "k": k} for _ in range(pool)]
    return [{"user": rng.choice(art.users[1:]), "k": k} for _ in range(pool)]


def percentiles(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": 1000 * at(0.50), "p99_ms": 1000 * at(0.99), "mean_ms": 1000 * statistics.mean(ordered),
            "n": len(ordered)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(folder: str, port: int, threads: int, concurrency: int, max_batch: int):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # uvicorn answers 503 once its open connections or its running requests reach --limit-concurrency; a
    # finished request is removed from that count only after its answer is sent, by which time a keep-alive
    # client may have sent its next one: up to 2 per client for a moment (seen with httptools at 64 clients)
    limit = 2 * concurrency + 16
    proc = subprocess.Popen([sys.executable, "-m", "recbole_kd", "serve", folder, "--port", str(port), "--threads",
                             str(threads), "--limit-concurrency", str(limit), "--max-batch", str(max_batch),
                             "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            fail(f"serve {folder} exited with status {proc.returncode}: {proc.stderr.read().strip()[-300:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    fail(f"serve {folder} did not answer /health within 120 s")


def client_load(port: int, bodies: list[bytes], clients: int, total: int) -> dict:
    """``total`` requests spread over ``clients`` threads, each with one keep-alive connection."""
    latencies, errors, lock = [], [], threading.Lock()
    per_client = [total // clients + (1 if c < total % clients else 0) for c in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def work(c: int):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        barrier.wait()
        for i in range(per_client[c]):
            body = bodies[(c * 7919 + i) % len(bodies)]
            t = time.perf_counter()
            try:
                conn.request("POST", "/recommend", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except OSError as exc:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                response = exc
            elapsed = time.perf_counter() - t
            if ok:
                mine.append(elapsed)
            else:
                with lock:
                    errors.append(str(getattr(response, "status", response)))
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    out = {"clients": clients, "requests": total, "errors": len(errors), "wall_seconds": wall,
           "throughput_rps": len(latencies) / wall if wall > 0 else None}
    if latencies:
        out.update(percentiles(latencies))
    if errors:
        out["error_examples"] = sorted(set(errors))[:5]
    return out


def passes(port: int) -> tuple[int, int]:
    """(forward passes, requests scored in them) of the service so far (GET /health)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/health")
        by_size = json.loads(conn.getresponse().read()).get("passes_by_batch_size") or {}
    finally:
        conn.close()
    return sum(by_size.values()), sum(int(size) * n for size, n in by_size.items())


def best_within(levels: list[dict], p99_ms: float) -> dict | None:
    """The level with the highest throughput among those whose p99 is within ``p99_ms`` and that had no error."""
    ok = [lv for lv in levels if not lv["errors"] and lv.get("p99_ms") is not None and lv["p99_ms"] <= p99_ms]
    return max(ok, key=lambda lv: lv["throughput_rps"], default=None)


def server_stack() -> dict:
    """What uvicorn's automatic choice serves with: httptools and uvloop when installed (the serve extra),
    else h11 and asyncio."""
    found = {}
    for name in ("uvicorn", "starlette", "httptools", "uvloop"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return {**found, "http": "httptools" if found["httptools"] else "h11",
            "loop": "uvloop" if found["uvloop"] else "asyncio"}


def in_process(art, requests: list[dict], reps: int) -> dict:
    parsed = [art.parse(r) for r in requests]
    for p, k, e in parsed[:5]:  # warm-up
        art.top_k([p], [k], [e])
    times = []
    for i in range(reps):
        p, k, e = parsed[i % len(parsed)]
        t = time.perf_counter()
        art.top_k([p], [k], [e])
        times.append(time.perf_counter() - t)
    return percentiles(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artefacts", nargs="+", help="folders written by python -m recbole_kd export")
    ap.add_argument("--histories", help="JSON lines of requests ({\"history\": [...]} or {\"user\": ...})")
    ap.add_argument("--test-histories", dest="test_histories", metavar="INTER",
                    help="a dataset's .inter file: sample the test histories of --n_requests_pool users from it")
    ap.add_argument("--n_requests_pool", type=int, default=256, help="sampled requests when there is no --histories")
    ap.add_argument("--history_length", type=int, default=20, help="items per sampled history")
    ap.add_argument("--seed", type=int, default=2020)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--requests", type=int, default=2000, help="requests per client level (after --warmup)")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the service and in-process runs")
    ap.add_argument("--max-batch", dest="max_batch", type=int, nargs="+", default=[32],
                    help="the service's --max-batch; several values: each artefact is served and measured once "
                         "per value (1: one request per forward pass)")
    ap.add_argument("--p99-ms", dest="p99_ms", type=float, nargs="+", default=[5, 10, 20, 50, 100],
                    help="latency bounds: per bound, each artefact's highest requests/s over its levels (any max "
                         "batch and clients) whose p99 is within it, and the ratio to the first artefact's")
    ap.add_argument("--name", default="serve_latency", help="results file stem (benchmarks/results/<name>.json/.md)")
    args = ap.parse_args()
    if min(args.clients) < 1 or args.requests < 1 or min(args.max_batch) < 1:
        fail("--clients, --requests and --max-batch must be 1 or more")
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for folder in args.artefacts:
        art = load_artefact(folder)
        requests = requests_for(art, args.histories, args.n_requests_pool, args.history_length, args.seed, args.k,
                                args.test_histories)
        bodies = [json.dumps(r).encode() for r in requests]
        row = {"artefact": os.path.abspath(folder), "model": art.model_name, "kind": art.kind,
               "n_items": art.n_items - 1, "dataset": (art.card.get("data") or {}).get("dataset"),
               "num_params": art.card.get("num_params"), "distinct_requests": len(requests),
               # where the weights came from (the artefact's card), so the report names the trained model
               "source_checkpoint": (art.card.get("source") or {}).get("checkpoint"),
               "source_checkpoint_sha256": (art.card.get("source") or {}).get("checkpoint_sha256"),
               "test_ndcg@10": {p: t.get("ndcg@10") for p, t in (art.card.get("test_result_by_protocol") or {}).items()},
               # the checkpoint's epoch (0-based, as RecBole stores it): how long its weights were trained
               "checkpoint_epoch": art.card.get("epoch"),
               "in_process": in_process(art, requests, max(200, args.requests // 4)), "http": []}
        if args.test_histories:  # the lengths the model sees (requests_for cut them to max_length)
            lengths = sorted(len(r["history"]) for r in requests)
            row["history_lengths"] = {"median": lengths[len(lengths) // 2], "max": lengths[-1]}
        for max_batch in args.max_batch:
            port = free_port()
            proc = start_service(folder, port, args.threads, max(args.clients), max_batch)
            try:
                client_load(port, bodies, 1, args.warmup)
                before = passes(port)
                for clients in args.clients:
                    level = {"max_batch": max_batch, **client_load(port, bodies, clients, args.requests)}
                    after = passes(port)
                    n, scored = after[0] - before[0], after[1] - before[1]  # this level's passes and requests
                    level["forward_passes"] = n
                    level["mean_batch"] = scored / n if n else None
                    before = after
                    row["http"].append(level)
                    print(f"{art.model_name} max_batch {max_batch}, {clients} clients: {level}", file=sys.stderr)
            finally:
                proc.terminate()
                row.setdefault("serve_exit_status", []).append(proc.wait(timeout=60))
        rows.append(row)

    lines = ["| model | dataset | params | in-process p50 / p99 ms | max batch | clients | HTTP p50 / p99 ms | "
             "requests/s | mean batch | errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        ip = row["in_process"]
        for level in row["http"]:
            mean_batch = f"{level['mean_batch']:.2f}" if level.get("mean_batch") else "-"
            lines.append(f"| {row['model']} | {row['dataset']} | {row['num_params'] or 0:,} | "
                         f"{ip['p50_ms']:.2f} / {ip['p99_ms']:.2f} | {level['max_batch']} | {level['clients']} | "
                         f"{level.get('p50_ms', float('nan')):.2f} / {level.get('p99_ms', float('nan')):.2f} | "
                         f"{level['throughput_rps'] or 0:.0f} | {mean_batch} | {level['errors']} |")
    lines += ["", "| model | trained weights (source checkpoint, sha256) | epoch of the weights | test NDCG@10 on its card |",
              "|---|---|---:|---|"]
    for row in rows:
        ndcg = ", ".join(f"{v:.4f} ({p})" for p, v in row["test_ndcg@10"].items() if v is not None) or "-"
        epoch = row.get("checkpoint_epoch")
        lines.append(f"| {row['model']} | {os.path.basename(row['source_checkpoint'] or '-')} "
                     f"({(row['source_checkpoint_sha256'] or '-')[:12]}) | {'-' if epoch is None else epoch + 1} | {ndcg} |")
    if len(rows) > 1:  # the first artefact against each other one, level by level
        first = rows[0]
        lines += ["", f"Ratios, {first['model']} over each other artefact: throughput (requests/s) at the same max "
                  "batch and clients, and in-process p50.", ""]
        for other in rows[1:]:
            ratios = [f"max batch {a['max_batch']}, {a['clients']} clients {a['throughput_rps'] / b['throughput_rps']:.2f}x"
                      for a, b in zip(first["http"], other["http"]) if a["throughput_rps"] and b["throughput_rps"]]
            lines.append(f"- vs {other['model']}: throughput {', '.join(ratios)}; in-process p50 "
                         f"{other['in_process']['p50_ms'] / first['in_process']['p50_ms']:.2f}x faster")
    lines += ["", "Throughput at equal p99: per bound, the highest requests/s among an artefact's levels (max "
              "batch, clients) with p99 within it and no error; in parentheses that level (max batch / "
              "clients).", "", "| p99 bound ms | " + " | ".join(r["model"] for r in rows) +
              "".join(f" | {rows[0]['model']} / {r['model']}" for r in rows[1:]) + " |",
              "|---:|" + "---:|" * (2 * len(rows) - 1)]
    for bound in args.p99_ms:  # argparse: one bound or more
        best = [best_within(r["http"], bound) for r in rows]
        cells = [f"{b['throughput_rps']:.0f} ({b['max_batch']} / {b['clients']})" if b else "-" for b in best]
        ratios = [f"{best[0]['throughput_rps'] / b['throughput_rps']:.2f}x" if best[0] and b else "-"
                  for b in best[1:]]
        lines.append(f"| {bound:g} | " + " | ".join(cells + ratios) + " |")
    if args.test_histories:
        lengths = rows[0]["history_lengths"]
        source = (f"the test histories of users drawn from {args.test_histories}, seed {args.seed}, each sent as its "
                  f"last max_length items; history length: median {lengths['median']}, max {lengths['max']}")
    elif args.histories:
        source = "from " + args.histories
    else:
        source = f"sampled, {args.history_length} items each, seed {args.seed}"
    note = (f"\nTop-{args.k} per request, {rows[0]['distinct_requests']} distinct requests ({source}), "
            f"{args.requests} requests per client level, torch threads {args.threads}; clients are threads in the "
            "benchmark process with one keep-alive connection each, on the same machine as the service.\n")
    stack = server_stack()
    note += (f"Service: uvicorn {stack['uvicorn']} ({stack['http']}, {stack['loop']}), starlette "
             f"{stack['starlette']}.\n")
    write_outputs(args.name, {"settings": vars(args), "server": stack, "rows": rows}, "\n".join(lines) + "\n" + note)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
