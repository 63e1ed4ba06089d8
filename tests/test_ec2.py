"""The `ec2` provisioner against moto in server mode (real HTTP), behind a fault-injecting proxy
where AWS errors are needed, with a fake of the Price List API; then through the real
`previewbot web` and `previewbot worker` processes. moto hands out public addresses that this
machine must never contact: URLs are only rendered and compared, never requested."""

from __future__ import annotations

import base64
import shlex
import threading

import boto3
import pytest

from bot import state
from bot.config import ConfigError, load_settings
from bot.model import Deployment, PreviewKey
from worker.provisioners import LOCK_LOST, ProvisionError, ProvisionRequest, TaggedResource, make_provisioner
from worker.provisioners.ec2 import on_demand_price
from worker.reconcile import is_orphan

from . import webhooks
from .awsfakes import CREDENTIALS, FakePricing, FaultProxy, MotoServer, price_document
from .harness import wait_for
from .test_health import HealthServer
from .test_github_e2e import INSTALLATION, REPO, SHA1, comment, deployments, send

SHORT_LINK = "https://codeload.example.test/octo/app/legacy.tar.gz/abc?token=SHORTLIVED123"
PRICE = "0.0208"


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture
def pricing():
    fake = FakePricing({("t3.small", "us-east-1"): PRICE, ("t3.large", "us-east-1"): "0.0832"})
    yield fake
    fake.stop()


@pytest.fixture
def proxy(moto):
    fake = FaultProxy(moto.url)
    yield fake
    fake.stop()


@pytest.fixture
def aws(moto, monkeypatch, tmp_path):
    """A clean moto, and an environment where boto3 finds it and nothing of this machine's."""
    moto.reset()
    for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": moto.url, "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_PRICING", "AWS_ENDPOINT_URL_EC2"):
        monkeypatch.delenv(name, raising=False)
    return boto3.client("ec2", endpoint_url=moto.url, region_name="us-east-1")


@pytest.fixture
def ami(aws) -> str:
    return aws.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]


def provisioner(ami: str, **env: str):
    return make_provisioner(load_settings({"PREVIEW_PROVISIONER": "ec2", "PREVIEW_EC2_AMI": ami, "AWS_REGION": "us-east-1", **env}))


def request(deployment_id: str = "d" * 32, lines: list | None = None, **kw) -> ProvisionRequest:
    return ProvisionRequest(
        repository="octo/app", pr_number=7, branch="feat/x';reboot;'", sha="a" * 40, deployment_id=deployment_id,
        log=(lines.append if lines is not None else (lambda line: None)), source_archive=lambda: SHORT_LINK, **kw,
    )


def instances(ec2, *states: str) -> list[dict]:
    filters = [{"Name": "instance-state-name", "Values": list(states)}] if states else []
    return [i for r in ec2.describe_instances(Filters=filters)["Reservations"] for i in r["Instances"]]


def state_of(ec2, instance_id: str) -> str:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


def tags_of(instance: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


# -- the provisioner against moto ---------------------------------------------------------------


def test_deploy_launches_a_tagged_instance_with_imdsv2_required_and_prices_it(aws, ami, pricing, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", pricing.url)
    ec2 = provisioner(ami, PREVIEW_URL_TEMPLATE="https://{public_dns}/pr-{pr}", PREVIEW_URL_ALLOWED_HOSTS=".amazonaws.com")
    lines: list[str] = []
    result = ec2.deploy(request(lines=lines, start="npm run preview", vars={"FEATURE_X": "1"}))

    [instance] = instances(aws, "running")
    assert result.url == f"https://{instance['PublicDnsName']}/pr-7"
    assert [r.model_dump() for r in result.resources] == [{"kind": "ec2:instance", "id": instance["InstanceId"], "type": "t3.small", "region": "us-east-1"}]
    assert result.hourly_cost == float(PRICE)
    assert tags_of(instance) == {
        "previewbot:repository": "octo/app", "previewbot:pr": "7", "previewbot:environment": "preview",
        "previewbot:deployment": "d" * 32, "previewbot:branch": "feat/x';reboot;'", "Name": "previewbot octo/app#7 preview",
    }
    assert instance["MetadataOptions"]["HttpTokens"] == "required" and instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert instance["InstanceType"] == "t3.small" and instance["ImageId"] == ami
    user_data = base64.b64decode(aws.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")["UserData"]["Value"]).decode()
    assert f"source_url={shlex.quote(SHORT_LINK)}" in user_data and "start='npm run preview'" in user_data and "export FEATURE_X=1" in user_data
    assert lines[0].startswith("ec2: launching a t3.small instance") and f"ec2: instance {instance['InstanceId']}" in lines
    assert f"ec2: {instance['InstanceId']} is running" in lines
    assert not any(SHORT_LINK in line for line in lines)  # the user data is never logged

    # The price is asked once per instance type and region.
    ec2.deploy(request(deployment_id="e" * 32))
    assert len(pricing.requests) == 1
    assert {f["Field"]: f["Value"] for f in pricing.requests[0]["Filters"]} == {
        "instanceType": "t3.small", "regionCode": "us-east-1", "operatingSystem": "Linux", "tenancy": "Shared",
        "preInstalledSw": "NA", "capacitystatus": "Used", "licenseModel": "No License required",
    }


def test_a_redeploy_launches_the_new_instance_then_retires_the_old_and_destroy_terminates_all(aws, ami):
    ec2 = provisioner(ami)
    first = ec2.deploy(request(deployment_id="1" * 32)).resources[0].id
    other_pr = ec2.deploy(request(deployment_id="3" * 32, environment="staging")).resources[0].id
    lines: list[str] = []
    launched = ec2.deploy(request(deployment_id="2" * 32, lines=lines))
    second = launched.resources[0].id
    assert second != first
    assert state_of(aws, first) == "running" and state_of(aws, second) == "running"  # both, until the new one is deployed
    ec2.retire(request(deployment_id="2" * 32, lines=lines), launched)
    assert state_of(aws, first) == "terminated" and state_of(aws, second) == "running"
    assert any(line.startswith(f"ec2: terminating {first}") for line in lines)
    ec2.destroy(request(deployment_id="2" * 32))
    assert state_of(aws, second) == "terminated"
    assert state_of(aws, other_pr) == "running"  # another environment of the pull request stays


def test_a_discarded_redeploy_terminates_only_what_it_launched(aws, ami):
    ec2 = provisioner(ami)
    first = ec2.deploy(request(deployment_id="1" * 32)).resources[0].id
    launched = ec2.deploy(request(deployment_id="2" * 32))
    ec2.discard(request(deployment_id="2" * 32), launched)
    assert state_of(aws, first) == "running" and state_of(aws, launched.resources[0].id) == "terminated"


def test_a_bad_ami_fails_with_awss_message_and_launches_nothing(aws):
    with pytest.raises(ProvisionError, match=r"AWS RunInstances failed: InvalidAMIID.NotFound: The image id '\[ami-0123456789abcdef0\]' does not exist"):
        provisioner("ami-0123456789abcdef0").deploy(request())
    assert instances(aws) == []


@pytest.mark.parametrize(
    "code, message, status",
    [
        ("InstanceLimitExceeded", "You have requested more instances (1) than your current instance limit of 0 allows.", 400),
        ("InsufficientInstanceCapacity", "We currently do not have sufficient t3.small capacity in the Availability Zone you requested.", 500),
        ("RequestLimitExceeded", "Request limit exceeded.", 503),
    ],
)
def test_quota_capacity_and_throttling_errors_fail_the_deploy_with_awss_message(aws, ami, proxy, monkeypatch, code, message, status):
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    proxy.fail("RunInstances", code, message, status=status, times=10)
    with pytest.raises(ProvisionError) as failed:
        provisioner(ami).deploy(request())
    assert str(failed.value) == f"AWS RunInstances failed: {code}: {message}"
    assert "AKIATESTTESTTESTTEST" not in str(failed.value) and "test-secret-key" not in str(failed.value)
    assert instances(aws) == []
    # botocore's standard retries: a client error is final, throttling and 5xx are retried.
    assert proxy.calls.count("RunInstances") == (1 if status == 400 else 4)


def test_throttling_that_passes_is_retried_by_botocore(aws, ami, proxy, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    proxy.fail("RunInstances", "RequestLimitExceeded", "Request limit exceeded.", status=503, times=2)
    result = provisioner(ami).deploy(request())
    assert state_of(aws, result.resources[0].id) == "running"
    assert proxy.calls.count("RunInstances") == 3


def test_a_cancel_while_waiting_terminates_what_was_launched(aws, ami, proxy, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    proxy.hold_pending.set()
    stopped = request()
    outcome: list[BaseException] = []

    def deploy() -> None:
        try:
            provisioner(ami).deploy(stopped)
        except ProvisionError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=deploy)
    thread.start()
    [launched] = wait_for(lambda: instances(aws), message="the instance to be launched")
    stopped.cancelled.set()
    thread.join(timeout=60)
    assert str(outcome[0]) == LOCK_LOST
    assert state_of(aws, launched["InstanceId"]) == "terminated"


def test_the_price_falls_back_to_preview_hourly_cost_when_the_price_list_is_unreachable(aws, ami, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", "http://127.0.0.1:9")
    assert provisioner(ami, PREVIEW_HOURLY_COST="0.05").deploy(request()).hourly_cost == 0.05


def test_the_on_demand_price_is_read_from_the_price_list():
    assert on_demand_price([price_document("t3.small", "us-east-1", "0.0208")]) == 0.0208
    assert on_demand_price([price_document("t3.small", "us-east-1", "0.0000000000")]) is None
    assert on_demand_price([]) is None


def test_the_url_template_may_use_the_instances_public_address(aws, ami):
    url = provisioner(ami, PREVIEW_URL_TEMPLATE="http://{public_ip}:8080/{environment}").deploy(request()).url
    [instance] = instances(aws, "running")
    assert url == f"http://{instance['PublicIpAddress']}:8080/preview"


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"PREVIEW_PROVISIONER": "ec2"}, "PREVIEW_EC2_AMI"),
        ({"PREVIEW_EC2_AMI": "ubuntu"}, "PREVIEW_EC2_AMI"),
        ({"PREVIEW_EC2_INSTANCE_TYPE": "large"}, "PREVIEW_EC2_INSTANCE_TYPE"),
        ({"PREVIEW_EC2_SUBNET_ID": "vpc-12345678"}, "PREVIEW_EC2_SUBNET_ID"),
        ({"PREVIEW_EC2_SECURITY_GROUP_IDS": "sg-12345678,default"}, "PREVIEW_EC2_SECURITY_GROUP_IDS"),
        ({"PREVIEW_EC2_INSTANCE_PROFILE": "has space"}, "PREVIEW_EC2_INSTANCE_PROFILE"),
        ({"PREVIEW_EC2_USER_DATA": "/nonexistent/user-data.sh"}, "PREVIEW_EC2_USER_DATA"),
        ({"PREVIEW_HOURLY_COST": "cheap"}, "PREVIEW_HOURLY_COST"),
        ({"PREVIEW_URL_TEMPLATE": "http://{public_ip}/"}, "PREVIEW_URL_TEMPLATE"),  # not an ec2 provisioner
        ({"PREVIEW_ENVIRONMENTS": "preview,staging", "PREVIEW_ENV_STAGING_PROVISIONER": "ec2"}, "PREVIEW_EC2_AMI"),
        ({"PREVIEW_ENVIRONMENTS": "preview,staging", "PREVIEW_ENV_STAGING_EC2_INSTANCE_TYPE": "x"}, "PREVIEW_ENV_STAGING_EC2_INSTANCE_TYPE"),
    ],
)
def test_a_bad_ec2_setting_names_its_variable(env, variable):
    with pytest.raises(ConfigError) as error:
        load_settings(env)
    assert variable in str(error.value) and "\n" not in str(error.value)


def test_a_user_data_template_with_an_unknown_placeholder_stops_start_up(tmp_path):
    template = tmp_path / "user-data.sh"
    template.write_text("#!/bin/bash\necho {{source_url}} {{token}}\n")
    with pytest.raises(ConfigError, match=r"PREVIEW_EC2_USER_DATA may use only .* not \{\{token\}\}"):
        load_settings({"PREVIEW_EC2_USER_DATA": str(template)})


def test_each_environment_has_its_own_ec2_settings(aws, ami, pricing, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", pricing.url)
    settings = load_settings({
        "PREVIEW_ENVIRONMENTS": "preview,staging", "PREVIEW_ENV_STAGING_PROVISIONER": "ec2", "PREVIEW_ENV_STAGING_EC2_AMI": ami,
        "PREVIEW_ENV_STAGING_EC2_INSTANCE_TYPE": "t3.large", "AWS_REGION": "us-east-1",
    })
    assert settings.provisioner == "simulated"
    result = make_provisioner(settings.for_environment("staging")).deploy(request(environment="staging"))
    [instance] = instances(aws, "running")
    assert instance["InstanceType"] == "t3.large" and tags_of(instance)["previewbot:environment"] == "staging"
    assert result.hourly_cost == 0.0832


# -- which tagged instances are orphans --------------------------------------------------------


KEY = PreviewKey("octo/app", 7)
NOW = 10_000.0


def record(id: str, status: str) -> Deployment:
    return Deployment.new(repository="octo/app", pr_number=7, branch_name="b", id=id).changed(status=status)


def resource(deployment_id: str, age: float = 3600) -> TaggedResource:
    return TaggedResource("i-1", KEY, deployment_id, NOW - age)


@pytest.mark.parametrize(
    "current, owner, age, orphan",
    [
        (None, None, 3600, True),  # nothing live (destroyed, or never recorded)
        (record("cur", "destroyed"), None, 3600, True),
        (record("cur", "deployed"), record("old", "superseded"), 3600, True),  # a redeploy could not terminate it
        (record("cur", "deployed"), None, 3600, False),  # the current deployment's own (resource tagged "cur" below)
        (record("cur", "failed"), record("old", "superseded"), 3600, False),  # the last good preview a failed redeploy keeps
        (record("cur", "deploying"), record("old", "superseded"), 3600, False),  # kept until the redeploy succeeds
        (None, record("old", "deploying"), 3600, False),  # its job may still be launching
        (None, None, 10, False),  # younger than the grace
    ],
)
def test_orphans_are_instances_no_live_deployment_owns(current, owner, age, orphan):
    deployment_id = owner.id if owner else "cur"
    assert is_orphan(resource(deployment_id, age), current, owner, now=NOW, grace=60) is orphan


def test_what_is_left_of_a_failed_deploy_is_an_orphan():
    assert is_orphan(resource("cur"), record("cur", "failed"), record("cur", "failed"), now=NOW, grace=60)


# -- through the real processes ----------------------------------------------------------------


def ec2_bot(make_bot, moto, ami, **env):
    return make_bot({
        **CREDENTIALS,
        "AWS_ENDPOINT_URL": moto.url,
        "AWS_ENDPOINT_URL_PRICING": "http://127.0.0.1:9",  # unreachable: PREVIEW_HOURLY_COST applies
        "PREVIEW_PROVISIONER": "ec2",
        "PREVIEW_EC2_AMI": ami,
        "PREVIEW_HOURLY_COST": "0.03",
        "PREVIEW_URL_TEMPLATE": "https://{public_dns}/",
        "PREVIEW_URL_ALLOWED_HOSTS": ".amazonaws.com",
        **env,
    })


@pytest.mark.slow
def test_deploy_redeploy_and_destroy_through_the_service(make_bot, moto, aws, ami, redis_conn):
    bot = ec2_bot(make_bot, moto, ami).start()
    first = bot.deploy("octo/app", 7, "feat/vm").json()
    deployed = bot.wait_status("octo/app", 7, "deployed", timeout=60)
    [instance] = instances(aws, "running")
    assert tags_of(instance)["previewbot:deployment"] == first["id"] and tags_of(instance)["previewbot:branch"] == "feat/vm"
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert deployed["previewUrl"] == f"https://{instance['PublicDnsName']}/"
    recorded = state.record(redis_conn, first["id"])
    assert [r.id for r in recorded.resources] == [instance["InstanceId"]] and recorded.hourly_cost == 0.03
    logs = [row["line"] for row in bot.store.deployment_logs(first["id"])]
    assert f"ec2: instance {instance['InstanceId']}" in logs and f"ec2: {instance['InstanceId']} is running" in logs

    second = bot.deploy("octo/app", 7, "feat/vm").json()
    wait_for(lambda: (now := bot.deployment("octo/app", 7).json())["id"] == second["id"] and now["status"] == "deployed", timeout=60, message="the redeploy")
    [new] = instances(aws, "running")
    assert new["InstanceId"] != instance["InstanceId"] and tags_of(new)["previewbot:deployment"] == second["id"]
    assert state_of(aws, instance["InstanceId"]) == "terminated"

    with bot.client() as client:
        assert client.delete("/api/repos/octo/app/pull-requests/7/deployment").status_code == 202
    wait_for(lambda: bot.deployment("octo/app", 7).status_code == 404, timeout=60, message="the teardown")
    assert instances(aws, "pending", "running") == []


@pytest.mark.slow
def test_a_redeploy_that_never_gets_healthy_or_is_cancelled_keeps_the_last_good_preview(make_bot, moto, aws, ami, tmp_path):
    with HealthServer(200) as preview:
        bot = ec2_bot(
            make_bot, moto, ami, PREVIEW_URL_TEMPLATE=preview.url, PREVIEW_URL_ALLOWED_HOSTS="127.0.0.1",
            PREVIEW_HEALTH_PATH="/healthz", PREVIEW_HEALTH_TIMEOUT="2s",
        ).start()
        first = bot.deploy("octo/app", 9, "feat/vm").json()
        bot.wait_status("octo/app", 9, "deployed", timeout=60)
        [good] = instances(aws, "running")

        preview.status = 502  # the redeploy's instance never answers
        second = bot.deploy("octo/app", 9, "feat/vm").json()
        wait_for(lambda: bot.store.get_deployment(second["id"])["status"] == "failed", timeout=60, message="the redeploy to fail")
        assert "502" in bot.store.get_deployment(second["id"])["error_message"]
        live = bot.wait_status("octo/app", 9, "deployed")
        assert live["id"] == first["id"] and live["previewUrl"] == preview.url  # the last good preview, still running
        assert [i["InstanceId"] for i in instances(aws, "pending", "running")] == [good["InstanceId"]]

        # A redeploy cancelled while its health check waits keeps it too.
        third = bot.deploy("octo/app", 9, "feat/vm").json()
        wait_for(lambda: any("health" in row["line"] for row in bot.store.deployment_logs(third["id"])), timeout=60, message="the health check")
        with bot.client() as client:
            assert client.post("/api/repos/octo/app/pull-requests/9/deployment/cancel").status_code == 202
        wait_for(lambda: bot.store.get_deployment(third["id"])["status"] == "cancelled", timeout=60, message="the cancel")
        assert bot.wait_status("octo/app", 9, "deployed")["id"] == first["id"]
        assert [i["InstanceId"] for i in instances(aws, "pending", "running")] == [good["InstanceId"]]

        preview.status = 200  # a healthy redeploy then takes over and retires the old instance
        fourth = bot.deploy("octo/app", 9, "feat/vm").json()
        wait_for(lambda: bot.deployment("octo/app", 9).json()["id"] == fourth["id"] and bot.deployment("octo/app", 9).json()["status"] == "deployed",
                 timeout=60, message="the healthy redeploy")
        assert state_of(aws, good["InstanceId"]) == "terminated"
        assert bot.store.get_deployment(first["id"])["status"] == "superseded"


@pytest.mark.slow
def test_a_failed_launch_ends_the_deployment_failed_with_awss_message(make_bot, moto, aws, proxy):
    proxy.fail("RunInstances", "InstanceLimitExceeded", "You have requested more instances (1) than your current instance limit of 0 allows.", times=1)
    bot = ec2_bot(make_bot, moto, "ami-0123456789abcdef0", AWS_ENDPOINT_URL=proxy.url).start()
    bot.deploy("octo/app", 8, "feat/quota")
    failed = bot.wait_status("octo/app", 8, "failed", timeout=60)
    assert failed["error"] == "AWS RunInstances failed: InstanceLimitExceeded: You have requested more instances (1) than your current instance limit of 0 allows."
    bot.deploy("octo/app", 8, "feat/quota")  # the retry meets the bad AMI
    wait_for(lambda: "InvalidAMIID.NotFound" in (bot.deployment("octo/app", 8).json().get("error") or ""), timeout=60, message="the bad AMI's error")
    assert instances(aws) == []


@pytest.mark.slow
def test_the_reconciler_terminates_tagged_instances_no_live_deployment_owns(make_bot, moto, aws, ami):
    bot = ec2_bot(make_bot, moto, ami, PREVIEW_RECONCILE_SECONDS="1", PREVIEW_LEASE_SECONDS="2", PREVIEW_CANCEL_GRACE_SECONDS="1").start()
    bot.deploy("octo/app", 7, "feat/live")
    bot.wait_status("octo/app", 7, "deployed", timeout=60)
    [live] = instances(aws, "running")
    tags = {"previewbot:repository": "octo/app", "previewbot:pr": "99", "previewbot:environment": "preview", "previewbot:deployment": "f" * 32, "previewbot:branch": "gone"}
    orphan = aws.run_instances(
        ImageId=ami, InstanceType="t3.small", MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
    )["Instances"][0]["InstanceId"]
    wait_for(lambda: state_of(aws, orphan) == "terminated", timeout=60, message="the orphan to be terminated")
    assert state_of(aws, live["InstanceId"]) == "running"
    assert "removing orphaned ec2 resources" in bot.log_text()


@pytest.mark.slow
def test_in_github_mode_the_vm_gets_a_short_lived_source_link_and_closing_the_pr_terminates_it(start_bot, fake, moto, aws, ami):
    """A `/preview` comment launches the instance with GitHub's short-lived archive link in its
    user data, never an installation token; closing the pull request terminates it. Preview URLs
    are loopback and never requested (no health check): moto's public addresses stay untouched."""
    bot = start_bot({
        **CREDENTIALS,
        "AWS_ENDPOINT_URL": moto.url,
        "AWS_ENDPOINT_URL_PRICING": "http://127.0.0.1:9",  # unreachable: PREVIEW_HOURLY_COST applies
        "PREVIEW_PROVISIONER": "ec2",
        "PREVIEW_EC2_AMI": ami,
        "PREVIEW_HOURLY_COST": "0.03",
        "PREVIEW_URL_TEMPLATE": "http://127.0.0.1:9/{environment}-{pr}/",
    })
    send(bot, "issue_comment", comment(fake))
    deployed = bot.wait_status(REPO, 1, "deployed", timeout=60)

    [instance] = instances(aws, "running")
    assert tags_of(instance) == {
        "previewbot:repository": REPO, "previewbot:pr": "1", "previewbot:environment": "preview",
        "previewbot:deployment": deployed["id"], "previewbot:branch": "feat/login", "Name": f"previewbot {REPO}#1 preview",
    }
    assert deployed["previewUrl"] == "http://127.0.0.1:9/preview-1/" and deployed["hourlyCost"] == 0.03
    assert deployed["resources"] == [{"kind": "ec2:instance", "id": instance["InstanceId"], "type": "t3.small", "region": "us-east-1"}]
    user_data = base64.b64decode(aws.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")["UserData"]["Value"]).decode()
    [link] = fake.archive_links
    assert link.startswith(f"https://codeload.example/{REPO}/legacy.tar.gz/{SHA1}?token=")
    assert f"source_url={shlex.quote(link)}" in user_data
    tokens = {c.headers["authorization"].split()[-1] for c in fake.calls if c.headers.get("authorization", "").startswith("token ")}
    assert tokens and not any(token in user_data for token in tokens)
    fake.wait_for(lambda: deployments(fake) and deployments(fake)[0]["statuses"][-1]["state"] == "success", message="deployment success")
    assert deployments(fake)[0]["statuses"][-1]["environment_url"] == "http://127.0.0.1:9/preview-1/"

    fake.update_pull(REPO, 1, state="closed")
    send(bot, "pull_request", webhooks.pull_request("closed", REPO, 1, "feat/login", SHA1, installation_id=INSTALLATION))
    fake.wait_for(lambda: deployments(fake)[0]["statuses"][-1]["state"] == "inactive", timeout=60, message="deployment inactive")
    assert state_of(aws, instance["InstanceId"]) == "terminated"
    assert [s["state"] for s in deployments(fake)[0]["statuses"]] == ["in_progress", "success", "inactive"]
    wait_for(lambda: bot.deployment(REPO, 1).status_code == 404, message="the environment idle")
