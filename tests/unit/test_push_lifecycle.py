"""ECR lifecycle policies checked offline against ECR's rules (contract-endpoints.md §8.1), and compared with
moto's own validator (which checks a subset: every policy we accept, it accepts)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from smbyoc.errors import ConfigError
from smbyoc.push.lifecycle import check_lifecycle_policy, keep_last_policy, policy_from_options

# The ECR User Guide's examples (LifecyclePolicies.md, lifecycle_policy_examples.md).
DOC_EXAMPLES: list[dict[str, Any]] = [
    {"rules": [{"rulePriority": 1, "description": "Expire images older than 14 days",
                "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days",
                              "countNumber": 14},
                "action": {"type": "expire"}}]},
    {"rules": [{"rulePriority": 1, "description": "Keep last 30 images",
                "selection": {"tagStatus": "tagged", "tagPrefixList": ["v"], "countType": "imageCountMoreThan",
                              "countNumber": 30},
                "action": {"type": "expire"}}]},
    {"rules": [
        {"rulePriority": 1, "description": "Rule 1",
         "selection": {"tagStatus": "tagged", "tagPrefixList": ["prod"], "countType": "imageCountMoreThan",
                       "countNumber": 1}, "action": {"type": "expire"}},
        {"rulePriority": 2, "description": "Rule 2",
         "selection": {"tagStatus": "tagged", "tagPrefixList": ["beta"], "countType": "imageCountMoreThan",
                       "countNumber": 1}, "action": {"type": "expire"}},
        {"rulePriority": 3, "description": "Rule 3",
         "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 1},
         "action": {"type": "expire"}}]},
    {"rules": [{"rulePriority": 1, "description": "Rule 1",
                "selection": {"tagStatus": "tagged", "tagPatternList": ["prod*"], "countType": "sinceImagePushed",
                              "countUnit": "days", "countNumber": 14},
                "action": {"type": "expire"}}]},
]


def mutate(path: str, value: Any, base: dict[str, Any] | None = None, *, delete: bool = False) -> str:
    """DOC_EXAMPLES[2] (or ``base``) with one field at ``path`` (``rules.0.selection.countUnit``) changed."""
    policy = copy.deepcopy(base or DOC_EXAMPLES[2])
    *parents, last = path.split(".")
    node: Any = policy
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if delete:
        del node[key]
    else:
        node[key] = value
    return json.dumps(policy)


BAD: list[tuple[str, str]] = [
    ("{", "not JSON"),
    ("[" + " " * 120 + "]", "must be a JSON object"),
    (json.dumps({"rules": [], "pad": "x" * 100}), "rules: must be a non-empty list"),
    (json.dumps({"rules": DOC_EXAMPLES[0]["rules"], "version": 1}), "version: not a lifecycle policy field"),
    (mutate("rules.0.rulePriority", 0), "rules[0].rulePriority: 0 is not an integer >= 1"),
    (mutate("rules.0.rulePriority", "1"), "rules[0].rulePriority: '1' is not an integer >= 1"),
    (mutate("rules.0.rulePriority", True), "rules[0].rulePriority: True"),
    (mutate("rules.1.rulePriority", 1), "rules[1].rulePriority: 1 is also the priority of rules[0]"),
    (mutate("rules.0.rulePriority", None, delete=True), "rules[0].rulePriority: missing"),
    (mutate("rules.0.action", {"type": "delete"}), "rules[0].action: must be"),
    (mutate("rules.0.action", None, delete=True), "rules[0].action: missing"),
    (mutate("rules.0.name", "x"), "rules[0].name: not a rule field"),
    (mutate("rules.0.description", 5), "rules[0].description: must be a string"),
    (mutate("rules.0.selection.tagStatus", "all"), "rules[0].selection.tagStatus: 'all' is not one of"),
    (mutate("rules.0.selection.tagPrefixList", None, delete=True),
     "rules[0].selection: tagStatus tagged needs tagPrefixList or tagPatternList"),
    (mutate("rules.0.selection.tagPrefixList", []), "rules[0].selection.tagPrefixList: must be a non-empty list"),
    (mutate("rules.0.selection.tagPatternList", ["p*"]), "give tagPrefixList or tagPatternList, not both"),
    (mutate("rules.2.selection.tagPrefixList", ["x"]),
     "rules[2].selection.tagPrefixList: only allowed with tagStatus tagged"),
    (mutate("rules.0.selection.countType", "imageCountLessThan"), "rules[0].selection.countType"),
    (mutate("rules.0.selection.countUnit", "days"), "countUnit: not allowed with countType imageCountMoreThan"),
    (mutate("rules.0.selection.countUnit", "weeks", DOC_EXAMPLES[0]), 'countUnit: must be "days"'),
    (mutate("rules.0.selection.countUnit", None, DOC_EXAMPLES[0], delete=True), 'countUnit: must be "days"'),
    (mutate("rules.0.selection.countNumber", 0), "rules[0].selection.countNumber: 0 is not an integer >= 1"),
    (mutate("rules.0.selection.countNumber", 2.5), "countNumber: 2.5 is not an integer"),
    (mutate("rules.0.selection.extra", 1), "rules[0].selection.extra: not an ECR selection field"),
    (mutate("rules.2.rulePriority", 0), "rules[2]: a tagStatus any rule must have the highest rulePriority"),
    (mutate("rules.1.selection", {"tagStatus": "untagged", "countType": "imageCountMoreThan", "countNumber": 1},
            json.loads(mutate("rules.0.selection", {"tagStatus": "untagged", "countType": "imageCountMoreThan",
                                                    "countNumber": 1}))),
     "rules[0], rules[1]: only one rule may select untagged images"),
    (mutate("rules.1.selection.tagPrefixList", ["prod"]),
     "prefix 'prod' is also in rules[0] (ECR needs a unique set of tag prefixes)"),
    ('{"rules":[1]}' + " " * 100, "rules[0]: must be an object"),
    ('{"rules":[]}', "the policy has 12 characters; ECR takes 100-30720"),
    (json.dumps({"rules": DOC_EXAMPLES[0]["rules"], "x": "y" * 30720}), "ECR takes 100-30720"),
]


@pytest.mark.parametrize("policy", DOC_EXAMPLES)
def test_the_ecr_guides_examples_pass(policy: dict[str, Any]) -> None:
    assert check_lifecycle_policy(json.dumps(policy)) == []


@pytest.mark.parametrize(("text", "problem"), BAD)
def test_each_rule_is_named(text: str, problem: str) -> None:
    problems = check_lifecycle_policy(text)
    assert any(problem in p for p in problems), problems


def test_keep_last_policy() -> None:
    text = keep_last_policy(20)
    assert check_lifecycle_policy(text) == []
    rule = json.loads(text)["rules"][0]
    assert rule["selection"] == {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 20}
    assert rule["action"] == {"type": "expire"}
    for bad in (0, -1, True):
        with pytest.raises(ConfigError, match="--keep-last"):
            keep_last_policy(bad)


def test_policy_from_options(tmp_path: Path) -> None:
    assert policy_from_options(None, None) is None
    assert policy_from_options(None, 3) == keep_last_policy(3)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(DOC_EXAMPLES[1]))
    assert policy_from_options(good, None) == good.read_text()
    with pytest.raises(ConfigError, match="not both"):
        policy_from_options(good, 3)
    bad = tmp_path / "bad.json"
    bad.write_text(mutate("rules.0.selection.countNumber", 0))
    with pytest.raises(ConfigError) as info:
        policy_from_options(bad, None)
    assert str(info.value).startswith(f"{bad}: invalid ECR lifecycle policy: rules[0].selection.countNumber")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=f"{tmp_path / 'missing.json'}: cannot read"):
        policy_from_options(tmp_path / "missing.json", None)


def _moto_accepts(text: str) -> bool:
    from moto.ecr.exceptions import InvalidParameterException
    from moto.ecr.policy_validation import EcrLifecyclePolicyValidator

    try:
        EcrLifecyclePolicyValidator(text).validate()
    except (InvalidParameterException, TypeError, AttributeError, KeyError):
        return False
    return True


def test_what_we_accept_moto_accepts() -> None:
    """moto checks a subset of ECR's rules: every policy we accept it must accept, and every policy it rejects
    we must reject (the comparison has teeth: it rejects many of BAD)."""
    pytest.importorskip("moto")
    texts = [json.dumps(p) for p in DOC_EXAMPLES] + [keep_last_policy(5)] + [text for text, _ in BAD]
    ours = {text: not check_lifecycle_policy(text) for text in texts}
    moto = {text: _moto_accepts(text) for text in texts}
    assert [text for text in texts if ours[text] and not moto[text]] == []
    assert sum(1 for text in texts if ours[text]) == len(DOC_EXAMPLES) + 1
    assert sum(1 for text in texts if not moto[text]) >= 10
