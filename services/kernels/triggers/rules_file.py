"""The rules file: TOML with one `[[rules]]` table per rule (fields as in `model.Rule`).

[[rules]]
rule_id = "process-big-documents"
pattern = "document.uploaded"
condition = "data.size > `1000`"
action = "workflow"
target = { workflow_id = "document" }
input = { document_id = "subject", size = "data.size" }
min_trust = 0.5
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from services.common.config import ConfigError
from services.common.errors import InvalidArgument
from services.kernels.triggers.model import Rule, parse_rule

MAX_RULES = 10_000


def load_rules(path: Path) -> list[Rule]:
    """The file's rules; ConfigError names the file, the rule and the field."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"GRACE_TRIGGERS_RULES_FILE: cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"GRACE_TRIGGERS_RULES_FILE: {path} is not TOML: {exc}") from None
    entries = document.get("rules", [])
    if not isinstance(entries, list) or len(entries) > MAX_RULES:
        raise ConfigError(f"{path}: `rules` must be an array of at most {MAX_RULES} tables")
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: rules[{index}] must be a table")
        try:
            rule = parse_rule(entry, origin="file")
        except InvalidArgument as exc:
            raise ConfigError(f"{path}: rules[{index}].{exc.field}: {exc.rule}") from None
        if rule.rule_id in seen:
            raise ConfigError(f"{path}: rules[{index}].rule_id: {rule.rule_id} appears twice")
        seen.add(rule.rule_id)
        rules.append(rule)
    return rules
