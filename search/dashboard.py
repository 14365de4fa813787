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
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
import optuna_dashboard

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
PROXY_SECTION = 'README.md, "The dashboard on another machine"'


class DashboardError(ValueError):
    """An address the dashboard cannot listen on; the message names it and why."""


class _Server(ThreadingMixIn, WSGIServer):
    # The page fetches several API routes at once; one slow storage read must not stall them.
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    # The page polls every few seconds; an access log line per request would drown the output.
    def log_message(self, format: str, *args: object) -> None:
        pass


def make_dashboard_server(
    storage: optuna.storages.BaseStorage, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> WSGIServer:
    """Bind optuna-dashboard over `storage` to host:port (0: a free port), not yet serving."""
    app = optuna_dashboard.wsgi(storage)
    try:
        return make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    except (OSError, OverflowError) as e:
        raise DashboardError(f"cannot listen on {host}:{port} ({e})") from None


def serve_dashboard(
    storage: optuna.storages.BaseStorage,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    study_name: str | None = None,
    storage_description: str = "",
) -> None:
    """Serve the dashboard until Ctrl-C; print the URL to open (`study_name`'s page if given)."""
    server = make_dashboard_server(storage, host=host, port=port)
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
    page = _study_page(storage, study_name)
    print(f"dashboard of {storage_description or 'the storage'}", flush=True)
    if study_name is not None and page is None:
        print(f"study {study_name!r} is not in this storage yet; it will be listed once created")
    print(f"open {url}{page or ''}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("search dashboard: stopped", file=sys.stderr)
    finally:
        server.server_close()


def _study_page(storage: optuna.storages.BaseStorage, study_name: str | None) -> str | None:
    if study_name is None:
        return None
    try:
        return f"/studies/{storage.get_study_id_from_name(study_name)}"
    except KeyError:
        return None
