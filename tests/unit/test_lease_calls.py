"""Lease calls are bounded: a leader whose API server stops answering finds out in time.

The API server here is a socket that accepts connections and never answers (as a
kube-apiserver does while its etcd restarts). The official client's calls run in a thread
pool; without a bound, the renewal would wait for ever and the leader would go on acting
after its Lease expired and a standby took over.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import kubernetes
import pytest
import urllib3

from tandem_operator.runtime.kubeapi import KubeApi

SILENT_FOR_S = 20.0
"""How long the silent server keeps a connection open before it hangs up."""


@contextmanager
def silent_server() -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.wait(0):
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)  # read nothing, answer nothing
            hang_up = threading.Timer(SILENT_FOR_S, conn.close)
            hang_up.daemon = True
            hang_up.start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def api_for(url: str) -> KubeApi:
    configuration = kubernetes.client.Configuration()
    configuration.host = url
    return KubeApi(configuration=configuration)


def test_a_lease_read_from_a_server_that_never_answers_times_out() -> None:
    async def read() -> None:
        api = api_for(url)
        try:
            await api.read_lease(namespace="ns", name="tandem-operator", timeout_s=0.3)
        finally:
            # The hung-up connection ends the pool's thread; closing does not wait for it.
            await api.aclose()

    # A timeout of the request or of the wait, not the hang-up SILENT_FOR_S later.
    timeouts = (TimeoutError, urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.MaxRetryError)
    with silent_server() as url, pytest.raises(timeouts) as raised:
        asyncio.run(read())
    if isinstance(raised.value, urllib3.exceptions.MaxRetryError):
        assert isinstance(raised.value.reason, urllib3.exceptions.ReadTimeoutError)
