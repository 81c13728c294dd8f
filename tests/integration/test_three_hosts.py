"""Grace over three hosts, made on one machine with network namespaces, and one host lost.

Host A runs a private PostgreSQL and a private NATS server with JetStream, and the
single-writer components (registry, trust, immutable log, governance, shared memory) on
PostgreSQL. Hosts B and C each run an event bus on the JetStream backend, an orchestrator
(executions owned through leases on PostgreSQL) and the example domains the seed document
workflow needs; B also runs the gateway. Each host's components run under its own
Guardian (`grace up` with the host's grace.toml, which disables what runs elsewhere and
points at the shared components); the three share one Grace CA and token file, as hosts
that share a filesystem (or a secret store) would.

The registry keeps one record (one address) per domain id, so a domain's instances
register under ids of their own: C runs data_domain and ai_domain, B runs them again as
`data_domain_b` and `ai_domain_b` (see domain_instance.py), and the workflow reaches
ingestion and analysis by capability. The registry ranks equal scores by id, so steps go to
C's instances while they live. The store step stays on B's memory_domain. B's domains join
through the gateway at B's bridge address, as a domain on another host would.

Then every process of host C is killed at once (SIGKILL), in the middle of a burst of
executions C's orchestrator owns and of a publish load B's bus takes while a durable
consumer reads it through C's bus. The checks: C's executions are resumed by B's
orchestrator once their leases lapse and all succeed; every acknowledged publish reaches
the consumer, which resumes on B's bus after the last sequence it acknowledged; the
registry stops offering C's domains; new workflows complete on the hosts that are left.

Needs root, `ip netns`, the PostgreSQL server binaries (run as `nobody`, since PostgreSQL
refuses root) and nats-server; skipped where any is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import glob
import os
import pwd
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import grpc
import httpx
import pytest
from google.protobuf import json_format, struct_pb2

from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc
from grace.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.cli.credentials import client_security
from services.common import channels
from services.common.channels import ClientSecurity, channel
from services.common.config import DEFAULT_PORTS
from services.common.pki import SERVER_NAME
from tests.integration.test_seed_workflows import DOCUMENT_WORKFLOW, _document
from tests.netns import Network, private_network
from tests.support import UNREACHABLE, own_pki_env

pytestmark = pytest.mark.slow

T = TypeVar("T")

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
WORKFLOWS_BEFORE = 4
IN_FLIGHT = 16  # executions started on C's orchestrator just before C dies
WORKFLOWS_AFTER = 4
EVENT_BATCHES = 40
EVENTS_PER_BATCH = 25
LOAD_TYPE = "hosts.load"

# Components no host runs here; their clients get an address nothing answers on.
NOT_RUN = ("triggers", "immune", "scheduler", "librarian", "tasks", "learning")
# The single writers, on host A.
SHARED = ("registry", "trust", "immutable_log", "governance", "memory")
# The example domains reached by capability run on B and C. C runs them under their own
# ids, B as other instances under ids of their own (module, instance id, port), plus the
# memory_domain the store step names. With equal scores the registry ranks by id, so
# C's instances come first while they live.
C_DOMAINS = ("data_domain", "ai_domain")
B_INSTANCES = (
    ("examples.data_domain", "data_domain_b", 8210),
    ("examples.ai_domain", "ai_domain_b", 8212),
)
B_DOMAINS = (*(instance for _, instance, _ in B_INSTANCES), "memory_domain")

# The seed document workflow with ingestion and analysis reached by capability, so either
# host's instance may run them; the store step names B's memory_domain.
BY_CAPABILITY = {"data_domain": "ingestion", "ai_domain": "nlp"}


def _across_hosts(workflow: dict[str, Any]) -> dict[str, Any]:
    """`workflow` with the steps of BY_CAPABILITY's domains addressed by capability."""
    changed = copy.deepcopy(workflow) | {"name": f"{workflow['name']}_across_hosts"}
    for step in changed["steps"]:
        if step.get("domain_id") in BY_CAPABILITY:
            step["capability"] = BY_CAPABILITY[step.pop("domain_id")]
    return changed


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


def _servers() -> Servers:
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


@pytest.fixture
def servers() -> Servers:
    return _servers()


@pytest.fixture
def network(servers: Servers) -> Iterator[Network]:
    with private_network(HOSTS, SUBNET, TAG) as made:
        yield made


@pytest.fixture
async def hosts(servers: Servers, network: Network, tmp_path: Path) -> AsyncIterator[Hosts]:
    """PostgreSQL and NATS on A, then Grace on A, B and C (in that order: B and C issue
    certificates into the shared PKI directory, one host at a time)."""
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
                "-sd", str(tmp_path / "nats"),
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
        pki_dir = tmp_path / "pki"
        pki_dir.mkdir(mode=0o700)
        hosts = Hosts(
            network, tmp_path, pki_dir, f"postgresql://postgres@{a}:{POSTGRES_PORT}/grace"
        )
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


# ---- what the test does across the hosts --------------------------------------------


def _gateway(hosts: Hosts) -> httpx.AsyncClient:
    security = hosts.security()
    return httpx.AsyncClient(
        base_url=f"https://{hosts.address('b', 'gateway')}",
        timeout=60,
        verify=ssl.create_default_context(cafile=str(security.ca_file)),
        headers={"authorization": f"Bearer {security.token}"},
    )


# The certificates name `grace.local`, not the bridge addresses (as gRPC channels do).
_AS_GRACE = {"sni_hostname": SERVER_NAME}


async def _run_documents(
    http: httpx.AsyncClient, workflow_id: str, count: int, tag: str
) -> list[str]:
    """Runs the workflow `count` times to the end; returns the domains its steps reached."""
    reached: list[str] = []
    for n in range(count):
        executed = await http.post(
            f"/domains/workflows/execute/{workflow_id}",
            json={"input": _document(f"hostword{tag}{n}"), "wait": True},
            extensions=_AS_GRACE,
        )
        assert executed.status_code == 200, executed.text
        execution = executed.json()["execution"]
        assert execution["state"] == "EXECUTION_STATE_SUCCEEDED", executed.text
        reached += [step["domain_id"] for step in execution["steps"]]
    return reached


async def _wait_registered(hosts: Hosts, domain_ids: list[str]) -> None:
    async with channel(hosts.address("a", "registry")) as chan:
        stub = registry_pb2_grpc.RegistryServiceStub(chan)
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        for domain_id in domain_ids:
            while True:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.GetDomain(registry_pb2.GetDomainRequest(domain_id=domain_id))
                    break
                assert time.monotonic() < deadline, f"{domain_id} never registered"
                await asyncio.sleep(0.2)


async def _offered(hosts: Hosts, capability: str) -> set[str]:
    """The domains the registry offers for a capability now."""
    async with channel(hosts.address("a", "registry")) as chan:
        found = await registry_pb2_grpc.RegistryServiceStub(chan).FindByCapability(
            registry_pb2.FindByCapabilityRequest(capability=capability)
        )
    return {ranked.domain.domain_id for ranked in found.domains}


@dataclass
class Load:
    """A publish load on one bus and a durable consumer that may move between buses."""

    acknowledged: set[str] = field(default_factory=set)
    received: list[str] = field(default_factory=list)
    acked_sequence: int = 0
    redelivered_after_ack: int = 0
    consumer_moves: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)


async def _publish(hosts: Hosts, load: Load, halfway: asyncio.Event) -> None:
    async with channel(hosts.address("b", "eventbus")) as chan:
        bus = eventbus_pb2_grpc.EventBusServiceStub(chan)
        for batch in range(EVENT_BATCHES):
            events = [
                event_pb2.Event(
                    id=f"load-{batch}-{n}", event_type=LOAD_TYPE, source_domain="hosts_test"
                )
                for n in range(EVENTS_PER_BATCH)
            ]
            published = await bus.PublishBatch(
                eventbus_pb2.PublishBatchRequest(events=events), timeout=30
            )
            for result in published.results:
                assert result.status != eventbus_pb2.PUBLISH_STATUS_REJECTED, result.error
                load.acknowledged.add(result.id)
            if batch == EVENT_BATCHES // 2:
                halfway.set()
            await asyncio.sleep(0.05)


async def _consume(hosts: Hosts, load: Load) -> None:
    """Reads `LOAD_TYPE` as a durable consumer on C's bus and acknowledges each message;
    when C's bus is gone it resumes on B's after the last sequence it acknowledged."""
    buses = [hosts.address("c", "eventbus"), hosts.address("b", "eventbus")]
    request = eventbus_pb2.SubscribeRequest(
        pattern=LOAD_TYPE, consumer="hosts_load", start=eventbus_pb2.START_POSITION_ALL
    )
    while True:
        try:
            async with channel(buses[0]) as chan:
                bus = eventbus_pb2_grpc.EventBusServiceStub(chan)
                stream = bus.Subscribe(request)
                load.ready.set()
                async for message in stream:
                    for event in message.events:
                        if event.sequence <= load.acked_sequence:
                            load.redelivered_after_ack += 1
                        load.received.append(event.id)
                    if message.events:
                        last = message.events[-1].sequence
                        await bus.Ack(
                            eventbus_pb2.AckRequest(consumer="hosts_load", sequence=last),
                            timeout=10,
                        )
                        load.acked_sequence = last
        except grpc.aio.AioRpcError as exc:
            if len(buses) == 1 or exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            buses.pop(0)
            load.consumer_moves += 1
            request = eventbus_pb2.SubscribeRequest(
                pattern=LOAD_TYPE,
                consumer="hosts_load",
                start=eventbus_pb2.START_POSITION_SEQUENCE,
                start_sequence=load.acked_sequence + 1,
            )


async def _start_in_flight(hosts: Hosts, workflow_id: str) -> list[str]:
    """Starts IN_FLIGHT executions on C's orchestrator (not waiting for them)."""
    async with channel(hosts.address("c", "orchestrator")) as chan:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chan)

        async def start(n: int) -> str:
            data = struct_pb2.Struct()
            json_format.ParseDict(_document(f"inflightword{n}"), data)
            started = await stub.ExecuteWorkflow(
                orchestrator_pb2.ExecuteWorkflowRequest(workflow_id=workflow_id, input=data),
                timeout=30,
            )
            return started.execution_id

        return list(await asyncio.gather(*(start(n) for n in range(IN_FLIGHT))))


async def _wait_ended(
    hosts: Hosts, execution_ids: list[str]
) -> dict[str, orchestrator_pb2.Execution]:
    """Waits (through B's orchestrator) until every execution has ended; returns them."""
    ended: dict[str, orchestrator_pb2.Execution] = {}
    async with channel(hosts.address("b", "orchestrator")) as chan:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chan)
        deadline = time.monotonic() + 60 + 4 * LEASE_S
        while len(ended) < len(execution_ids):
            for execution_id in execution_ids:
                if execution_id in ended:
                    continue
                got = await stub.GetExecution(
                    orchestrator_pb2.GetExecutionRequest(execution_id=execution_id), timeout=10
                )
                if got.execution.state != orchestrator_pb2.EXECUTION_STATE_RUNNING:
                    ended[execution_id] = got.execution
            stuck = len(execution_ids) - len(ended)
            assert time.monotonic() < deadline, f"{stuck} executions never ended"
            await asyncio.sleep(0.25)
    return ended


async def _lease_tokens(hosts: Hosts, execution_ids: list[str]) -> list[int]:
    """The fencing token of each execution's lease (above 1: another instance took it)."""
    import asyncpg

    conn = await asyncpg.connect(hosts.database_url)
    try:
        rows = await conn.fetch(
            "SELECT token FROM orchestrator_leases WHERE execution_id = ANY($1::text[])",
            execution_ids,
        )
    finally:
        await conn.close()
    return [int(row["token"]) for row in rows]


async def _until_delivered(load: Load, consumer: asyncio.Task[None]) -> None:
    """Waits until the consumer has received every acknowledged event (or failed)."""
    deadline = time.monotonic() + 60
    while not load.acknowledged <= set(load.received):
        if consumer.done():
            consumer.result()  # raises what stopped it
        assert time.monotonic() < deadline, "the consumer stopped receiving"
        await asyncio.sleep(0.1)


async def _until_unoffered(hosts: Hosts, domain_ids: set[str]) -> set[str]:
    """Waits until the registry offers none of `domain_ids` for the workflow's
    capabilities; returns those it still offers at the deadline."""
    deadline = time.monotonic() + 30 + 3 * DOMAIN_LEASE_S
    while True:
        offered: set[str] = set()
        for capability in BY_CAPABILITY.values():
            offered |= await _offered(hosts, capability)
        if not offered & domain_ids or time.monotonic() > deadline:
            return offered & domain_ids
        await asyncio.sleep(0.2)


async def _timed(coro: Awaitable[T], since: float) -> tuple[T, float]:
    """`coro`'s result and the seconds from `since` to its end."""
    result = await coro
    return result, time.monotonic() - since


async def test_work_goes_on_when_every_process_of_one_host_is_killed(hosts: Hosts) -> None:
    c_domains = set(C_DOMAINS)
    await _wait_registered(hosts, [*B_DOMAINS, *c_domains])
    async with _gateway(hosts) as http:
        created = await http.post(
            "/domains/workflows/create",
            json=_across_hosts(DOCUMENT_WORKFLOW),
            extensions=_AS_GRACE,
        )
        assert created.status_code == 200, created.text
        workflow_id = created.json()["workflow_id"]
        before = await _run_documents(http, workflow_id, WORKFLOWS_BEFORE, "before")

        load = Load()
        consumer = asyncio.create_task(_consume(hosts, load))
        await asyncio.wait_for(load.ready.wait(), 30)
        halfway = asyncio.Event()
        publisher = asyncio.create_task(_publish(hosts, load, halfway))
        try:
            await asyncio.wait_for(halfway.wait(), 60)
            in_flight = await _start_in_flight(hosts, workflow_id)
            killed = hosts.network.kill_all("c")
            killed_at = time.monotonic()
            assert killed, "host C ran nothing"
            (executions, ended_s), (still_offered, unoffered_s), _ = await asyncio.gather(
                _timed(_wait_ended(hosts, in_flight), killed_at),
                _timed(_until_unoffered(hosts, c_domains), killed_at),
                publisher,
            )
            await _until_delivered(load, consumer)
        finally:
            for task in (consumer, publisher):
                task.cancel()
            await asyncio.gather(consumer, publisher, return_exceptions=True)
        tokens = await _lease_tokens(hosts, in_flight)
        after = await _run_documents(http, workflow_id, WORKFLOWS_AFTER, "after")

    states = {e.execution_id: e.state for e in executions.values()}
    succeeded = sum(s == orchestrator_pb2.EXECUTION_STATE_SUCCEEDED for s in states.values())
    resumed_on = {step.domain_id for e in executions.values() for step in e.steps}
    resumed = sum(token > 1 for token in tokens)
    lost = load.acknowledged - set(load.received)
    print(
        f"\nthree hosts: {WORKFLOWS_BEFORE} document workflows before the kill, steps on "
        f"{sorted(set(before))}; killed {len(killed)} processes of host C; "
        f"{succeeded}/{IN_FLIGHT} of C's executions succeeded, {resumed} resumed by B, all "
        f"ended {ended_s:.1f}s after the kill (lease {LEASE_S:g}s), steps on "
        f"{sorted(resumed_on)}; "
        f"{len(load.acknowledged)} events acknowledged, {len(lost)} lost, "
        f"{len(load.received) - len(set(load.received))} delivered twice "
        f"({load.redelivered_after_ack} after their ack), the consumer moved "
        f"{load.consumer_moves}x; C's domains no longer offered {unoffered_s:.1f}s after the "
        f"kill (lease {DOMAIN_LEASE_S:g}s); {WORKFLOWS_AFTER} workflows after it, steps on "
        f"{sorted(set(after))}"
    )
    assert succeeded == IN_FLIGHT, states
    assert len(tokens) == IN_FLIGHT
    assert resumed >= 1, "every execution had ended before host C died"
    assert len(load.acknowledged) == EVENT_BATCHES * EVENTS_PER_BATCH
    assert lost == set()
    assert load.redelivered_after_ack == 0
    assert load.consumer_moves == 1
    assert still_offered == set()
    assert set(before) & c_domains, "no step reached C's domains before the kill"
    assert not set(after) & c_domains
    assert set(after) >= set(B_DOMAINS)
