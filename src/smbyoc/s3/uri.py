"""``s3://bucket/key`` URIs, checked once with one clear line naming the value.

The bucket follows S3's naming rules for general purpose buckets (3-63 characters: lowercase letters, digits,
``.`` and ``-``; a letter or digit first and last; no ``..``; not an IP address; none of the reserved prefixes
and suffixes). The key is at most 1024 bytes of UTF-8 without control characters. ``https://`` S3 URLs and
other schemes are refused: smbyoc takes the ``s3://`` form, as the AWS CLI does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smbyoc.errors import ConfigError

SCHEME = "s3://"
MAX_KEY_BYTES = 1024
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def is_s3_uri(text: object) -> bool:
    """Whether ``text`` is meant as an S3 URI (``s3://...``, any case); says nothing about its validity."""
    return isinstance(text, str) and text[:5].lower() == SCHEME


def scheme_of(text: str) -> str | None:
    """The URI scheme of ``text`` (``s3``, ``file``, ``https``...), lowercased; None for a plain path."""
    found = _SCHEME_RE.match(text)
    return found.group(1).lower() if found else None


def bucket_problem(bucket: str) -> str | None:
    """Why ``bucket`` is not a valid bucket name, or None."""
    if not bucket:
        return "the bucket name is missing (s3://bucket/key)"
    if not 3 <= len(bucket) <= 63:
        return f"bucket names are 3-63 characters long; {bucket!r} has {len(bucket)}"
    if not _BUCKET_RE.match(bucket):
        return (f"bucket {bucket!r} is not a valid name: lowercase letters, digits, '.' and '-' only, "
                "starting and ending with a letter or digit")
    if ".." in bucket:
        return f"bucket {bucket!r} is not a valid name: two adjacent periods"
    if _IP_RE.match(bucket):
        return f"bucket {bucket!r} is not a valid name: it looks like an IP address"
    for prefix in _RESERVED_PREFIXES:
        if bucket.startswith(prefix):
            return f"bucket {bucket!r} is not a valid name: the prefix {prefix!r} is reserved"
    for suffix in _RESERVED_SUFFIXES:
        if bucket.endswith(suffix):
            return f"bucket {bucket!r} is not a valid name: the suffix {suffix!r} is reserved"
    return None


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an object key (or key prefix), or None."""
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"object keys are at most {MAX_KEY_BYTES} bytes of UTF-8"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        return "the key holds a control character"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "the key is not valid UTF-8"
    return None


@dataclass(frozen=True)
class S3Uri:
    """A checked ``s3://bucket/key``; ``key`` may be empty (the whole bucket) or end in ``/`` (a folder)."""

    bucket: str
    key: str = ""

    @classmethod
    def parse(cls, text: str, *, need_key: bool = False, what: str | None = None) -> S3Uri:
        """Parse ``text``; one :class:`ConfigError` naming ``what`` (an option or field) and the value otherwise.

        ``need_key``: the URI must name an object (a key that does not end in ``/``).
        """
        culprit = f"{what} {text}" if what else text

        def fail(reason: str) -> ConfigError:
            return ConfigError(reason, key=culprit)

        if not isinstance(text, str):
            raise fail("expected an s3://bucket/key URI")
        scheme = scheme_of(text)
        if scheme != "s3":
            if scheme is None:
                raise fail("expected an s3://bucket/key URI")
            raise fail(f"{scheme}:// URIs are not supported here; expected s3://bucket/key")
        rest = text[len(SCHEME):]
        bucket, _, key = rest.partition("/")
        problem = bucket_problem(bucket) or key_problem(key)
        if problem:
            raise fail(problem)
        uri = cls(bucket, key)
        if need_key:
            if not key:
                raise fail("needs an object key after the bucket (s3://bucket/key)")
            if key.endswith("/"):
                raise fail("names a folder (it ends in '/'); expected an object")
        return uri

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    @property
    def name(self) -> str:
        """The last part of the key (the object's file name)."""
        return self.key.rstrip("/").rpartition("/")[2]

    @property
    def is_folder(self) -> bool:
        """The whole bucket, or a key ending in ``/``: only ever a prefix, never one object."""
        return not self.key or self.key.endswith("/")

    def child(self, relative: str) -> S3Uri:
        """The URI ``relative`` (a ``/``-separated path) below this one, as a folder."""
        base = self.key if not self.key or self.key.endswith("/") else self.key + "/"
        return S3Uri(self.bucket, base + relative)

    def with_key(self, key: str) -> S3Uri:
        return S3Uri(self.bucket, key)
