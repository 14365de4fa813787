"""`search dashboard`: optuna-dashboard over a study's storage, on this machine only by default.

optuna-dashboard has no authentication, and its API can create, rename and delete studies
and tell trials; so it binds 127.0.0.1 unless told otherwise, and warns when it is not.
It reads the storage `search.storage` opens, so on SQLite it shares the workers' WAL mode
and busy timeout instead of opening the file with Optuna's defaults.
"""

from __future__ import annotations

import ipaddress
import sys
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
import optuna_dashboard

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
PROXY_SECTION = 'README.md, section "The dashboard beyond this machine"'


class DashboardError(ValueError):
    """An address the dashboard cannot listen on; the message names it and why."""


class _Server(ThreadingMixIn, WSGIServer):
    # The page fetches several API routes at once; one slow storage read must not stall them.
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    # The page polls every few seconds; an access log line per request would drown the output.
    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_dashboard(
    storage: optuna.storages.BaseStorage,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    study_name: str | None = None,
    storage_description: str,
    artifacts: Any = None,
) -> None:
    """Serve the dashboard until Ctrl-C; print the URL to open (`study_name`'s page if given).

    Args:
        artifacts: the Optuna artifact store the kept models are attached to
            (`search.checkpoints.artifact_store`), so the dashboard lists and serves them.
    """
    server = _bind(storage, host, port, artifacts)
    address, bound_port = server.server_address[:2]
    if not ipaddress.ip_address(address).is_loopback:
        print(
            f"search dashboard: warning: listening on {address}:{bound_port}, beyond this"
            " machine. The dashboard has no authentication and anyone who reaches it can"
            " delete studies and change trials. Put it behind a reverse proxy with"
            f" authentication instead: see {PROXY_SECTION}.",
            file=sys.stderr,
        )
    # An unspecified address (0.0.0.0) is not one to open; this machine's loopback is.
    shown = address if not ipaddress.ip_address(address).is_unspecified else DEFAULT_HOST
    url = f"http://{shown}:{bound_port}/dashboard"
    print(f"dashboard of {storage_description}")
    # A mistyped SQLite path opens a new, empty file: say so rather than show an empty page.
    names = [s.study_name for s in storage.get_all_studies()]
    if study_name in names:
        url += f"/studies/{storage.get_study_id_from_name(study_name)}"
    elif study_name is not None:
        print(f"study {study_name!r} is not in this storage yet; it appears once created")
    elif not names:
        print("no studies in this storage yet; `search run` or `search create` makes one")
    print(f"open {url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("search dashboard: stopped", file=sys.stderr)
    finally:
        server.server_close()


def _bind(
    storage: optuna.storages.BaseStorage, host: str, port: int, artifacts: Any = None
) -> WSGIServer:
    app = optuna_dashboard.wsgi(storage, artifact_store=artifacts)
    try:
        # Port 0 takes any free port; the caller reads the bound one from server_address.
        return make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    except (OSError, OverflowError) as e:
        raise DashboardError(f"cannot listen on {host}:{port} ({e})") from None
