"""Secrets in an image's metadata: its environment, its labels and the commands of its layers.

Anything in ``ENV``, ``LABEL``, ``ARG`` values used by ``RUN``, or a ``RUN`` command line is readable by
everyone who can pull the image (``docker inspect``, ``docker history --no-trunc``). The scan looks for
AWS access key ids (``AKIA``/``ASIA``...), AWS secret access keys given as ``KEY=VALUE``, private key
headers, well-known token prefixes (GitHub ``ghp_``, Slack ``xox?-``, GitLab ``glpat-``...), passwords in
URLs, and values of variables whose name says they hold a secret. A finding names where it is and the key, and shows the
value masked (:func:`mask`): never the secret itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

#: AWS access key ids: ``AKIA`` (long-term), ``ASIA`` (temporary), and the other documented prefixes.
AWS_KEY_ID = re.compile(r"(?<![A-Z0-9])((?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z0-9]{16})"
                        r"(?![A-Z0-9])")
#: Names under which an AWS secret access key (40 characters of base64) is passed.
AWS_SECRET_NAME = re.compile(r"(?i)aws.{0,20}secret|secret.?access.?key")
AWS_SECRET_VALUE = re.compile(r"^[A-Za-z0-9/+]{40}$")
#: A password inside a URL (``https://user:password@host/``, e.g. a private package index).
URL_PASSWORD = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@'\"]+:([^/\s@'\"]+)@")
PRIVATE_KEY = re.compile(r"-----BEGIN ((?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?)-----")
#: Token formats recognisable by their prefix: (what, pattern).
TOKENS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("GitHub token", re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{36,})\b")),
    ("GitHub token", re.compile(r"\b(github_pat_[A-Za-z0-9_]{22,})\b")),
    ("Slack token", re.compile(r"\b(xox[abposr]-[A-Za-z0-9-]{10,})\b")),
    ("Slack webhook", re.compile(r"(https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,})")),
    ("GitLab token", re.compile(r"\b(glpat-[A-Za-z0-9_-]{20,})\b")),
    ("Hugging Face token", re.compile(r"\b(hf_[A-Za-z0-9]{30,})\b")),
    ("OpenAI key", re.compile(r"\b(sk-(?:proj-)?[A-Za-z0-9_-]{32,})\b")),
    ("Stripe key", re.compile(r"\b((?:sk|rk)_live_[A-Za-z0-9]{20,})\b")),
    ("Google API key", re.compile(r"\b(AIza[0-9A-Za-z_-]{35})\b")),
    ("npm token", re.compile(r"\b(npm_[A-Za-z0-9]{36})\b")),
    ("PyPI token", re.compile(r"\b(pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{40,})\b")),
)
#: A variable whose name says it holds a secret (``DB_PASSWORD``, ``API_KEY``, ``HF_TOKEN``...).
SECRET_NAME = re.compile(r"(?i)(^|_|-)(password|passwd|pwd|secret|token|api_?key|access_?key|private_?key|"
                         r"credentials?|auth)($|_|-)")
#: ``NAME=VALUE`` (``ENV``, ``LABEL``, ``ARG`` values in a ``RUN`` line, ``export X=...``).
ASSIGNMENT = re.compile(r"""(?<![\w.-])([A-Za-z_][\w.-]*)=("[^"]*"|'[^']*'|[^\s;&|]*)""")
#: Values that name where a secret is rather than being one, or are obviously placeholders.
_REFERENCE = re.compile(r"^(\$|/|~|\.{0,2}/|<|\{\{|%)|^(changeme|change_me|none|null|true|false|xxx+|\*+|"
                        r"dummy|example|placeholder|your[_-]?\w*|redacted)$", re.IGNORECASE)
MIN_SECRET_LENGTH = 8


@dataclass(frozen=True)
class Finding:
    """One secret: where (``env``, ``label``, ``layer 3 (RUN)``), what kind, the key and the masked value."""

    where: str
    kind: str
    key: str
    masked: str

    def describe(self) -> str:
        key = f"{self.key}=" if self.key else ""
        return f"{self.kind} in {self.where}: {key}{self.masked}"


def mask(value: str) -> str:
    """``AKIA…(20 chars)``: at most the first 4 characters (a type prefix) and the length; never the secret.

    Short values show no character at all."""
    shown = min(4, len(value) // 5)
    return f"{value[:shown]}…({len(value)} chars)"


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _looks_secret(value: str) -> bool:
    return len(value) >= MIN_SECRET_LENGTH and not _REFERENCE.search(value) and not value.isdigit()


def scan_text(text: str, where: str, key: str = "") -> Iterator[Finding]:
    """Findings in one piece of metadata; ``key`` is the variable or label it is the value of, if any."""
    seen: set[str] = set()

    def found(kind: str, name: str, value: str) -> Iterator[Finding]:
        if value not in seen:
            seen.add(value)
            yield Finding(where, kind, name, mask(value))

    header = PRIVATE_KEY.search(text)
    if header:
        yield from found("private key", key, header.group(0))
    for match in AWS_KEY_ID.finditer(text):
        yield from found("AWS access key id", key or _key_before(text, match.start()), match.group(1))
    for match in URL_PASSWORD.finditer(text):
        if not match.group(1).startswith("$"):
            yield from found("password in a URL", key or _key_before(text, match.start()), match.group(1))
    for kind, pattern in TOKENS:
        for match in pattern.finditer(text):
            yield from found(kind, key or _key_before(text, match.start()), match.group(1))
    pairs = [(key, text)] if key else [(m.group(1), _unquote(m.group(2))) for m in ASSIGNMENT.finditer(text)]
    for name, value in pairs:
        if any(value == s or s in value or value in s for s in seen):
            continue
        if AWS_SECRET_NAME.search(name) and AWS_SECRET_VALUE.match(value):
            yield from found("AWS secret access key", name, value)
        elif SECRET_NAME.search(name) and _looks_secret(value):
            yield from found("secret-named value", name, value)


def _key_before(text: str, position: int) -> str:
    """The ``NAME`` of a ``NAME=`` right before ``position``, if there is one."""
    match = re.search(r"([A-Za-z_][\w.-]*)=[\"']?$", text[:position])
    return match.group(1) if match else ""


def scan_environment(env: Iterable[str]) -> list[Finding]:
    """Findings in ``Config.Env`` (``NAME=VALUE`` strings)."""
    findings: list[Finding] = []
    for item in env:
        name, _, value = item.partition("=")
        findings += scan_text(value, "env", name)
    return findings


def scan_labels(labels: dict[str, str]) -> list[Finding]:
    findings: list[Finding] = []
    for name, value in sorted(labels.items()):
        findings += scan_text(str(value), "label", name)
    return findings


def scan_history(commands: Iterable[str]) -> list[Finding]:
    """Findings in the ``CreatedBy`` commands of the image's layers, oldest first (``layer 1`` is the oldest)."""
    findings: list[Finding] = []
    for number, command in enumerate(commands, start=1):
        findings += scan_text(command, f"layer {number} ({instruction(command)})")
    return findings


def instruction(created_by: str) -> str:
    """The Dockerfile instruction a history entry came from (``RUN``, ``ENV``, ``COPY``...)."""
    text = created_by.strip()
    nop = re.search(r"#\(nop\)\s+([A-Z]+)", text)
    if nop:
        return nop.group(1)
    if not text:
        return "imported"
    first = text.split()[0]
    if first.isupper() and first.isalpha():  # BuildKit: "RUN /bin/sh -c ...", "ENV X=1"
        return first
    return "RUN"


def dedupe(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per (kind, key, masked value): an ``ENV`` shows both in the environment and in history."""
    result: list[Finding] = []
    keys: set[tuple[str, str, str]] = set()
    for f in findings:
        k = (f.kind, f.key, f.masked)
        if k not in keys:
            keys.add(k)
            result.append(f)
    return result
