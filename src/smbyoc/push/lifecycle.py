"""ECR lifecycle policies: built from ``--keep-last N`` or read from a file, checked offline.

:func:`check_lifecycle_policy` is a pure function that lists every way a policy breaks ECR's rules
(contract-endpoints.md §8.1; ECRUG ``LifecyclePolicies.md``, BOTO-ECR ``PutLifecyclePolicy``):

* ``lifecyclePolicyText`` is 100-30720 characters of JSON ``{"rules": [...]}`` with at least one rule;
* a rule has ``rulePriority`` (an integer >= 1, unique), an optional ``description``, ``selection`` and
  ``action`` (``{"type": "expire"}``) and nothing else;
* ``selection.tagStatus`` is ``tagged`` (needs ``tagPrefixList`` or ``tagPatternList``, not both), ``untagged``
  or ``any`` (neither list); ``countType`` is ``imageCountMoreThan`` (no ``countUnit``) or ``sinceImagePushed``
  (``countUnit: "days"``); ``countNumber`` is an integer >= 1;
* a rule with ``tagStatus: any`` has the highest ``rulePriority``; at most one rule selects untagged
  images; no tag prefix appears in two rules.

ECR would refuse most of these at ``PutLifecyclePolicy`` time, after the repository was created; checking
first means a bad policy file leaves nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeGuard

from smbyoc.errors import ConfigError

TEXT_MIN, TEXT_MAX = 100, 30720
TAG_STATUSES = ("tagged", "untagged", "any")
COUNT_TYPES = ("imageCountMoreThan", "sinceImagePushed")
RULE_KEYS = frozenset({"rulePriority", "description", "selection", "action"})
SELECTION_KEYS = frozenset({"tagStatus", "tagPrefixList", "tagPatternList", "countType", "countUnit",
                            "countNumber"})


def keep_last_policy(count: int) -> str:
    """A policy that expires every image but the ``count`` most recently pushed (tagged or not)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"{count!r} is not a positive number of images", key="--keep-last")
    policy = {"rules": [{
        "rulePriority": 1,
        "description": f"keep the last {count} images pushed, expire older ones (smbyoc push --keep-last)",
        "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": count},
        "action": {"type": "expire"},
    }]}
    return json.dumps(policy, separators=(",", ":"))


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)


def _check_selection(where: str, selection: Any, problems: list[str]) -> None:
    if not isinstance(selection, dict):
        problems.append(f"{where}: must be an object")
        return
    for key in sorted(set(selection) - SELECTION_KEYS):
        problems.append(f"{where}.{key}: not an ECR selection field")
    status = selection.get("tagStatus")
    if status not in TAG_STATUSES:
        problems.append(f"{where}.tagStatus: {status!r} is not one of {', '.join(TAG_STATUSES)}")
    lists = [key for key in ("tagPrefixList", "tagPatternList") if key in selection]
    for key in lists:
        if not _string_list(selection[key]):
            problems.append(f"{where}.{key}: must be a non-empty list of non-empty strings")
    if status == "tagged" and not lists:
        problems.append(f"{where}: tagStatus tagged needs tagPrefixList or tagPatternList")
    if len(lists) == 2:
        problems.append(f"{where}: give tagPrefixList or tagPatternList, not both")
    if status in ("untagged", "any"):
        for key in lists:
            problems.append(f"{where}.{key}: only allowed with tagStatus tagged")
    count_type = selection.get("countType")
    if count_type not in COUNT_TYPES:
        problems.append(f"{where}.countType: {count_type!r} is not one of {', '.join(COUNT_TYPES)}")
    unit = selection.get("countUnit")
    if count_type == "sinceImagePushed" and unit != "days":
        problems.append(f"{where}.countUnit: must be \"days\" with countType sinceImagePushed (got {unit!r})")
    if count_type == "imageCountMoreThan" and "countUnit" in selection:
        problems.append(f"{where}.countUnit: not allowed with countType imageCountMoreThan")
    number = selection.get("countNumber")
    if not _is_int(number) or number < 1:
        problems.append(f"{where}.countNumber: {number!r} is not an integer >= 1")


def check_lifecycle_policy(text: str) -> list[str]:
    """Every problem with a lifecycle policy's text, each ``"<json path>: <why>"``; empty when ECR would take it."""
    problems: list[str] = []
    if not TEXT_MIN <= len(text) <= TEXT_MAX:
        problems.append(f"the policy has {len(text)} characters; ECR takes {TEXT_MIN}-{TEXT_MAX}")
    try:
        policy = json.loads(text)
    except ValueError as e:
        return [*problems, f"not JSON: {e}"]
    if not isinstance(policy, dict):
        return [*problems, "the policy must be a JSON object {\"rules\": [...]}"]
    for key in sorted(set(policy) - {"rules"}):
        problems.append(f"{key}: not a lifecycle policy field (only \"rules\")")
    rules = policy.get("rules")
    if not isinstance(rules, list) or not rules:
        return [*problems, "rules: must be a non-empty list"]

    priorities: list[tuple[int, str]] = []
    any_rules: list[tuple[int, str]] = []
    untagged: list[str] = []
    prefixes: dict[str, str] = {}
    for index, rule in enumerate(rules):
        where = f"rules[{index}]"
        if not isinstance(rule, dict):
            problems.append(f"{where}: must be an object")
            continue
        for key in sorted(set(rule) - RULE_KEYS):
            problems.append(f"{where}.{key}: not a rule field")
        for key in ("rulePriority", "selection", "action"):
            if key not in rule:
                problems.append(f"{where}.{key}: missing")
        priority = rule.get("rulePriority")
        if "rulePriority" in rule:
            if not _is_int(priority) or priority < 1:
                problems.append(f"{where}.rulePriority: {priority!r} is not an integer >= 1")
            else:
                priorities.append((priority, where))
        if "description" in rule and not isinstance(rule["description"], str):
            problems.append(f"{where}.description: must be a string")
        if "action" in rule and rule["action"] != {"type": "expire"}:
            problems.append(f"{where}.action: must be {{\"type\": \"expire\"}}")
        if "selection" in rule:
            selection = rule["selection"]
            _check_selection(f"{where}.selection", selection, problems)
            if isinstance(selection, dict):
                if selection.get("tagStatus") == "untagged":
                    untagged.append(where)
                prefix_list = selection.get("tagPrefixList")
                for prefix in prefix_list if isinstance(prefix_list, list) else ():
                    if isinstance(prefix, str) and prefix in prefixes and prefixes[prefix] != where:
                        problems.append(f"{where}.selection.tagPrefixList: prefix {prefix!r} is also in "
                                        f"{prefixes[prefix]} (ECR needs a unique set of tag prefixes)")
                    elif isinstance(prefix, str):
                        prefixes[prefix] = where
                if selection.get("tagStatus") == "any" and _is_int(priority):
                    any_rules.append((priority, where))

    seen: dict[int, str] = {}
    for priority, where in priorities:
        if priority in seen:
            problems.append(f"{where}.rulePriority: {priority} is also the priority of {seen[priority]}")
        else:
            seen[priority] = where
    top = max((p for p, _ in priorities), default=0)
    for priority, where in any_rules:
        if priority < top:
            problems.append(f"{where}: a tagStatus any rule must have the highest rulePriority (evaluated last)")
    if len(untagged) > 1:
        problems.append(f"{', '.join(untagged)}: only one rule may select untagged images")
    return problems


def checked_policy(text: str, *, source: str) -> str:
    """``text`` when it is a valid policy, else ConfigError naming ``source`` and every problem on one line."""
    problems = check_lifecycle_policy(text)
    if problems:
        raise ConfigError("invalid ECR lifecycle policy: " + "; ".join(problems), source=source)
    return text


def policy_from_options(path: Path | None, keep_last: int | None) -> str | None:
    """The lifecycle policy text asked for by ``--lifecycle-policy FILE`` or ``--keep-last N`` (not both)."""
    if path is not None and keep_last is not None:
        raise ConfigError("give --lifecycle-policy FILE or --keep-last N, not both", key="--keep-last")
    if keep_last is not None:
        return checked_policy(keep_last_policy(keep_last), source="--keep-last")
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", source=str(path)) from e
    return checked_policy(text, source=str(path))
