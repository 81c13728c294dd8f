"""Every RPC of the newest kernels refuses whoever its access rule does not admit.

For each kernel the test starts one real secure server (shared by the module) and walks
every method of every service the server actually serves, reading each method's rule in
`services.common.access`: so an RPC added later is covered with no change here. Each
method is called with an empty request (the owned field set, for OWNER rules):

- with no credential (a Grace `client` certificate and no token): UNAUTHENTICATED;
- by a principal below the rule's level (a reader on a write, a domain acting for
  another domain on an OWNER rule, an operator on a component-only call):
  PERMISSION_DENIED naming the method;
- by the weakest principal the rule admits: any answer but those two (the empty request
  is then refused by the servicer, or served).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory

from services.common.access import Level, Rule, rule_for
from services.common.channels import ClientSecurity, channel
from services.kernels.learning.config import LearningConfig
from services.kernels.learning.server import LearningServer
from services.kernels.librarian.config import LibrarianConfig
from services.kernels.librarian.server import LibrarianServer
from services.kernels.scheduler.config import SchedulerConfig
from services.kernels.scheduler.firer import SchedulerSettings
from services.kernels.scheduler.server import SchedulerServer
from services.kernels.tasks.config import TasksConfig
from services.kernels.tasks.server import TasksServer
from services.kernels.triggers.config import TriggersConfig
from services.kernels.triggers.server import TriggersServer
from tests.kernels.scheduler.doubles import RecordingPeers, ScriptedGate
from tests.kernels.tasks import doubles as tasks_doubles
from tests.support import UNREACHABLE, server_config, serving, session_pki

KERNELS = ("learning", "triggers", "scheduler", "tasks", "librarian")
AUTHORIZATION_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
OWNER_DOMAIN = "ai_domain"
CALL_TIMEOUT_S = 10.0


class Discard:
    """Takes the kernels' events and log entries; they are not under test here."""

    async def publish(self, events: object) -> None:
        return None


class NoTrust:
    async def score(self, domain_id: str) -> float:
        return 0.0


def build(kernel: str, data_dir: Path) -> tuple[Any, Any]:
    """(server config, service) of a kernel with test doubles for its peers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = server_config(kernel, data_dir)
    if kernel == "learning":
        learning = LearningServer(
            LearningConfig(
                server=config,
                memory_address=UNREACHABLE,
                eventbus_address=UNREACHABLE,
                immutable_log_address=UNREACHABLE,
            ),
            bus=Discard(),
            immutable_log=Discard(),
        )
        return config, learning
    if kernel == "triggers":
        mesh = TriggersConfig(server=config, subscribe=False)
        triggers = TriggersServer(
            replace(mesh, addresses=dict.fromkeys(mesh.addresses, UNREACHABLE)),
            peers=RecordingPeers(),
            gate=ScriptedGate(),
            trust=NoTrust(),
            bus=Discard(),
            immutable_log=Discard(),
        )
        return config, triggers
    if kernel == "scheduler":
        scheduler = SchedulerServer(
            SchedulerConfig(
                server=config,
                settings=SchedulerSettings(),
                orchestrator_address=UNREACHABLE,
                registry_address=UNREACHABLE,
                eventbus_address=UNREACHABLE,
                immutable_log_address=UNREACHABLE,
                governance_address=UNREACHABLE,
            ),
            peers=RecordingPeers(),
            gate=ScriptedGate(),
            bus=Discard(),
            immutable_log=Discard(),
        )
        return config, scheduler
    if kernel == "tasks":
        isolated = TasksConfig(server=config, subscribe=False)
        tasks = TasksServer(
            replace(isolated, addresses=dict.fromkeys(isolated.addresses, UNREACHABLE)),
            bus=Discard(),
            immutable_log=Discard(),
            gate=tasks_doubles.Gate(),
            approvals=tasks_doubles.Approvals(),
            target=tasks_doubles.Target(),
            sources=tasks_doubles.Sources(),
        )
        return config, tasks
    librarian = LibrarianServer(
        LibrarianConfig(
            server=config,
            subscribe=False,
            eventbus_address=UNREACHABLE,
            memory_address=UNREACHABLE,
            orchestrator_address=UNREACHABLE,
        ),
        bus=Discard(),
    )
    return librarian.grpc_config(), librarian


@dataclass(frozen=True)
class Served:
    """A running kernel: where it listens and the services it serves."""

    address: str
    services: tuple[str, ...]


@pytest.fixture(scope="module")
async def kernels(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Served]]:
    root = tmp_path_factory.mktemp("kernels")
    async with contextlib.AsyncExitStack() as stack:
        running = {}
        for kernel in KERNELS:
            config, service = build(kernel, root / kernel)
            server, _ = await stack.enter_async_context(serving(config, service))
            running[kernel] = Served(server.address, server.service_names)
        yield running


@dataclass(frozen=True)
class Method:
    """One RPC: its full name, its rule, and an empty request of its type."""

    path: str
    rule: Rule
    request_type: type[Any]
    server_streaming: bool


def methods_of(served: Served) -> list[Method]:
    pool = descriptor_pool.Default()
    found = []
    for service_name in served.services:
        for method in pool.FindServiceByName(service_name).methods:
            path = f"/{service_name}/{method.name}"
            rule = rule_for(path)
            assert rule is not None, f"{path} has no access rule"
            found.append(
                Method(
                    path,
                    rule,
                    message_factory.GetMessageClass(method.input_type),
                    method.server_streaming,
                )
            )
    assert found, "the server serves no method"
    return found


def request_for(method: Method) -> Any:
    """An empty request, acting for `OWNER_DOMAIN` where the rule reads a field."""
    request = method.request_type()
    if method.rule.level == Level.OWNER and method.rule.owned_fields.isidentifier():
        setattr(request, method.rule.owned_fields, OWNER_DOMAIN)
    return request


async def code_of(chan: grpc.aio.Channel, method: Method) -> tuple[grpc.StatusCode, str]:
    """The status a call of `method` ends with, and its message."""
    request = request_for(method)
    try:
        if method.server_streaming:
            stream = chan.unary_stream(
                method.path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=bytes,
            )(request, timeout=CALL_TIMEOUT_S)
            async for _ in stream:
                break
            stream.cancel()
        else:
            await chan.unary_unary(
                method.path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=bytes,
            )(request, timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


# Who is denied at each level (below it), and the weakest principal it admits. Each
# principal is (name, roles); None is the component certificate with no token.
Caller = tuple[str, tuple[str, ...]] | None
READER: Caller = ("rita", ("reader",))
OPERATOR: Caller = ("olga", ("operator",))
ADMIN: Caller = ("alice", ("admin",))
OWNER: Caller = (f"domain:{OWNER_DOMAIN}", (f"domain:{OWNER_DOMAIN}",))
OTHER_DOMAIN: Caller = ("domain:evil_domain", ("domain:evil_domain",))
COMPONENT: Caller = None
BELOW: dict[Level, Sequence[Caller]] = {
    Level.READ: (),
    Level.WRITE: (READER,),
    Level.OWNER: (READER, OTHER_DOMAIN),
    Level.OPERATE: (READER, OWNER),
    Level.COMPONENT: (OPERATOR, OWNER),
    Level.ADMIN: (OPERATOR, COMPONENT),
}
ADMITTED: dict[Level, Caller] = {
    Level.READ: READER,
    Level.WRITE: OWNER,
    Level.OWNER: OWNER,
    Level.OPERATE: OPERATOR,
    Level.COMPONENT: COMPONENT,
    Level.ADMIN: ADMIN,
}


@pytest.fixture(scope="module")
def callers() -> Callable[[str, Caller], grpc.aio.Channel]:
    """Makes a channel to an address as a caller (None: the component certificate)."""
    pki = session_pki()
    tokens: dict[Caller, str] = {}

    def open_as(address: str, caller: Caller) -> grpc.aio.Channel:
        if caller is None:
            component = ClientSecurity(pki.ca_file, pki.component.cert, pki.component.key, None)
            return channel(address, security=component)
        if caller not in tokens:
            tokens[caller] = pki.token(caller[0], *caller[1])
        return channel(address, security=pki.client(token=tokens[caller]))

    return open_as


@pytest.mark.parametrize("kernel", KERNELS)
async def test_every_rpc_refuses_a_caller_with_no_credential(
    kernels: dict[str, Served], kernel: str
) -> None:
    served = kernels[kernel]
    assert any(name.startswith(f"grace.kernels.{kernel}.") for name in served.services)
    wrong = {}
    async with channel(served.address, security=session_pki().client()) as anonymous:
        for method in methods_of(served):
            code, message = await code_of(anonymous, method)
            if code != grpc.StatusCode.UNAUTHENTICATED or "Bearer" not in message:
                wrong[method.path] = (code.name, message)
    assert wrong == {}


@pytest.mark.parametrize("kernel", KERNELS)
async def test_every_rpc_refuses_a_principal_below_its_rule(
    kernels: dict[str, Served],
    kernel: str,
    callers: Callable[[str, Caller], grpc.aio.Channel],
) -> None:
    served = kernels[kernel]
    wrong = {}
    checked = 0
    for method in methods_of(served):
        for caller in BELOW[method.rule.level]:
            async with callers(served.address, caller) as chan:
                code, message = await code_of(chan, method)
            checked += 1
            if code != grpc.StatusCode.PERMISSION_DENIED or method.path not in message:
                wrong[(method.path, caller and caller[0])] = (code.name, message)
    assert checked > 0
    assert wrong == {}


@pytest.mark.parametrize("kernel", KERNELS)
async def test_every_rpc_admits_the_principal_its_rule_names(
    kernels: dict[str, Served],
    kernel: str,
    callers: Callable[[str, Caller], grpc.aio.Channel],
) -> None:
    served = kernels[kernel]
    wrong = {}
    for method in methods_of(served):
        caller = ADMITTED[method.rule.level]
        async with callers(served.address, caller) as chan:
            code, message = await code_of(chan, method)
        if code in AUTHORIZATION_CODES:
            wrong[(method.path, caller and caller[0])] = (code.name, message)
    assert wrong == {}
