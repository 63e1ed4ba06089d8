"""Webhook payloads for tests, built from GitHub's real example payloads.

Every builder starts from a deep copy of a real example in
``tests/fixtures/webhooks/`` (from npm ``@octokit/webhooks-examples``, see
SOURCE.md) and only adjusts the fields a test cares about, so payloads keep
every field GitHub really sends. The example's identities (Codertocat,
Hello-World, electron...) are rewritten everywhere, URLs included.

Ids of users and repositories come from :func:`stable_id`, the same formula the
fake GitHub (tests/fakegithub.py) uses, so ``sender.id`` in a webhook equals
``user.id`` in the fake's API answers.

URLs point at ``https://api.github.com`` as in real deliveries; pass
``api_url=fake.url`` to a builder to point them at the fake instead.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import re
import secrets
import uuid
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import httpx

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
API = "https://api.github.com"
WEB = "https://github.com"


# --------------------------------------------------------------------------
# Identity helpers (keep in sync with tests/fakegithub.py)
# --------------------------------------------------------------------------


def stable_id(kind: str, key: str) -> int:
    """Deterministic positive id for ``key``; same formula as the fake GitHub."""
    digest = hashlib.sha256(f"{kind}:{key.lower()}".encode()).hexdigest()
    return int(digest[:8], 16) % 900_000_000 + 100_000_000


def node_id(type_name: str, ident: int) -> str:
    """Legacy GraphQL node id as GitHub writes it, e.g. ``MDQ6VXNlcjE=``."""
    return base64.b64encode(f"0{len(type_name)}:{type_name}{ident}".encode()).decode()


# --------------------------------------------------------------------------
# Loading and generic rewriting
# --------------------------------------------------------------------------


@cache
def _load_text(name: str) -> str:
    return (FIXTURES / f"{name}.json").read_text(encoding="utf-8")


def available_examples() -> list[str]:
    """Names accepted by :func:`load_example`, e.g. ``"issue_comment.created"``."""
    return sorted(p.stem for p in FIXTURES.glob("*.json"))


def load_example(name: str) -> dict:
    """A fresh (deep) copy of the real example payload ``name``."""
    try:
        return json.loads(_load_text(name))
    except FileNotFoundError:
        raise KeyError(f"no example {name!r}; have {available_examples()}") from None


def _example_for(event: str, action: str, fallback: str) -> dict:
    """The example for ``event.action``, else ``event.fallback`` with action set."""
    name = f"{event}.{action}"
    payload = load_example(name if name in available_examples() else f"{event}.{fallback}")
    payload["action"] = action
    return payload


def _replace_strings(node: Any, old: str, new: str) -> Any:
    """Replace ``old`` by ``new`` in every string inside ``node``."""
    if isinstance(node, str):
        return node.replace(old, new)
    if isinstance(node, list):
        return [_replace_strings(item, old, new) for item in node]
    if isinstance(node, dict):
        return {key: _replace_strings(value, old, new) for key, value in node.items()}
    return node


def _renumber(node: Any, old: int, new: int) -> Any:
    """Rewrite ``/pulls/OLD``, ``/pull/OLD``, ``/issues/OLD`` URL segments to NEW."""
    pattern = re.compile(rf"/(pulls|pull|issues)/{old}(?=$|[/.#?])")
    if isinstance(node, str):
        return pattern.sub(rf"/\g<1>/{new}", node)
    if isinstance(node, list):
        return [_renumber(item, old, new) for item in node]
    if isinstance(node, dict):
        return {key: _renumber(value, old, new) for key, value in node.items()}
    return node


def _user(template: dict, login: str, user_type: str = "User") -> dict:
    """The example user ``template`` turned into ``login``."""
    old = template["login"]
    user = _replace_strings(copy.deepcopy(template), f"/{old}", f"/{login}")
    uid = stable_id("user", login)
    user.update(login=login, id=uid, node_id=node_id(user_type, uid), type=user_type,
                avatar_url=f"https://avatars.githubusercontent.com/u/{uid}?v=4")
    if user_type == "Bot":
        user["html_url"] = f"{WEB}/apps/{login.removesuffix('[bot]')}"
    return user


def _repository(template: dict, full_name: str, *, private: bool = False, fork: bool = False,
                default_branch: str = "main", owner_type: str = "User") -> dict:
    """The example repository ``template`` turned into ``full_name``."""
    repo = _replace_strings(copy.deepcopy(template), template["full_name"], full_name)
    owner, name = full_name.split("/")
    rid = stable_id("repo", full_name)
    repo.update(id=rid, node_id=node_id("Repository", rid), name=name, full_name=full_name,
                private=private, fork=fork, owner=_user(template["owner"], owner, owner_type),
                description=None, homepage=None)
    if "visibility" in repo:
        repo["visibility"] = "private" if private else "public"
    if "default_branch" in repo:
        repo["default_branch"] = default_branch
    if "master_branch" in repo:
        repo["master_branch"] = default_branch
    return repo


def _installation_ref(installation_id: int) -> dict:
    """The ``installation`` object of an app delivery: ``{id, node_id}``."""
    return {"id": installation_id, "node_id": node_id("IntegrationInstallation", installation_id)}


def _retarget(payload: dict, repo: str) -> dict:
    """Rewrite the example's repository (and its URLs) to ``repo``; drop its org."""
    payload = _replace_strings(payload, payload["repository"]["full_name"], repo)
    payload["repository"] = _repository(payload["repository"], repo)
    # The examples mix an organization with a user-owned repository; our repos
    # are owned by the user account the app is installed on.
    payload.pop("organization", None)
    return payload


def _finish(payload: dict, api_url: str | None) -> dict:
    if api_url:
        payload = _replace_strings(payload, API, api_url.rstrip("/"))
    return payload


def _pull_links(repo: str, number: int, merged_at: str | None = None) -> dict:
    """``issue.pull_request`` of an issue that is a PR (issue_comment on a PR).

    None of the issue_comment examples is on a pull request, so the link
    object is taken from the real pull_request example (its url, html_url,
    diff_url and patch_url), which are exactly the fields GitHub puts there.
    """
    example = load_example("pull_request.opened")
    pr = _renumber(_replace_strings(example["pull_request"], example["repository"]["full_name"], repo),
                   example["number"], number)
    return {"url": pr["url"], "html_url": pr["html_url"], "diff_url": pr["diff_url"],
            "patch_url": pr["patch_url"], "merged_at": merged_at}


# --------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------


def issue_comment(repo: str = "octo/app", pr_number: int = 1, body: str = "/preview", user: str = "alice",
                  user_type: str = "User", comment_id: int | None = None, installation_id: int = 1,
                  action: str = "created", *, author_association: str | None = None,
                  pr_author: str | None = None, on_pull_request: bool = True,
                  api_url: str | None = None) -> dict:
    """An ``issue_comment`` delivery for a comment on pull request ``pr_number``.

    ``comment_id`` defaults to a random id; to let the bot react to the
    comment on the fake GitHub, seed it with ``fake.add_comment`` and pass its
    id. ``author_association`` defaults to OWNER for the repo owner, else NONE.
    """
    payload = _retarget(_example_for("issue_comment", action, "created"), repo)
    owner = repo.split("/")[0]
    number = pr_number
    api = f"{API}/repos/{repo}"

    old_number = payload["issue"]["number"]
    issue = _renumber(payload["issue"], old_number, number)
    iid = stable_id("pull" if on_pull_request else "issue", f"{repo}#{number}")
    issue.update(number=number, id=iid, node_id=node_id("PullRequest" if on_pull_request else "Issue", iid),
                 user=_user(issue["user"], pr_author or user), assignee=None, assignees=[], milestone=None)
    if on_pull_request:
        issue["html_url"] = f"{WEB}/{repo}/pull/{number}"
        issue["pull_request"] = _pull_links(repo, number)
    else:
        issue.pop("pull_request", None)
    payload["issue"] = issue

    cid = comment_id if comment_id is not None else secrets.randbelow(900_000_000) + 1_000_000_000
    comment = payload["comment"]
    comment.update(
        id=cid, node_id=node_id("IssueComment", cid), url=f"{api}/issues/comments/{cid}",
        html_url=f"{issue['html_url']}#issuecomment-{cid}", issue_url=f"{api}/issues/{number}",
        body=body, user=_user(comment["user"], user, user_type),
        author_association=author_association or ("OWNER" if user.lower() == owner.lower() else "NONE"),
    )
    if "reactions" in comment:
        comment["reactions"]["url"] = f"{comment['url']}/reactions"
    payload["sender"] = _user(payload["sender"], user, user_type)
    payload["installation"] = _installation_ref(installation_id)
    return _finish(payload, api_url)


def pull_request(action: str, repo: str = "octo/app", pr_number: int = 1, head_ref: str = "feature",
                 head_sha: str = "a" * 40, head_repo: str | None = None, user: str = "alice",
                 title: str = "Add feature", merged: bool = False, installation_id: int = 1, *,
                 base_ref: str = "main", base_sha: str | None = None, before: str | None = None,
                 body: str | None = None, draft: bool = False, sender: str | None = None,
                 api_url: str | None = None) -> dict:
    """A ``pull_request`` delivery (opened, reopened, synchronize, closed, ...).

    ``head_repo`` other than ``repo`` makes it a fork PR. ``merged`` only
    matters for ``closed``. For ``synchronize``, ``after`` is ``head_sha`` and
    ``before`` the given or the example's sha.
    """
    payload = _retarget(_example_for("pull_request", action, "opened"), repo)
    owner = repo.split("/")[0]
    head_repo = head_repo or repo
    head_owner = head_repo.split("/")[0]
    old_number = payload["number"]
    payload = _renumber(payload, old_number, pr_number)
    pr = payload["pull_request"]
    pid = stable_id("pull", f"{repo}#{pr_number}")
    closed = action == "closed"
    pr.update(number=pr_number, id=pid, node_id=node_id("PullRequest", pid), title=title, body=body,
              draft=draft, user=_user(pr["user"], user), state="closed" if closed else "open",
              statuses_url=f"{API}/repos/{repo}/statuses/{head_sha}", assignee=None, assignees=[],
              requested_reviewers=[], requested_teams=[], labels=[])
    if not closed:
        pr.update(closed_at=None, merged_at=None)
    pr["merged"] = bool(closed and merged)
    if pr["merged"]:
        pr["merged_at"] = pr["closed_at"]
        pr["merged_by"] = _user(payload["sender"], sender or user)
    else:
        pr["merged_at"] = None
        pr["merged_by"] = None
    pr["_links"]["statuses"]["href"] = pr["statuses_url"]

    head, base = pr["head"], pr["base"]
    head.update(label=f"{head_owner}:{head_ref}", ref=head_ref, sha=head_sha,
                user=_user(head["user"], head_owner),
                repo=_repository(head["repo"], head_repo, fork=head_repo != repo, default_branch=base_ref))
    base.update(label=f"{owner}:{base_ref}", ref=base_ref, sha=base_sha or base["sha"],
                user=_user(base["user"], owner), repo=_repository(base["repo"], repo, default_branch=base_ref))

    payload["number"] = pr_number
    payload["repository"] = _repository(payload["repository"], repo, default_branch=base_ref)
    if action == "synchronize":
        payload["before"] = before or payload.get("before")
        payload["after"] = head_sha
    payload["sender"] = _user(payload["sender"], sender or user)
    payload["installation"] = _installation_ref(installation_id)
    return _finish(payload, api_url)


def check_run(action: str, repo: str = "octo/app", head_sha: str = "a" * 40, check_run_id: int = 1,
              app_id: int = 1, identifier: str | None = None, pr_number: int | None = None,
              head_ref: str | None = None, sender: str = "alice", installation_id: int = 1,
              name: str = "Preview", external_id: str = "", *, status: str | None = None,
              conclusion: str | None = None, app_slug: str = "previewbot", base_ref: str = "main",
              api_url: str | None = None) -> dict:
    """A ``check_run`` delivery (requested_action, rerequested, ...).

    ``check_run.app.id`` is ``app_id``: the bot must ignore check runs of
    other apps. ``identifier`` becomes ``requested_action.identifier``.
    ``pr_number``/``head_ref`` fill ``check_run.pull_requests`` (GitHub leaves
    it empty for fork PRs). ``status``/``conclusion`` default to the example's.
    """
    if action == "requested_action" and identifier is None:
        raise ValueError("a requested_action delivery needs an identifier")
    payload = _retarget(_example_for("check_run", action, "requested_action"), repo)
    owner = repo.split("/")[0]
    api = f"{API}/repos/{repo}"
    run = payload["check_run"]
    app = _app(run["app"], app_id, app_slug, owner)
    pulls = _check_run_pulls(repo, pr_number, head_ref, head_sha, base_ref)
    run.update(id=check_run_id, node_id=node_id("CheckRun", check_run_id), head_sha=head_sha, name=name,
               external_id=external_id, url=f"{api}/check-runs/{check_run_id}",
               html_url=f"{WEB}/{repo}/runs/{check_run_id}", details_url=app["external_url"],
               app=app, pull_requests=pulls)
    if status is not None:
        run["status"] = status
    if conclusion is not None:
        run["conclusion"] = conclusion
        run["status"] = "completed"
    suite = run["check_suite"]
    suite_id = stable_id("suite", f"{repo}@{head_sha}:{app_id}")
    suite.update(id=suite_id, head_sha=head_sha, after=head_sha, head_branch=head_ref,
                 url=f"{api}/check-suites/{suite_id}", app=copy.deepcopy(app), pull_requests=copy.deepcopy(pulls))
    if "node_id" in suite:
        suite["node_id"] = node_id("CheckSuite", suite_id)
    if identifier is not None:
        payload["requested_action"] = {"identifier": identifier}
    else:
        payload.pop("requested_action", None)
    payload["sender"] = _user(payload["sender"], sender)
    payload["installation"] = _installation_ref(installation_id)
    return _finish(payload, api_url)


def _app(template: dict, app_id: int, slug: str, owner: str) -> dict:
    """The example's ``check_run.app`` turned into app ``app_id``/``slug``."""
    app = _replace_strings(copy.deepcopy(template), f"/apps/{template.get('slug')}", f"/apps/{slug}")
    app.update(id=app_id, node_id=node_id("App", app_id), slug=slug, name=slug,
               html_url=f"{WEB}/apps/{slug}", external_url=f"https://{slug}.example.test",
               owner=_user(template["owner"], owner))
    return app


def _check_run_pulls(repo: str, pr_number: int | None, head_ref: str | None, head_sha: str,
                     base_ref: str) -> list[dict]:
    """``check_run.pull_requests``, shaped like the requested_action example's."""
    if pr_number is None:
        return []
    example = load_example("check_run.requested_action")
    pull = _replace_strings(example["check_run"]["pull_requests"][0], example["repository"]["full_name"], repo)
    pull = _renumber(pull, pull["number"], pr_number)
    rid = stable_id("repo", repo)
    pull.update(id=stable_id("pull", f"{repo}#{pr_number}"), number=pr_number)
    pull["head"].update(ref=head_ref or "", sha=head_sha)
    pull["base"]["ref"] = base_ref
    for side in (pull["head"], pull["base"]):
        side["repo"].update(id=rid, url=f"{API}/repos/{repo}", name=repo.split("/")[1])
    return [pull]


def installation(action: str, installation_id: int = 1, repos: Iterable[str] = ("octo/app",),
                 account: str = "octo", *, account_type: str = "User", app_id: int | None = None,
                 sender: str | None = None, permissions: dict[str, str] | None = None,
                 api_url: str | None = None) -> dict:
    """An ``installation`` delivery (created, deleted, ...) for ``repos``."""
    payload = _example_for("installation", action, "created")
    inst = payload["installation"]
    acct = _user(inst["account"], account, account_type)
    inst.update(id=installation_id, account=acct, target_id=acct["id"], target_type=account_type,
                access_tokens_url=f"{API}/app/installations/{installation_id}/access_tokens",
                html_url=f"{WEB}/settings/installations/{installation_id}")
    if app_id is not None:
        inst["app_id"] = app_id
    if permissions is not None:
        inst["permissions"] = dict(permissions)
    template = payload["repositories"][0]
    payload["repositories"] = [_repo_ref(template, full_name) for full_name in repos]
    payload["sender"] = _user(payload["sender"], sender or account)
    payload.pop("requester", None)
    return _finish(payload, api_url)


def installation_repositories(action: str = "added", installation_id: int = 1, added: Iterable[str] = (),
                              removed: Iterable[str] = (), account: str = "octo", *,
                              account_type: str = "User", repository_selection: str = "selected",
                              sender: str | None = None, api_url: str | None = None) -> dict:
    """An ``installation_repositories`` delivery (repositories added/removed)."""
    payload = _example_for("installation_repositories", action, "added")
    inst = payload["installation"]
    acct = _user(inst["account"], account, account_type)
    inst.update(id=installation_id, account=acct, target_id=acct["id"], target_type=account_type,
                access_tokens_url=f"{API}/app/installations/{installation_id}/access_tokens",
                html_url=f"{WEB}/settings/installations/{installation_id}",
                repository_selection=repository_selection)
    template = (payload["repositories_added"] or payload["repositories_removed"])[0]
    payload["repositories_added"] = [_repo_ref(template, name) for name in added]
    payload["repositories_removed"] = [_repo_ref(template, name) for name in removed]
    payload["repository_selection"] = repository_selection
    payload["sender"] = _user(payload["sender"], sender or account)
    payload.pop("requester", None)
    return _finish(payload, api_url)


def _repo_ref(template: dict, full_name: str, private: bool = False) -> dict:
    """A short repository entry ``{id, node_id, name, full_name, private}``."""
    rid = stable_id("repo", full_name)
    ref = copy.deepcopy(template)
    ref.update(id=rid, node_id=node_id("Repository", rid), name=full_name.split("/")[1],
               full_name=full_name, private=private)
    return ref


def ping(app_id: int | None = None, hook_id: int | None = None, *, zen: str | None = None,
         hook_type: str | None = None, repo: str | None = None, sender: str | None = None) -> dict:
    """A ``ping`` delivery (sent when the webhook is created).

    Without ``repo``/``sender`` the example's repository and sender stay.
    """
    payload = load_example("ping")
    if repo is not None:
        payload = _retarget(payload, repo)
    if sender is not None:
        payload["sender"] = _user(payload["sender"], sender)
    hook = payload["hook"]
    if hook_id is not None:
        payload = _replace_strings(payload, f"/hooks/{hook['id']}", f"/hooks/{hook_id}")
        hook = payload["hook"]
        payload["hook_id"] = hook["id"] = hook_id
    if app_id is not None:
        hook["app_id"] = app_id
    if hook_type is not None:
        hook["type"] = hook_type
    if zen is not None:
        payload["zen"] = zen
    return payload


# --------------------------------------------------------------------------
# Delivery
# --------------------------------------------------------------------------


def sign(body: bytes, secret: str) -> str:
    """GitHub's ``X-Hub-Signature-256`` value: ``sha256=<hex HMAC of body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver(base_url: str, event: str, payload: dict, secret: str | None, delivery_id: str | None = None,
            path: str = "/api/github/webhooks", timeout: float = 10, *, app_id: int | None = None,
            headers: dict[str, str | None] | None = None) -> httpx.Response:
    """POST ``payload`` to the bot like GitHub's webhook deliverer does.

    Sends X-GitHub-Event, X-GitHub-Delivery (uuid4 unless given),
    X-Hub-Signature-256 (and the legacy sha1 X-Hub-Signature) unless
    ``secret`` is None, Content-Type application/json and a
    ``GitHub-Hookshot/...`` User-Agent. ``app_id`` adds the
    X-GitHub-Hook-Installation-Target-* headers of app webhooks. ``headers``
    overrides any header; a None value removes it (e.g. to test rejection).
    """
    body = json.dumps(payload).encode()
    sent = {
        "Content-Type": "application/json",
        "User-Agent": f"GitHub-Hookshot/{secrets.token_hex(4)[:7]}",
        "Accept": "*/*",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": str(payload.get("hook_id", 109948940)),
    }
    if app_id is not None:
        sent["X-GitHub-Hook-Installation-Target-Type"] = "integration"
        sent["X-GitHub-Hook-Installation-Target-ID"] = str(app_id)
    if secret is not None:
        sent["X-Hub-Signature"] = "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
        sent["X-Hub-Signature-256"] = sign(body, secret)
    for name, value in (headers or {}).items():
        for existing in [k for k in sent if k.lower() == name.lower()]:
            del sent[existing]
        if value is not None:
            sent[name] = value
    return httpx.post(base_url.rstrip("/") + path, content=body, headers=sent, timeout=timeout)
