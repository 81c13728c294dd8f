"""Runs an example domain as one more instance, under an id of its own:
`python -m tests.integration.domain_instance examples.ai_domain ai_domain_c [flags]`.

The registry keeps one record (one address) per domain id, so two processes registering
the same id overwrite each other's address and keep each other's lease alive: routing
would follow whichever registered last, dead or not. Instances of a domain therefore
register under ids of their own and callers reach them by capability, which the registry
ranks by score over every healthy domain that has it.
"""

from __future__ import annotations

import importlib
import sys

from services.sdk import Domain


def main(argv: list[str]) -> int:
    module_name, instance_id, *flags = argv
    domain = importlib.import_module(module_name).domain
    assert isinstance(domain, Domain), f"{module_name}.domain is not an SDK Domain"
    # The id names the domain everywhere at run time (variables, database file, identity,
    # registration, events' source), so the instance is a domain of its own.
    domain.domain_id = instance_id
    return domain.run(flags)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
