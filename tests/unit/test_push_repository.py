"""``--repository`` parsing: Docker's reference grammar, ECR URIs and ECR's repository naming rules."""

from __future__ import annotations

import re

import pytest

from smbyoc.errors import ConfigError
from smbyoc.push.repository import (
    ECR_NAME_MAX,
    EcrRegistry,
    Repository,
    check_ecr_name,
    parse_repository,
)

ECR = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"

# BOTO-ECR's RepositoryName pattern, copied verbatim from the API model (contract-endpoints.md §8.1).
BOTO_MODEL_PATTERN = re.compile(r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*")


@pytest.mark.parametrize(("text", "registry", "name", "tag"), [
    ("127.0.0.1:5000/my-model:1.0", "127.0.0.1:5000", "my-model", "1.0"),
    ("127.0.0.1:5000/my-model", "127.0.0.1:5000", "my-model", "latest"),
    ("localhost/team/model:v2", "localhost", "team/model", "v2"),
    ("registry.example.com/a/b/c:x_y.z-1", "registry.example.com", "a/b/c", "x_y.z-1"),
    ("registry.example.com:443/m", "registry.example.com:443", "m", "latest"),
    ("[::1]:5000/m:t", "[::1]:5000", "m", "t"),
    ("docker.io/you/model:1", "docker.io", "you/model", "1"),
    ("docker.io/ubuntu", "docker.io", "library/ubuntu", "latest"),
    ("index.docker.io/you/model", "docker.io", "you/model", "latest"),
    (f"{ECR}/team/my-model:1.0", ECR, "team/my-model", "1.0"),
    ("r.io/a__b/c--d.e_f:T", "r.io", "a__b/c--d.e_f", "T"),
])
def test_parse(text: str, registry: str, name: str, tag: str) -> None:
    repo = parse_repository(text)
    assert (repo.registry, repo.name, repo.tag) == (registry, name, tag)
    assert repo.reference == f"{registry}/{name}:{tag}"
    assert repo.digest_uri("sha256:" + "a" * 64) == f"{registry}/{name}@sha256:{'a' * 64}"


def test_default_tag_is_the_callers() -> None:
    assert parse_repository("r.io/m", default_tag="1.2").tag == "1.2"
    assert parse_repository("r.io/m:3", default_tag="1.2").tag == "3"


def test_docker_hub_api_host() -> None:
    assert parse_repository("docker.io/you/m").api_host == "registry-1.docker.io"
    assert parse_repository("127.0.0.1:5000/m").api_host == "127.0.0.1:5000"


@pytest.mark.parametrize(("text", "culprit"), [
    ("", "empty"),
    ("my-model:1.0", "names no registry"),
    ("team/my-model", "names no registry"),
    ("r.io/m@sha256:" + "a" * 64, "has a digest"),
    ("https://r.io/m", "without a scheme"),
    ("r.io/My-Model", "must be lowercase"),
    ("r.io/m:", "no tag"),
    ("r.io/m:.dot", "tag '.dot'"),
    ("r.io/m:" + "t" * 129, "tag"),
    ("r.io/-m", "repository name '-m'"),
    ("r.io/m_", "repository name 'm_'"),
    ("r.io/a___b", "repository name 'a___b'"),
    ("r.io//m", "not a repository reference"),
    ("r.io/m /x", "not a repository reference"),
    ("bad_host.io/m", "registry 'bad_host.io'"),
    ("r.io/" + "a" * 260, "longer than 255"),
])
def test_bad_references_name_the_culprit(text: str, culprit: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_repository(text)
    message = str(info.value)
    assert message.startswith("--repository: ")
    assert culprit in message
    assert "\n" not in message


def test_ecr_uri() -> None:
    repo = parse_repository(f"{ECR}/team/m:1", ecr=True)
    assert repo.ecr == EcrRegistry(account="123456789012", region="eu-west-1", host=ECR)
    fips = parse_repository("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com/mm", ecr=True).ecr
    assert fips is not None and fips.region == "us-gov-west-1"
    china = parse_repository("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/mm", ecr=True).ecr
    assert china is not None and china.region == "cn-north-1"
    assert EcrRegistry.for_account("123456789012", "cn-north-1").host.endswith(".amazonaws.com.cn")
    assert parse_repository("r.io/m").ecr is None


def test_bare_name_with_ecr_waits_for_the_registry() -> None:
    repo = parse_repository("team/my-model:7", ecr=True)
    assert repo == Repository(registry=None, name="team/my-model", tag="7")
    assert repo.with_registry(ECR).reference == f"{ECR}/team/my-model:7"


@pytest.mark.parametrize("text", ["127.0.0.1:5000/m", "12345678901.dkr.ecr.eu-west-1.amazonaws.com/m",
                                  "123456789012.dkr.ecr.eu-west-1.example.com/m"])
def test_ecr_refuses_other_registries(text: str) -> None:
    with pytest.raises(ConfigError, match="is not an ECR registry"):
        parse_repository(text, ecr=True)


@pytest.mark.parametrize(("name", "ok"), [
    ("ab", True), ("a", False), ("a" * ECR_NAME_MAX, True), ("a" * (ECR_NAME_MAX + 1), False),
    ("team/model", True), ("0digit", True), ("a.b_c__d---e", True), ("a/b/c/d", True),
    ("a..b", False), ("a_-b", False), ("a/", False), ("/a", False), ("A-b", False), ("a b", False),
    ("a___b", False), ("ab.", False), ("a//b", False),
])
def test_ecr_name_rules(name: str, ok: bool) -> None:
    if ok:
        check_ecr_name(name)
    else:
        with pytest.raises(ConfigError, match=r"^--repository: ECR repository name"):
            check_ecr_name(name)
    # The same verdict as the API model's own pattern (with ECR's 2-256 length).
    assert ok == (bool(BOTO_MODEL_PATTERN.fullmatch(name)) and 2 <= len(name) <= ECR_NAME_MAX)


def test_ecr_rules_run_before_anything_else_in_parse() -> None:
    with pytest.raises(ConfigError, match="ECR repository name 'a' has 1 characters; ECR allows 2-256"):
        parse_repository("a:1", ecr=True)
    with pytest.raises(ConfigError, match="breaks ECR's naming rule"):
        parse_repository(f"{ECR}/team/my--_model", ecr=True)
