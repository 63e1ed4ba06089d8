"""The `simulated` provisioner: waits a while and answers the URL template, for trying the bot
and for its tests."""

from __future__ import annotations

import random

from bot.config import Settings

from . import LOCK_LOST, ProvisionError, ProvisionRequest, ProvisionResult, render_url


class SimulatedProvisioner:
    name = "simulated"

    def __init__(self, seconds: tuple[float, float], url_template: str):
        self.seconds = seconds
        self.url_template = url_template

    def deploy(self, request: ProvisionRequest) -> ProvisionResult:
        low, high = self.seconds
        duration = random.uniform(low, high)
        request.log(f"simulated: provisioning {request.branch} for {duration:.1f}s")
        if request.cancelled.wait(duration):
            raise ProvisionError(LOCK_LOST)
        url = render_url(self.url_template, request)
        request.log(f"simulated: ready at {url}")
        return ProvisionResult(url)

    def destroy(self, request: ProvisionRequest) -> None:
        request.log(f"simulated: destroyed {request.branch}")


def from_settings(settings: Settings) -> SimulatedProvisioner:
    return SimulatedProvisioner(settings.simulated_seconds, settings.url_template)
