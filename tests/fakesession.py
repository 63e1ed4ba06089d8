"""A stand-in for `bot.github.GitHubSession`, in the style of python/bedevere's `FakeGH`: no
HTTP, every request recorded, answers from small tables that each test fills in.

A request the test did not expect (a GET or listing with no canned answer, a write to an
endpoint the bot has no business writing to) raises `UnexpectedRequest` at once and is also
kept in `unexpected`, so it fails the test even if some code swallowed the exception.
"""

from __future__ import annotations

import http
import itertools
import re
from typing import Any, NamedTuple

import gidgethub
from gidgethub import sansio

BASE_URL = "https://api.github.com"

# The writes the bot is known to make; POSTs answer {"id": n}, PATCHes echo the data.
KNOWN_WRITES = [
    ("POST", re.compile(r"^/repos/[^/]+/[^/]+/issues/comments/\d+/reactions$")),
    ("POST", re.compile(r"^/repos/[^/]+/[^/]+/issues/\d+/comments$")),
    ("PATCH", re.compile(r"^/repos/[^/]+/[^/]+/issues/comments/\d+$")),
    ("POST", re.compile(r"^/repos/[^/]+/[^/]+/check-runs$")),
    ("PATCH", re.compile(r"^/repos/[^/]+/[^/]+/check-runs/\d+$")),
    ("POST", re.compile(r"^/repos/[^/]+/[^/]+/deployments$")),
    ("POST", re.compile(r"^/repos/[^/]+/[^/]+/deployments/\d+/statuses$")),
]


# Files read through the contents API (`.github/preview.yml`): absent unless a test answers them,
# like most repositories.
CONTENTS = re.compile(r"^/repos/[^/]+/[^/]+/contents/.+$")


class UnexpectedRequest(AssertionError):
    pass


class Call(NamedTuple):
    method: str  # GET, POST, PATCH, or GETITER for a paginated listing
    path: str  # expanded, relative to the API root, query string included
    data: Any = None


def http_error(status: int) -> gidgethub.GitHubException:
    """An answer to put in a table: the request fails with this status, raised as gidgethub
    raises it (BadRequest for 4xx, GitHubBroken for 5xx)."""
    kind = gidgethub.GitHubBroken if status >= 500 else gidgethub.BadRequest
    return kind(http.HTTPStatus(status))


def expand(url: str, url_vars: dict | None) -> str:
    """The path gidgethub would request, as `GitHubAPI` expands it."""
    full = sansio.format_url(url, url_vars or {}, base_url=BASE_URL)
    return full.removeprefix(BASE_URL)


class FakeGH:
    def __init__(self, installation_id: int = 1):
        self.installation_id = installation_id
        self.answers: dict[tuple[str, str], Any] = {}  # ("GET", path) -> JSON or exception
        self.listings: dict[str, list] = {}  # path -> items, for getiter
        self.calls: list[Call] = []
        self.unexpected: list[Call] = []
        self.failing_writes: int | None = None
        self._ids = itertools.count(9000)

    # -- the tables --------------------------------------------------------------------------

    def answer(self, method: str, path: str, value: Any) -> None:
        """Answer `method path` (without its query string) with `value` (raised if an exception)."""
        self.answers[(method, path)] = value

    def listing(self, path: str, items: list) -> None:
        """The items of the paginated listing at `path` (without its query string)."""
        self.listings[path] = items

    def fail_writes(self, status: int = 502) -> None:
        """From now on every POST and PATCH fails with `status`, as in a GitHub outage that
        still serves reads (after the real client's retries)."""
        self.failing_writes = status

    # -- GitHubSession's interface -----------------------------------------------------------

    async def call(self, method: str, url: str, *, url_vars: dict | None = None, data: Any = b"") -> Any:
        path = expand(url, url_vars)
        call = Call(method, path, None if data == b"" else data)
        self.calls.append(call)
        bare = path.split("?", 1)[0]
        if self.failing_writes and method in ("POST", "PATCH"):
            raise http_error(self.failing_writes)
        for key in ((method, path), (method, bare)):
            if key in self.answers:
                value = self.answers[key]
                if isinstance(value, BaseException):
                    raise value
                return value
        if any(method == m and pattern.match(bare) for m, pattern in KNOWN_WRITES):
            return {"id": next(self._ids)} if method == "POST" else dict(data or {})
        if method == "GET" and CONTENTS.match(bare):
            raise http_error(404)
        self.unexpected.append(call)
        raise UnexpectedRequest(f"no canned answer for {method} {path}")

    async def getiter(self, url: str, url_vars: dict | None = None, *, limit: int = 1000):
        path = expand(url, url_vars)
        call = Call("GETITER", path)
        self.calls.append(call)
        bare = path.split("?", 1)[0]
        if bare not in self.listings:
            self.unexpected.append(call)
            raise UnexpectedRequest(f"no canned listing for {path}")
        for item in self.listings[bare][:limit]:
            yield item

    # -- for assertions ----------------------------------------------------------------------

    def requests(self) -> list[tuple[str, str]]:
        """(method, path without query) of every call, in order."""
        return [(c.method, c.path.split("?", 1)[0]) for c in self.calls]

    def writes(self, method: str, path: str) -> list[Any]:
        """The data sent by each `method path` call."""
        return [c.data for c in self.calls if c.method == method and c.path.split("?", 1)[0] == path]
