"""The admission server over real HTTPS on loopback: reviews in, AdmissionReviews out."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tandem_operator.handlers import webhook_server
from tandem_operator.handlers.webhook import (
    STAMP_PATH,
    VALIDATE_AUTOMATION_PATH,
    VALIDATE_RUN_PATH,
    write_self_signed,
)

FLOW = {"nodes": [{"id": "draft"}, {"id": "review", "kind": "Approval", "dependsOn": ["draft"]}]}


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "automation.tandem.dev/v1alpha1", "kind": "AutomationRun", "spec": spec}


def _review(operation: str, new: Any, old: Any = None, user: Any = None) -> dict[str, Any]:
    request: dict[str, Any] = {
        "uid": "4f1c",
        "operation": operation,
        "userInfo": user if user is not None else {"username": "alice", "groups": ["ops"]},
        "object": new,
    }
    if old is not None:
        request["oldObject"] = old
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


Post = Callable[[str, bytes], Awaitable[tuple[int, Any]]]


def _serve(
    tmp_path: Path, scenario: Callable[[Post, webhook_server.WebhookServer], Awaitable[None]]
) -> None:
    """Run ``scenario`` against a server on a free loopback port, over TLS, then stop it."""

    async def main() -> None:
        port = _port()
        server = await webhook_server.serve_webhook(
            addr="127.0.0.1", port=port, host="127.0.0.1", cert_dir=tmp_path
        )
        context = ssl.create_default_context(cafile=str(tmp_path / "tls.crt"))
        try:
            async with aiohttp.ClientSession() as session:

                async def post(path: str, body: bytes) -> tuple[int, Any]:
                    url = f"https://127.0.0.1:{port}{path}"
                    async with session.post(url, data=body, ssl=context) as response:
                        text = await response.text()
                        ok = response.content_type == "application/json"
                        return response.status, json.loads(text) if ok else text

                await scenario(post, server)
        finally:
            await server.stop()

    asyncio.run(main())


def test_a_new_decision_is_stamped_with_the_requesting_user(tmp_path: Path) -> None:
    old = _run({"automation": FLOW})
    new = _run({"automation": FLOW, "gateDecisions": [{"gate": "review", "decision": "approve"}]})

    async def scenario(post: Post, _: webhook_server.WebhookServer) -> None:
        status, body = await post(STAMP_PATH, json.dumps(_review("UPDATE", new, old)).encode())
        assert status == 200
        assert body["kind"] == "AdmissionReview"
        response = body["response"]
        assert response["uid"] == "4f1c"
        assert response["allowed"] is True
        assert response["patchType"] == "JSONPatch"
        patch = json.loads(base64.b64decode(response["patch"]))
        assert patch == [
            {
                "op": "add",
                "path": "/spec/gateDecisions",
                "value": [{"gate": "review", "decision": "approve", "decidedBy": "alice"}],
            }
        ]
        # Nothing new to stamp: allowed, and no patch at all.
        status, body = await post(STAMP_PATH, json.dumps(_review("UPDATE", old, old)).encode())
        assert status == 200
        assert body["response"] == {"uid": "4f1c", "allowed": True}

    _serve(tmp_path, scenario)


def test_a_decision_is_checked_where_it_is_stamped(tmp_path: Path) -> None:
    """One call decides a decision: a user off the allow-list, or an unknown gate, is
    refused by the mutating review itself, with nothing stamped."""
    guarded = {
        "nodes": [
            {"id": "draft"},
            {
                "id": "review",
                "kind": "Approval",
                "dependsOn": ["draft"],
                "approval": {"approvers": {"users": ["carol"], "groups": ["ops"]}},
            },
        ]
    }
    old = _run({"automation": guarded})

    def deciding(gate: str) -> dict[str, Any]:
        return _run(
            {"automation": guarded, "gateDecisions": [{"gate": gate, "decision": "approve"}]}
        )

    async def scenario(post: Post, _: webhook_server.WebhookServer) -> None:
        for gate, user, problem in [
            ("review", {"username": "bob", "groups": ["dev"]}, "user `bob` may not decide"),
            ("nope", {"username": "alice", "groups": ["ops"]}, "`nope` is not an approval gate"),
        ]:
            review = _review("UPDATE", deciding(gate), old, user=user)
            status, body = await post(STAMP_PATH, json.dumps(review).encode())
            assert status == 200
            response = body["response"]
            assert (response["allowed"], response["status"]["code"]) == (False, 422)
            assert problem in response["status"]["message"], response
            assert "patch" not in response
        # In the group on the list: allowed, and stamped with the user.
        review = _review(
            "UPDATE", deciding("review"), old, user={"username": "alice", "groups": ["ops"]}
        )
        status, body = await post(STAMP_PATH, json.dumps(review).encode())
        assert body["response"]["allowed"] is True
        patch = json.loads(base64.b64decode(body["response"]["patch"]))
        assert [d["decidedBy"] for d in patch[0]["value"]] == ["alice"]

    _serve(tmp_path, scenario)


def test_refusals_carry_the_problems_and_code_422(tmp_path: Path) -> None:
    cyclic = {"nodes": [{"id": "a", "dependsOn": ["b"]}, {"id": "b", "dependsOn": ["a"]}]}
    unknown_gate = _run(
        {
            "automation": FLOW,
            "gateDecisions": [{"gate": "nope", "decision": "approve", "decidedBy": "alice"}],
        }
    )
    automation = {"spec": cyclic}

    async def scenario(post: Post, _: webhook_server.WebhookServer) -> None:
        status, body = await post(
            VALIDATE_RUN_PATH, json.dumps(_review("CREATE", unknown_gate)).encode()
        )
        assert status == 200
        response = body["response"]
        assert response["allowed"] is False
        assert "patch" not in response
        assert response["status"]["code"] == 422
        assert "`nope` is not an approval gate" in response["status"]["message"]
        status, body = await post(
            VALIDATE_AUTOMATION_PATH, json.dumps(_review("CREATE", automation)).encode()
        )
        assert status == 200
        assert body["response"]["allowed"] is False
        assert "cycle" in body["response"]["status"]["message"]

    _serve(tmp_path, scenario)


def test_malformed_reviews_get_400_and_a_review_that_fails_gets_500(tmp_path: Path) -> None:
    run = _run({"automation": FLOW})

    async def scenario(post: Post, _: webhook_server.WebhookServer) -> None:
        assert (await post(VALIDATE_RUN_PATH, b"{not json"))[0] == 400
        assert (await post(VALIDATE_RUN_PATH, b'{"request": []}'))[0] == 400
        assert (await post(VALIDATE_RUN_PATH, b'{"request": {"uid": 7}}'))[0] == 400
        # userInfo that is not an object: the review raises, the server answers 500 (the
        # API server then applies the webhook's failurePolicy) and goes on serving.
        broken = json.dumps(_review("CREATE", run, user="alice")).encode()
        status, text = await post(VALIDATE_RUN_PATH, broken)
        assert status == 500
        assert "operator's log" in text
        status, body = await post(VALIDATE_RUN_PATH, json.dumps(_review("CREATE", run)).encode())
        assert status == 200
        assert body["response"]["allowed"] is True
        assert (await post("/elsewhere", b"{}"))[0] in (404, 405)

    _serve(tmp_path, scenario)


def test_a_renewed_certificate_is_served_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhook_server, "CERT_CHECK_SECONDS", 0.05)
    first = write_self_signed(tmp_path, host="127.0.0.1")[0].read_bytes()

    async def served_certificate(port: int) -> bytes:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return bytes(der)

    async def scenario(post: Post, server: webhook_server.WebhookServer) -> None:
        port = server.runner.addresses[0][1]
        before = await served_certificate(port)
        assert before == ssl.PEM_cert_to_DER_cert(first.decode())
        renewed = write_self_signed(tmp_path, host="127.0.0.1")[0].read_bytes()
        assert renewed != first
        for _ in range(100):
            if await served_certificate(port) != before:
                break
            await asyncio.sleep(0.05)
        assert await served_certificate(port) == ssl.PEM_cert_to_DER_cert(renewed.decode())

    _serve(tmp_path, scenario)
