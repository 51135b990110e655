"""The ``export``, ``recommend`` and ``serve`` subcommands of ``python -m recbole_kd`` (see docs/serving.md).

Bad input (a missing or foreign file, an unsupported model, an unknown token ...) is one line on stderr and
exit status 2, as everywhere in the CLI.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from recbole_kd.errors import USER_ERRORS, UsageError  # noqa: F401  (also importable from here)
from recbole_kd.serving.artefact import SEQUENTIAL, Artefact, ArtefactError, RequestError
from recbole_kd.serving.export import ExportError, export

BATCH = 256  # batch-mode requests scored together


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and status 2 (argparse would print the usage block too)
        raise UsageError(message)


def _fail(command: str, message) -> int:
    print(f"recbole-kd {command}: error: {message}", file=sys.stderr)
    return 2


# ---- export ---------------------------------------------------------------------------------------------
def export_main(argv) -> int:
    ap = _Parser(prog="python -m recbole_kd export",
                 description="Write a trained model (a recbole-kd checkpoint) as a self-contained artefact folder "
                             "that ranks with torch and json only (no RecBole, no dataset).")
    ap.add_argument("checkpoint", help="a .pth checkpoint written by recbole-kd (the best-model file of a run)")
    ap.add_argument("--out", required=True, metavar="DIR", help="the artefact folder to write")
    ap.add_argument("--force", action="store_true", help="replace DIR if it exists and is not empty")
    ap.add_argument("--data_path", metavar="DIR", help="folder holding the dataset's folder, if it moved since "
                                                       "training (default: the checkpoint's data_path)")
    ap.add_argument("--result", metavar="FILE.json", help="the run's --result_file, for the card's valid/test "
                                                           "metrics (default: <checkpoint>.json if present)")
    try:
        args = ap.parse_args(argv)
    except UsageError as exc:
        return _fail("export", exc)

    try:
        info = export(args.checkpoint, args.out, force=args.force, data_path=args.data_path, result_file=args.result)
    except (ExportError, *USER_ERRORS) as exc:
        return _fail("export", exc)
    card = info["card"]
    print(f"exported {info['model']} ({info['kind']}, {info['n_items'] - 1} items, {card['num_params']:,} parameters) "
          f"to {info['out']}")
    test = card.get("test_result")
    if test:
        print("test: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(test.items())))
    return 0


# ---- recommend ------------------------------------------------------------------------------------------
def _load(command: str, folder: str, threads: int):
    import torch

    if threads < 1:
        raise UsageError(f"--threads must be 1 or more, got {threads}")
    torch.set_num_threads(threads)
    return Artefact.load(folder)


def _single_request(model, args) -> dict:
    if args.history is not None and args.user is not None:
        raise UsageError("give --history or --user, not both")
    if model.kind == SEQUENTIAL and args.history is None:
        raise UsageError(f"{model.folder} holds a sequential model ({model.model_name}): give --history "
                         "\"tok1 tok2 ...\" (oldest first)" + (", not --user" if args.user is not None else ""))
    if model.kind != SEQUENTIAL and args.user is None:
        raise UsageError(f"{model.folder} holds an MF model ({model.model_name}): give --user TOKEN"
                         + (", not --history" if args.history is not None else ""))
    request = {"k": args.k, "exclude_seen": args.exclude_seen}
    if model.kind == SEQUENTIAL:
        request["history"] = args.history.split()
    else:
        request["user"] = args.user
    return request


def _batch(model, args) -> tuple[int, int]:
    """Answer every line of ``--input`` into ``--output`` (written whole, then renamed); (lines, errors)."""
    try:
        with open(args.input, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read --input {args.input}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--input {args.input} is not UTF-8 text (JSON lines)") from None
    answers, pending = [], []  # pending: (answer index, parsed, k, exclude)

    def flush():
        results = model.top_k([p for _, p, _, _ in pending], [k for _, _, k, _ in pending],
                              [e for _, _, _, e in pending])
        for (index, _, _, _), (items, scores) in zip(pending, results):
            answers[index].update(items=items, scores=scores)
        pending.clear()

    errors = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        answer = {}
        answers.append(answer)
        try:
            request = json.loads(line)
        except ValueError as exc:
            answer.update(line=number, error=f"line {number} is not valid JSON ({exc})")
            errors += 1
            continue
        if isinstance(request, dict) and "id" in request:
            answer["id"] = request["id"]
        if isinstance(request, dict):
            request = {"k": args.k, "exclude_seen": args.exclude_seen, **request}
        try:
            parsed, k, exclude = model.parse(request)
        except RequestError as exc:
            answer.update(error=str(exc))
            errors += 1
            continue
        pending.append((len(answers) - 1, parsed, k, exclude))
        if len(pending) >= BATCH:
            flush()
    if pending:
        flush()
    out = os.path.abspath(args.output)
    try:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jsonl", dir=os.path.dirname(out))
    except OSError as exc:
        raise UsageError(f"cannot write --output {args.output}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for answer in answers:
                f.write(json.dumps(answer, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return len(answers), errors


def recommend_main(argv) -> int:
    ap = _Parser(prog="python -m recbole_kd recommend",
                 description="Top-K items of an exported model for one history (sequential models) or one user "
                             "(MF models), or for every line of a JSON-lines file. Histories longer than the "
                             "model's max length keep their most recent items.")
    ap.add_argument("artefact", metavar="DIR", help="a folder written by `python -m recbole_kd export`")
    ap.add_argument("--history", metavar="\"TOK TOK ...\"", help="sequential models: item tokens, oldest first, "
                                                               "separated by spaces")
    ap.add_argument("--user", metavar="TOKEN", help="MF models: a user token of the exported dataset")
    ap.add_argument("--k", type=int, default=10, help="how many items (default 10)")
    ap.add_argument("--exclude-seen", dest="exclude_seen", action="store_true",
                    help="never recommend an item of the history (MF: an item the user has in the exported data)")
    ap.add_argument("--json", action="store_true", help="print {\"items\": [...], \"scores\": [...]} instead of a table")
    ap.add_argument("--input", metavar="FILE.jsonl", help="batch mode: one request a line, {\"id\": ..., \"history\": "
                                                         "[...]} or {\"id\": ..., \"user\": ...} (k, exclude_seen "
                                                         "optional)")
    ap.add_argument("--output", metavar="FILE.jsonl", help="batch mode: one answer a line, {\"id\": ..., \"items\": "
                                                          "[...], \"scores\": [...]} or {\"id\": ..., \"error\": ...}")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    try:
        args = ap.parse_args(argv)
        if (args.input is None) != (args.output is None):
            raise UsageError("batch mode needs both --input and --output")
        if args.input is not None and (args.history is not None or args.user is not None):
            raise UsageError("--history / --user answer one request; batch mode (--input) reads them from the file")
        model = _load("recommend", args.artefact, args.threads)
        if args.input is not None:
            model.check_k(args.k)
            total, errors = _batch(model, args)
            print(f"recbole-kd recommend: {total} requests answered into {args.output}"
                  + (f", {errors} with an error (their lines carry an \"error\" field)" if errors else ""),
                  file=sys.stderr)
            return 0
        request = _single_request(model, args)
        parsed, k, exclude = model.parse(request)
    except (UsageError, ArtefactError, RequestError) as exc:
        return _fail("recommend", exc)
    items, scores = model.top_k([parsed], [k], [exclude])[0]
    if args.json:
        print(json.dumps({"items": items, "scores": scores}, ensure_ascii=False))
    else:
        width = max([4] + [len(t) for t in items])
        print(f"{'rank':>4}  {'item':<{width}}  score")
        for rank, (item, score) in enumerate(zip(items, scores), 1):
            print(f"{rank:>4}  {item:<{width}}  {score:.4f}")
    return 0


# ---- serve ----------------------------------------------------------------------------------------------
def serve_main(argv) -> int:
    ap = _Parser(prog="python -m recbole_kd serve",
                 description="Serve an exported model over HTTP: POST /recommend, GET /health (extra [serve]: "
                             "starlette + uvicorn). Stops gracefully on SIGTERM / Ctrl-C.")
    ap.add_argument("artefact", metavar="DIR", help="a folder written by `python -m recbole_kd export`")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for inference (default 1)")
    ap.add_argument("--max-k", dest="max_k", type=int, default=1000, help="largest k a request may ask (default 1000)")
    ap.add_argument("--max-history", dest="max_history", type=int, default=1000,
                    help="longest history a request may send (default 1000; longer: 413)")
    ap.add_argument("--max-body", dest="max_body", type=int, default=1 << 20,
                    help="largest request body in bytes (default 1 MiB; larger: 413)")
    ap.add_argument("--limit-concurrency", dest="limit_concurrency", type=int, default=64,
                    help="connections + requests in progress before the service answers 503 (default 64)")
    ap.add_argument("--max-batch", dest="max_batch", type=int, default=32,
                    help="most requests scored in one forward pass: requests that arrive while the model is busy "
                         "are scored together (default 32; 1: one request per pass)")
    ap.add_argument("--log-level", dest="log_level", default="info", choices=["critical", "error", "warning", "info"])
    try:
        args = ap.parse_args(argv)
        if not 0 < args.port < 65536:
            raise UsageError(f"--port must be from 1 to 65535, got {args.port}")
        for name in ("threads", "max_k", "max_history", "max_body", "limit_concurrency", "max_batch"):
            if getattr(args, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be 1 or more, got {getattr(args, name)}")
        try:
            import starlette  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            raise UsageError("serve needs starlette and uvicorn: pip install 'recbole-kd[serve]'") from None
        from recbole_kd.serving.service import ServeError, serve  # optional: starlette and uvicorn, the [serve] extra

        try:
            return serve(args.artefact, host=args.host, port=args.port, threads=args.threads, max_k=args.max_k,
                         max_history=args.max_history, max_body=args.max_body,
                         limit_concurrency=args.limit_concurrency, log_level=args.log_level,
                         max_batch=args.max_batch)
        except ServeError as exc:
            raise UsageError(str(exc)) from None
    except (UsageError, ArtefactError) as exc:
        return _fail("serve", exc)
