"""A throwaway one-machine SLURM cluster for tests: munged, slurmctld and slurmd from Debian's
packages (munge, slurmctld, slurmd, slurm-client), each on its own socket, ports and files."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from pgserver import _free_port

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "sinfo", "scancel")
NODE = "testnode"
PARTITION = "test"
# More CPUs than this machine may have: each task asks for one, and all must run at once.
CPUS = 8
# Seconds to wait for the daemons to come up, and for cancelled jobs to end.
TIMEOUT = 30


def unavailable() -> str | None:
    """Why no cluster can be started here (a reason for pytest.skip), or None."""
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        return (
            f"SLURM is not installed ({', '.join(missing)} missing):"
            " apt-get install munge slurmctld slurmd slurm-client (make test-deps)"
        )
    if os.geteuid() != 0:
        return "slurmd starts jobs as their user, which needs root; these tests run as another"
    return None


class SlurmCluster:
    """One controller and one node on 127.0.0.1; `with SlurmCluster() as slurm:` starts it.

    `env` is what a client (sbatch, scontrol, `search submit slurm`) needs to reach it.
    """

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._daemons: list[subprocess.Popen] = []

    @property
    def directory(self) -> Path:
        assert self._dir is not None, "the cluster was closed or never set up"
        return self._dir

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.directory / "slurm.conf")}

    def __enter__(self) -> SlurmCluster:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Cancel the jobs and stop the cluster, whether or not the block failed."""
        self.close()

    def _start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="slurm-"))
        # munged wants every directory above its socket searchable by all, its key private.
        self._dir.chmod(0o755)
        private = self._dir / "munge"
        private.mkdir(mode=0o700)
        key = private / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        munge_socket = self._dir / "munge.socket"
        self._daemon(
            "munged",
            "--foreground",
            f"--key-file={key}",
            f"--socket={munge_socket}",
            f"--pid-file={self._dir / 'munged.pid'}",
            f"--seed-file={private / 'munged.seed'}",
            f"--log-file={self._dir / 'munged.log'}",
        )
        self._wait(munge_socket.exists, "munged to create its socket")
        for sub in ("state", "spool"):
            (self._dir / sub).mkdir()
        conf = self._dir / "slurm.conf"
        conf.write_text(self._config(munge_socket))
        self._daemon("slurmctld", "-D", "-c", "-f", conf)
        self._daemon("slurmd", "-D", "-f", conf, "-N", NODE)
        self._wait(lambda: self.node_state() == "idle", f"node {NODE} to be idle")

    def _config(self, munge_socket: Path) -> str:
        d = self.directory
        return "\n".join(
            [
                "ClusterName=searchtest",
                # slurmctld runs only on the host its name says: this one.
                f"SlurmctldHost={socket.gethostname().split('.')[0]}(127.0.0.1)",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={munge_socket}",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"StateSaveLocation={d / 'state'}",
                f"SlurmdSpoolDir={d / 'spool'}",
                f"SlurmctldPidFile={d / 'slurmctld.pid'}",
                f"SlurmdPidFile={d / 'slurmd.pid'}",
                f"SlurmctldLogFile={d / 'slurmctld.log'}",
                f"SlurmdLogFile={d / 'slurmd.log'}",
                # No cgroups (a container may not delegate them): a job's processes are its
                # process group, and no memory or CPU is enforced.
                "ProctrackType=proctrack/pgid",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "JobCompType=jobcomp/none",
                "MpiDefault=none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                "ReturnToService=2",
                # The node's CPUs as configured, not as detected.
                "SlurmdParameters=config_overrides",
                f"NodeName={NODE} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1"
                f" CPUs={CPUS} State=UNKNOWN",
                f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )

    def _daemon(self, *argv: str | Path) -> None:
        name = Path(str(argv[0])).name
        out = open(self.directory / f"{name}.out", "wb")  # noqa: SIM115 (the child owns it)
        self._daemons.append(
            subprocess.Popen(
                [str(a) for a in argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=os.environ | self.env,
            )
        )

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not ready():
            dead = [p for p in self._daemons if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"gave up waiting for {what}:\n{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        """The daemons' output and logs, for a failure's message."""
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.directory.glob("*.out")) + sorted(self.directory.glob("*.log"))
        )

    def run(self, *argv: str) -> str:
        """A client command (scontrol, squeue...) against this cluster; its output."""
        result = subprocess.run(
            list(argv), env=os.environ | self.env, capture_output=True, text=True, timeout=60
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr}{result.stdout}")
        return result.stdout

    def node_state(self) -> str:
        try:
            return self.run("sinfo", "--noheader", "--format=%t").strip()
        except RuntimeError:  # slurmctld not answering yet
            return ""

    def jobs(self) -> dict[str, str]:
        """Every job (array task) in the queue, JOBID_TASK: state (PD, R, CG...)."""
        out = self.run("squeue", "--noheader", "--array", "--format=%i %t")
        return dict(line.split() for line in out.splitlines() if line.strip())

    def close(self) -> None:
        """Cancel the jobs, stop the daemons and delete the files; safe to call twice."""
        if self._dir is None:
            return
        try:
            if self._daemons and all(p.poll() is None for p in self._daemons):
                # Jobs outlive slurmd (slurmstepd runs them): end them first.
                self.run("scancel", "--full", f"--partition={PARTITION}")
                deadline = time.monotonic() + TIMEOUT
                while self.jobs() and time.monotonic() < deadline:
                    time.sleep(0.5)
        finally:
            for proc in reversed(self._daemons):
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            self._daemons.clear()
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
