"""`smbyoc init NAME`: the name is checked against everything it becomes (ECR, CloudFormation, SageMaker, Python)."""

from __future__ import annotations

import keyword
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from smbyoc.errors import ConfigError
from smbyoc.scaffold.names import ProjectName


@pytest.mark.parametrize("name", ["ab", "churn", "churn-model", "model2", "a--b", "x" * 63, "fraud-detector-v2"])
def test_usable_names_give_usable_derived_names(name: str) -> None:
    project = ProjectName.parse(name)
    assert project.ecr_repositories == (f"{name}/train", f"{name}/serve")
    assert project.stack_names[:2] == (f"{name}-pipeline", f"{name}-endpoint")
    assert project.endpoint_name == name
    assert project.python_name == name.replace("-", "_") and project.python_name.isidentifier()
    assert project.image("serve") == f"{name}-serve"


@pytest.mark.parametrize(("name", "culprit"), [
    ("a", "too short"),
    ("", "too short"),
    ("Churn", "lowercase"),
    ("My_Model", "try 'my-model'"),
    ("9lives", "start with a letter"),
    ("-churn", "start with a letter"),
    ("churn-", "ECR repository 'churn-/train'"),
    ("churn_model", "CloudFormation stack 'churn_model-pipeline'"),
    ("churn.model", "CloudFormation stack"),
    ("team/churn", "CloudFormation stack"),
    ("churn model", "ECR repository"),
    ("chürn", "printable ASCII"),
    (" churn", "spaces"),
    ("x" * 64, "SageMaker endpoint"),
    ("a" + "-" * 62 + "b", "SageMaker endpoint"),
    ("class", "Python name"),
    ("import", "Python name"),
])
def test_unusable_names_are_refused_naming_the_rule(name: str, culprit: str) -> None:
    with pytest.raises(ConfigError) as info:
        ProjectName.parse(name)
    message = str(info.value)
    assert message.startswith(f"NAME: {name!r} "), message
    assert culprit in message, message
    assert "\n" not in message


def _oracle(name: str) -> bool:
    """The intersection of the rules, stated independently: lowercase letters and digits joined by hyphens,
    starting with a letter, 2-63 characters (the endpoint name's limit), not a Python keyword."""
    return (re.fullmatch(r"[a-z][a-z0-9]*(?:-+[a-z0-9]+)*", name) is not None and 2 <= len(name) <= 63
            and not keyword.iskeyword(name.replace("-", "_")))


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(alphabet="abcz09-_./A ", max_size=70), st.from_regex(r"[a-z][a-z0-9-]{0,70}", fullmatch=True),
                 st.sampled_from(keyword.kwlist)))
@example("a" + "-" * 62 + "b")
@example("a" + "-" * 61 + "b")
def test_the_rules_accept_exactly_lowercase_hyphenated_names(name: str) -> None:
    assert (ProjectName(name).problem() is None) == _oracle(name), name
