"""What a registration and a heartbeat may contain: the limits, and the checks that name the
field and the rule broken."""

from __future__ import annotations

import re

from services.common.errors import InvalidArgument
from services.common.validation import (
    require_id,
    require_range,
    require_string_map,
    require_text,
    require_unique_ids,
)
from services.registry.model import Metrics, Registration

CAPABILITY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]*")
MAX_CAPABILITIES = 64
MAX_CAPABILITY_LENGTH = 64
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY = 128
MAX_METADATA_VALUE = 1024
MAX_VERSION_LENGTH = 64
MAX_HOST_LENGTH = 255
MAX_INSTANCE_ID_LENGTH = 255
# Printable, no spaces: "host:port" and "[::1]:9000" are valid instance ids.
INSTANCE_ID_PATTERN = re.compile(r"[!-~]*")
MIN_LEASE_TTL_S = 1.0
MAX_LEASE_TTL_S = 3600.0


def validate_registration(reg: Registration) -> Registration:
    """Checks every field of a registration; raises InvalidArgument naming the first bad one."""
    require_id("domain_id", reg.domain_id)
    require_text("host", reg.host, max_length=MAX_HOST_LENGTH, required=True)
    if not 1 <= reg.port <= 65535:
        raise InvalidArgument("port", "must be between 1 and 65535")
    capabilities = require_unique_ids(
        "capabilities",
        reg.capabilities,
        max_count=MAX_CAPABILITIES,
        max_length=MAX_CAPABILITY_LENGTH,
        pattern=CAPABILITY_PATTERN,
    )
    require_text("version", reg.version, max_length=MAX_VERSION_LENGTH)
    require_string_map(
        "metadata",
        reg.metadata,
        max_entries=MAX_METADATA_ENTRIES,
        max_key_length=MAX_METADATA_KEY,
        max_value_length=MAX_METADATA_VALUE,
    )
    if reg.public_key and len(reg.public_key) != 32:
        raise InvalidArgument("public_key", "must be a raw 32-byte Ed25519 public key")
    validate_instance_id(reg.instance_id)
    if reg.lease_ttl_s is not None:
        require_range(
            "lease_ttl", reg.lease_ttl_s, minimum=MIN_LEASE_TTL_S, maximum=MAX_LEASE_TTL_S
        )
    return Registration(
        domain_id=reg.domain_id,
        host=reg.host,
        port=reg.port,
        capabilities=tuple(capabilities),
        version=reg.version,
        metadata=dict(reg.metadata),
        public_key=reg.public_key,
        lease_ttl_s=reg.lease_ttl_s,
        instance_id=reg.instance_id,
    )


def validate_instance_id(instance_id: str) -> str:
    """Checks an instance id ("" is the default instance); raises InvalidArgument."""
    if len(instance_id) > MAX_INSTANCE_ID_LENGTH:
        raise InvalidArgument("instance_id", f"must be at most {MAX_INSTANCE_ID_LENGTH} characters")
    if not INSTANCE_ID_PATTERN.fullmatch(instance_id):
        raise InvalidArgument("instance_id", "must be printable ASCII without spaces")
    return instance_id


def validate_metrics(metrics: Metrics) -> Metrics:
    """Rejects metrics that are not numbers; clamps ratios into [0, 1]."""
    for name in ("load", "latency_ms", "success_rate"):
        value = getattr(metrics, name)
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidArgument(f"metrics.{name}", "must be a finite number")
    if metrics.latency_ms < 0:
        raise InvalidArgument("metrics.latency_ms", "must not be negative")
    return Metrics(
        load=min(1.0, max(0.0, metrics.load)),
        latency_ms=metrics.latency_ms,
        success_rate=min(1.0, max(0.0, metrics.success_rate)),
    )
