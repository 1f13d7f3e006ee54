"""A small asyncio client for the Kubernetes REST API, for the local cluster's own controllers.

The process runner (kubelet + ReplicaSet controller) and the orchestration code speak to the
emulated API over real HTTP, exactly as a controller speaks to a real API server: list, watch,
create, merge-patch (including the ``status`` subresource) and delete. The operator itself uses
kopf and the official client; this module exists because the local cluster runs in the same
asyncio loop as the load generator and the Service proxy, and the official client is synchronous.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import yaml

__all__ = [
    "DEPLOYMENTS",
    "PODS",
    "SERVICES",
    "VLMSERVICES",
    "KubeClient",
    "KubeError",
    "Resource",
    "resource_for",
    "wait_for_api",
]


@dataclass(frozen=True)
class Resource:
    """A namespaced resource: where it lives in the REST path space."""

    group: str
    version: str
    plural: str

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        path = f"{base}/namespaces/{namespace}/{self.plural}"
        if name is not None:
            path += f"/{name}"
            if subresource is not None:
                path += f"/{subresource}"
        return path


DEPLOYMENTS = Resource("apps", "v1", "deployments")
PODS = Resource("", "v1", "pods")
SERVICES = Resource("", "v1", "services")
VLMSERVICES = Resource("vlm-operator.io", "v1alpha1", "vlmservices")

_KNOWN = {
    ("apps/v1", "Deployment"): DEPLOYMENTS,
    ("v1", "Pod"): PODS,
    ("v1", "Service"): SERVICES,
    ("vlm-operator.io/v1alpha1", "VLMService"): VLMSERVICES,
}


def resource_for(obj: dict[str, Any]) -> Resource:
    """The resource of a manifest, from its apiVersion and kind."""
    key = (str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
    if key not in _KNOWN:
        raise ValueError(f"apiVersion/kind {key[0]}/{key[1]} is not served by the local cluster")
    return _KNOWN[key]


class KubeError(Exception):
    """The API answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class KubeClient:
    """Async REST client bound to one API server URL (no authentication: loopback only)."""

    def __init__(self, base_url: str, *, request_timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_kubeconfig(cls, path: str) -> KubeClient:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
        context_name = config.get("current-context")
        contexts = {c["name"]: c["context"] for c in config.get("contexts", [])}
        clusters = {c["name"]: c["cluster"] for c in config.get("clusters", [])}
        cluster_name = contexts[context_name]["cluster"] if context_name in contexts else None
        cluster = clusters.get(cluster_name) if cluster_name else next(iter(clusters.values()))
        if not cluster or "server" not in cluster:
            raise ValueError(f"{path}: no cluster server in the kubeconfig")
        return cls(str(cluster["server"]))

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(base_url=self.base_url)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else {}
        async with self._http().request(
            method, path, data=data, headers=headers, params=params, timeout=self._timeout
        ) as resp:
            text = await resp.text()
            if resp.status >= 400:
                try:
                    message = str(json.loads(text).get("message", text))
                except (ValueError, AttributeError):
                    message = text
                raise KubeError(resp.status, message)
            return dict(json.loads(text)) if text else {}

    async def get(self, res: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", res.path(namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, res: Resource, namespace: str, *, label_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """Items and the list's resourceVersion (to start a watch from)."""
        params = {"labelSelector": label_selector} if label_selector else None
        body = await self._call("GET", res.path(namespace), params=params)
        items = [dict(i) for i in body.get("items") or []]
        return items, str((body.get("metadata") or {}).get("resourceVersion", ""))

    async def create(self, res: Resource, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", res.path(namespace), body=obj)

    async def patch(
        self,
        res: Resource,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """JSON merge patch (RFC 7386)."""
        return await self._call(
            "PATCH",
            res.path(namespace, name, subresource),
            body=patch,
            content_type="application/merge-patch+json",
        )

    async def delete(self, res: Resource, namespace: str, name: str) -> bool:
        """Delete; False when it was already gone."""
        try:
            await self._call("DELETE", res.path(namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def apply(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        """Create the object, or merge its metadata labels/annotations and spec into it."""
        res = resource_for(obj)
        body = dict(obj)
        body.setdefault("metadata", {})
        body["metadata"] = {**body["metadata"], "namespace": namespace}
        try:
            return await self.create(res, namespace, body)
        except KubeError as exc:
            if exc.status != 409:
                raise
        meta = body["metadata"]
        patch: dict[str, Any] = {"spec": body.get("spec", {})}
        patch["metadata"] = {
            k: meta[k] for k in ("labels", "annotations") if k in meta and meta[k] is not None
        }
        return await self.patch(res, namespace, str(meta["name"]), patch)

    async def watch(
        self, res: Resource, namespace: str, resource_version: str, *, timeout_s: int = 30
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events ({"type", "object"}) from ``resource_version`` for at most ``timeout_s``.

        Ends when the server closes the stream; raises :class:`KubeError` on an ERROR event
        (e.g. 410 Gone), after which the caller lists again.
        """
        params = {
            "watch": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(timeout_s),
            "allowWatchBookmarks": "true",
        }
        timeout = aiohttp.ClientTimeout(total=timeout_s + 5, sock_connect=5)
        async with self._http().get(res.path(namespace), params=params, timeout=timeout) as resp:
            if resp.status >= 400:
                raise KubeError(resp.status, await resp.text())
            async for raw in resp.content:
                line = raw.strip()
                if not line:
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    obj = event.get("object") or {}
                    raise KubeError(int(obj.get("code", 500)), str(obj.get("message", "")))
                yield dict(event)


async def wait_for_api(
    url: str, *, deadline_s: float = 20.0, process: asyncio.subprocess.Process | None = None
) -> None:
    """Poll ``/version`` until the API answers; TimeoutError (or RuntimeError when
    ``process``, the server, exits first)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    timeout = aiohttp.ClientTimeout(total=1.0)
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{url}/version", timeout=timeout) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if process is not None and process.returncode is not None:
                raise RuntimeError(f"the API server exited with status {process.returncode}")
            if loop.time() > end:
                raise TimeoutError(f"Kubernetes API at {url} not answering after {deadline_s}s")
            await asyncio.sleep(0.05)
