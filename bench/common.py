"""Benchmark plumbing shared by bench scripts: throwaway PostgreSQL, PgBouncer, pgwarden, pgbench runs."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
HOST = "127.0.0.1"
RUN_AS = "postgres"  # initdb refuses root; the cluster and PgBouncer run as this user when we are root

# Everything started here registers its own teardown; closed on normal exit, errors, Ctrl-C and SIGTERM.
CLEANUP = contextlib.ExitStack()


def pg_bindir() -> Path:
    """The PostgreSQL server binaries directory (`pg_config --bindir`)."""
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        return Path(out.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return Path("/usr/lib/postgresql/15/bin")


BINDIR = pg_bindir()


@dataclass(frozen=True)
class Target:
    """Somewhere pgbench can connect to: a name for the report and libpq connection settings."""

    name: str
    port: int
    user: str = "postgres"
    dbname: str = "postgres"
    host: str = HOST

    def libpq_args(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user]

    def env(self) -> dict[str, str]:
        """Ours plus libpq settings; PGPASSWORD, if set, passes through for password auth."""
        return {**os.environ, "PGCONNECT_TIMEOUT": "10", "PGSSLMODE": "disable"}


@dataclass(frozen=True)
class Load:
    """One pgbench run's workload: the built-in select-only script (-S) unless `script` is given."""

    mode: str = "simple"
    clients: int = 10
    jobs: int = 2
    duration: int = 15
    script: Path | None = None
    defines: tuple[str, ...] = ()  # pgbench -D NAME=VALUE for custom scripts

    def pgbench_args(self) -> list[str]:
        workload = ["-f", str(self.script)] if self.script else ["-S"]
        defines = [arg for d in self.defines for arg in ("-D", d)]
        return [
            *workload,
            *defines,
            "-M",
            self.mode,
            "-c",
            str(self.clients),
            "-j",
            str(self.jobs),
            "-T",
            str(self.duration),
            "-n",
        ]


@dataclass
class Result:
    """What one pgbench run measured; `tps` is None when pgbench produced no numbers."""

    target: str
    mode: str
    tps: float | None = None
    latency_ms: float | None = None
    transactions: int = 0
    failed: int = 0
    aborted_clients: int = 0
    returncode: int | None = None
    error: str = ""
    loadavg_1m: float = field(default_factory=lambda: os.getloadavg()[0])
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds during the run, by process


# --- processes -------------------------------------------------------------------------------------


def install_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so CLEANUP runs; atexit covers the rest."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    atexit.register(CLEANUP.close)


def stopping_all(work: Callable[[], T]) -> T:
    """Run a benchmark's `work` (setup and runs) with everything it starts stopped however it ends;
    interrupted: exit 130; a failed setup step: exit 1, saying which and why."""
    install_signal_handlers()
    try:
        with CLEANUP:
            return work()
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped", file=sys.stderr)
        raise SystemExit(130) from None
    except (subprocess.CalledProcessError, RuntimeError) as exc:
        print(f"{exc}\n{getattr(exc, 'stderr', '') or ''}", file=sys.stderr)
        raise SystemExit(1) from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def as_run_user(cmd: list[str]) -> list[str]:
    """Prefix `cmd` with runuser when we are root (initdb and pg_ctl refuse root)."""
    return ["runuser", "-u", RUN_AS, "--", *cmd] if os.geteuid() == 0 else cmd


def make_workdir() -> Path:
    """A temp dir the run user owns, removed at exit."""
    workdir = Path(tempfile.mkdtemp(prefix="pgwarden-bench-"))
    if os.geteuid() == 0:
        shutil.chown(workdir, RUN_AS, RUN_AS)
    CLEANUP.callback(shutil.rmtree, workdir, ignore_errors=True)
    return workdir


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout:.0f}s")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited after `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spawn(cmd: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    """Start a long-running process in its own session (Ctrl-C reaches us, we stop it)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    CLEANUP.callback(stop_process, proc)
    return proc


def tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def psql(target: Target, *args: str, timeout: float = 60.0) -> str:
    """Run psql with `args` (-c SQL, -f FILE); raises CalledProcessError carrying psql's stderr."""
    cmd = [str(BINDIR / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", *target.libpq_args(), "-d", target.dbname, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=target.env())
    if out.returncode != 0:
        raise subprocess.CalledProcessError(out.returncode, cmd, out.stdout, out.stderr)
    return out.stdout.strip()


# --- PostgreSQL --------------------------------------------------------------------------------------

# 2 cores, 24 GiB. fsync/full_page_writes/synchronous_commit off: nothing here needs to survive a crash,
# and the select-only benchmark writes nothing anyway.
PG_SETTINGS = {
    "listen_addresses": f"'{HOST}'",
    "max_connections": "200",
    "shared_buffers": "'256MB'",
    "effective_cache_size": "'8GB'",
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "max_wal_size": "'4GB'",
    "jit": "off",
}


def start_cluster(workdir: Path) -> Target:
    """initdb + pg_ctl start of a trust-auth cluster on a free port, stopped and removed at exit."""
    data, port = workdir / "pgdata", free_port()
    subprocess.run(
        as_run_user(
            [str(BINDIR / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]
        ),
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    settings = {**PG_SETTINGS, "port": str(port), "unix_socket_directories": f"'{workdir}'"}
    with open(data / "postgresql.conf", "a") as conf:
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
    (data / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    pg_ctl = [str(BINDIR / "pg_ctl"), "-D", str(data), "-l", str(workdir / "postgres.log")]
    CLEANUP.callback(
        subprocess.run, as_run_user([*pg_ctl, "-m", "fast", "-w", "stop"]), cwd=workdir, capture_output=True
    )
    subprocess.run(
        as_run_user([*pg_ctl, "-w", "-t", "60", "start"]),
        cwd=workdir,
        check=True,
        capture_output=True,
        start_new_session=True,
    )
    return Target("direct", port)


def postmaster_pid(workdir: Path) -> int:
    """The pid of the cluster `start_cluster(workdir)` started (first line of postmaster.pid)."""
    return int((workdir / "pgdata" / "postmaster.pid").read_text().split()[0])


def pgbench_init(target: Target, scale: int) -> None:
    subprocess.run(
        [str(BINDIR / "pgbench"), "-i", "-q", "-s", str(scale), *target.libpq_args(), target.dbname],
        check=True,
        capture_output=True,
        env=target.env(),
    )


# --- PgBouncer ---------------------------------------------------------------------------------------


def pgbouncer_ini(workdir: Path, backend: Target, port: int, pool_size: int) -> str:
    return f"""[databases]
* = host={backend.host} port={backend.port}

[pgbouncer]
listen_addr = {HOST}
listen_port = {port}
unix_socket_dir = {workdir}
auth_type = trust
auth_file = {workdir / "userlist.txt"}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 200
log_connections = 0
log_disconnections = 0
logfile = {workdir / "pgbouncer.log"}
pidfile = {workdir / "pgbouncer.pid"}
"""


def start_pgbouncer(
    workdir: Path, backend: Target, pool_size: int, users: list[str]
) -> tuple[Target, subprocess.Popen]:
    """PgBouncer in transaction mode in front of `backend`; raises RuntimeError if it does not serve."""
    binary, port = pgbouncer_binary(), free_port()
    if binary is None:
        raise RuntimeError("pgbouncer binary not found; install it with: apt-get install -y pgbouncer")
    ini = workdir / "pgbouncer.ini"
    ini.write_text(pgbouncer_ini(workdir, backend, port, pool_size))
    (workdir / "userlist.txt").write_text("".join(f'"{user}" ""\n' for user in users))
    as_user = ["-u", RUN_AS] if os.geteuid() == 0 else []  # PgBouncer refuses to run as root
    proc = spawn([binary, *as_user, str(ini)], workdir / "pgbouncer.out", workdir)
    try:
        wait_for_port(port, 20, proc)
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"PgBouncer did not start ({exc}):\n{tail(workdir / 'pgbouncer.log')}")
    return Target("pgbouncer", port), proc


def pgbouncer_binary() -> str | None:
    """PgBouncer's path (Debian puts it in /usr/sbin, not always on PATH), or None if absent."""
    fallback = Path("/usr/sbin/pgbouncer")
    return shutil.which("pgbouncer") or (str(fallback) if fallback.exists() else None)


# --- pgwarden ----------------------------------------------------------------------------------------


def absolute_paths(config: dict, base: Path) -> dict:
    """Resolve the path-valued keys of a pgwarden config (policies, audit.path) against `base`."""
    config = dict(config)
    if isinstance(config.get("policies"), str):
        config["policies"] = str(base / config["policies"])
    if isinstance(config.get("audit"), dict) and isinstance(config["audit"].get("path"), str):
        config["audit"] = {**config["audit"], "path": str(base / config["audit"]["path"])}
    return config


def pgwarden_config(backend: Target, pool_size: int, overlay_file: Path | None, workers: int = 1) -> dict:
    """The bench's pgwarden config; keys from `overlay_file` (e.g. auth users, policies) win,
    except where pgwarden listens and which backend it uses, which the bench decides.
    `workers` is always set (pgwarden's default is the machine's cores)."""
    config: dict = {
        "workers": workers,
        "auth": {"method": "trust"},
        "backend_auth": {"user": "postgres"},
        "pool": {"mode": "transaction", "size": pool_size},
    }
    if overlay_file is not None:
        overlay = yaml.safe_load(overlay_file.read_text()) or {}
        config.update(absolute_paths(overlay, overlay_file.resolve().parent))
    return {
        **config,
        "listen": {"host": HOST, "port": free_port()},
        "http": {"host": HOST, "port": free_port()},
        "primary": {"host": backend.host, "port": backend.port},
    }


def start_pgwarden(workdir: Path, config: dict, name: str = "pgwarden") -> tuple[Target, subprocess.Popen]:
    """`python -m proxy run --config FILE` from the repository; raises RuntimeError if it does not serve."""
    path, log = workdir / f"{name}.yaml", workdir / f"{name}.log"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    python = str(VENV_PYTHON if VENV_PYTHON.exists() else sys.executable)
    proc = spawn([python, "-m", "proxy", "run", "--config", str(path)], log, ROOT)
    try:
        wait_for_port(config["listen"]["port"], 30, proc)
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"pgwarden did not start ({exc}):\n{tail(log)}")
    return Target(name, config["listen"]["port"]), proc


# --- pgbench -----------------------------------------------------------------------------------------

_NUMBERS = {
    "tps": (re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.M), float),
    "latency_ms": (re.compile(r"^latency average = ([\d.]+) ms", re.M), float),
    "transactions": (re.compile(r"^number of transactions actually processed: (\d+)", re.M), int),
    "failed": (re.compile(r"^number of failed transactions: (\d+)", re.M), int),
}
_ABORTED = re.compile(r"client \d+ (?:script \d+ )?aborted")
_ERROR_LINE = re.compile(r"^pgbench: error: .*$", re.M)


def parse_pgbench(result: Result, stdout: str, stderr: str) -> Result:
    """Fill `result` from pgbench's report (PostgreSQL 15 wording) and its error lines."""
    for name, (pattern, kind) in _NUMBERS.items():
        match = pattern.search(stdout)
        if match:
            setattr(result, name, kind(match.group(1)))
    result.aborted_clients = len(_ABORTED.findall(stderr))
    errors = _ERROR_LINE.findall(stderr)
    if errors:
        result.error = errors[0][len("pgbench: error: ") :][:300]
    return result


def run_pgbench(target: Target, load: Load, meter: CpuMeter | None = None) -> Result:
    """One pgbench run of `load` against `target`, killed if it outlives its duration by 60 s;
    with a `meter`, also the CPU time each process used meanwhile."""
    result = Result(target.name, load.mode)
    cmd = [str(BINDIR / "pgbench"), *load.pgbench_args(), *target.libpq_args(), target.dbname]
    before = meter.snapshot() if meter else {}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=target.env(), timeout=load.duration + 60)
    except subprocess.TimeoutExpired:
        result.error = f"pgbench did not finish within {load.duration + 60}s; killed"
        return result
    if meter:
        result.cpu_s = meter.used_since(before)
    result.returncode = out.returncode
    return parse_pgbench(result, out.stdout, out.stderr)


# --- CPU accounting ----------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_times() -> dict[int, tuple[int, float, float]]:
    """pid -> (parent pid, own CPU s, reaped children's CPU s) for every process in /proc."""
    times = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        utime, stime, cutime, cstime = (int(v) / CLK_TCK for v in fields[11:15])
        times[int(entry.name)] = (int(fields[1]), utime + stime, cutime + cstime)
    return times


def _busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


@dataclass
class CpuMeter:
    """CPU time of named processes (each with its children: PostgreSQL's backends), of pgbench,
    and of everything else on the machine (other people's work competing for the cores)."""

    pids: dict[str, int]

    def snapshot(self) -> dict[str, float]:
        times = _proc_times()
        usage = {name: self._tree(times, pid) for name, pid in self.pids.items()}
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)  # pgbench, once it has exited
        usage["pgbench"] = reaped.ru_utime + reaped.ru_stime
        return {**usage, "busy": _busy_seconds()}

    @staticmethod
    def _tree(times: dict[int, tuple[int, float, float]], root: int) -> float:
        _, own, reaped = times.get(root, (0, 0.0, 0.0))
        children = sum(o + r for ppid, o, r in times.values() if ppid == root)
        return own + reaped + children

    def used_since(self, before: dict[str, float]) -> dict[str, float]:
        """Seconds used by each since `before`; "other" is the machine's busy time none of them used."""
        now = self.snapshot()
        used = {name: round(now[name] - before[name], 3) for name in now}
        busy = used.pop("busy")
        used["other"] = round(max(0.0, busy - sum(used.values())), 3)
        return used


# --- the machine -------------------------------------------------------------------------------------


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def _cpuinfo_field(name: str) -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return "unknown"


def machine_info() -> dict:
    """What the numbers depend on: cores, CPU, memory, versions, the pgwarden commit."""
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    bouncer = pgbouncer_binary()
    return {
        "nproc": _first_line(["nproc"]),
        "cpu": _cpuinfo_field("model name"),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": os.uname().release,
        "postgresql": _first_line([str(BINDIR / "postgres"), "--version"]),
        "pgbench": _first_line([str(BINDIR / "pgbench"), "--version"]),
        "pgbouncer": _first_line([bouncer, "--version"]) if bouncer else "absent",
        "python": sys.version.split()[0],
        "pgwarden_commit": _first_line(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"]),
    }
