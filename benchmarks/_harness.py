"""What the whole-system benchmarks share: `grace up` on free ports, and its processes' memory.

`start_grace` boots the topology (optionally with the example domains) as users run it, on
free loopback ports in a temporary directory, and yields once it printed "Grace is up";
the process tree is stopped with SIGTERM (then SIGKILL) at the end. `memory_by_process`
reads PSS and RSS of every process of the tree from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import grpc  # noqa: E402

from grace.domain.v1 import domain_pb2_grpc  # noqa: E402
from services.cli.credentials import client_security  # noqa: E402
from services.common.config import ServerConfig  # noqa: E402
from services.common.server import Service  # noqa: E402
from services.guardian.topology import ComponentSpec, load_topology  # noqa: E402


def server_config(service: str, data: Path) -> ServerConfig:
    """The configuration of a server a benchmark runs in its own process: its SQLite file in
    `data`, a short shutdown grace, the defaults otherwise."""
    return ServerConfig(
        service=service,
        data_dir=data,
        database_url=f"sqlite+aiosqlite:///{data / (service + '.db')}",
        shutdown_grace_s=0.5,
    )


class DomainHost(Service):
    """Serves a DomainService implementation (a benchmark's stand-in domain)."""

    def __init__(self, servicer: domain_pb2_grpc.DomainServiceServicer) -> None:
        self.servicer = servicer

    def add_to_server(self, server: grpc.aio.Server) -> list[str]:
        domain_pb2_grpc.add_DomainServiceServicer_to_server(self.servicer, server)
        return ["grace.domain.v1.DomainService"]


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class Grace:
    """A running `grace up`."""

    pid: int
    boot_s: float
    addresses: dict[str, str]
    data_dir: Path

    @property
    def secure(self) -> bool:
        return client_security(self.data_dir) is not None

    @property
    def gateway_url(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{self.addresses['gateway']}"

    def http_client(self, **options: Any) -> httpx.AsyncClient:
        """A REST client of the gateway as an operator uses it: in the secure default it
        trusts the Grace CA and sends the admin token `grace up` wrote (plaintext with
        `--insecure`)."""
        security = client_security(self.data_dir)
        if security is None:
            return httpx.AsyncClient(base_url=self.gateway_url, **options)
        headers = {"Authorization": f"Bearer {security.token}"} if security.token else {}
        context = ssl.create_default_context(cafile=str(security.ca_file))
        return httpx.AsyncClient(
            base_url=self.gateway_url, verify=context, headers=headers, **options
        )


_PR_SET_PDEATHSIG = 1


def stop_with_parent() -> None:
    """In the child before exec: SIGTERM it when the benchmark dies. A benchmark ended by a
    signal runs none of its clean-up, and its Grace would otherwise go on loading the
    machine under every later measurement."""
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.asynccontextmanager
async def start_grace(
    *,
    examples: bool = False,
    config: str = "",
    env: Mapping[str, str] | None = None,
    boot_timeout_s: float = 180.0,
) -> AsyncIterator[Grace]:
    """Boots `grace up` on free ports; stops the whole tree when the block ends."""
    groups = ["examples"] if examples else []
    components: tuple[ComponentSpec, ...] = load_topology(None, groups=groups).components
    *ports, guardian_port = free_ports(len(components) + 1)
    addresses = {c.name: f"127.0.0.1:{p}" for c, p in zip(components, ports, strict=True)}
    addresses["guardian"] = f"127.0.0.1:{guardian_port}"
    # A component can still be writing its database files while the tree stops; what is
    # left of the temporary directory then must not turn a finished run into a traceback.
    with tempfile.TemporaryDirectory(prefix="grace-bench-", ignore_cleanup_errors=True) as root:
        config_file = Path(root) / "grace.toml"
        config_file.write_text(
            config
            + "".join(
                f"\n[components.{c.name}]\nport = {p}\n"
                for c, p in zip(components, ports, strict=True)
            )
        )
        data_dir = Path(root) / "data"
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            "up",
            *(["--with-examples"] if examples else []),
            "--config",
            str(config_file),
            "--data-dir",
            str(data_dir),
            "--port",
            str(guardian_port),
            cwd=PROJECT_ROOT,
            env=None if env is None else dict(env),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=stop_with_parent,
        )
        assert proc.stdout is not None
        output: list[str] = []
        drain: asyncio.Task[bytes] | None = None
        try:
            while True:
                raw = await asyncio.wait_for(proc.stdout.readline(), boot_timeout_s)
                line = raw.decode(errors="replace")
                if not line:
                    raise RuntimeError("grace up exited before it was up:\n" + "".join(output))
                output.append(line)
                if line.startswith("Grace is up"):
                    break
            boot_s = time.perf_counter() - started
            drain = asyncio.create_task(proc.stdout.read())  # a full pipe must never block it
            yield Grace(proc.pid, boot_s, addresses, data_dir)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()
            if drain is not None:
                drain.cancel()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """`root` and every descendant (by parent pid, from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def process_name(pid: int, root: int) -> str:
    """A short name for a process of the tree: the module it runs (`-m`), else its command
    line. A forked component's title is one string with spaces: split on both."""
    if pid == root:
        return "grace up + guardian"
    words = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().split()
    if "-m" in words and words.index("-m") + 1 < len(words):
        return words[words.index("-m") + 1]
    return " ".join(words[:3])


def memory_by_process(root: int) -> dict[str, tuple[int, int, int]]:
    """{name: (pid, PSS kB, RSS kB)} for every process of the tree rooted at `root`."""
    found: dict[str, tuple[int, int, int]] = {}
    for pid in process_tree(root):
        try:
            name = process_name(pid, root)
            values = {}
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("Pss", "Rss"):
                    values[key] = int(rest.split()[0])
        except OSError:
            continue
        while name in found:
            name += "'"
        found[name] = (pid, values.get("Pss", 0), values.get("Rss", 0))
    return found
