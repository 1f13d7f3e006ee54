"""The object store: one generic implementation of Kubernetes object semantics for every kind.

What it keeps faithful, because operators depend on it: a global monotonically increasing
resourceVersion; optimistic concurrency (409 on a stale resourceVersion; a PUT without one is 422
for the kinds whose strategy forbids unconditional updates: custom resources, CRDs, Services; 409
when the body's uid is not the stored object's; 500 for a create that sets one); no-op writes that
do not bump the resourceVersion nor emit events; ``generation`` bumped only by changes outside
metadata (and outside status for kinds with a status subresource); status/scale subresource
isolation; finalizers with ``deletionTimestamp``; garbage collection by owner reference as the
real collector does it (below); namespace deletion deleting the namespace's content, and 403 for
new objects in a namespace being terminated; CRD deletion likewise (Terminating, its resources
deleted first, 405 for new ones); an event history from which watches resume at any
resourceVersion still in it (older ones get 410 Expired); CRD objects registering their kinds live.

Garbage collection: an owner reference names its owner by apiVersion, kind, name and uid; the
owner exists if an object of that kind and name, in the dependent's namespace (or cluster-scoped),
has that uid. A dependent goes once none of its owners exists: when its last owner is deleted
(synchronously, so a delete is complete when it returns) or soon after it is written with owners
that all do not exist (on the next turn of the event loop, as a real collector would after a few
milliseconds). A dependent that keeps an owner loses the references to the missing ones. A
reference to a kind the server does not serve, or from a cluster-scoped dependent to a namespaced
owner, cannot be resolved and holds the dependent forever, as on a real cluster. ``Orphan``
strips the references instead; ``Foreground`` is treated like background.

Owner references are also an authorization matter: the OwnerReferencesPermissionEnforcement
admission plugin (on by default on OpenShift) asks, for a write that changes them, whether the
writer may delete the object (not on a create), and for each reference newly blocking its
owner's deletion (``blockOwnerDeletion``), whether the writer may update the owner's
``finalizers`` subresource. Nothing is enforced here (there is no authorizer), but ``create`` and
``update`` report those checks, dry runs included, to an ``authorize`` callback, so a client's
RBAC can be compared with what a cluster running the plugin would ask of it.

All methods are synchronous and run on the server's event loop, so every write and the delivery of
its watch event to every subscribed watch happen atomically: no event can be lost between a list
and a watch, or between a watch's replay and its live stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
import secrets
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import builtins, errors, schema
from .errors import APIError
from .recording import OWNER_REFERENCES_PLUGIN, RecordedRequest
from .resources import BUILTIN_KINDS, ResourceKind, kinds_from_crd
from .selectors import Predicate, is_label_key, is_label_value, selector_to_string

_CRD_KEY = ("apiextensions.k8s.io", "customresourcedefinitions")
#: The finalizer a CRD's deletion adds: its resources go first, then it does.
CRD_CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
_NAMESPACE_KEY = ("", "namespaces")
# Used with fullmatch: Go's ``$`` is the end of the text, Python's also matches before a final
# newline, and "abc\n" is no valid name.
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
#: A Service's name: a DNS label that starts with a letter (RFC 1035), as it names a DNS record.
_DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
#: Names by kind (apimachinery's validation messages): a Namespace's is a DNS label, a
#: Service's one that starts with a letter, every other kind's a DNS subdomain.
_NAME_RULES = {
    "namespaces": (
        _DNS_LABEL,
        63,
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
        "'-', and must start and end with an alphanumeric character",
    ),
    "services": (
        _DNS_1035_LABEL,
        63,
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start "
        "with an alphabetic character, and end with an alphanumeric character",
    ),
    "": (
        _SUBDOMAIN,
        253,
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
        "'-' or '.', and must start and end with an alphanumeric character",
    ),
}
#: Metadata a real server does not keep empty (Go's omitempty drops them when it stores).
_OMITTED_WHEN_EMPTY = ("finalizers", "labels", "annotations", "ownerReferences")
_SYSTEM_FIELDS = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds")

StoreKey = tuple[str, str]  # (group, plural): every served version shares one storage
ObjectKey = tuple[str, str]  # (namespace or "", name)
Authorize = Callable[[RecordedRequest], None]  # told each check admission makes for a write


def now_timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class StoredEvent:
    """One change in the history; ``old`` is the previous state of a modified object."""

    resource_version: int
    key: StoreKey
    type: str
    obj: dict[str, Any]
    old: dict[str, Any] | None = None


@dataclass(eq=False)
class Watch:
    """One watch connection's filter and queue (``None`` in the queue ends the stream)."""

    key: StoreKey
    namespace: str | None
    labels: Predicate
    fields: Predicate
    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = field(default_factory=asyncio.Queue)

    def _matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        return self.labels(obj) and self.fields(obj)

    def offer(self, event: StoredEvent) -> None:
        if event.key != self.key:
            return
        new_ok, old_ok = self._matches(event.obj), self._matches(event.old)
        kind, obj = event.type, event.obj
        if kind == "MODIFIED" and new_ok != old_ok:
            # Selector semantics: entering the selection is ADDED, leaving it is DELETED, and
            # (as the watch cache sends it) of the object as it was, at the new resourceVersion.
            kind = "ADDED" if new_ok else "DELETED"
            if not new_ok and event.old is not None:
                rv = event.obj["metadata"]["resourceVersion"]
                obj = {**event.old, "metadata": {**event.old["metadata"], "resourceVersion": rv}}
        elif not new_ok:
            return
        self.queue.put_nowait((kind, obj))


_METADATA_TYPES: dict[str, type] = {
    "name": str, "generateName": str, "namespace": str, "resourceVersion": str, "uid": str,
    "labels": dict, "annotations": dict, "finalizers": list, "ownerReferences": list,
}  # fmt: skip
_OWNER_FIELDS = ("apiVersion", "kind", "name", "uid")


def _check_metadata_types(metadata: Any) -> dict[str, Any]:
    """Reject what a real server cannot even decode into ObjectMeta (400, not 422)."""
    if not isinstance(metadata, dict):
        raise errors.bad_request("metadata must be an object")
    for field_name, expected in _METADATA_TYPES.items():
        value = metadata.get(field_name)
        if value is not None and not isinstance(value, expected):
            raise errors.bad_request(
                f"metadata.{field_name}: expected {expected.__name__}, got {type(value).__name__}"
            )
    for field_name in ("labels", "annotations"):
        for key, value in (metadata.get(field_name) or {}).items():
            if not isinstance(value, str):
                raise errors.bad_request(f"metadata.{field_name}.{key}: expected a string")
    if not all(isinstance(item, str) for item in metadata.get("finalizers") or []):
        raise errors.bad_request("metadata.finalizers: expected a list of strings")
    for ref in metadata.get("ownerReferences") or []:
        if not isinstance(ref, dict) or not all(isinstance(ref.get(f), str) for f in _OWNER_FIELDS):
            raise errors.bad_request(
                "metadata.ownerReferences: each needs apiVersion, kind, name and uid strings"
            )
    return metadata


def _path_parts(path: str) -> list[str]:
    return [part for part in path.strip(".").split(".") if part]


def _dig(obj: dict[str, Any], path: str) -> Any:
    value: Any = obj
    for part in _path_parts(path):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _spec_view(kind: ResourceKind, obj: dict[str, Any]) -> dict[str, Any]:
    """The part of an object whose changes bump ``generation`` (a Deployment's
    annotations too, as the apps strategy's PrepareForUpdate compares them)."""
    skipped = {"metadata", "apiVersion", "kind"} | ({"status"} if kind.status else set())
    view = {k: v for k, v in obj.items() if k not in skipped}
    if (kind.group, kind.plural) == ("apps", "deployments"):
        view["metadata.annotations"] = (obj.get("metadata") or {}).get("annotations") or {}
    return view


def _drop_empty(metadata: dict[str, Any]) -> None:
    for key in _OMITTED_WHEN_EMPTY:
        if metadata.get(key) in ([], {}):
            del metadata[key]


def _without_rv(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = {k: v for k, v in obj.get("metadata", {}).items() if k != "resourceVersion"}
    return {**obj, "metadata": metadata, "apiVersion": None}


class Store:
    """Objects of every kind, their history and the live watches."""

    def __init__(
        self,
        *,
        history_limit: int = 10_000,
        require_namespaces: bool = True,
        validate_builtins: bool = False,
    ) -> None:
        self._validate_builtins = validate_builtins
        self.kinds: dict[tuple[str, str, str], ResourceKind] = {}
        self._objects: dict[StoreKey, dict[ObjectKey, dict[str, Any]]] = {}
        self._history: deque[StoredEvent] = deque()
        self._history_limit = history_limit
        self._expired_rv = 0  # the newest resourceVersion dropped from the history
        self._watches: set[Watch] = set()
        self._orphaning: set[str] = set()  # uids deleted with propagationPolicy=Orphan
        self._owned: dict[str, set[tuple[StoreKey, ObjectKey]]] = {}  # owner uid → dependents
        self._gc_pending: set[tuple[StoreKey, ObjectKey]] = set()  # written with owners
        self._gc_scheduled = False
        self._require_namespaces = require_namespaces
        self.resource_version = 0
        for kind in BUILTIN_KINDS:
            self.kinds[(kind.group, kind.version, kind.plural)] = kind
        for namespace in ("default", "kube-system", "kube-public"):
            self.create(self.kind("", "v1", "namespaces"), None, {"metadata": {"name": namespace}})

    # -- kinds ------------------------------------------------------------------------------

    def kind(self, group: str, version: str, plural: str) -> ResourceKind:
        found = self.kinds.get((group, version, plural))
        if found is None:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        return found

    def _register_crd(self, crd: dict[str, Any]) -> None:
        """Serve the CRD's served versions, and no longer those an update dropped."""
        served = {(kind.group, kind.version, kind.plural): kind for kind in kinds_from_crd(crd)}
        spec = crd["spec"]
        group, plural = spec["group"], spec["names"]["plural"]
        for key in [key for key in self.kinds if (key[0], key[2]) == (group, plural)]:
            if key not in served:
                del self.kinds[key]
        self.kinds.update(served)

    def _unregister_crd(self, crd: dict[str, Any]) -> None:
        group, plural = _crd_resources(crd)
        for key in [key for key in self.kinds if key[0] == group and key[2] == plural]:
            del self.kinds[key]
        for _, obj in list(self._objects.get((group, plural), {}).items()):
            self._remove((group, plural), obj, cascade=True)

    # -- reading ----------------------------------------------------------------------------

    def _bucket(self, kind: ResourceKind) -> dict[ObjectKey, dict[str, Any]]:
        return self._objects.setdefault((kind.group, kind.plural), {})

    def _stored(self, kind: ResourceKind, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self._bucket(kind).get((namespace or "", name))
        if obj is None:
            raise errors.not_found(kind, name)
        return obj

    def get(self, kind: ResourceKind, namespace: str | None, name: str) -> dict[str, Any]:
        return self.serve(kind, self._stored(kind, namespace, name))

    @staticmethod
    def serve(kind: ResourceKind, obj: dict[str, Any]) -> dict[str, Any]:
        """The object as seen through one served version (no conversion: same fields)."""
        return {**obj, "apiVersion": kind.api_version, "kind": kind.kind}

    def list_objects(
        self, kind: ResourceKind, namespace: str | None, match: Callable[[dict[str, Any]], bool]
    ) -> list[dict[str, Any]]:
        bucket = self._bucket(kind)
        return [
            self.serve(kind, bucket[key])
            for key in sorted(bucket)
            if (namespace is None or key[0] == namespace) and match(bucket[key])
        ]

    # -- watching ---------------------------------------------------------------------------

    def watch(self, watch: Watch, since: int | None) -> None:
        """Subscribe; replay the history after ``since`` or, if None, the current objects."""
        if since is None:
            for obj in self._bucket_by_key(watch.key).values():
                watch.offer(StoredEvent(0, watch.key, "ADDED", obj))
        else:
            if since < self._expired_rv:
                raise APIError(
                    410, "Expired", f"too old resource version: {since} ({self._expired_rv + 1})"
                )
            for event in self._history:
                if event.resource_version > since:
                    watch.offer(event)
        self._watches.add(watch)

    def unwatch(self, watch: Watch) -> None:
        self._watches.discard(watch)

    def close_watches(self) -> None:
        for watch in self._watches:
            watch.queue.put_nowait(None)
        self._watches.clear()

    def _bucket_by_key(self, key: StoreKey) -> dict[ObjectKey, dict[str, Any]]:
        return self._objects.setdefault(key, {})

    def _emit(
        self, key: StoreKey, kind: str, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        event = StoredEvent(self.resource_version, key, kind, obj, old)
        self._history.append(event)
        while len(self._history) > self._history_limit:
            self._expired_rv = self._history.popleft().resource_version
        for watch in list(self._watches):
            watch.offer(event)

    def compact(self) -> None:
        """Forget the whole history, as etcd compaction does: older watches get 410."""
        self._expired_rv = self.resource_version
        self._history.clear()

    def _next_rv(self) -> str:
        self.resource_version += 1
        return str(self.resource_version)

    # -- validation -------------------------------------------------------------------------

    def _check_metadata(self, kind: ResourceKind, obj: dict[str, Any]) -> list[dict[str, str]]:
        metadata, causes = obj["metadata"], []
        name = metadata.get("name", "")
        pattern, limit, rule = _NAME_RULES.get(kind.plural, _NAME_RULES[""])
        if not pattern.fullmatch(name) or len(name) > limit:
            causes.append(
                {
                    "reason": "FieldValueInvalid",
                    "field": "metadata.name",
                    "message": f'Invalid value: "{name}": {rule}',
                }
            )
        for key, value in (metadata.get("labels") or {}).items():
            if not is_label_key(key):
                causes.append(
                    {
                        "reason": "FieldValueInvalid",
                        "field": "metadata.labels",
                        "message": f'Invalid value: "{key}": a label key must be a valid label '
                        "name with an optional DNS subdomain prefix and '/'",
                    }
                )
            if not isinstance(value, str) or not is_label_value(value):
                causes.append(
                    {
                        "reason": "FieldValueInvalid",
                        "field": "metadata.labels",
                        "message": f'Invalid value: "{value}": a valid label must be an '
                        "empty string or consist of alphanumeric characters, '-', '_' or '.', "
                        "at most 63 characters",
                    }
                )
        return causes

    def _admit(
        self,
        kind: ResourceKind,
        obj: dict[str, Any],
        old: dict[str, Any] | None,
        field_validation: str,
    ) -> list[str]:
        """Pruning, defaults and validation of a new state; returns warnings.

        Raises 400 for unknown fields under ``fieldValidation=Strict`` (the real server's decoder
        refuses them before anything is validated) and 422 for invalid objects.
        """
        name = obj["metadata"].get("name", "")
        warnings: list[str] = []
        if kind.schema is not None:
            dropped = schema.prune(kind.schema, obj)
            if dropped and field_validation == "Strict":
                raise errors.bad_request(
                    "strict decoding error: "
                    + ", ".join(f'unknown field "{path}"' for path in dropped)
                )
            if field_validation == "Warn":
                warnings += [f'unknown field "{path}"' for path in dropped]
            schema.prune_nulls(kind.schema, obj)
            schema.apply_defaults(kind.schema, obj)
            schema.prune(kind.schema, obj)  # what a default brought in that the schema lacks
            schema.whole_numbers(kind.schema, obj)
        if not kind.custom:
            builtins.canonicalize_quantities(kind, obj)
        causes = self._check_metadata(kind, obj)
        if kind.schema is not None:
            causes += [cause.to_dict() for cause in schema.validate(kind.schema, obj, old)]
        if not kind.custom:
            causes += builtins.check_workload(kind, obj)
            causes += builtins.check_pod_spec(kind, obj)
            if old is not None:
                causes += builtins.check_immutable(kind, obj, old)
            if self._validate_builtins and not causes:
                causes += builtins.check_schema(kind, obj, field_validation == "Strict")
        if (kind.group, kind.plural) == _CRD_KEY:
            causes += _check_crd(obj)
        if causes:
            raise errors.invalid(kind, name, causes)
        return warnings

    def _authorize_owner_references(
        self,
        kind: ResourceKind,
        new: dict[str, Any],
        old: dict[str, Any] | None,
        authorize: Authorize | None,
    ) -> None:
        """Report the checks OwnerReferencesPermissionEnforcement makes for a validated write
        (kubernetes plugin/pkg/admission/gc/gc_admission.go), in its order. Only writes of the
        object itself can change its references: a status write keeps the stored metadata (and
        the plugin exempts pods/status anyway)."""
        if authorize is None:
            return
        refs = new["metadata"].get("ownerReferences") or []
        old_refs = (old or {}).get("metadata", {}).get("ownerReferences") or []
        if refs == old_refs:  # a create with none, or an update leaving them as they were
            return
        namespace, name = new["metadata"].get("namespace"), new["metadata"]["name"]
        if old is not None:  # "cannot set an ownerRef on a resource you can't delete"
            authorize(
                RecordedRequest(
                    "delete", kind.group, kind.version, kind.plural, "", namespace, name,
                    admission=OWNER_REFERENCES_PLUGIN,
                )
            )  # fmt: skip
        blocking_before = {
            ref.get("uid") for ref in old_refs if ref.get("blockOwnerDeletion") is True
        }
        for ref in refs:
            if ref.get("blockOwnerDeletion") is not True or ref.get("uid") in blocking_before:
                continue
            owner = self._referenced_kind(ref)
            if owner is None:  # no REST mapping: a real server refuses; nothing to record
                continue
            authorize(
                RecordedRequest(
                    "update", owner.group, owner.version, owner.plural, "finalizers",
                    namespace if owner.namespaced else None, str(ref.get("name", "")),
                    admission=OWNER_REFERENCES_PLUGIN,
                )
            )  # fmt: skip

    # -- writing ----------------------------------------------------------------------------

    def _check_namespace(self, kind: ResourceKind, namespace: str | None, name: str) -> None:
        """The NamespaceLifecycle admission: 404 for a missing namespace, 403 while it is being
        terminated (its content is going away; nothing new may join it)."""
        if not kind.namespaced or not self._require_namespaces:
            return
        found = self._bucket_by_key(_NAMESPACE_KEY).get(("", namespace or ""))
        if found is None:
            raise errors.not_found(self.kind("", "v1", "namespaces"), namespace or "")
        if "deletionTimestamp" in found["metadata"]:
            raise errors.namespace_terminating(kind, name, namespace or "")

    def create(
        self,
        kind: ResourceKind,
        namespace: str | None,
        body: Any,
        *,
        dry_run: bool = False,
        field_validation: str = "Warn",
        authorize: Authorize | None = None,
    ) -> tuple[dict[str, Any], list[str]]:
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        if self._terminating_crd((kind.group, kind.plural)) is not None:
            raise errors.crd_terminating(kind)
        obj = copy.deepcopy(body)
        metadata = _check_metadata_types(obj.setdefault("metadata", {}))
        if obj.get("kind") not in (None, kind.kind) or obj.get("apiVersion") not in (
            None,
            kind.api_version,
        ):
            raise errors.bad_request(
                f"the API version in the data ({obj.get('apiVersion')}) and kind "
                f"({obj.get('kind')}) do not match {kind.api_version} {kind.kind}"
            )
        if kind.namespaced:
            if metadata.get("namespace") not in (None, "", namespace):
                raise errors.bad_request(
                    "the namespace of the provided object does not match "
                    "the namespace sent on the request"
                )
            metadata["namespace"] = namespace
            self._check_namespace(kind, namespace, metadata.get("name") or "")
        else:
            metadata.pop("namespace", None)
        if not metadata.get("name") and metadata.get("generateName"):
            alphabet = "bcdfghjklmnpqrstvwxz2456789"
            metadata["name"] = metadata["generateName"] + "".join(
                secrets.choice(alphabet) for _ in range(5)
            )
        if not metadata.get("name"):
            raise errors.invalid(
                kind,
                "",
                [
                    {
                        "reason": "FieldValueRequired",
                        "field": "metadata.name",
                        "message": "Required value: name or generateName is required",
                    }
                ],
            )
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        if kind.status:
            obj.pop("status", None)  # status is written through the subresource only
        requested_rv = metadata.get("resourceVersion")
        for system_field in (*_SYSTEM_FIELDS, "resourceVersion", "generation"):
            metadata.pop(system_field, None)
        _drop_empty(metadata)
        warnings = self._admit(kind, obj, None, field_validation)
        self._authorize_owner_references(kind, obj, None, authorize)
        if (kind.group, kind.plural) == _CRD_KEY:
            obj["status"] = _crd_status(obj)
        if not dry_run and _parses_as_version(requested_rv):
            # The storage layer's refusal, unclassified (no reason) and 500 on a real server; a
            # dry run never reaches it. A non-numeric or zero resourceVersion is ignored there.
            raise APIError(500, "", "resourceVersion should not be set on objects to be created")
        key = (metadata.get("namespace") or "", metadata["name"])
        if key in self._bucket(kind):
            raise errors.already_exists(kind, metadata["name"])
        metadata.update(uid=str(uuid.uuid4()), creationTimestamp=now_timestamp(), generation=1)
        if kind.plural == "namespaces":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
        if dry_run:
            metadata["resourceVersion"] = str(self.resource_version)
            return self.serve(kind, obj), warnings
        metadata["resourceVersion"] = self._next_rv()
        self._put((kind.group, kind.plural), key, obj)
        if (kind.group, kind.plural) == _CRD_KEY:
            self._register_crd(obj)
        self._emit((kind.group, kind.plural), "ADDED", obj, None)
        return self.serve(kind, obj), warnings

    def update(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str = "",
        dry_run: bool = False,
        field_validation: str = "Warn",
        patch: bool = False,
        authorize: Authorize | None = None,
    ) -> tuple[dict[str, Any], list[str]]:
        """PUT semantics (also the last step of every PATCH, with ``patch``)."""
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise errors.bad_request("the request body must be a JSON object with metadata")
        _check_metadata_types(body.get("metadata", {}))
        old = self._stored(kind, namespace, name)
        body_name = body.get("metadata", {}).get("name")
        if body_name not in (None, name):
            raise errors.bad_request(
                f"the name of the object ({body_name}) does not match the name on the URL ({name})"
            )
        if kind.namespaced and body.get("metadata", {}).get("namespace") not in (
            None,
            "",
            namespace,
        ):
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        body_uid, old_uid = body.get("metadata", {}).get("uid"), old["metadata"]["uid"]
        if body_uid not in (None, "") and body_uid != old_uid:
            if not patch:  # a PUT's uid is a precondition, checked by the storage layer first
                raise errors.precondition_failed(kind, namespace, name, "UID", body_uid, old_uid)
            raise errors.invalid(kind, name, [{"reason": "FieldValueInvalid",
                                               "field": "metadata.uid",
                                               "message": f'Invalid value: "{body_uid}": '
                                               "field is immutable"}])  # fmt: skip
        expected_rv = body.get("metadata", {}).get("resourceVersion")
        if expected_rv in (None, ""):
            if not kind.unconditional_update:
                raise errors.invalid(kind, name, [{"reason": "FieldValueInvalid",
                                                   "field": "metadata.resourceVersion",
                                                   "message": "Invalid value: 0x0: must be "
                                                   "specified for an update"}],
                                     as_kind=kind.plural)  # fmt: skip
        elif expected_rv != old["metadata"]["resourceVersion"]:
            raise errors.conflict(kind, name)
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in body:
                new["status"] = copy.deepcopy(body["status"])
            else:
                new.pop("status", None)
        else:
            new = copy.deepcopy(body)
            new["metadata"] = copy.deepcopy(body.get("metadata") or {})
            if kind.status:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
        new["apiVersion"], new["kind"] = kind.api_version, kind.kind
        metadata = new["metadata"]
        metadata["name"] = name
        if kind.namespaced:
            metadata["namespace"] = namespace
        else:
            metadata.pop("namespace", None)
        for system_field in _SYSTEM_FIELDS:
            metadata.pop(system_field, None)
            if system_field in old["metadata"]:
                metadata[system_field] = old["metadata"][system_field]
        _drop_empty(metadata)
        metadata["generation"] = old["metadata"].get("generation", 1)
        metadata["resourceVersion"] = old["metadata"]["resourceVersion"]
        if "deletionTimestamp" in old["metadata"]:
            added = set(metadata.get("finalizers") or []) - set(
                old["metadata"].get("finalizers") or []
            )
            if added:
                raise errors.invalid(
                    kind,
                    name,
                    [
                        {
                            "reason": "FieldValueForbidden",
                            "field": "metadata.finalizers",
                            "message": "Forbidden: no new finalizers can be added if the object is "
                            f"being deleted, found new finalizers {sorted(added)}",
                        }
                    ],
                )
        warnings = self._admit(kind, new, old, field_validation)
        self._authorize_owner_references(kind, new, old, authorize)
        if (kind.group, kind.plural) == _CRD_KEY:
            new["status"] = _crd_status(new)
        if _spec_view(kind, new) != _spec_view(kind, old):
            metadata["generation"] = metadata["generation"] + 1
        if _without_rv(new) == _without_rv(old) or dry_run:
            return self.serve(kind, new if dry_run else old), warnings
        self._put((kind.group, kind.plural), (namespace or "", name), new)
        if "deletionTimestamp" in metadata and not metadata.get("finalizers"):
            # The last finalizer is gone: the object goes away with this write (one DELETED
            # event carrying the final state, as a real API server sends).
            cascade = metadata["uid"] not in self._orphaning
            self._remove((kind.group, kind.plural), new, cascade=cascade)
            return self.serve(kind, new), warnings
        metadata["resourceVersion"] = self._next_rv()
        if (kind.group, kind.plural) == _CRD_KEY:
            self._register_crd(new)
        self._emit((kind.group, kind.plural), "MODIFIED", new, old)
        return self.serve(kind, new), warnings

    # -- scale ------------------------------------------------------------------------------

    def get_scale(self, kind: ResourceKind, namespace: str | None, name: str) -> dict[str, Any]:
        return _scale(kind, self._stored(kind, namespace, name))

    def update_scale(
        self, kind: ResourceKind, namespace: str | None, name: str, scale: Any, *, dry_run: bool
    ) -> dict[str, Any]:
        _check_scale_types(scale)
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise errors.invalid(
                kind,
                name,
                [
                    {
                        "reason": "FieldValueInvalid",
                        "field": "spec.replicas",
                        "message": f"Invalid value: {replicas}: must be greater than or equal to 0",
                    }
                ],
            )
        obj = copy.deepcopy(self._stored(kind, namespace, name))
        scale_meta = scale.get("metadata") or {}
        expected_uid, uid = scale_meta.get("uid"), obj["metadata"]["uid"]
        if expected_uid not in (None, "") and expected_uid != uid:
            raise errors.precondition_failed(kind, namespace, name, "UID", expected_uid, uid)
        expected_rv = scale_meta.get("resourceVersion")
        if expected_rv not in (None, "") and expected_rv != obj["metadata"]["resourceVersion"]:
            raise errors.conflict(kind, name)
        assert kind.scale is not None
        node = obj
        *parents, last = _path_parts(kind.scale.spec_replicas)
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = replicas
        updated, _ = self.update(kind, namespace, name, obj, dry_run=dry_run)
        # A dry run answers the Scale the write would have produced, never the whole object.
        return _scale(kind, updated) if dry_run else self.get_scale(kind, namespace, name)

    # -- deleting ---------------------------------------------------------------------------

    def delete(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        preconditions: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        obj = self._stored(kind, namespace, name)
        metadata = obj["metadata"]
        for field_name, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            expected = (preconditions or {}).get(field_name)
            if expected not in (None, "") and expected != metadata.get(field_name):
                raise errors.precondition_failed(
                    kind, namespace, name, label, expected, metadata.get(field_name, "")
                )
        if dry_run:
            return self.serve(kind, obj)
        if propagation == "Orphan":
            self._orphaning.add(metadata["uid"])
            self._orphan_dependents(metadata["uid"])
        if kind.plural == "namespaces":
            return self._delete_namespace(kind, obj)
        if (kind.group, kind.plural) == _CRD_KEY:
            return self._delete_crd(kind, obj)
        if metadata.get("finalizers"):
            if "deletionTimestamp" not in metadata:
                new = copy.deepcopy(obj)
                new["metadata"].update(
                    deletionTimestamp=now_timestamp(),
                    deletionGracePeriodSeconds=0,
                    generation=metadata.get("generation", 1) + 1,
                    resourceVersion=self._next_rv(),
                )
                self._put((kind.group, kind.plural), (namespace or "", name), new)
                self._emit((kind.group, kind.plural), "MODIFIED", new, obj)
                obj = new
            return self.serve(kind, obj)
        self._remove((kind.group, kind.plural), obj, cascade=propagation != "Orphan")
        return _success(kind, obj)

    def _delete_namespace(self, kind: ResourceKind, obj: dict[str, Any]) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        if "deletionTimestamp" not in obj["metadata"]:
            new = copy.deepcopy(obj)
            new["metadata"].update(
                deletionTimestamp=now_timestamp(), resourceVersion=self._next_rv()
            )
            new["status"] = {"phase": "Terminating"}
            self._put(_NAMESPACE_KEY, ("", name), new)
            self._emit(_NAMESPACE_KEY, "MODIFIED", new, obj)
            obj = new
            for key, bucket in list(self._objects.items()):
                resource = next(
                    (k for k in self.kinds.values() if (k.group, k.plural) == key), None
                )
                for (namespace, item_name), _ in list(bucket.items()):
                    if (
                        namespace == name
                        and resource is not None
                        and (namespace, item_name) in bucket
                    ):
                        self.delete(resource, namespace, item_name)
        self._finish_namespace(name)
        return self.serve(kind, obj)

    def _delete_crd(self, kind: ResourceKind, obj: dict[str, Any]) -> dict[str, Any]:
        """A CRD's deletion as the real server makes it: marked Terminating with its cleanup
        finalizer, which goes once every resource of the CRD is gone (each deleted, so those
        with finalizers of their own hold it until those are removed). No resource of it may
        be created meanwhile."""
        metadata = obj["metadata"]
        if "deletionTimestamp" not in metadata:
            new = copy.deepcopy(obj)
            finalizers = new["metadata"].setdefault("finalizers", [])
            if CRD_CLEANUP_FINALIZER not in finalizers:
                finalizers.append(CRD_CLEANUP_FINALIZER)
            new["metadata"].update(
                deletionTimestamp=now_timestamp(),
                deletionGracePeriodSeconds=0,
                resourceVersion=self._next_rv(),
            )
            new["status"] = _crd_status(new)
            self._put(_CRD_KEY, ("", metadata["name"]), new)
            self._emit(_CRD_KEY, "MODIFIED", new, obj)
            obj = new
            key = _crd_resources(obj)
            resource, bucket = self._kind_for(key), self._bucket_by_key(key)
            # Each deletion may cascade to others of the bucket: those gone are skipped.
            for namespace, name in list(bucket) if resource is not None else []:
                if (namespace, name) in bucket:
                    self.delete(resource, namespace or None, name)
            self._finish_crd(key)
        return self.serve(kind, self._bucket_by_key(_CRD_KEY).get(("", metadata["name"]), obj))

    def _terminating_crd(self, key: StoreKey) -> dict[str, Any] | None:
        """The CRD serving ``key`` if it is being deleted."""
        crds = self._objects.get(_CRD_KEY, {})
        crd = crds.get(("", f"{key[1]}.{key[0]}")) if key[0] else None
        return crd if crd is not None and "deletionTimestamp" in crd["metadata"] else None

    def _finish_crd(self, key: StoreKey) -> None:
        """Drop a terminating CRD's cleanup finalizer once the last of its resources is gone."""
        crd = self._terminating_crd(key)
        if crd is None or self._objects.get(key):
            return
        finalizers = crd["metadata"].get("finalizers") or []
        if CRD_CLEANUP_FINALIZER not in finalizers:
            return
        new = copy.deepcopy(crd)
        new["metadata"]["finalizers"] = [f for f in finalizers if f != CRD_CLEANUP_FINALIZER]
        if new["metadata"]["finalizers"]:
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._put(_CRD_KEY, ("", crd["metadata"]["name"]), new)
            self._emit(_CRD_KEY, "MODIFIED", new, crd)
            return
        del new["metadata"]["finalizers"]
        self._put(_CRD_KEY, ("", crd["metadata"]["name"]), new)
        self._remove(_CRD_KEY, new, cascade=True)

    def _finish_namespace(self, name: str) -> None:
        namespaces = self._bucket_by_key(_NAMESPACE_KEY)
        obj = namespaces.get(("", name))
        if obj is None or "deletionTimestamp" not in obj["metadata"]:
            return
        if any(key[0] == name for bucket in self._objects.values() for key in bucket):
            return
        self._remove(_NAMESPACE_KEY, obj, cascade=True)

    def _orphan_dependents(self, uid: str) -> None:
        for kind, obj in list(self._dependents(uid)):
            new = copy.deepcopy(obj)
            new["metadata"]["ownerReferences"] = [
                ref for ref in new["metadata"]["ownerReferences"] if ref.get("uid") != uid
            ]
            if not new["metadata"]["ownerReferences"]:
                del new["metadata"]["ownerReferences"]
            self.update(kind, obj["metadata"].get("namespace"), obj["metadata"]["name"], new)

    def _owners(self, obj: dict[str, Any] | None) -> set[str]:
        return {ref["uid"] for ref in (obj or {}).get("metadata", {}).get("ownerReferences") or []}

    def _put(self, key: StoreKey, object_key: ObjectKey, obj: dict[str, Any] | None) -> None:
        """Store (or, with None, drop) an object, keeping the owner index in step; an object
        written with new owner references is queued for the garbage collector's check."""
        bucket = self._bucket_by_key(key)
        old = bucket.pop(object_key, None)
        for uid in self._owners(old):
            self._owned.get(uid, set()).discard((key, object_key))
        if obj is not None:
            bucket[object_key] = obj
            for uid in self._owners(obj):
                self._owned.setdefault(uid, set()).add((key, object_key))
            refs = obj["metadata"].get("ownerReferences")
            if refs and refs != (old or {}).get("metadata", {}).get("ownerReferences"):
                self._gc_pending.add((key, object_key))
        if self._gc_pending:
            self._schedule_gc()

    def _kind_for(self, key: StoreKey) -> ResourceKind | None:
        return next((k for k in self.kinds.values() if (k.group, k.plural) == key), None)

    def _dependents(self, uid: str) -> Iterator[tuple[ResourceKind, dict[str, Any]]]:
        for key, object_key in sorted(self._owned.pop(uid, set())):
            obj = self._bucket_by_key(key).get(object_key)
            kind = self._kind_for(key)
            if obj is not None and kind is not None and uid in self._owners(obj):
                yield kind, obj

    # -- garbage collection -----------------------------------------------------------------

    def _schedule_gc(self) -> None:
        """Check the queued dependents on the next turn of the event loop (in the background,
        after the write that queued them has been answered). Without a running loop (setup
        code), they wait for the next write made on one, whatever it writes."""
        if self._gc_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._gc_scheduled = True
        loop.call_soon(self._collect_pending)

    def _collect_pending(self) -> None:
        self._gc_scheduled = False
        pending, self._gc_pending = self._gc_pending, set()
        for key, object_key in sorted(pending):
            obj, kind = self._bucket_by_key(key).get(object_key), self._kind_for(key)
            if obj is not None and kind is not None:
                self._collect(kind, obj)

    def _referenced_kind(self, ref: dict[str, Any]) -> ResourceKind | None:
        """The served kind an owner reference names (by apiVersion and kind), or None."""
        group, _, version = str(ref.get("apiVersion", "")).rpartition("/")
        return next(
            (
                k
                for k in self.kinds.values()
                if (k.group, k.version, k.kind) == (group, version, ref.get("kind"))
            ),
            None,
        )

    def _owner_state(self, ref: dict[str, Any], namespace: str) -> str:
        """``present``, ``absent`` or ``unresolvable``, as the real collector classifies an
        owner reference: it reads the owner by kind and name (in the dependent's namespace for
        a namespaced kind) and compares uids."""
        owner_kind = self._referenced_kind(ref)
        if owner_kind is None or (owner_kind.namespaced and not namespace):
            return "unresolvable"  # an unknown kind, or a namespaced owner of a cluster object
        owner = self._bucket(owner_kind).get(
            (namespace if owner_kind.namespaced else "", str(ref.get("name", "")))
        )
        present = owner is not None and owner["metadata"]["uid"] == ref.get("uid")
        return "present" if present else "absent"

    def _collect(self, kind: ResourceKind, obj: dict[str, Any]) -> None:
        """Delete a dependent none of whose owners exists; drop the references to the missing
        owners of one that still has one."""
        metadata = obj["metadata"]
        refs = metadata.get("ownerReferences") or []
        states = [self._owner_state(ref, metadata.get("namespace") or "") for ref in refs]
        if "absent" not in states or "unresolvable" in states:
            return
        namespace, name = metadata.get("namespace"), metadata["name"]
        # The collector's own writes: a refusal (the dependent changed meanwhile, say) is retried
        # by a real collector later and never reaches the client whose write triggered it.
        with contextlib.suppress(APIError):
            if "present" not in states:
                self.delete(kind, namespace, name)
                return
            new = copy.deepcopy(obj)
            new["metadata"]["ownerReferences"] = [
                ref for ref, state in zip(refs, states, strict=True) if state == "present"
            ]
            self.update(kind, namespace, name, new)

    def _remove(self, key: StoreKey, obj: dict[str, Any], *, cascade: bool) -> None:
        metadata = obj["metadata"]
        bucket = self._bucket_by_key(key)
        object_key = (metadata.get("namespace") or "", metadata["name"])
        if bucket.get(object_key) is not obj:
            return
        self._put(key, object_key, None)
        final = {**obj, "metadata": {**metadata, "resourceVersion": self._next_rv()}}
        self._emit(key, "DELETED", final, None)
        if key == _CRD_KEY:
            self._unregister_crd(obj)
        self._orphaning.discard(metadata["uid"])
        if cascade:
            for kind, dependent in list(self._dependents(metadata["uid"])):
                dep_meta = dependent["metadata"]
                if (
                    self._bucket(kind).get((dep_meta.get("namespace") or "", dep_meta["name"]))
                    is dependent
                ):
                    self._collect(kind, dependent)
        if metadata.get("namespace"):
            self._finish_namespace(metadata["namespace"])
        if key != _CRD_KEY:
            self._finish_crd(key)


def _crd_resources(crd: dict[str, Any]) -> StoreKey:
    """The store key of a CRD's resources: (group, plural)."""
    spec = crd.get("spec") or {}
    return spec.get("group", ""), (spec.get("names") or {}).get("plural", "")


def _scale(kind: ResourceKind, obj: dict[str, Any]) -> dict[str, Any]:
    """The autoscaling/v1 Scale of an object, from the kind's replica and selector paths."""
    paths = kind.scale
    assert paths is not None
    selector = _dig(obj, paths.label_selector) if paths.label_selector else None
    if isinstance(selector, dict):
        selector = selector_to_string(selector)
    status: dict[str, Any] = {"replicas": _dig(obj, paths.status_replicas) or 0}
    if selector:
        status["selector"] = selector
    metadata = obj["metadata"]
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: metadata[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in metadata
        },
        "spec": {"replicas": _dig(obj, paths.spec_replicas) or 0},
        "status": status,
    }


def _parses_as_version(value: Any) -> bool:
    """Whether the storage layer reads ``value`` as a set resourceVersion (a positive uint64)."""
    return (
        isinstance(value, str)
        and re.fullmatch(r"[0-9]+", value) is not None
        and (0 < int(value) < 2**64)
    )


def _check_scale_types(scale: Any) -> None:
    """What a real server cannot decode into an autoscaling/v1 Scale is a 400, as its decoder
    answers (``{"spec": 5}``; ``replicas`` that is no int32)."""
    fields = [("", scale, dict, "v1.Scale")]
    if isinstance(scale, dict):
        spec = scale.get("spec")
        fields += [("metadata", scale.get("metadata"), dict, "v1.ObjectMeta"),
                   ("spec", spec, dict, "v1.ScaleSpec")]  # fmt: skip
        if isinstance(spec, dict):
            fields.append(("spec.replicas", spec.get("replicas"), int, "int32"))
    for path, value, expected, go_type in fields:
        if (value is not None or not path) and (
            isinstance(value, bool) or not isinstance(value, expected)
        ):
            where = f" into Go struct field Scale.{path}" if path else ""
            raise errors.bad_request(
                'Scale in version "v1" cannot be handled as a Scale: json: cannot unmarshal '
                f"{builtins.json_type(value)}{where} of type {go_type}"
            )


def _check_crd(crd: dict[str, Any]) -> list[dict[str, str]]:
    """A CRD's own validation: its name, and per version a structural schema whose CEL rules
    compile (a broken CRD is refused, never served)."""
    name = crd["metadata"].get("name", "")
    try:
        kinds_from_crd(crd)  # raises without a group, plural or kind
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return [{"reason": "FieldValueInvalid", "field": "spec", "message": str(error)}]
    causes: list[dict[str, str]] = []
    names = crd["spec"]["names"]
    expected = f"{names['plural']}.{crd['spec']['group']}"  # also with no version served
    if name != expected:
        causes.append({"reason": "FieldValueInvalid", "field": "metadata.name",
                       "message": f'Invalid value: "{name}": must be spec.names.plural'
                       f'+"."+spec.group ("{expected}")'})  # fmt: skip
    for index, version in enumerate(crd["spec"].get("versions") or []):
        path = f"spec.versions[{index}].schema.openAPIV3Schema"
        openapi = (version.get("schema") or {}).get("openAPIV3Schema")
        if openapi is None:
            causes.append({"reason": "FieldValueRequired", "field": path,
                           "message": "Required value: schemas are required"})  # fmt: skip
            continue
        causes += [cause.to_dict() for cause in schema.check_crd_schema(openapi, path)]
    return causes


def _success(kind: ResourceKind, obj: dict[str, Any]) -> dict[str, Any]:
    details: dict[str, Any] = {
        "name": obj["metadata"]["name"],
        "kind": kind.plural,
        "uid": obj["metadata"]["uid"],
    }
    if kind.group:
        details["group"] = kind.group
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }


def _crd_status(crd: dict[str, Any]) -> dict[str, Any]:
    spec = crd.get("spec") or {}
    stamp = now_timestamp()
    conditions = [
        ("NamesAccepted", "NoConflicts", "no conflicts found"),
        ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
    ]
    if "deletionTimestamp" in crd.get("metadata", {}):
        conditions.append(
            ("Terminating", "InstanceDeletionInProgress", "CustomResource deletion is in progress")
        )
    return {
        "acceptedNames": spec.get("names") or {},
        "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
        "conditions": [
            {
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": stamp,
            }
            for kind, reason, message in conditions
        ],
    }
