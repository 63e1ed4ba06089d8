"""The preview service end to end: real `previewbot web` and `previewbot worker` processes,
a real Redis and a real SQLite file."""

from __future__ import annotations

import json
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from .harness import FeedClient, wait_for

pytestmark = pytest.mark.slow


def test_deploy_reaches_deployed_and_is_recorded(make_bot):
    bot = make_bot().start()
    response = bot.deploy("octo/app", 7, "feat/login")
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "deploying" and body["deploymentId"]
    deployed = bot.wait_status("octo/app", 7, "deployed")
    assert deployed["id"] == body["deploymentId"]
    assert deployed["previewUrl"] == "https://preview-7.app.example.com"
    assert deployed["branchName"] == "feat/login" and deployed["prNumber"] == 7
    for field in ("id", "repository", "prNumber", "branchName", "status", "previewUrl", "error", "createdAt", "updatedAt"):
        assert field in deployed
    # The history records both steps.
    statuses = [e["status"] for e in bot.store.deployment_events(body["deploymentId"])]
    assert statuses[-1] == "deployed" and "deploying" in statuses


def test_websocket_sees_deploying_then_deployed(make_bot):
    bot = make_bot({"PREVIEW_SIMULATED_SECONDS": "0.3"}).start()
    feed = FeedClient(bot.ws_url(repository="octo/app", prNumber="3")).ready()
    other = FeedClient(bot.ws_url(repository="octo/other")).ready()
    try:
        assert bot.deploy("octo/app", 3, "fix/typo").status_code == 202
        deploying = feed.until(lambda m: m.get("type") == "deployment:update")
        assert deploying["status"] == "deploying"
        deployed = feed.until(lambda m: m.get("status") == "deployed")
        assert deployed == {
            **deployed,
            "type": "deployment:update",
            "prNumber": "3",
            "branchName": "fix/typo",
            "repository": "octo/app",
            "previewUrl": "https://preview-3.app.example.com",
        }
        # A client filtered to another repository hears nothing of octo/app.
        other.ws.send("ping")
        assert other.until(lambda m: True) == {"type": "pong"}
    finally:
        feed.close()
        other.close()


def test_failed_deploy_reports_the_error(make_bot, tmp_path):
    script = tmp_path / "fail.sh"
    script.write_text("echo building\necho 'disk quota exceeded' >&2\nexit 3\n")
    bot = make_bot({"PREVIEW_PROVISIONER": "command", "PREVIEW_DEPLOY_COMMAND": f"sh {script}"}).start()
    feed = FeedClient(bot.ws_url()).ready()
    try:
        bot.deploy("octo/app", 4, "broken")
        failed = feed.until(lambda m: m.get("status") == "failed")
        assert "disk quota exceeded" in failed["error"]
    finally:
        feed.close()
    body = bot.wait_status("octo/app", 4, "failed")
    assert "exited with 3" in body["error"]
    logs = [row["line"] for row in bot.store.deployment_logs(body["id"])]
    assert "building" in logs


def test_fifty_simultaneous_deploys_give_one_202_and_one_provisioning_run(make_bot, tmp_path):
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    runs.mkdir()
    script = tmp_path / "deploy.py"
    # The deploy holds the branch until every request has been answered.
    script.write_text(
        "import os, pathlib, time\n"
        f"pathlib.Path({str(runs)!r}, os.environ['PREVIEW_DEPLOYMENT_ID']).write_text('x')\n"
        f"while not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.02)\n"
        "print('https://pr.example.test')\n"
    )
    bot = make_bot({"PREVIEW_PROVISIONER": "command", "PREVIEW_DEPLOY_COMMAND": f"{sys.executable} {script}"}).start(workers=2)
    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(lambda _: bot.deploy("octo/app", 9, "feat/race"), range(50)))
    gate.write_text("go")
    codes = sorted(r.status_code for r in responses)
    assert codes == [202] + [409] * 49
    winner = next(r.json() for r in responses if r.status_code == 202)
    assert {r.json()["deploymentId"] for r in responses if r.status_code == 409} == {winner["deploymentId"]}
    deployed = bot.wait_status("octo/app", 9, "deployed")
    assert deployed["previewUrl"] == "https://pr.example.test"
    assert [p.name for p in runs.iterdir()] == [winner["deploymentId"]]


def test_events_wait_in_redis_while_the_web_process_is_down(make_bot, tmp_path):
    gate = tmp_path / "gate"
    script = tmp_path / "deploy.py"
    script.write_text(
        "import pathlib, time\n"
        f"gate = pathlib.Path({str(gate)!r})\n"
        "while not gate.exists():\n    time.sleep(0.05)\n"
        "print('https://after-restart.example.test')\n"
    )
    bot = make_bot({"PREVIEW_PROVISIONER": "command", "PREVIEW_DEPLOY_COMMAND": f"{sys.executable} {script}"}).start()
    started = bot.deploy("octo/app", 11, "feat/slow").json()
    bot.stop_web(signal.SIGKILL)
    gate.write_text("go")
    # The worker finishes while no web process runs: the event waits in the stream.
    wait_for(lambda: b"deploy-" + started["id"].encode() in _finished_jobs(bot), message="job to finish")
    bot.start_web()
    deployed = bot.wait_status("octo/app", 11, "deployed")
    assert deployed["previewUrl"] == "https://after-restart.example.test"


def _finished_jobs(bot) -> bytes:
    import redis

    conn = redis.Redis.from_url(bot.env["REDIS_URL"])
    return b" ".join(conn.zrange("rq:finished:previewbot", 0, -1))


def test_destroy_keeps_history_and_frees_the_branch(make_bot):
    bot = make_bot().start()
    first = bot.deploy("octo/app", 12, "feat/a").json()
    bot.wait_status("octo/app", 12, "deployed")
    with bot.client() as c:
        response = c.delete("/api/repos/octo/app/pull-requests/12/deployment")
    assert response.status_code == 202
    wait_for(lambda: bot.deployment("octo/app", 12).status_code == 404, message="destroyed")
    assert bot.deployment("octo/app", 12).json()["status"] == "idle"
    row = bot.store.get_deployment(first["id"])
    assert row["status"] == "destroyed" and row["destroyed_at"]
    # Deploying again makes a new row; the destroyed one stays as history.
    second = bot.deploy("octo/app", 12, "feat/a").json()
    bot.wait_status("octo/app", 12, "deployed")
    with bot.client() as c:
        history = c.get("/api/repos/octo/app/pull-requests/12/deployments").json()["deployments"]
    assert [d["id"] for d in history] == [second["id"], first["id"]]
    with bot.client() as c:
        assert c.delete("/api/repos/octo/app/pull-requests/99/deployment").status_code == 404


def test_redeploy_after_deployed_is_a_new_deployment(make_bot):
    bot = make_bot().start()
    first = bot.deploy("octo/app", 13, "feat/b").json()
    bot.wait_status("octo/app", 13, "deployed")
    second = bot.deploy("octo/app", 13, "feat/b")
    assert second.status_code == 202
    assert second.json()["deploymentId"] != first["deploymentId"]
    assert bot.wait_status("octo/app", 13, "deployed")["id"] == second.json()["id"]


def history(bot, repository: str, pr: int) -> list[tuple[str, str]]:
    with bot.client() as c:
        return [(d["id"], d["status"]) for d in c.get(f"/api/repos/{repository}/pull-requests/{pr}/deployments").json()["deployments"]]


def test_a_replaced_deployment_is_superseded_in_the_history(make_bot):
    bot = make_bot().start()
    first = bot.deploy("octo/app", 14, "feat/c").json()
    bot.wait_status("octo/app", 14, "deployed")
    second = bot.deploy("octo/app", 14, "feat/c").json()  # a redeploy
    bot.wait_status("octo/app", 14, "deployed")
    assert wait_for(lambda: history(bot, "octo/app", 14) == [(second["id"], "deployed"), (first["id"], "superseded")])
    third = bot.deploy("octo/app", 14, "feat/other").json()  # another branch of the same pull request
    assert bot.wait_status("octo/app", 14, "deployed")["id"] == third["id"]
    expected = [(third["id"], "deployed"), (second["id"], "superseded"), (first["id"], "superseded")]
    assert wait_for(lambda: history(bot, "octo/app", 14) == expected)


def test_the_history_is_paginated_newest_first(make_bot):
    bot = make_bot().start()
    ids = []
    for _ in range(3):
        ids.append(bot.deploy("octo/app", 15, "feat/d").json()["id"])
        bot.wait_status("octo/app", 15, "deployed")
    wait_for(lambda: len(history(bot, "octo/app", 15)) == 3)
    with bot.client() as c:
        page = c.get("/api/repos/octo/app/pull-requests/15/deployments?limit=2").json()
        assert [d["id"] for d in page["deployments"]] == ids[:0:-1] and page["next"] == ids[1]
        rest = c.get(f"/api/repos/octo/app/pull-requests/15/deployments?limit=2&before={page['next']}").json()
    assert [d["id"] for d in rest["deployments"]] == [ids[0]] and rest["next"] is None


def test_websocket_of_a_scoped_token_never_carries_other_repositories(make_bot):
    bot = make_bot().start()
    scoped = bot.store.create_token("scoped", ["octo/app"])
    feed = FeedClient(bot.ws_url(token=scoped)).ready()
    sneaky = FeedClient(bot.ws_url(token=scoped, repository="octo/secret")).ready()
    try:
        assert bot.deploy("octo/secret", 1, "main").status_code == 202
        assert bot.deploy("octo/app", 2, "main").status_code == 202
        seen = feed.until(lambda m: m.get("repository") == "octo/app" and m.get("status") == "deployed")
        assert all(m.get("repository") != "octo/secret" for m in feed.messages)
        bot.wait_status("octo/secret", 1, "deployed")
        sneaky.ws.send("ping")
        assert sneaky.until(lambda m: True) == {"type": "pong"}  # nothing of octo/secret came first
        assert seen["prNumber"] == "2"
    finally:
        feed.close()
        sneaky.close()


def test_bad_token_on_the_websocket_is_refused(make_bot):
    import websocket

    bot = make_bot().start()
    # Without a token in the address the server waits 5 s for the auth message, then closes.
    for url in (bot.ws_url(token="pvb_wrong"), f"ws://127.0.0.1:{bot.port}/ws"):
        ws = websocket.create_connection(url, timeout=10)
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            ws.recv()
            ws.recv()


def test_websocket_messages_carry_the_environment_and_can_be_filtered_by_it(make_bot):
    bot = make_bot({"PREVIEW_ENVIRONMENTS": "preview,staging"}).start()
    everything = FeedClient(bot.ws_url()).ready()
    staging_only = FeedClient(bot.ws_url(environment="staging")).ready()
    try:
        assert bot.deploy("octo/app", 16, "feat/e").status_code == 202
        assert bot.deploy("octo/app", 16, "feat/e", environment="staging").status_code == 202
        for environment in ("preview", "staging"):
            def deployed(m, e=environment):
                return m.get("environment") == e and m.get("status") == "deployed"

            if not any(deployed(m) for m in everything.messages):
                everything.until(deployed)
        seen = staging_only.until(lambda m: m.get("status") == "deployed")
        assert seen["environment"] == "staging" and seen["prNumber"] == "16"
        updates = [m for m in staging_only.messages if m["type"] == "deployment:update"]
        assert {m["environment"] for m in updates} == {"staging"}
        assert all("environment" in m for m in everything.messages if m["type"] == "deployment:update")
    finally:
        everything.close()
        staging_only.close()


def test_the_token_may_come_as_the_first_message_and_is_answered(make_bot):
    import websocket

    bot = make_bot().start()
    url = f"ws://127.0.0.1:{bot.port}/ws?repository=octo/app"
    ws = websocket.create_connection(url, timeout=10)
    try:
        ws.send(json.dumps({"type": "auth", "token": bot.token}))
        assert json.loads(ws.recv()) == {"type": "auth", "ok": True}
        assert bot.deploy("octo/app", 21, "feat/auth").status_code == 202
        while (message := json.loads(ws.recv())).get("status") != "deployed":
            assert message["type"] == "deployment:update" and message["repository"] == "octo/app"
    finally:
        ws.close()


@pytest.mark.parametrize("first", [
    json.dumps({"type": "auth", "token": "pvb_wrong"}),
    json.dumps({"type": "subscribe", "token": "anything"}),
    "ping",
    "not json",
])
def test_a_first_message_that_is_no_valid_auth_closes_with_4401(make_bot, first):
    import websocket

    bot = make_bot().start()
    ws = websocket.create_connection(f"ws://127.0.0.1:{bot.port}/ws", timeout=10)
    try:
        ws.send(first)
        opcode, frame = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(frame[:2], "big") == 4401
    finally:
        ws.close()


def test_revoking_a_token_closes_its_websockets_within_seconds(make_bot):
    import websocket

    bot = make_bot().start()
    doomed = bot.store.create_token("doomed")
    feeds = []
    for _ in range(2):
        ws = websocket.create_connection(f"ws://127.0.0.1:{bot.port}/ws", timeout=10)
        ws.send(json.dumps({"type": "auth", "token": doomed}))
        assert json.loads(ws.recv())["ok"] is True
        feeds.append(ws)
    script = FeedClient(bot.ws_url(token=doomed)).ready()
    other = FeedClient(bot.ws_url()).ready()
    try:
        assert bot.store.revoke_token("doomed")
        for ws in [*feeds, script.ws]:
            ws.settimeout(5 + 1)  # the contract: closed within 5 s (checks run every 2 s)
            opcode, frame = ws.recv_data(control_frame=True)
            assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(frame[:2], "big") == 4401
        other.ws.send("ping")
        assert other.until(lambda m: True) == {"type": "pong"}
    finally:
        for ws in feeds:
            ws.close()
        script.close()
        other.close()
