"""The secret scan of ``smbyoc validate``: what it finds in env, labels and layer commands, masked, and what it
leaves alone."""

from __future__ import annotations

import pytest

from smbyoc.validate import secret_scan
from smbyoc.validate.image import ImageFacts, check_secrets
from smbyoc.validate.secret_scan import instruction, mask, scan_environment, scan_history, scan_labels, scan_text

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"


@pytest.mark.parametrize(("text", "kind"), [
    (f"AWS_ACCESS_KEY_ID={KEY_ID}", "AWS access key id"),
    ("aws_access_key_id = ASIAY34FZKBOKMUTVV7A", "AWS access key id"),
    (f"AWS_SECRET_ACCESS_KEY={SECRET}", "AWS secret access key"),
    (f"export aws_secret_key='{SECRET}'", "AWS secret access key"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow...", "private key"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----", "private key"),
    (f"git clone https://{GITHUB}@github.com/org/repo", "GitHub token"),
    ("SLACK=xoxb-123456789012-abcdefghijkl", "Slack token"),
    ("glpat-abcdefghij0123456789", "GitLab token"),
    ("HF=hf_abcdefghijklmnopqrstuvwxyzABCDEF", "Hugging Face token"),
    ("pip install --index-url https://deploy:s3cr3tpassw0rd@pypi.example.com/simple pkg", "password in a URL"),
    ("DB_PASSWORD=correct-horse-battery", "secret-named value"),
    ("MY_API_KEY=9f8e7d6c5b4a39281706", "secret-named value"),
])
def test_each_pattern_is_found(text: str, kind: str) -> None:
    findings = list(scan_text(text, "env"))
    assert [f.kind for f in findings] == [kind], findings


@pytest.mark.parametrize("text", [
    "PATH=/opt/smbyoc/bin:/usr/local/sbin:/usr/bin", "LANG=C.UTF-8", "PYTHONUNBUFFERED=1",
    "HF_TOKEN=", "TOKEN_FILE=/run/secrets/token", "API_KEY=${API_KEY}", "PASSWORD=changeme", "MAX_TOKENS=4096",
    "SECRET_NAME=short", "AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY",
    '/bin/sh -c set -eu; need=""; if ! command -v python3 >/dev/null 2>&1; then need="$need python3"; fi',
    "/bin/sh -c #(nop) COPY file:9a28efb575d8915ac4ded2c47d35503d8be0f848ac5ebd51531c70594406f997 in /opt/x",
    "/bin/sh -c #(nop)  LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true",
    "https://pypi.org/simple", "https://user:$PASSWORD@example.com/",
])
def test_ordinary_metadata_is_not_a_secret(text: str) -> None:
    assert list(scan_text(text, "env")) == []


def test_masking_shows_at_most_a_type_prefix_and_the_length() -> None:
    assert mask(KEY_ID) == "AKIA…(20 chars)"
    assert mask(SECRET) == "wJal…(40 chars)"
    assert mask("short") == "s…(5 chars)"
    assert mask("abc") == "…(3 chars)"
    for text in (f"AWS_SECRET_ACCESS_KEY={SECRET}", f"X={GITHUB}", "DB_PASSWORD=correct-horse-battery"):
        described = " ".join(f.describe() for f in scan_text(text, "env"))
        value = text.split("=", 1)[1]
        assert value not in described and value[5:] not in described


def test_findings_name_where_they_are_and_the_key() -> None:
    env = scan_environment([f"AWS_ACCESS_KEY_ID={KEY_ID}", "LANG=C.UTF-8"])
    assert [(f.where, f.key, f.masked) for f in env] == [("env", "AWS_ACCESS_KEY_ID", "AKIA…(20 chars)")]
    labels = scan_labels({"maintainer": "me", "deploy.token": GITHUB})
    assert [(f.where, f.key, f.kind) for f in labels] == [("label", "deploy.token", "GitHub token")]
    history = scan_history([
        "",  # the imported base layer
        "/bin/sh -c #(nop)  ENV PATH=/usr/bin",
        f"|1 GITHUB_TOKEN={GITHUB} /bin/sh -c pip install private-package",  # a build ARG used by RUN
        f"RUN /bin/sh -c echo {SECRET} > /root/.aws  # buildkit",
    ])
    assert [(f.where, f.key, f.kind) for f in history] == [("layer 3 (RUN)", "GITHUB_TOKEN", "GitHub token")]
    assert instruction("/bin/sh -c #(nop) COPY dir:x in /") == "COPY"
    assert instruction("ENV A=1") == "ENV" and instruction("") == "imported" and instruction("/bin/sh -c ls") == "RUN"


def test_an_env_secret_also_seen_in_history_is_reported_once() -> None:
    facts = ImageFacts(ref="img", env=(f"AWS_SECRET_ACCESS_KEY={SECRET}",),
                       history=(("", 0), (f"/bin/sh -c #(nop)  ENV AWS_SECRET_ACCESS_KEY={SECRET}", 0)))
    findings = secret_scan.dedupe([*scan_environment(facts.env), *scan_history(h for h, _ in facts.history)])
    assert len(findings) == 1
    result = check_secrets(facts)
    assert result.failed and "1 possible secret(s)" in result.detail and SECRET not in result.detail
    assert "AWS_SECRET_ACCESS_KEY=wJal…(40 chars)" in result.detail


def test_a_clean_image_passes_and_says_what_was_scanned() -> None:
    facts = ImageFacts(ref="img", env=("PATH=/usr/bin",), labels={"a": "b"}, history=(("", 1), ("RUN ls", 2)))
    result = check_secrets(facts)
    assert result.passed and result.detail == "none found in 1 environment variables, 1 labels, 2 layer commands"
