"""Web views of a worker: /health, /model, /sessions/{id}, /metrics."""

from __future__ import annotations

import time
from typing import Any

import faust
from faust.web import Request, Response, View

from stream_app.runtime import WorkerRuntime
from stream_app.sessions import SessionDecodeError, SessionState


def register_views(app: faust.App, runtime: WorkerRuntime) -> None:
    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            model = runtime.holder.model
            ready = model is not None and runtime.follower.caught_up.is_set()
            # Stopping after a fault, or batches waiting long for Kafka's acks: no progress.
            problem = runtime.problem()
            ready = ready and problem is None
            body = {
                "status": problem or ("ok" if ready else "waiting for a model"),
                "model_version": None if model is None else model.version,
                "partitions": runtime.assigned_partitions(),
                "uptime_s": round(time.time() - runtime.started_at, 1),
            }
            return self.json(body, status=200 if ready else 503)

    @app.page("/model")
    class Model(View):
        async def get(self, request: Request) -> Response:
            model = runtime.holder.model
            history = [r.__dict__ for r in runtime.holder.history]
            if model is None:
                return self.json({"version": None, "history": history}, status=503)
            return self.json(
                {
                    "version": model.version,
                    "n_items": model.n_items,
                    "input_kind": model.input_kind,
                    "layers": list(model.layers),
                    "search": "exact" if model.exact else "hnsw",
                    "loaded_at": model.loaded_at,
                    "artifact": str(model.artifact.path),
                    "history": history,
                }
            )

    @app.page("/sessions/{session_id}")
    class Session(View):
        async def get(self, request: Request, session_id: str) -> Response:
            if not runtime.config.expose_sessions:
                # A session's clicks are personal data: off unless --expose-sessions, and the
                # same 404 for every id, so nobody learns which sessions exist.
                return self.json({"error": "not found"}, status=404)
            raw = runtime.sessions.get(session_id.encode())
            if raw is None:
                return self.json(
                    {"error": f"session {session_id!r} not on this worker (or expired)"},
                    status=404,
                )
            try:
                session = SessionState.decode(raw)
            except SessionDecodeError as exc:
                return self.json({"error": str(exc)}, status=500)
            return self.json(_session_view(session_id, session))

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            body, content_type = runtime.metrics.exposition()
            # aiohttp refuses a charset inside content_type=, so pass the header as is.
            return self.bytes(body, headers={"Content-Type": content_type})


def _session_view(session_id: str, session: SessionState) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "history_length": len(session.items),
        "history": session.items,
        "clicks": session.count,
        "last_event_ms": session.last_event_ms,
        "updated_ms": session.touched_ms,
        "model_version": session.model_version,
        "last_recommendation": session.last_recommendation,
    }
