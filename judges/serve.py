"""A small OpenAI-compatible server for a local HF causal-LM folder: a local judge server.

    python -m judges.serve --model DIR [--host 127.0.0.1] [--port 8000] [--max-pending N]

POST /v1/chat/completions (messages, max_tokens, temperature (default 0 = greedy), stop) and
GET /v1/models follow the OpenAI API, so the `http` judge talks to it as to `vllm serve`.
GET /stats (not OpenAI) reports requests in flight, the most ever in flight, served and
rejected counts, and the most requests that arrived within one second (`max_per_second`);
POST /stats/reset restarts the maxima and the rejected count. Requests are
handled on threads; generation runs one request at a time.
`--max-pending N` answers 503 (or `--busy-status 429`) with `Retry-After: --retry-after`
seconds (default 1) once N requests are in flight, as an overloaded or rate-limiting gateway
would. With `--port 0` the OS picks a free port; the first stdout line names the URL.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from judges.local_model import LocalGenerator, PromptTooLong


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


class ServerState:
    """The model, the generation lock and the request counters shared by handler threads."""

    def __init__(
        self,
        generator: LocalGenerator,
        name: str,
        max_pending: int = 0,
        busy_status: int = 503,
        retry_after: float = 1.0,
    ) -> None:
        self.generator = generator
        self.name = name
        self.max_pending = max_pending
        self.busy = (busy_status, f"{retry_after:g}")  # the answer when full, its Retry-After
        self.generate_lock = threading.Lock()
        self.stats_lock = threading.Lock()
        self.stats = {"in_flight": 0, "max_in_flight": 0, "served": 0, "rejected": 0}
        self.arrivals: list[float] = []  # monotonic time of each chat request, since a reset

    def enter(self) -> bool:
        """Count a request in; False (and counted as rejected) when the server is full."""
        with self.stats_lock:
            self.arrivals.append(time.monotonic())
            if self.max_pending and self.stats["in_flight"] >= self.max_pending:
                self.stats["rejected"] += 1
                return False
            self.stats["in_flight"] += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"], self.stats["in_flight"])
            return True

    def leave(self, served: bool) -> None:
        with self.stats_lock:
            self.stats["in_flight"] -= 1
            self.stats["served"] += int(served)

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """The chat.completion object for a request body; raises ApiError for a bad request."""
        messages = _messages(body)
        if body.get("model") not in (None, self.name):
            raise ApiError(404, f"The model `{body['model']}` does not exist.", "NotFoundError")
        if body.get("stream") or int(body.get("n", 1)) != 1:
            raise ApiError(400, "this server supports neither stream nor n > 1")
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 256)
        temperature = float(body.get("temperature") or 0.0)
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        if max_tokens < 1 or temperature < 0:
            raise ApiError(400, "max_tokens must be >= 1 and temperature >= 0")
        try:
            with self.generate_lock:
                gen = self.generator.generate([messages], max_tokens, temperature, stop)[0]
        except PromptTooLong as exc:
            raise ApiError(400, str(exc)) from exc
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": gen.text},
                    "finish_reason": gen.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": gen.prompt_tokens,
                "completion_tokens": gen.completion_tokens,
                "total_tokens": gen.prompt_tokens + gen.completion_tokens,
            },
        }


def max_in_window(times: list[float], window: float) -> int:
    """The most of `times` (sorted) that fall within any span of `window` seconds."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    ok = isinstance(messages, list) and messages
    if not ok or not all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
    ):
        raise ApiError(400, "'messages' must be a non-empty list of {role, content: str} objects")
    return [{"role": str(m.get("role", "user")), "content": m["content"]} for m in messages]


class Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer
    state: ServerState  # set on the subclass made by `make_server`
    protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            model = {"id": self.state.name, "object": "model", "owned_by": "omnisched"}
            self._send(200, {"object": "list", "data": [model]})
        elif self.path == "/health":
            self._send(200, {"status": "ok"})
        elif self.path == "/stats":
            with self.state.stats_lock:
                busiest = max_in_window(self.state.arrivals, 1.0)
                self._send(200, {**self.state.stats, "max_per_second": busiest})
        else:
            self._error(ApiError(404, f"no route GET {self.path}", "NotFoundError"))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path == "/stats/reset":
            with self.state.stats_lock:
                self.state.stats.update(max_in_flight=self.state.stats["in_flight"], rejected=0)
                self.state.arrivals.clear()
                self._send(200, dict(self.state.stats))
            return
        if self.path != "/v1/chat/completions":
            self._error(ApiError(404, f"no route POST {self.path}", "NotFoundError"))
            return
        if not self.state.enter():
            status, after = self.state.busy
            kind = "RateLimitError" if status == 429 else "ServiceUnavailable"
            self._error(ApiError(status, "server busy, retry later", kind), {"Retry-After": after})
            return
        served = False
        try:
            self._send(200, self.state.chat(_json(raw)))
            served = True
        except ApiError as exc:
            self._error(exc)
        except (ValueError, TypeError) as exc:  # a field of the wrong type
            self._error(ApiError(400, f"bad request: {exc}"))
        except Exception as exc:  # answer 500 rather than drop the connection
            self._error(ApiError(500, f"{type(exc).__name__}: {exc}", "InternalServerError"))
        finally:
            self.state.leave(served)

    def _error(self, exc: ApiError, headers: dict[str, str] | None = None) -> None:
        error = {"message": str(exc), "type": exc.kind, "code": exc.status}
        self._send(exc.status, {"error": error}, headers)

    def _send(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per request is noise
        return


def _json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise ApiError(400, f"request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def make_server(state: ServerState, host: str, port: int) -> ThreadingHTTPServer:
    """A threading HTTP server bound to (host, port) that answers with `state`."""
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m judges.serve", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", required=True, help="HF causal-LM folder")
    parser.add_argument("--served-model-name", default=None, help="model id (default: folder name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--max-pending", type=int, default=0, help="503 beyond N in flight")
    parser.add_argument("--busy-status", type=int, default=503, choices=[429, 503])
    parser.add_argument("--retry-after", type=float, default=1.0, help="seconds, when busy")
    args = parser.parse_args(argv)
    generator = LocalGenerator(args.model, args.dtype, args.threads)
    name = args.served_model_name or generator.name
    state = ServerState(generator, name, args.max_pending, args.busy_status, args.retry_after)
    server = make_server(state, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"serving {state.name} on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
