"""Reading a deployment's log while it is written: the REST tail (`GET /api/deployments/{id}/logs`)
and the WebSocket's `deployment:log` messages, end to end with the real `previewbot web` and
`previewbot worker` processes, plus `read_log` over SQLite and Redis together."""

from __future__ import annotations

import json
import shlex

import pytest
import websocket

from bot import state
from bot.livelogs import log_entries, read_log
from bot.model import new_deployment_id
from bot.store import Store

from .harness import wait_for

# The provisioner prints FIRST lines, waits for the test's gate file, then prints up to LAST.
FIRST, LAST = 300, 2600
SCRIPT = """
i=1
while [ $i -le {first} ]; do echo "line $i"; i=$((i+1)); done
while [ ! -e "{gate}" ]; do sleep 0.05; done
while [ $i -le {last} ]; do echo "line $i"; i=$((i+1)); done
echo "https://pr-$PREVIEW_PR_NUMBER.preview.acme.test"
"""


class LogClient:
    """A WebSocket client that signs in with its first message, as the dashboard does."""

    def __init__(self, bot, token: str | None = None, query: str = ""):
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{bot.port}/ws{query}", timeout=20)
        self.ws.send(json.dumps({"type": "auth", "token": token or bot.token}))
        assert json.loads(self.ws.recv()) == {"type": "auth", "ok": True}
        self.messages: list[dict] = []

    def send(self, message: dict) -> None:
        self.ws.send(json.dumps(message))

    def until(self, predicate) -> dict:
        while True:
            message = json.loads(self.ws.recv())
            self.messages.append(message)
            if predicate(message):
                return message

    def lines(self) -> list[dict]:
        return [m for m in self.messages if m["type"] == "deployment:log"]

    def close(self) -> None:
        self.ws.close()


def numbered(lines: list[dict]) -> list[int]:
    """The n of each `line n` the provisioner printed, in the order received."""
    return [int(m["line"].split()[1]) for m in lines if m["line"].startswith("line ")]


@pytest.fixture
def logging_bot(make_bot, tmp_path):
    gate = tmp_path / "gate"
    script = tmp_path / "deploy.sh"
    script.write_text(SCRIPT.format(first=FIRST, last=LAST, gate=gate))
    bot = make_bot({"PREVIEW_PROVISIONER": "command", "PREVIEW_DEPLOY_COMMAND": shlex.join(["sh", str(script)])}).start()
    return bot, gate


def tail(bot, deployment_id: str, token: str | None = None, **query):
    with bot.client(token) as client:
        return client.get(f"/api/deployments/{deployment_id}/logs", params=query)


@pytest.mark.slow
def test_lines_reach_subscribers_live_in_order_and_a_late_one_gets_the_earlier_first(logging_bot):
    bot, gate = logging_bot
    deployment_id = bot.deploy("octo/app", 7, "feat/logs").json()["deploymentId"]
    # One follows from the start (in its address), the other subscribes once half the lines exist.
    early = LogClient(bot, query=f"?repository=octo/app&logs={deployment_id}")
    early.until(lambda m: m == {"type": "subscribed", "logs": deployment_id})
    wait_for(lambda: tail(bot, deployment_id).json()["lastSeq"] >= FIRST, message="the first lines in the REST tail")
    late = LogClient(bot)
    late.send({"type": "subscribe", "logs": deployment_id})
    late.until(lambda m: m == {"type": "subscribed", "logs": deployment_id})
    late.until(lambda m: m.get("seq") == FIRST)
    gate.touch()

    for client in (early, late):
        client.until(lambda m: m.get("line") == f"line {LAST}")
        lines = client.lines()
        # Every line once, in order, numbered from 1 without a gap, whatever came from the
        # replay and whatever live.
        assert [m["seq"] for m in lines] == list(range(1, len(lines) + 1))
        assert numbered(lines) == list(range(1, LAST + 1))
        assert lines[0] == {
            "type": "deployment:log", "deploymentId": deployment_id, "repository": "octo/app", "prNumber": "7",
            "environment": "preview", "seq": 1, "at": lines[0]["at"], "line": "line 1",
        }
    # The early client's filter still gives it the deployment's updates beside the lines (the
    # update may come before the last lines: updates do not wait behind a log).
    def deployed(m):
        return m["type"] == "deployment:update" and m["status"] == "deployed"

    if not any(deployed(m) for m in early.messages):
        early.until(deployed)
    early.close()
    late.close()

    # The REST tail: the last lines, then the lines after a seq, a page at a time.
    bot.wait_status("octo/app", 7, "deployed")
    every = tail(bot, deployment_id, limit=5000).json()
    assert numbered(every["lines"]) == list(range(1, LAST + 1))
    total = every["lastSeq"]
    assert [line["seq"] for line in every["lines"]] == list(range(1, total + 1))
    last = tail(bot, deployment_id).json()
    assert [line["seq"] for line in last["lines"]] == list(range(total - 999, total + 1)) and last["lastSeq"] == total
    page = tail(bot, deployment_id, after=FIRST, limit=20).json()
    assert [line["line"] for line in page["lines"]] == [f"line {n}" for n in range(FIRST + 1, FIRST + 21)]
    assert page["lastSeq"] == FIRST + 20
    assert tail(bot, deployment_id, after=total).json() == {"lines": [], "lastSeq": total}

    # A client coming back asks for what follows its last line: nothing twice.
    again = LogClient(bot, query=f"?logs={deployment_id}&after={total - 3}")
    again.until(lambda m: m.get("seq") == total)
    assert [m["seq"] for m in again.lines()] == [total - 2, total - 1, total]
    again.close()


@pytest.mark.slow
def test_a_scoped_token_never_sees_another_repositorys_lines(logging_bot):
    bot, gate = logging_bot
    gate.touch()
    deployment_id = bot.deploy("octo/app", 8, "feat/secret").json()["deploymentId"]
    bot.wait_status("octo/app", 8, "deployed")
    scoped = bot.store.create_token("other-repo", ["octo/other"])

    # REST: the same 404 as for a deployment that does not exist.
    assert tail(bot, deployment_id).status_code == 200
    refused, missing = tail(bot, deployment_id, scoped), tail(bot, new_deployment_id(), scoped)
    assert refused.status_code == missing.status_code == 404
    assert refused.json() == missing.json()
    assert tail(bot, "x" * 300).status_code == 404

    # WebSocket: the same error, by message and in the address, and no line.
    client = LogClient(bot, token=scoped)
    client.send({"type": "subscribe", "logs": deployment_id})
    other = client.until(lambda m: m["type"] == "error")
    client.send({"type": "subscribe", "logs": "no-such-deployment"})
    unknown = client.until(lambda m: m["type"] == "error")
    assert {**other, "logs": None} == {**unknown, "logs": None} and "logs" in other
    client.ws.send("ping")
    client.until(lambda m: m["type"] == "pong")
    assert [m["type"] for m in client.messages] == ["error", "error", "pong"]
    client.close()
    by_address = LogClient(bot, token=scoped, query=f"?logs={deployment_id}")
    assert by_address.until(lambda m: True)["type"] == "error"
    by_address.close()

    # Nonsense is refused without closing the connection.
    client = LogClient(bot)
    for message in ({"type": "subscribe", "logs": 7}, {"type": "subscribe", "logs": deployment_id, "after": -1}, {"type": "hello"}):
        client.send(message)
        assert client.until(lambda m: True)["type"] == "error"
    client.ws.send("{not json")
    assert client.until(lambda m: True)["type"] == "error"
    client.send({"type": "subscribe", "logs": deployment_id, "after": 0})
    client.until(lambda m: m.get("line", "").startswith("https://"))
    client.close()


def test_read_log_joins_what_sqlite_recorded_and_what_only_redis_holds(settings, redis_conn):
    store = Store(settings.database_path)
    store.migrate()
    deployment_id = new_deployment_id()
    for n in range(1, 81):
        state.publish_log(redis_conn, deployment_id, f"line {n}")
    stream = state.LOG_STREAM.format(deployment_id)
    # SQLite recorded the first 50; Redis has since kept only the newest 40.
    store.record_logs(deployment_id, log_entries(redis_conn.xrange(stream, count=50)))
    redis_conn.xtrim(stream, maxlen=40)

    def seqs(**query):
        return [entry.seq for entry in read_log(redis_conn, store, deployment_id, **query)]

    assert seqs(after=0) == list(range(1, 81))
    assert seqs(after=45, limit=10) == list(range(46, 56))
    assert seqs(after=80) == []
    assert seqs() == list(range(1, 81))
    assert seqs(limit=60) == list(range(21, 81))
    assert seqs(limit=30) == list(range(51, 81))
    assert [entry.line for entry in read_log(redis_conn, store, deployment_id, after=49, limit=2)] == ["line 50", "line 51"]
    # Once Redis forgot the stream (a week after the last line), SQLite's lines remain.
    redis_conn.delete(stream)
    assert seqs() == list(range(1, 51)) and seqs(after=48) == [49, 50]


class RecorderBetweenTheReads(Store):
    """SQLite as a web process's recorder leaves it: between read_log's read of SQLite and its
    read of Redis, the recorder records more lines and a flood trims them from Redis."""

    def __init__(self, path, conn, deployment_id):
        super().__init__(path)
        self.conn, self.deployment_id, self.meanwhile = conn, deployment_id, True

    def deployment_logs(self, deployment_id, after=None, limit=1000):
        rows = list(super().deployment_logs(deployment_id, after=after, limit=limit))
        if self.meanwhile:
            self.meanwhile = False
            stream = state.LOG_STREAM.format(self.deployment_id)
            self.record_logs(self.deployment_id, log_entries(self.conn.xrange(stream, count=60)))
            self.conn.xtrim(stream, maxlen=20, approximate=False)
        return rows


def test_read_log_leaves_no_gap_when_lines_are_recorded_and_trimmed_between_its_reads(settings, redis_conn):
    deployment_id = new_deployment_id()
    for n in range(1, 81):
        state.publish_log(redis_conn, deployment_id, f"line {n}")
    store = RecorderBetweenTheReads(settings.database_path, redis_conn, deployment_id)
    store.migrate()
    store.record_logs(deployment_id, log_entries(redis_conn.xrange(state.LOG_STREAM.format(deployment_id), count=30)))
    assert [entry.seq for entry in read_log(redis_conn, store, deployment_id, after=0, limit=100)] == list(range(1, 81))
