"""The admission webhook's HTTPS server, on the operator's own loop.

One POST route per review (``handlers.webhook.REVIEWS``): the AdmissionReview is read, its
``request`` handed to the review, and the verdict sent back in an AdmissionReview of the
same version. A body that is not an AdmissionReview gets 400; a review that raises gets
500, which the API server treats by the webhook's ``failurePolicy`` (decisions are
refused, other writes pass), and the error is logged.

The serving certificate is read from ``cert_dir`` (``tls.crt``, ``tls.key``) and read
again when either file changes, checked every :data:`CERT_CHECK_SECONDS`: a Secret
mounted as a volume is renewed in place, and connections opened after that get the new
certificate without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tandem_operator.handlers.webhook import REVIEWS, admission_response, ensure_certificate

log = logging.getLogger(__name__)

CERT_CHECK_SECONDS = 60.0

MAX_REVIEW_BYTES = 16 * 1024 * 1024
"""An UPDATE review carries the object twice (new and old); etcd stores up to 1.5 MiB each."""


async def _review(request: web.Request) -> web.Response:
    review = REVIEWS[request.path]
    try:
        body = json.loads(await request.read())
        admission = body["request"]
        uid = admission["uid"] if isinstance(admission, dict) else None
        if not isinstance(uid, str):
            raise TypeError("no request.uid")
    except (ValueError, KeyError, TypeError) as exc:
        return web.Response(status=400, text=f"not an AdmissionReview: {exc}")
    try:
        verdict = review(admission)
    except Exception:
        log.exception("Admission review failed path=%s uid=%s", request.path, uid)
        return web.Response(status=500, text="the review failed; see the operator's log")
    return web.json_response(
        {
            "apiVersion": body.get("apiVersion") or "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": admission_response(uid, verdict),
        }
    )


def _mtimes(paths: tuple[Path, ...]) -> tuple[int, ...]:
    return tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in paths)


@dataclass(kw_only=True)
class WebhookServer:
    """A running admission server; :meth:`stop` closes it."""

    runner: web.AppRunner
    context: ssl.SSLContext
    files: tuple[Path, Path]
    _watch: asyncio.Task[None] | None = field(default=None, repr=False)

    async def _reload_on_change(self) -> None:
        seen = _mtimes(self.files)
        while True:
            await asyncio.sleep(CERT_CHECK_SECONDS)
            now = _mtimes(self.files)
            if now == seen:
                continue
            try:
                self.context.load_cert_chain(*self.files)
            except (OSError, ssl.SSLError) as exc:
                # Half-written (the certificate renewed, not yet its key): try next time.
                log.warning("Webhook certificate not reloaded error=%s", exc)
                continue
            seen = now
            log.info("Webhook certificate reloaded cert=%s", self.files[0])

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.runner.cleanup()


async def serve_webhook(*, addr: str, port: int, host: str, cert_dir: Path) -> WebhookServer:
    """Listen on ``addr:port`` with the certificate in ``cert_dir`` (made for ``host`` if none)."""
    cert, key = ensure_certificate(cert_dir, host=host)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application(client_max_size=MAX_REVIEW_BYTES)
    for path in REVIEWS:
        app.router.add_post(path, _review)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, addr, port, ssl_context=context, reuse_address=True).start()
    except BaseException:
        await runner.cleanup()
        raise
    server = WebhookServer(runner=runner, context=context, files=(cert, key))
    server._watch = asyncio.create_task(server._reload_on_change(), name="webhook-certificate")
    log.info("Admission webhook listening addr=%s port=%d", addr, port)
    return server
