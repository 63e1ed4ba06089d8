"""The `ec2` provisioner: one EC2 instance per (repository, pull request, environment).

Instances carry previewbot's tags, which are the only record of what exists in AWS: destroy
terminates every instance tagged for the environment, and the reconciler finds orphans by them.
A redeploy launches the new instance and terminates the old one only once the new one runs, so
a failed redeploy leaves the last good preview. Whatever a failed or cancelled deploy launched
is terminated before it gives up. Region, credentials and endpoints are boto3's own
(`AWS_REGION`, profiles, instance roles, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_PRICING`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from typing import Iterable

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from bot.config import EC2Settings, Settings
from bot.masking import Masker
from bot.model import PreviewKey, Resource

from . import LOCK_LOST, ProvisionError, ProvisionRequest, ProvisionResult, TaggedResource, render_url
from .user_data import DEFAULT_USER_DATA, render_user_data

log = logging.getLogger("previewbot.ec2")

TAG = "previewbot:"
# Instances in these states still exist (and may cost money).
EXISTING_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
# botocore's standard retries: throttling, capacity and 5xx answers are retried with backoff
# before an error reaches the deployment.
AWS_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 4}, connect_timeout=10, read_timeout=60)
# The Price List API is a nicety: a price it cannot give soon falls back to PREVIEW_HOURLY_COST.
PRICING_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 2}, connect_timeout=5, read_timeout=10)
# The Price List API answers in these regions only; it prices every region.
PRICING_REGION = "us-east-1"
POLL_SECONDS = 5.0
WAIT_SECONDS = 600.0
MAX_TAG_VALUE = 256


class EC2Provisioner:
    name = "ec2"

    def __init__(self, settings: EC2Settings, *, url_template: str, hourly_cost: float | None, session: boto3.session.Session | None = None):
        self.settings = settings
        self.url_template = url_template
        self.fallback_cost = hourly_cost
        self.session = session or boto3.session.Session(region_name=settings.region)
        try:
            self.ec2 = self.session.client("ec2", config=AWS_CONFIG)
        except BotoCoreError as exc:  # e.g. no region configured
            raise ProvisionError(f"AWS is not configured: {exc} (set AWS_REGION)") from None
        self.region = self.ec2.meta.region_name
        self.prices = Prices(self.session)

    # -- deploy ------------------------------------------------------------------------------

    def deploy(self, request: ProvisionRequest) -> ProvisionResult:
        user_data = render_user_data(self.settings.user_data or DEFAULT_USER_DATA, request, request.source_archive())
        _stop_if_cancelled(request)
        request.log(f"ec2: launching a {self.settings.instance_type} instance from {self.settings.ami} in {self.region}")
        instance_id = self._call("RunInstances", lambda: self.ec2.run_instances(**self._launch_parameters(request, user_data)))["Instances"][0]["InstanceId"]
        request.log(f"ec2: instance {instance_id}")
        try:
            instance = self._wait("instance_running", [instance_id], request)
            url = self._url(request, instance)
        except BaseException:
            # Nothing half-launched is left behind, whatever stopped the deploy.
            self._terminate_quietly([instance_id], request, "which this deploy launched")
            raise
        request.log(f"ec2: {instance_id} is running")
        return ProvisionResult(
            url,
            resources=(Resource(kind="ec2:instance", id=instance_id, type=self.settings.instance_type, region=self.region),),
            hourly_cost=self.hourly_cost(),
        )

    def hourly_cost(self) -> float | None:
        """The instance type's on-demand price here, else PREVIEW_HOURLY_COST."""
        price = self.prices.hourly(self.settings.instance_type, self.region)
        return price if price is not None else self.fallback_cost

    def _url(self, request: ProvisionRequest, instance: dict) -> str:
        addresses = {"public_dns": instance.get("PublicDnsName") or "", "public_ip": instance.get("PublicIpAddress") or ""}
        missing = [name for name, value in addresses.items() if not value and f"{{{name}}}" in self.url_template]
        if missing:
            raise ProvisionError(
                f"ec2: instance {instance['InstanceId']} has no {missing[0].replace('_', ' ')} for PREVIEW_URL_TEMPLATE "
                "(does the subnet give instances public addresses?)"
            )
        return render_url(self.url_template, request, **addresses)

    def _launch_parameters(self, request: ProvisionRequest, user_data: str) -> dict:
        tags = [{"Key": key, "Value": value[:MAX_TAG_VALUE]} for key, value in self.tags(request).items()]
        parameters = {
            "ImageId": self.settings.ami,
            "InstanceType": self.settings.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": user_data,
            # IMDSv2 only, one hop: a container on the VM (fork code) cannot reach the instance
            # profile's credentials.
            "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": tags}],
            # A RunInstances that botocore retries after an unknown outcome never launches two.
            "ClientToken": request.deployment_id[:64],
        }
        if self.settings.subnet_id:
            parameters["SubnetId"] = self.settings.subnet_id
        if self.settings.security_group_ids:
            parameters["SecurityGroupIds"] = list(self.settings.security_group_ids)
        if self.settings.key_name:
            parameters["KeyName"] = self.settings.key_name
        if profile := self.settings.instance_profile:
            parameters["IamInstanceProfile"] = {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}
        return parameters

    @staticmethod
    def tags(request: ProvisionRequest) -> dict[str, str]:
        return {
            f"{TAG}repository": request.repository,
            f"{TAG}pr": str(request.pr_number),
            f"{TAG}environment": request.environment,
            f"{TAG}deployment": request.deployment_id,
            f"{TAG}branch": request.branch,
            "Name": f"previewbot {request.repository}#{request.pr_number} {request.environment}",
        }

    # -- a redeploy keeps the last good preview until the new one is deployed -----------------

    def retire(self, request: ProvisionRequest, result: ProvisionResult) -> None:
        """The new instance is the preview now: terminate the environment's others (the instance
        it replaces). Should this fail, the reconciler terminates them: no live deployment owns them."""
        kept = {resource.id for resource in result.resources}
        try:
            replaced = [i["InstanceId"] for i in self._instances(_key_filters(request.key)) if i["InstanceId"] not in kept]
        except ProvisionError as exc:
            request.log(f"ec2: could not list the instances the new one replaces: {exc}")
            return
        if replaced:
            self._terminate_quietly(replaced, request, "which the new one replaces")

    def discard(self, request: ProvisionRequest, result: ProvisionResult) -> None:
        """The new instance never became the preview (unhealthy, cancelled): terminate it alone."""
        self._terminate_quietly([resource.id for resource in result.resources], request, "which this deploy launched")

    # -- destroy -----------------------------------------------------------------------------

    def destroy(self, request: ProvisionRequest) -> None:
        """Terminate every instance tagged for the environment, and wait until they are gone."""
        ids = [i["InstanceId"] for i in self._instances(_key_filters(request.key))]
        if not ids:
            request.log("ec2: no instance to terminate")
            return
        request.log(f"ec2: terminating {', '.join(ids)}")
        self._terminate(ids, request)

    # -- orphans (the reconciler's) ------------------------------------------------------------

    def tagged_resources(self) -> list[TaggedResource]:
        """Every instance that carries previewbot's tags and still exists."""
        found = []
        for instance in self._instances([{"Name": "tag-key", "Values": [f"{TAG}repository"]}]):
            tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
            try:
                key = PreviewKey(tags[f"{TAG}repository"], int(tags[f"{TAG}pr"]), tags[f"{TAG}environment"])
            except (KeyError, ValueError):
                continue  # tagged by hand, not by previewbot
            found.append(TaggedResource(instance["InstanceId"], key, tags.get(f"{TAG}deployment", ""), instance["LaunchTime"].timestamp()))
        return found

    def remove_resources(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        if ids:
            self._call("TerminateInstances", lambda: self.ec2.terminate_instances(InstanceIds=ids))

    # -- AWS ---------------------------------------------------------------------------------

    def _instances(self, filters: list[dict]) -> list[dict]:
        filters = [*filters, {"Name": "instance-state-name", "Values": EXISTING_STATES}]
        pages = self._call("DescribeInstances", lambda: list(self.ec2.get_paginator("describe_instances").paginate(Filters=filters)))
        return [instance for page in pages for reservation in page["Reservations"] for instance in reservation["Instances"]]

    def _terminate(self, ids: list[str], request: ProvisionRequest) -> None:
        self._call("TerminateInstances", lambda: self.ec2.terminate_instances(InstanceIds=ids))
        self._wait("instance_terminated", ids, request)
        request.log(f"ec2: terminated {', '.join(ids)}")

    def _terminate_quietly(self, ids: list[str], request: ProvisionRequest, which: str) -> None:
        """Terminate instances as part of a deploy; a cancel (which may be why) does not stop
        the wait, and a failure is logged."""
        request.log(f"ec2: terminating {', '.join(ids)}, {which}")
        try:
            self._terminate(ids, dataclasses.replace(request, cancelled=threading.Event()))
        except ProvisionError as exc:
            request.log(f"ec2: could not terminate {', '.join(ids)}: {exc}")
            log.error("could not terminate %s: %s", ids, exc)

    def _wait(self, waiter_name: str, ids: list[str], request: ProvisionRequest) -> dict:
        """Wait with boto3's waiter, one attempt at a time so a cancel is heard between them.
        Returns the first instance as last described."""
        waiter = self.ec2.get_waiter(waiter_name)
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            try:
                waiter.wait(InstanceIds=ids, WaiterConfig={"Delay": POLL_SECONDS, "MaxAttempts": 1})
                break
            except WaiterError as exc:
                if "Max attempts exceeded" not in exc.kwargs.get("reason", ""):
                    raise ProvisionError(self._mask(f"AWS: instance {ids[0]} {_waiter_failure(exc)}")) from None
            if time.monotonic() > deadline:
                raise ProvisionError(f"AWS: instance {ids[0]} was not {waiter_name.removeprefix('instance_')} after {WAIT_SECONDS:g}s")
            if request.cancelled.wait(POLL_SECONDS):
                raise ProvisionError(LOCK_LOST)
        described = self._call("DescribeInstances", lambda: self.ec2.describe_instances(InstanceIds=ids[:1]))
        return described["Reservations"][0]["Instances"][0]

    def _call(self, operation: str, call):
        """One AWS call (after botocore's retries): an error becomes a ProvisionError with
        AWS's own message, credentials masked."""
        try:
            return call()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise ProvisionError(self._mask(f"AWS {operation} failed: {error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": "))) from None
        except BotoCoreError as exc:
            raise ProvisionError(self._mask(f"AWS {operation} failed: {exc}")) from None

    def _mask(self, text: str) -> str:
        credentials = self.session.get_credentials()
        if credentials is None:
            return text
        frozen = credentials.get_frozen_credentials()
        return Masker([s for s in (frozen.access_key, frozen.secret_key, frozen.token) if s])(text)


class Prices:
    """On-demand Linux prices from the Price List API, cached per (instance type, region) for
    the life of the worker; None when it cannot tell."""

    def __init__(self, session: boto3.session.Session):
        self.session = session
        self._cache: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def hourly(self, instance_type: str, region: str) -> float | None:
        with self._lock:
            if (instance_type, region) in self._cache:
                return self._cache[instance_type, region]
        try:
            client = self.session.client("pricing", region_name=PRICING_REGION, config=PRICING_CONFIG)
            answer = client.get_products(ServiceCode="AmazonEC2", Filters=_price_filters(instance_type, region), FormatVersion="aws_v1", MaxResults=10)
            price = on_demand_price(answer.get("PriceList", []))
        except (BotoCoreError, ClientError, ValueError, KeyError, TypeError) as exc:
            log.warning("no price for %s in %s from the Price List API: %s", instance_type, region, type(exc).__name__)
            return None
        if price is not None:
            with self._lock:
                self._cache[instance_type, region] = price
        return price


def _price_filters(instance_type: str, region: str) -> list[dict]:
    """The one on-demand product that is a plain shared Linux instance of that type."""
    match = {
        "instanceType": instance_type,
        "regionCode": region,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
        "licenseModel": "No License required",
    }
    return [{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in match.items()]


def on_demand_price(price_list: list[str]) -> float | None:
    """The hourly USD price in GetProducts' PriceList (JSON documents, one per product). Pure."""
    for document in price_list:
        product = json.loads(document)
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                usd = float(dimension.get("pricePerUnit", {}).get("USD", "0"))
                if usd > 0 and dimension.get("unit", "Hrs") == "Hrs":
                    return usd
    return None


def _key_filters(key: PreviewKey) -> list[dict]:
    return [
        {"Name": f"tag:{TAG}repository", "Values": [key.repository]},
        {"Name": f"tag:{TAG}pr", "Values": [str(key.pr_number)]},
        {"Name": f"tag:{TAG}environment", "Values": [key.environment]},
    ]


def _waiter_failure(exc: WaiterError) -> str:
    """What went wrong, in AWS's words where it gave any (e.g. the state reason of an instance
    that terminated at launch)."""
    response = exc.last_response or {}
    if "Error" in response:
        return f"{response['Error'].get('Code')}: {response['Error'].get('Message')}"
    for reservation in response.get("Reservations", []):
        for instance in reservation.get("Instances", []):
            reason = (instance.get("StateReason") or {}).get("Message")
            return f"went {instance['State']['Name']}" + (f": {reason}" if reason else "")
    return exc.kwargs.get("reason", "wait failed")


def _stop_if_cancelled(request: ProvisionRequest) -> None:
    if request.cancelled.is_set():
        raise ProvisionError(LOCK_LOST)


def from_settings(settings: Settings) -> EC2Provisioner:
    return EC2Provisioner(settings.ec2, url_template=settings.url_template, hourly_cost=settings.hourly_cost)
