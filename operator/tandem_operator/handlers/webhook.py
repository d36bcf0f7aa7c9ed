"""Admission webhooks for what the CRD schema and CEL cannot say, and who decided a gate.

Three reviews, pure functions of the AdmissionReview's ``request`` (:data:`REVIEWS`),
each served at its path by ``handlers.webhook_server``:

- ``/stamp-decisions`` (mutating, AutomationRuns, only requests that change
  ``spec.gateDecisions``): every *new* entry gets ``decidedBy`` set to the authenticated
  user of the admission request, overwriting whatever the request carried (B18a). An old
  entry that a client re-sent without its ``decidedBy`` (``kubectl apply`` of a manifest
  that lists earlier decisions) gets the stored one back, so the append-only rule of the
  schema still holds. Then the stamped spec is checked as ``/validate-run`` checks it:
  decisions naming unknown gates or decisions the gate does not allow (B18d), the gate's
  ``approvers`` (B18b, groups as the API server authenticated them), and the inline flow.
  A refused decision is refused here, so a decision costs the API server one webhook call.
- ``/validate-run`` (validating, AutomationRuns, every other request): the flow checks of
  ``lifecycle.validation``, dependsOn cycles and rework targets not upstream of their gate.
- ``/validate-automation`` (validating, Automations): the flow checks, and a schedule's cron
  fields and time zone (B19b: a minute of 61 or a zone that does not exist), which the
  schema can only check for shape.

Checking decisions in the mutating webhook rather than in a validating one saves a second
call on the path every approval takes (about 5 ms of a 50 ms approve-to-Running round
trip). What a validating webhook would add is a check of the *final* object, after every
mutating webhook of the cluster: the mutating entry has ``reinvocationPolicy: IfNeeded``,
so when another mutating webhook changes the run after this one, the API server calls
this one again and the decisions are stamped and checked again.

The server is the operator's own, not kopf's: kopf's admission machinery diffs a copy of
the whole object, sets up a logger and a progress state for every request, and spent
3 to 5 ms of CPU on each, while the reviews themselves take tens of microseconds.

Registration. kopf's own managed mode writes one configuration with a fixed name and no
namespace selector, so several operators of one cluster would overwrite each other; and it
cannot say "fail closed for decisions, open for the rest". The configurations are built
here instead (:func:`configurations`, pure) and applied by whoever installs the operator:
``tandem-operator run`` outside a cluster (by URL, on loopback), the Helm chart in a
cluster (by Service). Each install has its own object names (:func:`install_name`) and a
``namespaceSelector`` on ``kubernetes.io/metadata.name`` for the namespaces it watches.
Requests that change ``spec.gateDecisions`` (a CEL ``matchConditions`` entry) go to the
mutating webhook with ``failurePolicy: Fail``: while the webhook is down, nobody can record
a decision without an identity. Every other request goes to ``Ignore`` webhooks: the
operator re-checks flows when it runs them.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from tandem_operator.api.models import GROUP, AutomationResourceSpec
from tandem_operator.lifecycle.validation import flow_problems, run_problems
from tandem_operator.scheduling.cron import schedule_problem

STAMP_PATH = "/stamp-decisions"
VALIDATE_RUN_PATH = "/validate-run"
VALIDATE_AUTOMATION_PATH = "/validate-automation"

DECISIONS_CHANGED = (
    "request.operation == 'CREATE' "
    "? (has(object.spec.gateDecisions) && size(object.spec.gateDecisions) > 0) "
    ": ((has(object.spec.gateDecisions) ? object.spec.gateDecisions : []) != "
    "(has(oldObject.spec.gateDecisions) ? oldObject.spec.gateDecisions : []))"
)
"""CEL for ``matchConditions``: the request adds (or changes) entries of spec.gateDecisions."""


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
    """The gateDecisions list with ``decidedBy`` set on new entries; ``None`` if no change.

    An old entry sent again without ``decidedBy`` but otherwise as stored gets the stored
    ``decidedBy`` back (any other change to it is left for the schema to refuse).
    """
    decisions = [dict(d) for d in spec.get("gateDecisions") or []]
    # New entries are those the old list does not hold, wherever they were inserted. An
    # old entry re-sent without its decidedBy is recognised by the rest of its content.
    old = [dict(d) for d in (old_spec or {}).get("gateDecisions") or []]
    recorded = Counter(_canonical(d) for d in old)
    signed: dict[str, list[str]] = {}
    for stored in old:
        if "decidedBy" in stored:
            unsigned = {k: v for k, v in stored.items() if k != "decidedBy"}
            signed.setdefault(_canonical(unsigned), []).append(str(stored["decidedBy"]))
    changed = False
    for entry in decisions:
        if recorded[_canonical(entry)] > 0:
            recorded[_canonical(entry)] -= 1
            continue
        deciders = signed.get(_canonical(entry)) if "decidedBy" not in entry else None
        if deciders:
            restored = {**entry, "decidedBy": deciders.pop(0)}
            if recorded[_canonical(restored)] > 0:
                recorded[_canonical(restored)] -= 1
                entry["decidedBy"] = restored["decidedBy"]
                changed = True
                continue
        if entry.get("decidedBy") != username:
            entry["decidedBy"] = username
            changed = True
    return decisions if changed else None


def _user(userinfo: Mapping[str, object]) -> tuple[str, list[str]]:
    username = str(userinfo.get("username") or "system:unknown")
    groups = userinfo.get("groups") or []
    return username, [str(g) for g in groups] if isinstance(groups, list) else []


def _canonical(entry: Mapping[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """What one admission review answers: allowed or why not, and a JSON patch if any."""

    allowed: bool = True
    message: str | None = None
    patch: list[dict[str, Any]] | None = None


def _spec(obj: object) -> Mapping[str, Any]:
    spec = obj.get("spec") if isinstance(obj, Mapping) else None
    return spec if isinstance(spec, Mapping) else {}


def stamp(request: Mapping[str, Any]) -> Verdict:
    """``/stamp-decisions``: new gate decisions get ``decidedBy`` (B18a), then are checked.

    The run is checked as it will be stored (B18b, B18d): refused, or allowed with the stamp.
    """
    old = request.get("oldObject")
    username, _ = _user(request.get("userInfo") or {})
    spec = _spec(request.get("object"))
    stamped = stamp_decisions(spec, _spec(old) if old is not None else None, username)
    if stamped is None:
        return _run_verdict(request, spec)
    checked = _run_verdict(request, {**spec, "gateDecisions": stamped})
    if not checked.allowed:
        return checked
    return Verdict(patch=[{"op": "add", "path": "/spec/gateDecisions", "value": stamped}])


def validate_run(request: Mapping[str, Any]) -> Verdict:
    """``/validate-run``: the run's flow, its decisions and who wrote them (B18a, B18b, B18d)."""
    return _run_verdict(request, _spec(request.get("object")))


def _run_verdict(request: Mapping[str, Any], spec: Mapping[str, Any]) -> Verdict:
    """``spec`` checked against the request's old object and user (``run_problems``)."""
    old = request.get("oldObject")
    old = old if isinstance(old, Mapping) else {}
    username, groups = _user(request.get("userInfo") or {})
    problems = run_problems(
        spec,
        old_spec=old.get("spec"),
        status=old.get("status"),
        user=username,
        groups=groups,
    )
    return Verdict(allowed=False, message="; ".join(problems)) if problems else Verdict()


def validate_automation(request: Mapping[str, Any]) -> Verdict:
    """``/validate-automation``: the flow checks and the schedule (B18d, B19b)."""
    problems = automation_problems(_spec(request.get("object")))
    return Verdict(allowed=False, message="; ".join(problems)) if problems else Verdict()


REVIEWS: Mapping[str, Callable[[Mapping[str, Any]], Verdict]] = {
    STAMP_PATH: stamp,
    VALIDATE_RUN_PATH: validate_run,
    VALIDATE_AUTOMATION_PATH: validate_automation,
}
"""The review behind each path the configurations call."""


def admission_response(uid: str, verdict: Verdict) -> dict[str, Any]:
    """The ``response`` of an AdmissionReview (v1) that answers request ``uid``."""
    response: dict[str, Any] = {"uid": uid, "allowed": verdict.allowed}
    if not verdict.allowed:
        response["status"] = {
            "message": verdict.message or "refused",
            "reason": "Invalid",
            "code": 422,
        }
    if verdict.patch is not None:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(
            json.dumps(verdict.patch, separators=(",", ":")).encode()
        ).decode()
    return response


def automation_problems(spec: Mapping[str, Any]) -> list[str]:
    """Why an Automation's spec cannot be used: its flow (B18d) and its schedule (B19b).

    A spec the models cannot read gives nothing here: the CRD schema has already refused it
    with a better message, or the operator reports it when it reads the object.
    """
    try:
        automation = AutomationResourceSpec.model_validate(dict(spec))
    except ValidationError:
        return []
    problems = flow_problems(automation, path="spec")
    if automation.schedule is not None:
        problem = schedule_problem(automation.schedule)
        if problem is not None:
            problems.append(problem)
    return problems


def ensure_certificate(cert_dir: Path, *, host: str) -> tuple[Path, Path]:
    """The serving certificate in ``cert_dir`` (``tls.crt``, ``tls.key``), made if missing.

    A directory mounted from a Secret (the Helm chart's) already has one; outside a cluster
    the command line makes a self-signed one for the loopback address it listens on.
    """
    cert, key = cert_dir / "tls.crt", cert_dir / "tls.key"
    if cert.is_file() and key.is_file():
        return cert, key
    return write_self_signed(cert_dir, host=host)


# --------------------------------------------------------------------------- registration


@dataclass(frozen=True, kw_only=True)
class Registration:
    """Where the API server reaches one install's webhook, and for which namespaces."""

    name: str
    """Name of both configurations; one per install (:func:`install_name`)."""
    namespaces: Sequence[str] | None
    """Namespaces the install watches; ``None``: every namespace."""
    ca_bundle: bytes
    """PEM of the CA that signed the serving certificate."""
    url: str | None = None
    """``https://host:port`` when the API server calls the webhook by URL."""
    service: Mapping[str, Any] | None = None
    """``{namespace, name, port}`` when it calls a Service."""


def install_name(lease_namespace: str) -> str:
    """The configurations' name for the install whose leader Lease is in ``lease_namespace``.

    Operators that share a Lease are replicas of one install; the Lease's namespace is
    what tells installs apart (one Lease ``tandem-operator`` per namespace).
    """
    return f"tandem-operator-{lease_namespace}.{GROUP}"


def _client_config(reg: Registration, path: str) -> dict[str, Any]:
    ca = base64.b64encode(reg.ca_bundle).decode()
    if reg.service is not None:
        return {"service": {**reg.service, "path": path}, "caBundle": ca}
    if reg.url is None:
        raise ValueError("a Registration needs a url or a service")
    return {"url": reg.url.rstrip("/") + path, "caBundle": ca}


def _webhook(
    reg: Registration,
    *,
    name: str,
    resource: str,
    path: str,
    fail: bool,
    match: str | None,
) -> dict[str, Any]:
    hook: dict[str, Any] = {
        "name": f"{name}.{GROUP}",
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail" if fail else "Ignore",
        "matchPolicy": "Equivalent",
        "timeoutSeconds": 10,
        "rules": [
            {
                "apiGroups": [GROUP],
                "apiVersions": ["*"],
                "resources": [resource],
                "operations": ["CREATE", "UPDATE"],
                "scope": "Namespaced",
            }
        ],
        "namespaceSelector": (
            {
                "matchExpressions": [
                    {
                        "key": "kubernetes.io/metadata.name",
                        "operator": "In",
                        "values": sorted(reg.namespaces),
                    }
                ]
            }
            if reg.namespaces
            else {}
        ),
        "clientConfig": _client_config(reg, path),
    }
    if match is not None:
        hook["matchConditions"] = [{"name": "gate-decisions", "expression": match}]
    return hook


def configurations(reg: Registration) -> list[dict[str, Any]]:
    """The Mutating- and ValidatingWebhookConfiguration of one install.

    Decisions (requests matching :data:`DECISIONS_CHANGED`) are stamped and checked by the
    mutating webhook and fail closed; the flow checks on every other write of a run, and on
    Automations, fail open.
    """
    labels = {"app.kubernetes.io/managed-by": "tandem-operator"}
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": reg.name, "labels": labels},
        "webhooks": [
            {
                **_webhook(
                    reg,
                    name="gate-decisions",
                    resource="automationruns",
                    path=STAMP_PATH,
                    fail=True,
                    match=DECISIONS_CHANGED,
                ),
                # Called again if another mutating webhook changes the run after it.
                "reinvocationPolicy": "IfNeeded",
            }
        ],
    }
    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": reg.name, "labels": labels},
        "webhooks": [
            _webhook(
                reg,
                name="runs",
                resource="automationruns",
                path=VALIDATE_RUN_PATH,
                fail=False,
                match=f"!({DECISIONS_CHANGED})",
            ),
            _webhook(
                reg,
                name="automations",
                resource="automations",
                path=VALIDATE_AUTOMATION_PATH,
                fail=False,
                match=None,
            ),
        ],
    }
    return [mutating, validating]
