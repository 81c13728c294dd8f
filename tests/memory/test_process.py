"""`python -m services.memory` as a real process, driven with grpcurl."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import free_port, session_pki

pytestmark = pytest.mark.slow

SERVICE = "grace.memory.v1.SharedMemoryService"


def wait_serving(address: str, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    with session_pki().sync_channel(address) as chan:
        stub = health_pb2_grpc.HealthStub(chan)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"memory at {address} never became SERVING")


def grpcurl(address: str, method: str, body: dict[str, object]) -> dict[str, object]:
    tool = shutil.which("grpcurl") or str(Path(sys.executable).with_name("grpcurl"))
    out = subprocess.run(
        [
            tool,
            *session_pki().grpcurl_args(),
            "-d",
            json.dumps(body),
            address,
            f"{SERVICE}/{method}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_the_seed_flow_works_with_grpcurl_and_the_process_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {
        **os.environ,
        "GRACE_MEMORY_PORT": str(port),
        "GRACE_DATA_DIR": str(tmp_path),
        "GRACE_EVENTBUS_ADDR": "127.0.0.1:1",
        **session_pki().env(),
    }
    env.pop("GRACE_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "services.memory"], env=env)
    try:
        wait_serving(address)
        created = grpcurl(
            address,
            "Contribute",
            {
                "domain_id": "ai_domain",
                "contribution_type": "optimization",
                "content": {"technique": "caching", "improvement": "2x faster"},
            },
        )
        cid = created["contribution"]["contribution_id"]  # type: ignore[index]
        grpcurl(address, "Verify", {"contribution_id": cid, "domain_id": "data_domain"})
        grpcurl(
            address,
            "Apply",
            {"contribution_id": cid, "domain_id": "data_domain", "outcome": "OUTCOME_SUCCESS"},
        )
        found = grpcurl(address, "Query", {"query": "caching", "min_confidence": 0.7})
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)

    assert [r["contribution"]["contribution_id"] for r in found["results"]] == [cid]  # type: ignore[index,union-attr]
    assert code == 0
    assert (tmp_path / "memory.db").exists()
