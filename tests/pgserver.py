"""A throwaway PostgreSQL server for tests, run from Debian's `postgresql` binaries."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

# Debian's layout, one directory per major version: /usr/lib/postgresql/15/bin/initdb.
BIN_GLOB = "/usr/lib/postgresql/*/bin"
SYSTEM_USER = "postgres"
# Seconds that pg_ctl waits for the server to start or stop.
TIMEOUT = 60


def _bin_dir() -> Path:
    """The bin directory of the newest PostgreSQL installed from Debian's packages."""
    dirs = [Path(d) for d in glob.glob(BIN_GLOB) if (Path(d) / "initdb").exists()]
    if not dirs:
        raise FileNotFoundError(f"no {BIN_GLOB}/initdb: apt-get install -y postgresql")
    return max(dirs, key=lambda d: int(d.parent.name.split(".")[0]))


def _free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """PostgreSQL on 127.0.0.1 at a free port, with database `search`, removed on exit."""

    def __init__(self, user: str = "search", database: str = "search") -> None:
        """Prepare (not start) a server; `with PostgresServer() as pg:` starts it."""
        self.user = user
        self.database = database
        # Hex, so that it needs no quoting in SQL or in a URL.
        self.password = secrets.token_hex(16)
        self.port = 0
        self._bin = _bin_dir()
        # initdb refuses to run as root, so root runs the server as Debian's `postgres` user.
        self._as_other_user = os.geteuid() == 0
        self._dir: Path | None = None
        self._running = False

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the database, for the role with its password, over TCP."""
        return (
            f"postgresql+psycopg://{self.user}:{self.password}"
            f"@127.0.0.1:{self.port}/{self.database}"
        )

    def __enter__(self) -> PostgresServer:
        """Create the cluster, start the server and create the role and database."""
        try:
            self._init()
            self._start_at_free_port()
            superuser = SYSTEM_USER if self._as_other_user else pwd.getpwuid(os.geteuid()).pw_name
            self._run(
                self._bin / "psql",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                f"--host={self.directory}",
                f"--port={self.port}",
                f"--username={superuser}",
                "--dbname=postgres",
                "-c",
                f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'",
                "-c",
                f"CREATE DATABASE {self.database} OWNER {self.user}",
            )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server and delete its files, whether or not the block failed."""
        self.close()

    @property
    def directory(self) -> Path:
        """The private directory of the data directory, the log and the unix socket."""
        assert self._dir is not None, "the server was closed or never set up"
        return self._dir

    @property
    def _data(self) -> Path:
        """The cluster's data directory."""
        return self.directory / "data"

    @property
    def _log(self) -> Path:
        """The server's log file."""
        return self.directory / "server.log"

    def _run(self, *argv: str | Path) -> None:
        """Run a PostgreSQL program as the server's user; raise with its output if it fails."""
        prefix = ["runuser", "-u", SYSTEM_USER, "--"] if self._as_other_user else []
        # PG* variables of the caller (PGHOST, PGPORT...) would redirect the programs.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        result = subprocess.run(
            [*prefix, *map(str, argv)],
            # A directory the server's user can enter, whatever the caller's cwd is.
            cwd=self.directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT + 30,
        )
        if result.returncode != 0:
            log = self._log.read_text() if self._log.exists() else ""
            raise RuntimeError(
                f"{shlex.join(map(str, argv))} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n--- server log ---\n{log}"
            )

    def _init(self) -> None:
        """Make the private directory and an empty cluster in it."""
        self._dir = Path(tempfile.mkdtemp(prefix="pgserver-"))
        if self._as_other_user:
            account = pwd.getpwnam(SYSTEM_USER)
            os.chown(self._dir, account.pw_uid, account.pw_gid)
        # trust on the unix socket, which only the server's user can reach (mkdtemp's 0700);
        # a password over TCP, so that tests exercise the same login as a real deployment.
        self._run(
            self._bin / "initdb",
            f"--pgdata={self._data}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--locale=C",
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        )

    def _start_at_free_port(self) -> None:
        """Start the server at a free port, trying another if that one was taken meanwhile."""
        for attempt in range(3):
            self.port = _free_port()
            try:
                self.start()
                return
            except RuntimeError as error:
                # Another process may bind the port between _free_port() and the server.
                if "Address already in use" not in str(error) or attempt == 2:
                    raise

    def start(self) -> None:
        """Start the server on self.port and block until it accepts connections."""
        options = [
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"port={self.port}",
            "-c",
            f"unix_socket_directories={self.directory}",
            "-c",
            "max_connections=100",
            # Durability is worthless for a throwaway server; these make writes fast.
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]
        self._run(
            self._bin / "pg_ctl",
            "start",
            "--wait",
            f"--timeout={TIMEOUT}",
            f"--pgdata={self._data}",
            f"--log={self._log}",
            # pg_ctl hands these to a shell, hence the quoting.
            f"--options={shlex.join(options)}",
        )
        self._running = True

    def stop(self) -> None:
        """Stop the server at once: fast mode rolls back open transactions, ends sessions."""
        self._run(
            self._bin / "pg_ctl",
            "stop",
            "--wait",
            f"--timeout={TIMEOUT}",
            "--mode=fast",
            f"--pgdata={self._data}",
        )
        self._running = False

    def _postmaster_alive(self) -> bool:
        """Whether the process in postmaster.pid exists and is not a zombie (Linux /proc)."""
        try:
            pid = int((self._data / "postmaster.pid").read_text().split()[0])
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        # The state follows the command name, which is in parentheses and may contain spaces.
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    def restart(self) -> None:
        """Stop fast and start again on the same port; block until it accepts connections."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server if it runs and delete its directory; safe to call twice."""
        if self._dir is None:
            return
        try:
            # A test may have killed it; pg_ctl would then wait its whole timeout for it to stop.
            if self._running and self._postmaster_alive():
                self.stop()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
