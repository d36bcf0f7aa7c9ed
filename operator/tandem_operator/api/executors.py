"""Who runs a node's attempts: a container, a simulation, or an AgentEndpoint (its kind too)."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

from tandem_operator.api.base import (
    DNS1123_SUBDOMAIN,
    MAX_TOKEN_COUNT,
    ApiModel,
    FreeForm,
    LocalObjectReference,
    SimulateOutcome,
)

ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
LABEL_KEY = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
MAX_CONTAINER_ARGS = 64
MAX_CONTAINER_ENV = 64
MAX_POD_METADATA = 32

Quantity = Annotated[str, Field(max_length=64, pattern=QUANTITY)]


class SecretKeySelector(ApiModel):
    name: str = Field(min_length=1, max_length=253)
    """Name of the Secret, in the run's namespace."""
    key: str = Field(min_length=1, max_length=253)
    """Key in the Secret's data whose value becomes the variable."""


class EnvVarSource(ApiModel):
    secret_key_ref: SecretKeySelector
    """A key of a Secret in the run's namespace; the kubelet reads it, the operator never does."""


class EnvVar(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.value) && has(self.valueFrom))",
                    "message": "env sets value or valueFrom, not both",
                }
            ]
        }
    )

    name: str = Field(min_length=1, max_length=256, pattern=ENV_NAME)
    """Name of the environment variable; TANDEM_ATTEMPT is set by the operator."""
    value: str | None = Field(default=None, max_length=4096)
    """The variable's value."""
    value_from: EnvVarSource | None = None
    """Where the value comes from instead: a Secret key (secretKeyRef)."""


class ContainerResources(ApiModel):
    requests: dict[str, Quantity] = Field(default_factory=dict, max_length=8)
    """Resources the scheduler reserves, e.g. {cpu: 100m, memory: 128Mi}; quote whole numbers
    ("1")."""
    limits: dict[str, Quantity] = Field(default_factory=dict, max_length=8)
    """Resources the container may not exceed, e.g. {memory: 512Mi}; quote whole numbers ("2")."""


class Container(ApiModel):
    image: str = Field(min_length=1, max_length=512)
    """Container image that runs one attempt; it reads the attempt from TANDEM_ATTEMPT and writes
    one JSON result to its termination message (/dev/termination-log)."""
    command: list[Annotated[str, Field(max_length=1024)]] | None = Field(
        default=None, max_length=MAX_CONTAINER_ARGS
    )
    """Entrypoint; the image's ENTRYPOINT when unset."""
    args: list[Annotated[str, Field(max_length=1024)]] | None = Field(
        default=None, max_length=MAX_CONTAINER_ARGS
    )
    """Arguments to the entrypoint; the image's CMD when unset."""
    env: list[EnvVar] = Field(default_factory=list, max_length=MAX_CONTAINER_ENV)
    """Environment variables of the container, with value or valueFrom.secretKeyRef."""
    resources: ContainerResources | None = None
    """Compute resources of the container (requests and limits)."""
    service_account_name: str | None = Field(
        default=None, min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN
    )
    """ServiceAccount the Pod runs as; without it no API token is mounted in the Pod."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Hard limit of one attempt in seconds; the Pod is then stopped and the attempt fails."""
    pod_labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict,
        max_length=MAX_POD_METADATA,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"self.all(k, size(k) <= 317 && k.matches('{LABEL_KEY}') && "
                    "!k.startsWith('automation.tandem.dev/'))",
                    "message": "podLabels keys must be label keys outside automation.tandem.dev/",
                }
            ]
        },
    )
    """Extra labels of the attempt's Pod; the automation.tandem.dev/ labels are the operator's."""
    pod_annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict,
        max_length=MAX_POD_METADATA,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"self.all(k, size(k) <= 317 && k.matches('{LABEL_KEY}'))",
                    "message": "podAnnotations keys must be valid annotation keys",
                }
            ]
        },
    )
    """Annotations of the attempt's Pod, e.g. for a service mesh or a test's fake Node."""


class Usage(ApiModel):
    prompt_tokens: int = Field(default=0, ge=0, le=MAX_TOKEN_COUNT)
    """Prompt tokens the simulated attempt reports."""
    completion_tokens: int = Field(default=0, ge=0, le=MAX_TOKEN_COUNT)
    """Completion tokens the simulated attempt reports."""


class Simulate(ApiModel):
    outcome: SimulateOutcome = "completed"
    """Result of every simulated attempt; stall never reports and is reaped as stale (B5)."""
    after_seconds: float = Field(default=0, ge=0, le=86400)
    """Seconds the simulated attempt takes before it reports."""
    output: FreeForm | None = None
    """The node output the simulated attempt reports (free-form object)."""
    usage: Usage | None = None
    """Token usage the simulated attempt reports."""


class Executor(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.endpointRef) ? 1 : 0) + (has(self.simulate) ? 1 : 0)"
                    " + (has(self.container) ? 1 : 0) == 1",
                    "message": "executor must set exactly one of endpointRef, simulate or "
                    "container",
                }
            ]
        }
    )

    endpoint_ref: LocalObjectReference | None = None
    """An AgentEndpoint in the same namespace that runs the node's attempts."""
    simulate: Simulate | None = None
    """A deterministic stand-in for an agent, for tests, demos and dry runs."""
    container: Container | None = None
    """A container image that runs each attempt in its own Pod in the run's namespace."""


class SecretKeyReference(ApiModel):
    name: str = Field(min_length=1, max_length=253)
    """Name of the Secret, in the same namespace."""
    key: str = Field(min_length=1, max_length=253)
    """Key in the Secret's data whose value is used."""


class AgentEndpointSpec(ApiModel):
    """An HTTP agent engine that executes nodes (see the agent endpoint protocol)."""

    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://")
    """Where attempts are POSTed."""
    auth_secret_ref: SecretKeyReference | None = None
    """A Secret key in the same namespace whose value is sent as Authorization: Bearer <value>."""
    timeout_seconds: int = Field(default=300, ge=1, le=86400)
    """Longest silence in seconds allowed while connecting and between two lines of the stream;
    total duration is not limited."""
