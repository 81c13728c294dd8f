"""Three Grace hosts on one machine: network namespaces on a private bridge, each host's
components under its own Guardian (`grace up` with that host's grace.toml).

- a: a private PostgreSQL (as `nobody`: it refuses root) and NATS with JetStream; the
  single writers (registry, trust, immutable log, governance, shared memory) on PostgreSQL.
- b: event bus on JetStream, orchestrator (leases on PostgreSQL), gateway, `data_domain_b`,
  `ai_domain_b`, `memory_domain`.
- c: event bus on JetStream, orchestrator, `data_domain`, `ai_domain`.

The registry keeps one record (one address) per domain id, so a domain's instances
register under ids of their own: B runs data_domain and ai_domain again as
`data_domain_b` and `ai_domain_b` (see domain_instance.py), and callers reach them by
capability. The registry ranks equal scores by id, so C's instances come first while they
live. B's domains join through the gateway at B's bridge address, as a domain on another
host would. The hosts share one Grace CA and token file (`GRACE_PKI_DIR`), as hosts that
share a filesystem or a secret store would; each has its own data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from services.cli.credentials import client_security
from services.common import channels
from services.common.channels import ClientSecurity
from services.common.config import DEFAULT_PORTS
from tests.netns import Network
from tests.support import UNREACHABLE, own_pki_env

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# A /24 of the test process's own, so two runs on one machine do not share a bridge subnet.
SUBNET = f"10.77.{os.getpid() % 250}"
TAG = f"gh{os.getpid() % 10000}"
HOSTS = ("a", "b", "c")
POSTGRES_PORT = 5432
NATS_PORT = 4222
BOOT_TIMEOUT_S = 120.0
LEASE_S = 4.0  # the orchestrators' execution lease
DOMAIN_LEASE_S = 4.0  # the registry lease of C's domains

# Components no host runs; their clients get an address nothing answers on.
NOT_RUN = ("triggers", "immune", "scheduler", "librarian", "tasks", "learning")
# The single writers, on host A.
SHARED = ("registry", "trust", "immutable_log", "governance", "memory")
# The example domains on C, and B's instances of them (module, instance id, port).
C_DOMAINS = ("data_domain", "ai_domain")
B_INSTANCES = (
    ("examples.data_domain", "data_domain_b", 8210),
    ("examples.ai_domain", "ai_domain_b", 8212),
)
B_DOMAINS = (*(instance for _, instance, _ in B_INSTANCES), "memory_domain")


def _binary(name: str) -> str | None:
    """A server binary: on PATH, in /usr/local/bin, or in Debian's PostgreSQL directories."""
    path = ":".join(["/usr/local/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"))])
    return shutil.which(name) or shutil.which(name, path=path)


def _toml(tables: dict[str, dict[str, Any]]) -> str:
    """A grace.toml from {component: {key: value}} (strings, numbers, lists, tables)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return str(v)

    return "".join(
        f"[components.{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items())
        for name, keys in tables.items()
    )


@dataclass
class Hosts:
    """The three hosts, running: their network, the shared PKI and the database."""

    network: Network
    root: Path
    pki_dir: Path
    database_url: str
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)

    def address(self, host: str, component: str) -> str:
        return f"{self.network.addresses[host]}:{DEFAULT_PORTS[component]}"

    def security(self) -> ClientSecurity:
        security = client_security(self.root / "b", env={"GRACE_PKI_DIR": str(self.pki_dir)})
        assert security is not None
        assert security.token
        return security


def _host_tables(host: str, network: Network) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The grace.toml tables of a host and the extra `grace up` arguments."""
    off = {"enabled": False}
    not_here = dict.fromkeys(NOT_RUN, off)
    if host == "a":
        tables = not_here | dict.fromkeys(("eventbus", "orchestrator", "gateway"), off)
        return tables, []
    tables = not_here | dict.fromkeys(SHARED, off)
    bus = {
        "depends_on": [],
        "env": {"GRACE_EVENTBUS_BACKEND": f"nats://{network.addresses['a']}:{NATS_PORT}"},
    }
    orchestrator = {"depends_on": [], "env": {"GRACE_ORCHESTRATOR_LEASE_S": str(LEASE_S)}}
    tables |= {"eventbus": bus, "orchestrator": orchestrator}
    tables["governance_domain"] = off
    if host == "b":
        # The domains beside the gateway join through it (https://<B's address>).
        tables |= {"gateway": {"depends_on": []}, "memory_domain": {"depends_on": []}}
        tables |= dict.fromkeys(C_DOMAINS, off)
        for module, instance, port in B_INSTANCES:
            tables[instance] = {
                "module": "tests.integration.domain_instance",
                "args": [module, instance],
                "port": port,
                "chunk": 10,
                "health_service": "grace.domain.v1.DomainService",
                "identity": "domain",
                "register": False,
            }
        return tables, ["--with-examples"]
    tables |= {"gateway": off, "memory_domain": off}
    for domain in C_DOMAINS:
        lease = {f"GRACE_{domain.upper()}_LEASE_TTL_S": str(DOMAIN_LEASE_S)}
        tables[domain] = {"depends_on": [], "env": lease}
    return tables, ["--with-examples"]


def _host_env(host: str, hosts: Hosts) -> dict[str, str]:
    """`grace up`'s environment on a host: the shared PKI and database, and where the
    components of the other hosts are."""
    env = own_pki_env()
    env |= {f"GRACE_{peer.upper()}_ADDR": UNREACHABLE for peer in NOT_RUN}
    env |= {
        "GRACE_PKI_DIR": str(hosts.pki_dir),
        "GRACE_DATABASE_URL": hosts.database_url,
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    if host == "a":
        env |= {
            "GRACE_EVENTBUS_ADDR": hosts.address("b", "eventbus"),
            "GRACE_ORCHESTRATOR_ADDR": hosts.address("b", "orchestrator"),
        }
    else:
        env |= {f"GRACE_{peer.upper()}_ADDR": hosts.address("a", peer) for peer in SHARED}
    return env


async def _start_grace(hosts: Hosts, host: str) -> None:
    """`grace up` on `host`, under its own Guardian; returns once it says it is up."""
    tables, args = _host_tables(host, hosts.network)
    data_dir = hosts.root / host
    config = hosts.root / f"grace-{host}.toml"
    log = hosts.root / f"grace-up-{host}.log"
    with _prepared(data_dir, config, _toml(tables), log) as out:
        process = await asyncio.create_subprocess_exec(
            *hosts.network.exec_argv(
                host, sys.executable, "-m", "services.cli", "up", *args,
                "--config", str(config), "--data-dir", str(data_dir),
                "--host", hosts.network.addresses[host],
                "--database-url", f"sqlite+aiosqlite:///{data_dir / 'guardian.db'}",
            ),
            cwd=PROJECT_ROOT, env=_host_env(host, hosts),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    hosts.processes.append(process)
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while "Grace is up" not in (output := await asyncio.to_thread(log.read_text)):
        if process.returncode is not None or time.monotonic() > deadline:
            pytest.fail(f"grace up on host {host} did not come up:\n{output}")
        await asyncio.sleep(0.2)


@contextlib.contextmanager
def _prepared(data_dir: Path, config: Path, toml: str, log: Path) -> Iterator[BinaryIO]:
    """Makes a host's data dir and writes its grace.toml; yields its open log file."""
    data_dir.mkdir()
    config.write_text(toml)
    with log.open("wb") as out:
        yield out


@dataclass(frozen=True)
class Servers:
    """The server binaries the test runs, and the user PostgreSQL runs as."""

    initdb: str
    postgres: str
    nats: str
    as_nobody: tuple[str, ...]
    nobody: pwd.struct_passwd


def find_servers() -> Servers:
    """The binaries, or the test is skipped."""
    initdb, postgres, nats = _binary("initdb"), _binary("postgres"), _binary("nats-server")
    if initdb is None or postgres is None or shutil.which("setpriv") is None:
        pytest.skip("the PostgreSQL server binaries (initdb, postgres) or setpriv are missing")
    if nats is None:
        pytest.skip("nats-server is not installed")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no `nobody` user to run PostgreSQL as (it refuses to run as root)")
    as_nobody = ("setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}")
    return Servers(initdb, postgres, nats, (*as_nobody, "--clear-groups"), nobody)


def _initdb(servers: Servers, directory: Path) -> Path:
    """A new cluster under `directory`, owned by `nobody`, that trusts every host of the
    bridge; returns its data directory."""
    directory.chmod(0o755)
    os.chown(directory, servers.nobody.pw_uid, servers.nobody.pw_gid)
    data = directory / "data"
    subprocess.run(
        [*servers.as_nobody, servers.initdb, "-D", str(data), "-U", "postgres",
         "--auth=trust", "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    with (data / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {SUBNET}.0/24 trust\n")
    return data


async def _start_postgres(
    servers: Servers, network: Network, directory: Path
) -> asyncio.subprocess.Process:
    """A private PostgreSQL on host A, run as `nobody` (PostgreSQL refuses root)."""
    data = await asyncio.to_thread(_initdb, servers, directory)
    # Only its clients' hosts die in this test, never the database's: fsync stays off.
    return await asyncio.create_subprocess_exec(
        *network.exec_argv(
            "a", *servers.as_nobody, servers.postgres, "-D", str(data),
            "-k", str(directory), "-h", network.addresses["a"], "-p", str(POSTGRES_PORT),
            "-c", "max_connections=400", "-c", "fsync=off",
        ),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def _wait_for_port(address: str, port: int, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            _, writer = await asyncio.open_connection(address, port)
            writer.close()
            return
        except OSError:
            if process.returncode is not None or time.monotonic() > deadline:
                pytest.fail(f"nothing listens on {address}:{port} (exit {process.returncode})")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def three_hosts(servers: Servers, network: Network, root: Path) -> AsyncIterator[Hosts]:
    """PostgreSQL and NATS on A, then Grace on A, B and C (in that order: B and C issue
    certificates into the shared PKI directory, one host at a time); while it runs, the
    test process's channels use B's admin credential. Kills everything at the end."""
    import asyncpg

    postgres_dir = Path(tempfile.mkdtemp(prefix="grace-hosts-pg-"))
    a = network.addresses["a"]
    processes: list[asyncio.subprocess.Process] = []
    previous = channels.configured()
    try:
        postgres = await _start_postgres(servers, network, postgres_dir)
        processes.append(postgres)
        nats = await asyncio.create_subprocess_exec(
            *network.exec_argv(
                "a", servers.nats, "-js", "-a", a, "-p", str(NATS_PORT),
                "-sd", str(root / "nats"),
            ),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(nats)
        await _wait_for_port(a, POSTGRES_PORT, postgres)
        await _wait_for_port(a, NATS_PORT, nats)
        for _ in range(100):
            try:
                conn = await asyncpg.connect(f"postgresql://postgres@{a}:{POSTGRES_PORT}/postgres")
                break
            except (OSError, asyncpg.PostgresError):
                await asyncio.sleep(0.1)
        else:
            pytest.fail("PostgreSQL on host A never accepted a connection")
        try:
            await conn.execute("CREATE DATABASE grace")
        finally:
            await conn.close()
        pki_dir = root / "pki"
        pki_dir.mkdir(mode=0o700)
        hosts = Hosts(network, root, pki_dir, f"postgresql://postgres@{a}:{POSTGRES_PORT}/grace")
        hosts.processes = processes
        for host in HOSTS:
            await _start_grace(hosts, host)
        channels.configure(hosts.security())
        yield hosts
    finally:
        channels.configure(previous)
        for host in HOSTS:
            network.kill_all(host)
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        shutil.rmtree(postgres_dir, ignore_errors=True)
