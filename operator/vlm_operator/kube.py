"""Kubernetes API access of the operator: create-or-patch, scale, status, pods.

kopf watches and reacts; the writes the operator makes on its own schedule
(children, replicas, status, pod annotations) go through the official
``kubernetes`` client, which knows every kubeconfig and in-cluster
credential. That client is synchronous, so every call runs in a small thread
pool of its own: the event loop that drives a thousand control loops is never
blocked on a socket. The calls are raw REST with JSON bodies and no model
classes: the operator already holds plain dicts (rendered manifests, merge
patches), and deserialising a Deployment into generated classes costs more
than the request itself.

Conflicts are not fatal: a create that finds the object existing turns into a
patch, and a 409 on a write is retried a bounded number of times.

Children are applied with a JSON merge patch (server-side apply is not
available everywhere the operator runs, e.g. the emulated API of the tests).
A merge patch cannot remove what it does not name, so each child records the
keys applied last, and the next patch nulls those no longer rendered.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from types import TracebackType
from typing import Any, Self

import kubernetes
import urllib3
from urllib3.connectionpool import ConnectionPool
from urllib3.response import BaseHTTPResponse

from vlm_operator.models import quantity_value

_PLURALS = {
    "Deployment": "deployments",
    "Service": "services",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "PodMonitor": "podmonitors",
    "NetworkPolicy": "networkpolicies",
    "Pod": "pods",
    "Event": "events",
    "ConfigMap": "configmaps",
    "ServiceAccount": "serviceaccounts",
}
_MERGE_PATCH = "application/merge-patch+json"
#: The keys the operator set when it last applied a child (JSON: that manifest's maps,
#: every other value 0). Keys alone: the values are the rendering's to decide, and a
#: whole manifest would double the size of every Deployment, in every watch event.
APPLIED_KEYS_ANNOTATION = "vlm-operator.io/applied-keys"
#: What children applied by 0.1.0 development builds carry instead: the whole manifest.
#: Read when the keys are not there, and removed by the next apply.
_WHOLE_MANIFEST_ANNOTATION = "vlm-operator.io/last-applied"
_CONFLICT_RETRIES = 5
#: The longest wait before a write the API server throttled (429) is sent again: a
#: cycle's writes must fit its grace at shutdown (handlers.CYCLE_GRACE_SECONDS).
_THROTTLE_WAIT_SECONDS = 2.0
#: Seconds to connect, then to read an answer, of each request: an API server that
#: accepts and never answers costs a cycle that long per request, not minutes.
_REQUEST_TIMEOUT = (5.0, 15.0)
#: A read-back after a lost answer waits less: it only confirms a write.
_READ_BACK_TIMEOUT = (2.0, 5.0)


class _RetryButNotTimeouts(urllib3.Retry):
    """urllib3's retries, but a read that timed out is not sent again: the server
    got it and is slow, and waiting its time-out again helps no one."""

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        if isinstance(error, urllib3.exceptions.ReadTimeoutError):
            raise error
        return super().increment(method, url, response, error, _pool, _stacktrace)


class ApiError(Exception):
    """A non-2xx answer of the API server, or none at all (status 0: a timeout, a
    connection refused or reset)."""

    def __init__(
        self, status: int, reason: str, body: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(f"HTTP {status} {reason}: {body[:300]}")
        self.status = status
        self.reason = reason
        self.body = body
        #: The answer's Retry-After in seconds (a 429 of API Priority and Fairness).
        self.retry_after = retry_after

    @property
    def refused_by_policy(self) -> bool:
        """A 403 of admission (a webhook, a ValidatingAdmissionPolicy, a quota or a
        LimitRange): the object's, as a 400 or 422 is. RBAC's 403 ("cannot create
        resource") is the operator's permissions, and a namespace being deleted
        refuses new objects for a while (NamespaceLifecycle): neither is the object's."""
        return self.status == 403 and _NOT_THE_OBJECTS.search(self.body) is None

    @property
    def lacks_permission(self) -> bool:
        """RBAC's 403: the operator may not do this (its Role or ClusterRole lacks a
        verb or resource). No retry mends it before someone grants it."""
        return self.status == 403 and _RBAC_REFUSAL.search(self.body) is not None


#: How RBAC words its refusal (k8s.io/apiserver's authorization/authorizer)...
_RBAC_REFUSAL = re.compile(r'cannot [a-z]+ resource \\?"')
#: ...and, with the namespace lifecycle admission's refusal in a namespace being
#: deleted, the 403s that are not the object's.
_NOT_THE_OBJECTS = re.compile(rf"{_RBAC_REFUSAL.pattern}|because it is being terminated")


def _seconds(value: str | None) -> float | None:
    """A Retry-After in seconds (the API server sends whole seconds), or None."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < 3600 else None


class NotOurs(Exception):
    """An object of a child's name that is another's: the operator leaves it alone.

    A merge patch would take it over (its ownerReferences list replaced whole,
    its selector rewritten), and deleting the VLMService would then delete it.
    """

    def __init__(self, message: str, *, predecessor: bool = False) -> None:
        super().__init__(message)
        #: The object is still controlled by an owner of the same kind and name
        #: that is gone or going (a VLMService deleted and created again at
        #: once): the garbage collector is about to delete it.
        self.predecessor = predecessor


def foreign_holder(current: Mapping[str, Any], desired: Mapping[str, Any]) -> str | None:
    """Whose ``current`` is, if not the owner's that ``desired`` names; None if it is its.

    The owner's: an object it controls, or one it no longer does that the
    operator applied (its applied-keys annotation: a child orphaned by
    ``kubectl delete --cascade=orphan``, adopted again). Without an owner in
    ``desired`` there is nothing to compare, and nothing is refused.
    """
    ours = {ref.get("uid") for ref in (desired.get("metadata") or {}).get("ownerReferences") or []}
    if not ours:
        return None
    refs = [r for r in (current.get("metadata") or {}).get("ownerReferences") or [] if r]
    for ref in refs:
        if ref.get("controller") and ref.get("uid") not in ours:
            whose = f"{ref.get('kind')} {ref.get('name')} (uid {ref.get('uid')})"
            if predecessor_of(current, desired):
                return f"is still controlled by the previous {whose}"
            return f"is controlled by {whose}"
    annotations = _annotations(current)
    if any(ref.get("uid") in ours for ref in refs) or any(
        key in annotations for key in (APPLIED_KEYS_ANNOTATION, _WHOLE_MANIFEST_ANNOTATION)
    ):
        return None
    return "was not made by vlm-operator"


def predecessor_of(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether ``current`` is controlled by an earlier owner of the name ``desired``'s has.

    Two owners of one kind, name and namespace with different uids are the same
    object deleted and created again: the earlier one is gone or going, and the
    garbage collector deletes what it controlled (within seconds, usually).
    """

    def owner(ref: Mapping[str, Any]) -> tuple[str, Any, Any]:
        group = str(ref.get("apiVersion") or "").rpartition("/")[0]  # any version of it
        return group, ref.get("kind"), ref.get("name")

    owners = {
        owner(ref): ref.get("uid")
        for ref in (desired.get("metadata") or {}).get("ownerReferences") or []
        if ref and ref.get("controller")
    }
    for ref in (current.get("metadata") or {}).get("ownerReferences") or []:
        if ref and ref.get("controller"):
            uid = owners.get(owner(ref))
            return uid is not None and uid != ref.get("uid")
    return False


def _collection_path(api_version: str, plural: str, namespace: str | None) -> str:
    root = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{root}/namespaces/{namespace}/{plural}" if namespace else f"{root}/{plural}"


def object_path(obj: Mapping[str, Any]) -> str:
    """The URL path of a manifest's object."""
    kind = str(obj["kind"])
    plural = _PLURALS.get(kind, kind.lower() + "s")
    meta = obj.get("metadata") or {}
    base = _collection_path(str(obj["apiVersion"]), plural, meta.get("namespace"))
    return f"{base}/{meta['name']}"


class KubeClient:
    """Async façade over the synchronous ``kubernetes`` client."""

    def __init__(
        self,
        api_client: Any,
        *,
        workers: int = 8,
        request_timeout: tuple[float, float] = _REQUEST_TIMEOUT,
    ) -> None:
        self._api = api_client
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")
        self._timeout = request_timeout

    @classmethod
    def from_environment(
        cls,
        kubeconfig: str | None = None,
        *,
        workers: int = 8,
        request_timeout: tuple[float, float] = _REQUEST_TIMEOUT,
    ) -> KubeClient:
        """In-cluster credentials when present, else the kubeconfig (or $KUBECONFIG)."""
        configuration = kubernetes.client.Configuration()
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        else:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, client_configuration=configuration
            )
        # One pooled connection per worker thread; urllib3's default of 4
        # would make the extra workers wait for a socket.
        configuration.connection_pool_maxsize = workers
        # urllib3's default sends a request again three times after a read time-out:
        # 4 × 20 s for one GET of an API server that accepts and never answers. A
        # connection that failed, or a kept-alive one the server had closed, is tried
        # once more (urllib3 sends no PATCH or POST again after a read error).
        configuration.retries = _RetryButNotTimeouts(total=1, connect=1, read=1, status=0, other=0)
        return cls(
            kubernetes.client.ApiClient(configuration),
            workers=workers,
            request_timeout=request_timeout,
        )

    @property
    def configuration(self) -> Any:
        """The ``kubernetes.client.Configuration`` in use (kopf logs in with it too)."""
        return self._api.configuration

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._api.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        want_body: bool = True,
        socket_timeouts: tuple[float, float] | None = None,
    ) -> dict[str, Any]:
        """One API request, run in the client's thread pool; raises :class:`ApiError`.

        ``socket_timeouts`` (connect, read) replaces the client's for this request.
        ``want_body=False`` skips decoding the answer (returns ``{}``): the
        operator's writes do not read it back, and decoding a thousand
        Deployments holds the interpreter's lock the event loop needs.
        """
        loop = asyncio.get_running_loop()
        call = partial(
            self._request_sync,
            method,
            path,
            body,
            dict(query or {}),
            content_type,
            want_body,
            socket_timeouts or self._timeout,
        )
        return await loop.run_in_executor(self._executor, call)

    def _request_sync(
        self,
        method: str,
        path: str,
        body: Any,
        query: dict[str, str],
        content_type: str,
        want_body: bool,
        timeout: tuple[float, float],
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        serialized = self._api.param_serialize(
            method,
            path,
            query_params=list(query.items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(*serialized, _request_timeout=timeout)
            data = response.read()
            status = int(response.status)
            reason = str(response.reason or "")
            retry_after = response.getheader("Retry-After")
        except kubernetes.client.ApiException as exc:
            status, reason, data = int(exc.status or 0), str(exc.reason or ""), exc.body or b""
            retry_after = (exc.headers or {}).get("Retry-After")
        except urllib3.exceptions.HTTPError as exc:
            # No answer at all (a timeout, a connection refused or reset): status 0, as
            # the client's own ApiException has for a TLS failure. Callers then treat it
            # as any failed request (retried, best effort), not as a crash.
            raise ApiError(0, type(exc).__name__, str(exc)) from exc
        text = data.decode() if isinstance(data, bytes | bytearray) else str(data or "")
        if not 200 <= status < 300:
            raise ApiError(status, reason, text, retry_after=_seconds(retry_after))
        if not text or not want_body:
            return {}
        parsed = json.loads(text)
        return parsed if isinstance(parsed, dict) else {}

    # ------------------------------------------------------------------ objects

    async def merge_patch(
        self, path: str, patch: Mapping[str, Any], *, want_body: bool = True
    ) -> dict[str, Any]:
        """A JSON merge patch, retried on 409 (the API server was busy with a write) and
        on 429 (API Priority and Fairness throttled it: nothing was done), at most
        :data:`_THROTTLE_WAIT_SECONDS` after a 429 whatever its Retry-After says."""
        for attempt in range(_CONFLICT_RETRIES):
            try:
                return await self.request(
                    "PATCH", path, body=patch, content_type=_MERGE_PATCH, want_body=want_body
                )
            except ApiError as exc:
                if exc.status not in (409, 429) or attempt == _CONFLICT_RETRIES - 1:
                    raise
                if exc.status == 429:
                    wait = exc.retry_after if exc.retry_after is not None else 1.0
                    await asyncio.sleep(min(wait, _THROTTLE_WAIT_SECONDS))
                else:
                    await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path``, or None if there is none."""
        try:
            return await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def delete(self, path: str, *, uid: str | None = None) -> bool:
        """Delete the object at ``path`` (only if it still has ``uid``); False if gone."""
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", path, body=options, want_body=False)
        except ApiError as exc:
            if exc.status in (404, 409):  # gone, or another object of that name now
                return False
            raise
        return True

    async def apply(
        self,
        obj: Mapping[str, Any],
        *,
        omit: tuple[tuple[str, ...], ...] = (),
        create_first: bool = False,
    ) -> str:
        """Create ``obj``, or merge-patch it if it exists; "created", "patched" or "unchanged".

        ``omit`` lists field paths left out of the patch of an existing object
        (e.g. ``("spec", "replicas")``, which the autoscaler owns).
        ``create_first`` saves a request when the object is most likely new.

        A merge patch only sets what it names: a key rendered last time and
        not now would stay. So the object carries the keys applied last (the
        :data:`APPLIED_KEYS_ANNOTATION`; ``kubectl apply`` keeps the whole
        manifest), and the patch sets to null every one of them no longer
        rendered. Keys others added (a controller's defaults, a user's labels)
        are not in it and stay.

        An object of the name that is another's (:func:`foreign_holder`) is
        not patched: :class:`NotOurs` says whose it is.
        """
        path = object_path(obj)
        desired = _without(obj, omit)
        record = json.dumps(key_skeleton(desired), sort_keys=True, separators=(",", ":"))
        for manifest in (desired, full := _without(obj, ())):
            meta = manifest.setdefault("metadata", {})
            meta["annotations"] = {
                **(meta.get("annotations") or {}),
                APPLIED_KEYS_ANNOTATION: record,
            }
        collection = path.rsplit("/", 1)[0]
        for attempt in range(_CONFLICT_RETRIES):
            current = None if create_first and attempt == 0 else await self.get(path)
            if current is None:
                try:
                    await self.request("POST", collection, body=full, want_body=False)
                    return "created"
                except ApiError as exc:
                    if exc.status != 409:  # 409: it exists (or was created meanwhile)
                        raise
                current = await self.get(path)
                if current is None:
                    continue
            holder = foreign_holder(current, obj)
            if holder is not None:
                child = f"{obj['kind']} {(obj.get('metadata') or {}).get('name')}"
                if predecessor_of(current, obj):
                    raise NotOurs(
                        f"{child} exists and {holder}: left alone until the garbage "
                        "collector deletes it",
                        predecessor=True,
                    )
                raise NotOurs(
                    f"{child} exists and {holder}: "
                    "left alone (delete it, or give the VLMService another name)"
                )
            patch = with_removals(desired, _without(applied_keys(current), omit))
            _keep_other_owners(patch, current)
            if _WHOLE_MANIFEST_ANNOTATION in _annotations(current):
                meta = patch["metadata"] = dict(patch["metadata"])
                meta["annotations"] = {**meta["annotations"], _WHOLE_MANIFEST_ANNOTATION: None}
            if holds(current, patch):
                return "unchanged"  # the periodic refresh of a child nobody touched: no write
            try:
                await self.merge_patch(path, patch, want_body=False)
                return "patched"
            except ApiError as exc:
                if exc.status != 404:  # 404: deleted meanwhile, create it again
                    raise
        raise ApiError(409, "Conflict", f"{path}: could not create or patch")

    async def scale(self, namespace: str, name: str, replicas: int) -> None:
        """Set a Deployment's replicas (its pod template is left alone).

        A write whose answer is lost (a time-out, a reset, a 5xx of a proxy) may have
        landed: the Deployment is read back, and one at ``replicas`` is scaled, not a
        failure whose cool-down, Event and status would then be missing.
        """
        path = _collection_path("apps/v1", "deployments", namespace) + f"/{name}"
        try:
            await self.merge_patch(path, {"spec": {"replicas": replicas}}, want_body=False)
        except ApiError as exc:
            if exc.status != 0 and exc.status < 500:
                raise
            try:
                found = await self.request("GET", path, socket_timeouts=_READ_BACK_TIMEOUT)
            except ApiError:
                raise exc from None
            if ((found or {}).get("spec") or {}).get("replicas") != replicas:
                raise

    async def patch_status(
        self, api_version: str, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        path = _collection_path(api_version, plural, namespace) + f"/{name}/status"
        await self.merge_patch(path, {"status": dict(status)}, want_body=False)

    async def annotate(
        self,
        api_version: str,
        plural: str,
        namespace: str,
        name: str,
        annotations: Mapping[str, str | None],
    ) -> None:
        """Set annotations (a None value removes the annotation: a merge patch's null)."""
        path = _collection_path(api_version, plural, namespace) + f"/{name}"
        await self.merge_patch(path, {"metadata": {"annotations": annotations}}, want_body=False)


def _keep_other_owners(patch: dict[str, Any], current: Mapping[str, Any]) -> None:
    """Keep in ``patch`` the owner references others added to ``current``.

    A merge patch replaces a list whole: the rendered references alone would drop
    another's (a non-controller owner that a tool adds), at every refresh, against a
    tool that adds it back. Theirs are kept where they are, ours set as rendered.
    """
    meta = patch.get("metadata")
    if not isinstance(meta, dict):
        return
    ours = meta.get("ownerReferences")
    theirs = (current.get("metadata") or {}).get("ownerReferences")
    if not isinstance(ours, list) or not isinstance(theirs, list):
        return
    by_uid = {ref.get("uid"): ref for ref in ours if isinstance(ref, dict)}
    merged: list[Any] = []
    for ref in theirs:
        uid = ref.get("uid") if isinstance(ref, dict) else None
        if uid in by_uid:
            merged.append(by_uid.pop(uid))
        elif isinstance(ref, dict) and not ref.get("controller"):
            merged.append(ref)
    merged += by_uid.values()
    if merged != ours:
        patch["metadata"] = {**meta, "ownerReferences": merged}


def _without(obj: Mapping[str, Any], omit: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(obj))
    for field in omit:
        node: Any = copy
        for key in field[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(field[-1], None)
    return copy


def key_skeleton(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """``manifest``'s maps, at every depth, with every other value replaced by 0.

    A list of maps is kept as the list of its elements' skeletons. A merge
    patch replaces a list whole, so :func:`with_removals` needs none of it;
    but :func:`holds` compares list elements only on the keys a patch names,
    and an element that lost a key (a container's limits no longer asked for)
    would pass for unchanged: its skeleton changes the record, which forces
    the write.
    """
    return {key: _skeleton_of(value) for key, value in manifest.items()}


def _skeleton_of(value: Any) -> Any:
    if isinstance(value, Mapping):
        return key_skeleton(value)
    if isinstance(value, list) and any(isinstance(item, Mapping) for item in value):
        return [_skeleton_of(item) for item in value]
    return 0


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def applied_keys(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The keys recorded in ``obj``'s :data:`APPLIED_KEYS_ANNOTATION` ({} if none), or the
    whole manifest of the older record: :func:`with_removals` reads either."""
    annotations = _annotations(obj)
    raw = annotations.get(APPLIED_KEYS_ANNOTATION) or annotations.get(_WHOLE_MANIFEST_ANNOTATION)
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


#: Keys whose values (or, for maps, whose entries' values) are resource quantities.
_QUANTITY_KEYS = frozenset({"requests", "limits", "sizeLimit"})


def holds(current: Any, patch: Any, *, quantities: bool = False) -> bool:
    """Whether merge-patching ``current`` with ``patch`` would change nothing.

    The API server adds defaults to what it stores (a container's
    ``terminationMessagePath``, ...): keys the patch does not name are not
    compared, inside lists of objects too, element by element. And it stores
    a quantity in its canonical form (``0.5`` as ``500m``, ``2048Mi`` as
    ``2Gi``): requests, limits and size limits are compared as amounts.
    """
    if isinstance(patch, Mapping):
        if not isinstance(current, Mapping):
            return False
        return all(
            key not in current
            if value is None
            else key in current
            and holds(current[key], value, quantities=quantities or key in _QUANTITY_KEYS)
            for key, value in patch.items()
        )
    if isinstance(patch, list):
        return (
            isinstance(current, list)
            and len(current) == len(patch)
            and all(holds(c, p) for c, p in zip(current, patch, strict=True))
        )
    if quantities and isinstance(current, str) and isinstance(patch, str) and current != patch:
        try:
            return quantity_value(current) == quantity_value(patch)
        except ValueError:
            return False
    return bool(current == patch)


def with_removals(desired: Mapping[str, Any], last: Mapping[str, Any]) -> dict[str, Any]:
    """``desired`` plus a null (merge-patch deletion) for each key of ``last`` it lacks
    (``last``: a manifest or its :func:`key_skeleton`).

    Maps are compared key by key, at every depth; lists are replaced whole by
    a merge patch anyway.
    """
    out = dict(desired)
    for key, old in last.items():
        if key not in desired:
            out[key] = None
        elif isinstance(old, Mapping) and isinstance(desired[key], Mapping):
            out[key] = with_removals(desired[key], old)
    return out
