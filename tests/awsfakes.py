"""AWS for the tests, over real HTTP on loopback: moto in server mode (EC2), a fault-injecting
proxy in front of it (quota, capacity and throttling errors as AWS answers them), and a small
fake of the Price List API's GetProducts, which moto does not have."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import httpx

from bot.embedded_redis import free_port

from .harness import wait_for

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIATESTTESTTESTTEST", "AWS_SECRET_ACCESS_KEY": "test-secret-key-0123456789", "AWS_REGION": "us-east-1"}


class MotoServer:
    """`python -m moto.server` on a free port, validating AMIs like EC2 does."""

    def __init__(self, directory: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "moto.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> MotoServer:
        env = {**os.environ, "MOTO_ENABLE_AMI_VALIDATION": "true"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for(lambda: httpx.get(f"{self.url}/moto-api/", timeout=1).status_code == 200, timeout=60, message="moto server")
        return self

    def reset(self) -> None:
        httpx.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


class _Server:
    """A threading HTTP server on a free loopback port, run in a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.owner = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def ec2_error(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
        f"<Message>{message}</Message></Error></Errors><RequestID>previewbot-test</RequestID></Response>"
    ).encode()


class FaultProxy(_Server):
    """Forwards every request to `target`, except that the next `times` calls of an EC2 action
    get an AWS error instead; `hold_pending` makes instances look `pending` to DescribeInstances
    for as long as it is set, so a deploy keeps waiting."""

    def __init__(self, target: str):
        self.target = target
        self.faults: list[dict] = []
        self.calls: list[str] = []
        self.hold_pending = threading.Event()
        self.lock = threading.Lock()
        super().__init__(_ProxyHandler)

    def fail(self, action: str, code: str, message: str, *, status: int = 400, times: int = 1) -> None:
        with self.lock:
            self.faults.append({"action": action, "code": code, "message": message, "status": status, "times": times})

    def fault_for(self, action: str) -> dict | None:
        with self.lock:
            self.calls.append(action)
            for fault in self.faults:
                if fault["action"] == action and fault["times"] > 0:
                    fault["times"] -= 1
                    return fault
        return None


class _ProxyHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        proxy: FaultProxy = self.server.owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        action = parse_qs(body.decode(errors="replace")).get("Action", [""])[0]
        fault = proxy.fault_for(action)
        if fault is not None:
            self._answer(fault["status"], ec2_error(fault["code"], fault["message"]), "text/xml")
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        response = httpx.post(proxy.target + self.path, content=body, headers=headers, timeout=30)
        content = response.content
        if action == "DescribeInstances" and proxy.hold_pending.is_set():
            content = content.replace(b"<code>16</code>", b"<code>0</code>").replace(b"<name>running</name>", b"<name>pending</name>")
        self._answer(response.status_code, content, response.headers.get("content-type", "text/xml"))

    def _answer(self, status: int, content: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)


class FakePricing(_Server):
    """The Price List API's GetProducts (JSON 1.1 protocol) for the instance types it is told
    prices of; it records the filters of every request."""

    def __init__(self, prices: dict[tuple[str, str], str]):
        self.prices = prices
        self.requests: list[dict] = []
        super().__init__(_PricingHandler)


def price_document(instance_type: str, region: str, usd: str) -> str:
    """One product of GetProducts' PriceList, shaped like AWS's (trimmed)."""
    return json.dumps({
        "product": {"productFamily": "Compute Instance", "attributes": {"instanceType": instance_type, "regionCode": region, "operatingSystem": "Linux"}, "sku": "SKU1"},
        "serviceCode": "AmazonEC2",
        "terms": {"OnDemand": {"SKU1.JRTCKXETXF": {"priceDimensions": {"SKU1.JRTCKXETXF.6YS6EN2CT7": {
            "unit": "Hrs", "pricePerUnit": {"USD": usd}, "description": f"${usd} per On Demand Linux {instance_type} Instance Hour"}}}}},
    })


class _PricingHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        pricing: FakePricing = self.server.owner
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        pricing.requests.append(request)
        if self.headers.get("X-Amz-Target") != "AWSPriceListService.GetProducts":
            return self._answer(400, {"__type": "InvalidParameterException", "message": "unknown operation"})
        filters = {f["Field"]: f["Value"] for f in request.get("Filters", [])}
        usd = pricing.prices.get((filters.get("instanceType"), filters.get("regionCode")))
        documents = [price_document(filters["instanceType"], filters["regionCode"], usd)] if usd else []
        self._answer(200, {"FormatVersion": "aws_v1", "PriceList": documents})

    def _answer(self, status: int, body: dict) -> None:
        content = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)
