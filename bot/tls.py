"""The one TLS context of a process, for every HTTPS client previewbot opens.

Building a context loads the CA bundle: about 25 ms of CPU, more than a GitHub call takes. A
client per job (GitHub calls, health checks) would pay it each time; the context is shared
instead (an `ssl.SSLContext` is safe to share between threads and clients). Like httpx's own
default, it honours SSL_CERT_FILE and SSL_CERT_DIR.
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()
