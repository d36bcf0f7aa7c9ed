"""Admission webhooks for what the CRD schema and CEL cannot say.

Two kopf admission handlers on AutomationRuns (and one on Automations):

- **mutating**: every *new* ``spec.gateDecisions`` entry gets ``decidedBy`` set to the
  authenticated user of the admission request, overwriting whatever the request carried.
  gateHistory's ``decidedBy`` is therefore who really wrote the decision, never a value a
  user typed into the spec.
- **validating**: ``lifecycle.validation`` — dependsOn cycles, rework targets that are not
  upstream of their gate, decisions naming unknown gates or decisions the gate does not
  allow. A rejection names the field, as the API server's schema errors do.

The webhook server is kopf's, over TLS. Without a certificate it generates a CA and a
serving certificate (``cryptography``) for the host it advertises; kopf then keeps the
``ValidatingWebhookConfiguration``/``MutatingWebhookConfiguration`` named
``tandem-operator.automation.tandem.dev`` up to date with its URL and CA bundle.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tandem_operator.api.models import GROUP, AutomationSpec
from tandem_operator.lifecycle.validation import flow_problems, run_problems

MANAGED_NAME = f"tandem-operator.{GROUP}"


def write_self_signed(directory: Path, *, host: str) -> tuple[Path, Path]:
    """A serving certificate for ``host`` (and loopback), self-signed; returns (cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    alt: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for candidate in {host, "127.0.0.1"}:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(candidate)))
        except ValueError:
            alt.append(x509.DNSName(candidate))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def stamp_decisions(
    spec: Mapping[str, Any], old_spec: Mapping[str, Any] | None, username: str
) -> list[dict[str, Any]] | None:
    """The gateDecisions list with ``decidedBy`` set on new entries; ``None`` if no change."""
    decisions = [dict(d) for d in spec.get("gateDecisions") or []]
    # New entries are those the old list does not hold, wherever they were inserted.
    recorded = Counter(_canonical(d) for d in (old_spec or {}).get("gateDecisions") or [])
    changed = False
    for entry in decisions:
        if recorded[_canonical(entry)] > 0:
            recorded[_canonical(entry)] -= 1
            continue
        if entry.get("decidedBy") != username:
            entry["decidedBy"] = username
            changed = True
    return decisions if changed else None


def _canonical(entry: Mapping[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"))


def register(registry: kopf.OperatorRegistry) -> None:
    """Add the admission handlers to ``registry`` (only when a webhook server is set up)."""

    @kopf.on.mutate(
        GROUP,
        "automationruns",
        id="stamp-decisions",
        operations=["CREATE", "UPDATE"],
        registry=registry,
    )
    def stamp(
        spec: Mapping[str, Any], userinfo: Mapping[str, object], patch: kopf.Patch, **kwargs: Any
    ) -> None:
        old: Mapping[str, Any] | None = kwargs.get("old")
        username = str(userinfo.get("username") or "system:unknown")
        stamped = stamp_decisions(spec, (old or {}).get("spec"), username)
        if stamped is not None:
            patch.setdefault("spec", {})["gateDecisions"] = stamped

    @kopf.on.validate(
        GROUP,
        "automationruns",
        id="validate-run",
        operations=["CREATE", "UPDATE"],
        registry=registry,
    )
    def validate_run(spec: Mapping[str, Any], **kwargs: Any) -> None:
        old: Mapping[str, Any] = kwargs.get("old") or {}
        problems = run_problems(spec, old_spec=old.get("spec"), status=old.get("status"))
        if problems:
            raise kopf.AdmissionError("; ".join(problems), code=422)

    @kopf.on.validate(
        GROUP,
        "automations",
        id="validate-automation",
        operations=["CREATE", "UPDATE"],
        registry=registry,
    )
    def validate_automation(spec: Mapping[str, Any], **_: Any) -> None:
        try:
            flow = AutomationSpec.model_validate(dict(spec))
        except Exception:
            return  # the schema reports malformed specs with better messages
        problems = flow_problems(flow, path="spec")
        if problems:
            raise kopf.AdmissionError("; ".join(problems), code=422)


def server(*, addr: str, port: int, host: str, cert_dir: Path) -> kopf.WebhookServer:
    certfile, pkeyfile = write_self_signed(cert_dir, host=host)
    return kopf.WebhookServer(
        addr=addr, port=port, host=host, certfile=str(certfile), pkeyfile=str(pkeyfile)
    )
