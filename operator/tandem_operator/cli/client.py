"""The kubectl plugin's API calls and errors.

:class:`RunClient` is the only part of the plugin that talks to the API server, through
pykube-ng like the rest of the command line. Errors are :class:`PluginError`: the plugin
prints the message on stderr and exits with code 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pykube
import requests

from tandem_operator.api.models import API_VERSION

KIND = "automationrun"
PLURAL = "automationruns"


class PluginError(Exception):
    """A problem the user can act on; printed as ``error: <message>``, exit code 1."""


class Conflict(Exception):
    """The run changed between read and write: read again and retry."""


class ApiError(PluginError):
    """The API server refused a request; ``code`` is its HTTP status."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(f"{message} (HTTP {code})")
        self.code = code


class RunClient:
    """The few API calls the plugin makes, through pykube-ng."""

    def __init__(self, api: pykube.HTTPClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace

    @classmethod
    def connect(cls, *, kubeconfig: Path | None, namespace: str | None) -> RunClient:
        try:
            config = (
                pykube.KubeConfig.from_file(str(kubeconfig))
                if kubeconfig is not None
                else pykube.KubeConfig.from_env()
            )
        except (pykube.exceptions.PyKubeError, OSError) as exc:
            raise PluginError(f"cannot load kubeconfig: {exc}") from exc
        return cls(pykube.HTTPClient(config), namespace or config.namespace or "default")

    def _request(
        self,
        method: Callable[..., requests.Response],
        *,
        all_namespaces: bool = False,
        **kwargs: Any,
    ) -> Any:
        namespace = None if all_namespaces else self.namespace
        try:
            response = method(version=API_VERSION, namespace=namespace, **kwargs)
        except requests.RequestException as exc:
            raise PluginError(f"cannot reach the API server: {exc}") from exc
        if response.status_code == 409:
            raise Conflict()
        if not response.ok:
            try:
                message = response.json().get("message") or response.text
            except ValueError:
                message = response.text
            raise ApiError(str(message), code=response.status_code)
        return response.json()

    def get(self, name: str) -> dict[str, Any]:
        try:
            found: dict[str, Any] = self._request(self.api.get, url=f"{PLURAL}/{name}")
        except ApiError as exc:
            if exc.code == 404:
                raise PluginError(
                    f'{KIND} "{name}" not found in namespace "{self.namespace}"'
                ) from None
            raise
        return found

    def list_runs(self, *, all_namespaces: bool) -> list[dict[str, Any]]:
        found = self._request(self.api.get, all_namespaces=all_namespaces, url=PLURAL)
        return list(found.get("items") or [])

    def automation(self, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self._request(self.api.get, url=f"automations/{name}")
        except PluginError:
            return None
        return found.get("spec") or None

    def json_patch(self, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        """Apply ``ops``; a failed ``test`` of the resourceVersion raises :class:`Conflict`.

        The API server answers a failed ``test`` op with a bare 422 ("the server rejected
        our request"), the same as other invalid patches, so a 422 is a conflict exactly
        when the resourceVersion the patch tested is no longer the run's.
        """
        try:
            patched: dict[str, Any] = self._request(
                self.api.patch,
                url=f"{PLURAL}/{name}",
                headers={"Content-Type": "application/json-patch+json"},
                data=json.dumps(ops),
            )
        except ApiError as exc:
            tested = [
                op.get("value")
                for op in ops
                if op.get("op") == "test" and op.get("path") == "/metadata/resourceVersion"
            ]
            if exc.code == 422 and tested:
                current = (self.get(name).get("metadata") or {}).get("resourceVersion")
                if current != tested[0]:
                    raise Conflict() from exc
            raise
        return patched

    def get_automation(self, name: str) -> dict[str, Any]:
        try:
            found: dict[str, Any] = self._request(self.api.get, url=f"automations/{name}")
        except ApiError as exc:
            if exc.code == 404:
                raise PluginError(
                    f'automation "{name}" not found in namespace "{self.namespace}"'
                ) from None
            raise
        return found

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            created: dict[str, Any] = self._request(
                self.api.post,
                url=PLURAL,
                headers={"Content-Type": "application/json"},
                data=json.dumps(body),
            )
        except Conflict:
            name = (body.get("metadata") or {}).get("name")
            raise PluginError(f'{KIND} "{name}" already exists') from None
        return created

    def merge_patch(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = self._request(
            self.api.patch,
            url=f"{PLURAL}/{name}",
            headers={"Content-Type": "application/merge-patch+json"},
            data=json.dumps(patch),
        )
        return patched
