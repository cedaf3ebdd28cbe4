"""Serving the app with gunicorn (gthread workers).

gunicorn because it is a production WSGI server already in the dependencies; gthread workers because a webhook
request is short and I/O bound (one SQLite commit), and threads keep the background loops of each worker process
alongside. Each worker process builds its own app (no preload), so stores and runners are never shared across fork.
"""
from __future__ import annotations

import gc
import os

from rules_engine.server.config import ServerConfig


def run_gunicorn(config: ServerConfig, load=None) -> None:
    """Serve `create_app(config)` (or what `load()` returns: the benchmark's bare peer runs under the very same
    server settings) with gunicorn."""
    from gunicorn.app.base import BaseApplication

    from rules_engine.server.app import EXTENSION, create_app, shutdown

    class EngineApplication(BaseApplication):
        def load_config(self):
            settings = {
                "bind": config.listen, "workers": config.workers, "threads": config.threads,
                "worker_class": "gthread", "timeout": 60, "graceful_timeout": 15, "keepalive": 5,
                "accesslog": "-" if config.access_log else None, "errorlog": "-", "loglevel": "info",
                "preload_app": False,
                "child_exit": _child_exit,
                "post_worker_init": _freeze_heap,
                # Stop the background loops cleanly when a worker exits, so in-flight steps are left resumable.
                "worker_exit": lambda server, worker: (
                    shutdown(worker.wsgi) if EXTENSION in getattr(getattr(worker, "wsgi", None), "extensions", {})
                    else None),
            }
            if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 25.1: no shared ~/.gunicorn socket
                settings["control_socket_disable"] = True
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self):
            return load() if load is not None else create_app(config)

    EngineApplication().run()


def _freeze_heap(worker) -> None:
    """Once the worker has built its app, move everything allocated so far out of the garbage collector's sight.
    What the app holds (SQLAlchemy, pydantic schemas, playbooks, rule packs) lives as long as the worker, yet every
    full collection walked all of it while holding the GIL: 100-160 ms stalls of every request in the worker, a
    few times a minute under load (the p99 of acknowledgements with processing on)."""
    gc.collect()
    gc.freeze()


def _child_exit(server, worker) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
