"""`grace status`, `grace heal`, `grace restart`: ask a running Guardian."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping

import grpc

from grace.guardian.v1 import guardian_pb2, guardian_pb2_grpc
from services.cli.output import component_table
from services.common.channels import channel
from services.common.config import peer_address
from services.guardian.playbooks import PLAYBOOKS

EXIT_OK = 0
EXIT_NOT_OK = 1
EXIT_UNREACHABLE = 2
_TIMEOUT_S = 120.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `grace status`, `grace heal` and `grace restart`."""
    status = subparsers.add_parser(
        "status", help="show every component; exit 0 only when all are SERVING"
    )
    _target_flag(status)
    status.set_defaults(handler=lambda args: asyncio.run(_status(guardian_target(args))))

    heal = subparsers.add_parser("heal", help="run a healing playbook on a component")
    _target_flag(heal)
    heal.add_argument("component", help="component name")
    heal.add_argument(
        "--playbook", default="", choices=PLAYBOOKS, help="playbook (default: Guardian picks)"
    )
    heal.set_defaults(
        handler=lambda args: asyncio.run(
            _heal(guardian_target(args), args.component, args.playbook)
        )
    )

    restart = subparsers.add_parser("restart", help="restart a component")
    _target_flag(restart)
    restart.add_argument("component", help="component name")
    restart.set_defaults(
        handler=lambda args: asyncio.run(_restart(guardian_target(args), args.component))
    )


def _target_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--guardian", help="Guardian's host:port (GRACE_GUARDIAN_ADDR, default 127.0.0.1:8104)"
    )
    parser.add_argument(
        "--data-dir", help="data dir of grace up, for its credential (default ./.grace)"
    )
    parser.set_defaults(connects=True)


def guardian_target(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> str:
    """Where Guardian is: --guardian, else GRACE_GUARDIAN_ADDR, else the default port."""
    return str(args.guardian or peer_address(os.environ if env is None else env, "guardian"))


def _state(value: guardian_pb2.ComponentState.ValueType) -> str:
    return guardian_pb2.ComponentState.Name(value).removeprefix("COMPONENT_STATE_")


def _unreachable(target: str, exc: grpc.aio.AioRpcError) -> int:
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        print(f"grace: no Guardian answers on {target} (is `grace up` running?)", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(f"grace: {exc.code().name}: {exc.details()}", file=sys.stderr)
    return EXIT_NOT_OK


async def _status(target: str) -> int:
    async with channel(target) as chan:
        stub = guardian_pb2_grpc.GuardianServiceStub(chan)
        try:
            components: list[guardian_pb2.Component] = []
            token = ""
            while True:
                page = await stub.ListComponents(
                    guardian_pb2.ListComponentsRequest(page_size=1000, page_token=token),
                    timeout=5,
                )
                components.extend(page.components)
                token = page.next_page_token
                if not token:
                    break
            health = await stub.GetSystemHealth(guardian_pb2.GetSystemHealthRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return _unreachable(target, exc)
    rows = [
        (
            c.name,
            c.port,
            c.pid,
            _state(c.state),
            c.last_error if c.state != guardian_pb2.COMPONENT_STATE_SERVING else "",
        )
        for c in components
    ]
    print(component_table(rows))
    system = guardian_pb2.SystemStatus.Name(health.status).removeprefix("SYSTEM_STATUS_")
    print(f"\nsystem: {system} ({health.serving_components}/{health.total_components} SERVING)")
    all_serving = all(c.state == guardian_pb2.COMPONENT_STATE_SERVING for c in components)
    return EXIT_OK if all_serving and health.boot_complete else EXIT_NOT_OK


async def _heal(target: str, component: str, playbook: str) -> int:
    async with channel(target) as chan:
        stub = guardian_pb2_grpc.GuardianServiceStub(chan)
        try:
            result = await stub.Heal(
                guardian_pb2.HealRequest(component_name=component, playbook=playbook),
                timeout=_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            return _unreachable(target, exc)
    print(f"{result.playbook} {result.component_name}: {result.message}")
    for finding in result.findings:
        mark = "ok  " if finding.ok else "FAIL"
        print(f"  [{mark}] {finding.check}: {finding.detail}")
    return EXIT_OK if result.success else EXIT_NOT_OK


async def _restart(target: str, component: str) -> int:
    async with channel(target) as chan:
        stub = guardian_pb2_grpc.GuardianServiceStub(chan)
        try:
            result = await stub.RestartComponent(
                guardian_pb2.RestartComponentRequest(component_name=component),
                timeout=_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            return _unreachable(target, exc)
    c = result.component
    print(f"{c.name}: {_state(c.state)} (pid {c.pid}, port {c.port})")
    return EXIT_OK if c.state == guardian_pb2.COMPONENT_STATE_SERVING else EXIT_NOT_OK
