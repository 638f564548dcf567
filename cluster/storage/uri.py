"""How storage URIs are spelled: local paths, `file://` and `s3://bucket/key`, and globs over them.

Pure string work, no I/O: both backends and every caller agree on one spelling through here.
"""

from __future__ import annotations

import fnmatch
import os
import re

GLOB_CHARS = "*?["


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def local_path(uri: str) -> str:
    """The absolute local path of a plain path or a `file://` URI (`~` expanded)."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return os.path.abspath(os.path.expanduser(uri))


def normalize(uri: str) -> str:
    """Canonical spelling of a URI: absolute for local paths, so ids do not depend on the cwd."""
    return uri.rstrip("/") if is_s3(uri) else local_path(uri)


def join(base: str, *names: str) -> str:
    if is_s3(base):
        return "/".join([base.rstrip("/"), *names])
    return os.path.join(local_path(base), *names)


def as_prefix(uri: str) -> str:
    """A folder URI as an S3 key prefix: exactly one trailing slash."""
    return uri.rstrip("/") + "/"


def split_s3(uri: str) -> tuple[str, str]:
    """"s3://bucket/a/b" -> ("bucket", "a/b")."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri}")
    return bucket, key


def has_glob(uri: str) -> bool:
    return any(c in uri for c in GLOB_CHARS)


def glob_base(pattern: str) -> str:
    """The literal part of a glob before its first wildcard (an S3 listing prefix)."""
    return pattern[: min(pattern.index(c) for c in GLOB_CHARS if c in pattern)]


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as the local filesystem reads it: `*` and `?` stay within one path segment,
    `**/` spans any number of them (fnmatch's `*` would also match "/")."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            out.append(fnmatch.translate(pattern[i : end + 1])[4:-3])  # fnmatch's own class syntax
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def is_hidden(name: str) -> bool:
    """Names a folder listing skips: markers (`_SUCCESS.json`) and temp files (`.tmp-...`)."""
    return name.startswith(("_", "."))


def check_uris(uri: str | list[str]) -> str | list[str]:
    """`uri` unchanged, or ValueError when it is empty or holds an empty entry.

    The one check for every manifest field that names data (an inference job's input, a training
    job's train and eval data), so they refuse the same values with the same words.
    """
    uris = [uri] if isinstance(uri, str) else uri
    if not uris or any(not u.strip() for u in uris):
        raise ValueError("must be a non-empty string or list of strings")
    return uri
