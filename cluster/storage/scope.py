"""Where a job may read and write: URI prefixes, checked at submit and again at every open.

A `Scope` is what a token allows, carried as plain data from the service to the job runner and
its actors. Prefixes match whole path segments only ("s3://data" does not allow
"s3://data-other"); local paths are resolved ("..", symlinks) at the moment of the check, so a
symlink inside an allowed folder cannot point outside it, and a check made at open time sees a
symlink created after submit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cluster.storage.uri import is_s3, normalize

ANY = "*"  # a prefix that allows every URI


class ScopeError(PermissionError):
    """A URI outside the prefixes a job may use. The message names the URI and the rule."""

    def __init__(self, uri: str, action: str, who: str):
        super().__init__(f"{who} may not {action} {uri}: outside its allowed prefixes")
        self.uri, self.action, self.who = uri, action, who

    def __reduce__(self):  # crosses Ray boundaries: rebuild from the same arguments
        return (ScopeError, (self.uri, self.action, self.who))


def canonical(uri: str) -> str:
    """Folder form of a URI for prefix checks: "s3://b/x/", "/real/abs/path/" (symlinks resolved)."""
    if is_s3(uri):
        return uri.rstrip("/") + "/"
    return os.path.realpath(normalize(uri)).rstrip("/") + "/"


def canonical_prefix(prefix: str) -> str:
    return ANY if prefix == ANY else canonical(prefix)


def within(uri: str, prefixes: tuple[str, ...]) -> bool:
    """True when `uri` (resolved now) lies under one of the canonical `prefixes`."""
    if ANY in prefixes:
        return True
    if is_s3(uri) and ".." in uri.split("/"):
        return False
    target = canonical(uri)
    return any(target.startswith(p) for p in prefixes)


@dataclass(frozen=True)
class Scope:
    """Read and write prefixes (canonical, or ANY) and whose they are, for error messages."""

    read: tuple[str, ...] = (ANY,)
    write: tuple[str, ...] = (ANY,)
    who: str = "this job"

    @classmethod
    def unrestricted(cls) -> "Scope":
        return cls()

    @property
    def is_unrestricted(self) -> bool:
        return ANY in self.read and ANY in self.write

    def may_read(self, uri: str) -> bool:
        return within(uri, self.read)

    def may_write(self, uri: str) -> bool:
        return within(uri, self.write)

    def check_read(self, uri: str) -> str:
        if not self.may_read(uri):
            raise ScopeError(uri, "read", self.who)
        return uri

    def check_write(self, uri: str) -> str:
        if not self.may_write(uri):
            raise ScopeError(uri, "write", self.who)
        return uri

    def check(self, action: str, uri: str, resolved: str | None = None) -> None:
        """Refuse `action` ("read" or "write") on `uri` unless `resolved` (what the URI really is
        at this moment: a real path, an opened file's path; default the URI itself) is in scope.
        The error names the URI the job asked for, not where a symlink points."""
        prefixes = self.read if action == "read" else self.write
        if not within(resolved or uri, prefixes):
            raise ScopeError(uri, action, self.who)
