"""The HTTP face of the emulated API: discovery, REST verbs, watch streams, request recording.

Routing is generic: ``/api/v1/...`` and ``/apis/<group>/<version>/...`` paths resolve to a kind
from the store's kind table, so built-in kinds and CRDs registered at runtime are served by the
same few handlers. Every resource request is recorded with its RBAC verb, and so is every
authorization an admission plugin asks for on its behalf (the store reports those), so tests can
compare what a client really used against what its RBAC grants.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from multidict import CIMultiDict

from . import errors
from .errors import APIError
from .patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from .recording import RecordedRequest
from .resources import ResourceKind
from .selectors import (
    Predicate,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
    selectable_fields,
)
from .store import Store, Watch
from .tables import include_object, table, wants_table

_log = logging.getLogger(__name__)
_PATCH_TYPES = {
    "application/merge-patch+json": merge_patch,
    "application/json-patch+json": json_patch,
    "application/strategic-merge-patch+json": strategic_merge_patch,
}
_SUBRESOURCE_VERBS = {
    "status": ["get", "patch", "update"],
    "scale": ["get", "patch", "update"],
}
# The options type a real server decodes a write's query parameters into (and names in a 422).
_OPTIONS_KINDS = {
    "create": "CreateOptions",
    "update": "UpdateOptions",
    "patch": "PatchOptions",
    "delete": "DeleteOptions",
    "deletecollection": "DeleteOptions",
}
_FIELD_VALIDATIONS = ("", "Ignore", "Strict", "Warn")


@dataclass(frozen=True)
class _Target:
    kind: ResourceKind
    namespace: str | None
    name: str | None
    subresource: str


class KubeAPIServer:
    """An in-process Kubernetes API server over real HTTP (see the package docstring)."""

    def __init__(
        self,
        *,
        history_limit: int = 10_000,
        bookmark_interval: float = 5.0,
        require_namespaces: bool = True,
        validate_builtins: bool = False,
    ) -> None:
        self.store = Store(
            history_limit=history_limit,
            require_namespaces=require_namespaces,
            validate_builtins=validate_builtins,
        )
        self.requests: list[RecordedRequest] = []
        self.bookmark_interval = bookmark_interval
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self.url = ""

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_port = self._runner.addresses[0][1]
        self.url = f"http://{host}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        self._stopping.set()
        self.store.close_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- CRDs and kubeconfig ----------------------------------------------------------------

    def register_crd(self, crd: dict[str, Any]) -> None:
        """Create (or replace) a CustomResourceDefinition, as ``kubectl apply`` would."""
        kind = self.store.kind("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        name = (crd.get("metadata") or {}).get("name", "")
        try:
            self.store.create(kind, None, crd)
        except APIError as error:
            if error.code != 409:
                raise
            stored = self.store.get(kind, None, name)["metadata"]["resourceVersion"]
            self.store.update(
                kind,
                None,
                name,
                {**crd, "metadata": {**crd["metadata"], "resourceVersion": stored}},
            )

    def load_crds(self, path: str | Path) -> int:
        """Register every CRD found in a YAML file or a directory of them; returns the count."""
        path = Path(path)
        files = (
            sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")) if path.is_dir() else [path]
        )
        count = 0
        for file in files:
            for document in yaml.safe_load_all(file.read_text()):
                if (
                    isinstance(document, dict)
                    and document.get("kind") == "CustomResourceDefinition"
                ):
                    self.register_crd(document)
                    count += 1
        return count

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """A kubeconfig for this server: plain HTTP, no credentials."""
        path = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulated", "cluster": {"server": self.url}}],
            "users": [{"name": "emulated", "user": {"token": "emulated"}}],
            "contexts": [
                {
                    "name": "emulated",
                    "context": {"cluster": "emulated", "user": "emulated", "namespace": namespace},
                }
            ],
            "current-context": "emulated",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # -- routing ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except APIError as error:
            return web.json_response(error.status(), status=error.code)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return web.json_response(
                errors.bad_request(f"invalid JSON body: {error}").status(), status=400
            )
        except Exception as error:  # a bug here must answer 500, never take the server down
            _log.exception("internal error serving %s %s", request.method, request.path)
            failure = APIError(500, "InternalError", f"internal error: {error!r}")
            return web.json_response(failure.status(), status=500)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [part for part in request.path.split("/") if part]
        if request.method == "GET" and parts in (["healthz"], ["readyz"], ["livez"]):
            return web.Response(text="ok")
        if request.method == "GET":
            discovery = self._discovery(parts)
            if discovery is not None:
                return web.json_response(discovery)
        if parts[:1] == ["api"] and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        target = self._resolve(group, version, rest)
        verb = self._verb(request, target)
        self.requests.append(
            RecordedRequest(
                verb,
                group,
                version,
                target.kind.plural,
                target.subresource,
                target.namespace,
                target.name,
            )
        )
        if target.subresource and target.subresource not in target.kind.subresources:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        if target.subresource and verb not in ("get", "update", "patch"):
            raise APIError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        if verb not in target.kind.verbs:
            raise APIError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        handler = getattr(self, f"_do_{verb}")
        response: web.StreamResponse = await handler(request, target)
        return response

    def _resolve(self, group: str, version: str, rest: list[str]) -> _Target:
        namespace: str | None = None
        if (
            len(rest) >= 3
            and rest[0] == "namespaces"
            and (group, version, rest[2]) in self.store.kinds
        ):
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        kind = self.store.kind(group, version, rest[0])
        if kind.namespaced != (namespace is not None) and len(rest) > 1:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        return _Target(
            kind, namespace, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else ""
        )

    @staticmethod
    def _verb(request: web.Request, target: _Target) -> str:
        method = request.method
        if method == "GET":
            if target.name is not None:
                return "get"
            return "watch" if request.query.get("watch") in ("true", "1") else "list"
        if method == "POST" and target.name is None:
            return "create"
        if method == "PUT" and target.name is not None:
            return "update"
        if method == "PATCH" and target.name is not None:
            return "patch"
        if method == "DELETE":
            return "delete" if target.name is not None else "deletecollection"
        raise APIError(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )

    # -- discovery --------------------------------------------------------------------------

    def _discovery(self, parts: list[str]) -> dict[str, Any] | None:
        kinds = list(self.store.kinds.values())
        if parts == ["version"]:
            return {
                "major": "1",
                "minor": "30",
                "gitVersion": "v1.30.0-emulated",
                "platform": "linux/amd64",
                "goVersion": "go1.22",
                "compiler": "gc",
            }
        if parts == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": self.url.split("//")[-1]}
                ],
            }
        if parts == ["apis"]:
            groups = sorted({k.group for k in kinds if k.group})
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [self._group(g, kinds) for g in groups],
            }
        if len(parts) == 2 and parts[0] == "apis" and any(k.group == parts[1] for k in kinds):
            return {"kind": "APIGroup", "apiVersion": "v1", **self._group(parts[1], kinds)}
        if parts[:2] == ["openapi", "v3"]:
            return _openapi_v3(parts[2:], kinds)
        if parts == ["api", "v1"]:
            return self._resource_list("", "v1", kinds)
        if (
            len(parts) == 3
            and parts[0] == "apis"
            and any(k.group == parts[1] and k.version == parts[2] for k in kinds)
        ):
            return self._resource_list(parts[1], parts[2], kinds)
        return None

    @staticmethod
    def _group(group: str, kinds: Iterable[ResourceKind]) -> dict[str, Any]:
        versions = sorted({k.version for k in kinds if k.group == group}, reverse=True)
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    @staticmethod
    def _resource_list(group: str, version: str, kinds: Iterable[ResourceKind]) -> dict[str, Any]:
        resources: list[dict[str, Any]] = []
        for kind in sorted(
            (k for k in kinds if (k.group, k.version) == (group, version)), key=lambda k: k.plural
        ):
            entry: dict[str, Any] = {
                "name": kind.plural,
                "singularName": kind.singular,
                "namespaced": kind.namespaced,
                "kind": kind.kind,
                "verbs": list(kind.verbs),
            }
            if kind.short_names:
                entry["shortNames"] = list(kind.short_names)
            if kind.categories:
                entry["categories"] = list(kind.categories)
            resources.append(entry)
            for sub in kind.subresources:
                sub_entry: dict[str, Any] = {
                    "name": f"{kind.plural}/{sub}",
                    "singularName": "",
                    "namespaced": kind.namespaced,
                    "kind": kind.kind,
                    "verbs": _SUBRESOURCE_VERBS.get(sub, ["get"]),
                }
                if sub == "scale":
                    sub_entry.update(group="autoscaling", version="v1", kind="Scale")
                resources.append(sub_entry)
        group_version = f"{group}/{version}" if group else version
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }

    # -- verbs ------------------------------------------------------------------------------

    @staticmethod
    async def _body(request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        content_type = request.headers.get("Content-Type", "application/json")
        if "yaml" in content_type:
            return yaml.safe_load(raw)
        return json.loads(raw, parse_constant=_no_json_constant)

    @staticmethod
    def _respond(
        obj: dict[str, Any], warnings: Sequence[str] = (), status: int = 200
    ) -> web.Response:
        # One header per warning, each an RFC 7234 warn-text (quoted string) as client-go
        # parses it: kubectl prints them, and ignores the whole header if one is malformed.
        headers = CIMultiDict(("Warning", f"299 - {_quoted(text)}") for text in warnings)
        return web.json_response(obj, status=status, headers=headers)

    @staticmethod
    def _flags(request: web.Request, verb: str) -> dict[str, Any]:
        """A write's ``dryRun`` and ``fieldValidation``, validated as the real server does:
        ``All`` is the only dry-run value, and unknown values are refused, never taken for
        "yes" (a client sending ``dryRun=true`` would otherwise write for real on a cluster)."""
        causes = []
        dry_run = request.query.getall("dryRun", [])
        if any(value != "All" for value in dry_run):
            causes.append(_unsupported_dry_run(dry_run))
        field_validation = request.query.get("fieldValidation", "")
        if (
            verb not in ("delete", "deletecollection")
            and field_validation not in _FIELD_VALIDATIONS
        ):
            supported = ", ".join(json.dumps(value) for value in _FIELD_VALIDATIONS)
            causes.append({"reason": "FieldValueNotSupported", "field": "fieldValidation",
                           "message": f"Unsupported value: {json.dumps(field_validation)}: "
                           f"supported values: {supported}"})  # fmt: skip
        if causes:
            raise errors.invalid_options(_OPTIONS_KINDS[verb], causes)
        return {"dry_run": bool(dry_run), "field_validation": field_validation or "Warn"}

    async def _do_get(self, request: web.Request, target: _Target) -> web.StreamResponse:
        assert target.name is not None
        if target.subresource == "scale":
            return self._respond(self.store.get_scale(target.kind, target.namespace, target.name))
        obj = self.store.get(target.kind, target.namespace, target.name)
        include = self._table_include(request)
        if not target.subresource and include is not None:
            version = obj["metadata"]["resourceVersion"]
            return self._respond(table(target.kind, [obj], version, include=include))
        return self._respond(obj)

    @staticmethod
    def _table_include(request: web.Request) -> str | None:
        """``includeObject`` when the request asks for a Table (kubectl get does), else None."""
        if not wants_table(request.headers.get("Accept", "")):
            return None
        try:
            return include_object(request.query.get("includeObject"))
        except ValueError as error:
            raise errors.bad_request(str(error)) from None

    @staticmethod
    def _selectors(request: web.Request, kind: ResourceKind) -> tuple[Predicate, Predicate]:
        # Custom resources select on metadata and their CRD's selectableFields only.
        group, plural = ("", "") if kind.custom else (kind.group, kind.plural)
        fields = selectable_fields(group, plural, kind.selectable_fields)
        try:
            return (
                parse_label_selector(request.query.get("labelSelector")),
                parse_field_selector(request.query.get("fieldSelector"), fields),
            )
        except SelectorError as error:
            raise errors.bad_request(str(error)) from None

    async def _do_list(self, request: web.Request, target: _Target) -> web.StreamResponse:
        labels, fields = self._selectors(request, target.kind)
        items = self.store.list_objects(
            target.kind, target.namespace, lambda o: labels(o) and fields(o)
        )
        include = self._table_include(request)
        if include is not None:
            version = str(self.store.resource_version)
            return self._respond(table(target.kind, items, version, include=include))
        return self._respond(
            {
                "kind": f"{target.kind.kind}List",
                "apiVersion": target.kind.api_version,
                "metadata": {"resourceVersion": str(self.store.resource_version)},
                "items": items,
            }
        )

    async def _do_watch(self, request: web.Request, target: _Target) -> web.StreamResponse:
        labels, fields = self._selectors(request, target.kind)
        since_text = request.query.get("resourceVersion") or ""
        send_initial = request.query.get("sendInitialEvents") == "true"
        try:
            since = None if since_text in ("", "0") or send_initial else int(since_text)
        except ValueError:
            raise errors.bad_request(f"invalid resourceVersion {since_text!r}") from None
        bookmarks = request.query.get("allowWatchBookmarks") in ("true", "1")
        timeout_text = request.query.get("timeoutSeconds")
        # An int64, as Go's strconv.ParseInt reads it: no "nan", "inf" nor "1.5".
        if timeout_text and not re.fullmatch(r"[+-]?[0-9]+", timeout_text):
            raise errors.bad_request(f'strconv.ParseInt: parsing "{timeout_text}": invalid syntax')
        timeout = int(timeout_text) if timeout_text else None
        include = self._table_include(request)
        watch = Watch((target.kind.group, target.kind.plural), target.namespace, labels, fields)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            self.store.watch(watch, since)
        except APIError as error:
            # A real server answers an expired resourceVersion inside the stream.
            await _write_event(response, "ERROR", error.status())
            return response
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            if send_initial:
                await self._drain(response, watch, target.kind, include)
                await _write_event(
                    response,
                    "BOOKMARK",
                    self._bookmark(target.kind, {"k8s.io/initial-events-end": "true"}),
                )
            while not self._stopping.is_set():
                wait = self.bookmark_interval
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        break
                try:
                    # Not wait_for: on Python 3.11 it can take an item and drop a
                    # cancellation that came in the same instant (python/cpython#86296).
                    async with asyncio.timeout(wait):
                        item = await watch.queue.get()
                except TimeoutError:
                    if bookmarks and watch.queue.empty():
                        await _write_event(response, "BOOKMARK", self._bookmark(target.kind))
                    continue
                if item is None:
                    break
                await _write_event(response, item[0], self._shape(target.kind, item[1], include))
                await self._drain(response, watch, target.kind, include)
        except ConnectionResetError:  # the client went away
            return response
        finally:
            self.store.unwatch(watch)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.write_eof()
        return response

    async def _drain(
        self, response: web.StreamResponse, watch: Watch, kind: ResourceKind, include: str | None
    ) -> None:
        while not watch.queue.empty():
            item = watch.queue.get_nowait()
            if item is None:
                watch.queue.put_nowait(None)
                return
            await _write_event(response, item[0], self._shape(kind, item[1], include))

    def _shape(
        self, kind: ResourceKind, stored: dict[str, Any], include: str | None
    ) -> dict[str, Any]:
        """A watch event's object as served: the object, or a Table of its one row."""
        obj = self.store.serve(kind, stored)
        if include is None:
            return obj
        return table(kind, [obj], obj["metadata"]["resourceVersion"], include=include)

    def _bookmark(
        self, kind: ResourceKind, annotations: dict[str, str] | None = None
    ) -> dict[str, Any]:
        metadata: dict[str, Any] = {"resourceVersion": str(self.store.resource_version)}
        if annotations:
            metadata["annotations"] = annotations
        return {"kind": kind.kind, "apiVersion": kind.api_version, "metadata": metadata}

    async def _do_create(self, request: web.Request, target: _Target) -> web.StreamResponse:
        flags = self._flags(request, "create")
        obj, warnings = self.store.create(
            target.kind,
            target.namespace,
            await self._body(request),
            authorize=self.requests.append,
            **flags,
        )
        return self._respond(obj, warnings, status=201)

    def _write(self, target: _Target, body: Any, flags: dict[str, Any]) -> web.Response:
        """The last step of PUT and PATCH: store the new state (of the object or its scale)."""
        assert target.name is not None
        if target.subresource == "scale":
            scale = self.store.update_scale(
                target.kind, target.namespace, target.name, body, dry_run=flags["dry_run"]
            )
            return self._respond(scale)
        obj, warnings = self.store.update(
            target.kind,
            target.namespace,
            target.name,
            body,
            subresource=target.subresource,
            authorize=self.requests.append,
            **flags,
        )
        return self._respond(obj, warnings)

    async def _do_update(self, request: web.Request, target: _Target) -> web.StreamResponse:
        flags = self._flags(request, "update")
        return self._write(target, await self._body(request), flags)

    async def _do_patch(self, request: web.Request, target: _Target) -> web.StreamResponse:
        assert target.name is not None
        flags = self._flags(request, "patch")
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        apply = _PATCH_TYPES.get(content_type)
        if apply is None or (apply is strategic_merge_patch and target.kind.custom):
            raise APIError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media "
                "types include: application/json-patch+json, "
                "application/merge-patch+json"
                + ("" if target.kind.custom else ", application/strategic-merge-patch+json"),
            )
        body = await self._body(request)
        if target.subresource == "scale":
            current = self.store.get_scale(target.kind, target.namespace, target.name)
        else:
            current = self.store.get(target.kind, target.namespace, target.name)
        try:
            patched = apply(current, body)
        except PatchError as error:
            raise APIError(422, "Invalid", str(error)) from None
        if not isinstance(patched, dict):
            raise errors.bad_request("the patch does not produce an object")
        if target.subresource != "scale":
            flags["patch"] = True  # its uid is not a precondition (changing it is 422)
        return self._write(target, patched, flags)

    async def _delete_options(self, request: web.Request, verb: str) -> dict[str, Any]:
        query_flags = self._flags(request, verb)
        body = await self._body(request)
        options = dict(body) if isinstance(body, dict) else {}
        body_dry_run = options.get("dryRun") or []
        if not isinstance(body_dry_run, list):
            raise errors.bad_request("dryRun: expected a list of strings")
        if any(value != "All" for value in body_dry_run):
            raise errors.invalid_options("DeleteOptions", [_unsupported_dry_run(body_dry_run)])
        if "propagationPolicy" in request.query:
            options["propagationPolicy"] = request.query["propagationPolicy"]
        if "orphanDependents" in request.query or options.get("orphanDependents") is not None:
            orphan = options.get("orphanDependents", request.query.get("orphanDependents"))
            if orphan in (True, "true"):
                options.setdefault("propagationPolicy", "Orphan")
        if query_flags["dry_run"]:
            options["dryRun"] = ["All"]
        return options

    async def _do_delete(self, request: web.Request, target: _Target) -> web.StreamResponse:
        assert target.name is not None
        options = await self._delete_options(request, "delete")
        return self._respond(
            self.store.delete(
                target.kind,
                target.namespace,
                target.name,
                propagation=options.get("propagationPolicy"),
                preconditions=options.get("preconditions"),
                dry_run=bool(options.get("dryRun")),
            )
        )

    async def _do_deletecollection(
        self, request: web.Request, target: _Target
    ) -> web.StreamResponse:
        labels, fields = self._selectors(request, target.kind)
        options = await self._delete_options(request, "deletecollection")
        items = self.store.list_objects(
            target.kind, target.namespace, lambda o: labels(o) and fields(o)
        )
        for item in items:
            with contextlib.suppress(APIError):
                self.store.delete(
                    target.kind,
                    item["metadata"].get("namespace"),
                    item["metadata"]["name"],
                    propagation=options.get("propagationPolicy"),
                    dry_run=bool(options.get("dryRun")),
                )
        return self._respond(
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        )


def _unsupported_dry_run(values: Sequence[Any]) -> dict[str, str]:
    go_values = ", ".join(json.dumps(str(value)) for value in values)  # Go's %#v of a []string
    return {
        "reason": "FieldValueNotSupported",
        "field": "dryRun",
        "message": f'Unsupported value: []string{{{go_values}}}: supported values: "All"',
    }


def _no_json_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity; JSON has no such tokens, and Go's decoder refuses them.
    raise json.JSONDecodeError(f"{name} is not valid JSON", name, 0)


def _quoted(text: str) -> str:
    """An RFC 7230 quoted-string: quotes and backslashes escaped (``"unknown field \\"x\\""``)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def _write_event(response: web.StreamResponse, kind: str, obj: dict[str, Any]) -> None:
    await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")


# -- OpenAPI v3 -------------------------------------------------------------------------------


def _group_version_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _openapi_v3(rest: list[str], kinds: Sequence[ResourceKind]) -> dict[str, Any] | None:
    """``/openapi/v3`` and its per-group-version documents, as far as clients read them.

    kubectl validates what it sends by asking the server to (``fieldValidation=Strict``,
    which this API honours) once the group-version's document shows that parameter on
    the resource's PATCH; without the documents it wants to download the whole schema
    and refuses to apply. Each kind's schema is its CRD's (``kubectl explain``), or an
    open object for the built-in kinds, whose schemas this API does not keep.
    """
    versions = sorted({(k.group, k.version) for k in kinds})
    if not rest:
        return {
            "paths": {
                _group_version_path(g, v): {
                    "serverRelativeURL": f"/openapi/v3/{_group_version_path(g, v)}"
                }
                for g, v in versions
            }
        }
    for group, version in versions:
        if "/".join(rest) == _group_version_path(group, version):
            return _openapi_document([k for k in kinds if (k.group, k.version) == (group, version)])
    return None


def _openapi_document(kinds: Sequence[ResourceKind]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for kind in kinds:
        gvk = {"group": kind.group, "version": kind.version, "kind": kind.kind}
        name = ".".join(reversed(kind.group.split("."))) if kind.group else "io.k8s.api.core"
        schema_name = f"{name}.{kind.version}.{kind.kind}"
        schema = dict(
            kind.schema or {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        )
        schemas[schema_name] = {**schema, "x-kubernetes-group-version-kind": [gvk]}
        ok = {
            "200": {
                "description": "OK",
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
                },
            }
        }
        write = [
            {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
        ]
        scope = "/namespaces/{namespace}" if kind.namespaced else ""
        base = "/" + _group_version_path(kind.group, kind.version) + scope + "/" + kind.plural
        operation = {"x-kubernetes-group-version-kind": gvk, "responses": ok}
        paths[base] = {
            "get": {**operation, "x-kubernetes-action": "list"},
            "post": {**operation, "x-kubernetes-action": "post", "parameters": write},
        }
        paths[base + "/{name}"] = {
            "get": {**operation, "x-kubernetes-action": "get"},
            "put": {**operation, "x-kubernetes-action": "put", "parameters": write},
            "patch": {**operation, "x-kubernetes-action": "patch", "parameters": write},
            "delete": {**operation, "x-kubernetes-action": "delete"},
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (emulated)", "version": "v1.30.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
