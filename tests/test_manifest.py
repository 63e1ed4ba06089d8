"""The App manifest asks for exactly what the bot's calls need."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_manifest_permissions_and_events_match_the_code():
    import yaml

    manifest = yaml.safe_load((ROOT / "app.yml").read_text())
    assert manifest["default_permissions"] == {"checks": "write", "deployments": "write", "pull_requests": "write", "metadata": "read", "contents": "read"}
    assert sorted(manifest["default_events"]) == ["check_run", "issue_comment", "pull_request"]
    assert manifest["hook_attributes"]["url"].endswith("/api/github/webhooks")
    # Every event the receiver plans work for is subscribed to.
    source = (ROOT / "bot" / "webhooks.py").read_text()
    planned = set(re.findall(r'event == "(\w+)"', source)) - {"ping", "installation", "installation_repositories"}
    assert planned <= set(manifest["default_events"])
