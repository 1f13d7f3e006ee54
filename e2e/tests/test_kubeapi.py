"""The emulated Kubernetes API, driven by the official ``kubernetes`` client over real HTTP."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client import ApiException

from e2e.kubeapi import PODMONITOR_CRD, RecordedRequest, ThreadedKubeAPI, run_in_thread
from e2e.kubeapi.builtins import canonical_quantity
from e2e.kubeapi.recording import OWNER_REFERENCES_PLUGIN
from e2e.kubeapi.store import CRD_CLEANUP_FINALIZER

REPO = Path(__file__).resolve().parents[2]
VLMSERVICE_CRD = REPO / "crds" / "vlmservice.yaml"
JSON_PATCH = "application/json-patch+json"
GROUP, VERSION, PLURAL = "vlm-operator.io", "v1alpha1", "vlmservices"

WIDGET_CRD: dict[str, Any] = yaml.safe_load("""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget, shortNames: [wd]}
  versions:
    - name: v1
      served: true
      storage: true
      subresources:
        status: {}
        scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas,
                labelSelectorPath: .status.selector}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [size]
              x-kubernetes-validations:
                - rule: self.replicas <= self.size
                  message: replicas must not exceed size
              properties:
                size: {type: integer, minimum: 1, maximum: 10}
                replicas: {type: integer, default: 1}
                color: {type: string, enum: [red, blue], default: red}
                name: {type: string, pattern: '^[a-z]+$', maxLength: 8}
                tags: {type: object, additionalProperties: {type: string}}
            status:
              type: object
              x-kubernetes-preserve-unknown-fields: true
""")


_NAMESPACES = itertools.count()


@pytest.fixture(scope="module")
def api() -> Iterator[ThreadedKubeAPI]:
    crds = [PODMONITOR_CRD] + ([VLMSERVICE_CRD] if VLMSERVICE_CRD.exists() else [])
    with run_in_thread(crds=crds) as handle:
        handle.register_crd(WIDGET_CRD)
        yield handle


@pytest.fixture
def kube(api: ThreadedKubeAPI) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(config_file=str(api.kubeconfig))
    yield api_client
    api_client.close()


@pytest.fixture
def namespace(kube: client.ApiClient, request: pytest.FixtureRequest) -> str:
    name = f"{re.sub(r'[^a-z0-9]+', '-', request.node.name.lower())[:50]}-{next(_NAMESPACES)}"
    client.CoreV1Api(kube).create_namespace({"metadata": {"name": name}})
    return name


def _status(error: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body)
    return body


def _deployment(
    name: str, *, replicas: int = 1, owner: dict[str, Any] | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": {"app": name}}
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    return {
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "gate", "image": "gate:1",
                                         "env": [{"name": "A", "value": "1"}],
                                         "ports": [{"containerPort": 8000}]}]},
            },
        },
    }  # fmt: skip


def _owner(obj: dict[str, Any] | Any, kind: str, api_version: str) -> dict[str, Any]:
    metadata = obj["metadata"] if isinstance(obj, dict) else obj.metadata
    name = metadata["name"] if isinstance(metadata, dict) else metadata.name
    uid = metadata["uid"] if isinstance(metadata, dict) else metadata.uid
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}  # fmt: skip


# -- discovery ------------------------------------------------------------------------------


def test_discovery_lists_kinds_and_subresources(api: ThreadedKubeAPI) -> None:
    with httpx.Client(base_url=api.url) as http:
        core = {r["name"]: r for r in http.get("/api/v1").json()["resources"]}
        assert core["pods"]["namespaced"]
        assert core["pods"]["kind"] == "Pod"
        assert "watch" in core["pods"]["verbs"]
        assert core["pods/status"]["verbs"] == ["get", "patch", "update"]
        assert core["namespaces"]["namespaced"] is False
        apps = {r["name"]: r for r in http.get("/apis/apps/v1").json()["resources"]}
        assert apps["deployments/scale"]["kind"] == "Scale"
        assert apps["deployments/scale"]["group"] == "autoscaling"
        groups = {g["name"]: g for g in http.get("/apis").json()["groups"]}
        for group in ("apps", "policy", "networking.k8s.io", "events.k8s.io",
                      "coordination.k8s.io", "apiextensions.k8s.io", "monitoring.coreos.com",
                      "example.com"):  # fmt: skip
            assert group in groups
        widgets = {r["name"] for r in http.get("/apis/example.com/v1").json()["resources"]}
        assert widgets == {"widgets", "widgets/status", "widgets/scale"}
        assert http.get("/version").json()["major"] == "1"
        assert http.get("/apis/nothing.example.com/v1").status_code == 404


def test_crd_registration_serves_the_new_kind_live(kube: client.ApiClient, namespace: str) -> None:
    crd = yaml.safe_load(
        yaml.safe_dump(WIDGET_CRD)
        .replace("widget", "gadget")
        .replace("Widget", "Gadget")
        .replace("[wd]", "[gd]")
    )
    extensions = client.ApiextensionsV1Api(kube)
    custom = client.CustomObjectsApi(kube)
    with pytest.raises(ApiException) as missing:
        custom.list_namespaced_custom_object("example.com", "v1", namespace, "gadgets")
    assert missing.value.status == 404
    misnamed = {**crd, "metadata": {"name": "gadgets.elsewhere.com"}}
    with pytest.raises(ApiException) as invalid:
        extensions.create_custom_resource_definition(misnamed)
    assert _status(invalid.value)["details"]["causes"][0]["field"] == "metadata.name"
    created = extensions.create_custom_resource_definition(crd)
    established = {c.type: c.status for c in created.status.conditions}
    assert established["Established"] == "True"
    resources = client.CustomObjectsApi(kube).get_api_resources("example.com", "v1")
    assert "gadgets" in {r.name for r in resources.resources}
    custom.create_namespaced_custom_object("example.com", "v1", namespace, "gadgets", {
        "apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"},
        "spec": {"size": 2}})  # fmt: skip
    extensions.delete_custom_resource_definition(crd["metadata"]["name"])
    with pytest.raises(ApiException) as gone:
        custom.list_namespaced_custom_object("example.com", "v1", namespace, "gadgets")
    assert gone.value.status == 404


# -- CRUD and errors ------------------------------------------------------------------------


def test_crud_and_error_bodies(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    created = core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "cm"}, "data": {"k": "v"}}
    )
    assert created.metadata.uid
    assert created.metadata.creation_timestamp
    assert created.metadata.namespace == namespace
    assert core.read_namespaced_config_map("cm", namespace).data == {"k": "v"}

    with pytest.raises(ApiException) as exists:
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "cm"}})
    assert exists.value.status == 409
    assert _status(exists.value)["reason"] == "AlreadyExists"

    created.data = {"k": "v2"}
    updated = core.replace_namespaced_config_map("cm", namespace, created)
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    with pytest.raises(ApiException) as stale:
        core.replace_namespaced_config_map("cm", namespace, created)  # old resourceVersion
    body = _status(stale.value)
    assert (stale.value.status, body["reason"]) == (409, "Conflict")
    assert "the object has been modified" in body["message"]

    same = core.replace_namespaced_config_map("cm", namespace, updated)
    assert same.metadata.resource_version == updated.metadata.resource_version  # no-op write

    core.delete_namespaced_config_map("cm", namespace)
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("cm", namespace)
    body = _status(missing.value)
    assert (missing.value.status, body["kind"], body["reason"]) == (404, "Status", "NotFound")
    assert body["message"] == 'configmaps "cm" not found'
    assert body["details"] == {"name": "cm", "kind": "configmaps"}


def test_invalid_names_and_missing_namespaces_are_rejected(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    with pytest.raises(ApiException) as invalid:
        core.create_namespaced_config_map("default", {"metadata": {"name": "Bad_Name"}})
    body = _status(invalid.value)
    assert (invalid.value.status, body["reason"]) == (422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    with pytest.raises(ApiException) as label:
        core.create_namespaced_config_map(
            "default", {"metadata": {"name": "ok", "labels": {"a": "x" * 64}}}
        )
    assert label.value.status == 422
    with pytest.raises(ApiException) as no_namespace:
        core.create_namespaced_config_map("nowhere", {"metadata": {"name": "cm"}})
    assert no_namespace.value.status == 404
    assert _status(no_namespace.value)["message"] == 'namespaces "nowhere" not found'
    generated = core.create_namespaced_config_map("default", {"metadata": {"generateName": "gen-"}})
    assert generated.metadata.name.startswith("gen-")
    assert len(generated.metadata.name) == 9


def test_raw_http_errors(api: ThreadedKubeAPI) -> None:
    with httpx.Client(base_url=api.url) as http:
        assert http.post("/api/v1/namespaces/default/configmaps/x", json={}).status_code == 405
        bad_json = http.post(
            "/api/v1/namespaces/default/configmaps",
            content=b"{nope",
            headers={"Content-Type": "application/json"},
        )
        assert (bad_json.status_code, bad_json.json()["reason"]) == (400, "BadRequest")
        http.post("/api/v1/namespaces/default/configmaps", json={"metadata": {"name": "raw"}})
        apply = http.patch(
            "/api/v1/namespaces/default/configmaps/raw",
            content=b"{}",
            headers={"Content-Type": "application/apply-patch+yaml"},
        )
        assert (apply.status_code, apply.json()["reason"]) == (415, "UnsupportedMediaType")
        mismatch = http.post(
            "/api/v1/namespaces/default/configmaps",
            json={"kind": "Secret", "metadata": {"name": "x"}},
        )
        assert mismatch.status_code == 400
        assert http.get("/healthz").text == "ok"
        # Bodies a real server cannot decode into ObjectMeta are answered 400, never 500.
        for metadata in ({"name": "a", "labels": ["x"]}, {"name": "a", "labels": {"k": 1}},
                         {"name": "a", "finalizers": "x"}, {"name": "a", "ownerReferences": [1]},
                         {"name": 5}, "x"):  # fmt: skip
            response = http.post(
                "/api/v1/namespaces/default/configmaps", json={"metadata": metadata}
            )
            assert (response.status_code, response.json()["reason"]) == (400, "BadRequest")
        for params in ({"watch": "true", "timeoutSeconds": "soon"},
                       {"watch": "true", "resourceVersion": "latest"},
                       {"labelSelector": "a in (b"}):  # fmt: skip
            response = http.get("/api/v1/namespaces/default/configmaps", params=params)
            assert response.status_code == 400


# -- patches --------------------------------------------------------------------------------


def test_merge_json_and_strategic_patches(kube: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(kube)
    custom.create_namespaced_custom_object("example.com", "v1", namespace, "widgets", {
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w", "labels": {"a": "1", "b": "2"}},
        "spec": {"size": 3, "tags": {"x": "1"}}})  # fmt: skip
    merged = custom.patch_namespaced_custom_object(
        "example.com",
        "v1",
        namespace,
        "widgets",
        "w",
        {"metadata": {"labels": {"a": None, "c": "3"}}, "spec": {"tags": {"y": "2"}}},
    )
    assert merged["metadata"]["labels"] == {"b": "2", "c": "3"}
    assert merged["spec"]["tags"] == {"x": "1", "y": "2"}

    ops = [{"op": "test", "path": "/spec/size", "value": 3},
           {"op": "replace", "path": "/spec/size", "value": 4},
           {"op": "add", "path": "/metadata/labels/d", "value": "4"},
           {"op": "remove", "path": "/metadata/labels/b"}]  # fmt: skip
    patched = custom.patch_namespaced_custom_object(
        "example.com", "v1", namespace, "widgets", "w", ops, _content_type=JSON_PATCH
    )
    assert patched["spec"]["size"] == 4
    assert patched["metadata"]["labels"] == {"c": "3", "d": "4"}
    with pytest.raises(ApiException) as failed:
        custom.patch_namespaced_custom_object(
            "example.com",
            "v1",
            namespace,
            "widgets",
            "w",
            [
                {"op": "test", "path": "/spec/size", "value": 3},
                {"op": "replace", "path": "/spec/size", "value": 9},
            ],
            _content_type=JSON_PATCH,
        )
    assert failed.value.status == 422
    assert (
        custom.get_namespaced_custom_object("example.com", "v1", namespace, "widgets", "w")["spec"][
            "size"
        ]
        == 4
    )
    with pytest.raises(ApiException) as stale:
        custom.patch_namespaced_custom_object(
            "example.com", "v1", namespace, "widgets", "w", {"metadata": {"resourceVersion": "1"}}
        )
    assert stale.value.status == 409

    apps = client.AppsV1Api(kube)
    apps.create_namespaced_deployment(namespace, _deployment("web"))
    # The client sends object patches to built-in kinds as strategic merge patches.
    strategic = apps.patch_namespaced_deployment("web", namespace, {"spec": {"template": {"spec": {
        "containers": [{"name": "gate", "env": [{"name": "B", "value": "2"}]},
                       {"name": "model", "image": "model:1"}]}}}})  # fmt: skip
    containers = strategic.spec.template.spec.containers
    assert [c.name for c in containers] == ["gate", "model"]
    assert containers[0].image == "gate:1"  # kept: merged by name, not replaced
    assert [(e.name, e.value) for e in containers[0].env] == [("A", "1"), ("B", "2")]
    deleted = apps.patch_namespaced_deployment("web", namespace, {"spec": {"template": {"spec": {
        "containers": [{"name": "model", "$patch": "delete"}]}}}})  # fmt: skip
    assert [c.name for c in deleted.spec.template.spec.containers] == ["gate"]


def test_custom_resources_refuse_strategic_merge(api: ThreadedKubeAPI, namespace: str) -> None:
    with httpx.Client(base_url=api.url) as http:
        url = f"/apis/example.com/v1/namespaces/{namespace}/widgets"
        http.post(url, json={"metadata": {"name": "w"}, "spec": {"size": 1}})
        response = http.patch(
            f"{url}/w",
            content=b"{}",
            headers={"Content-Type": "application/strategic-merge-patch+json"},
        )
        assert response.status_code == 415


# -- subresources and generation ------------------------------------------------------------


def test_status_subresource_isolation_and_generation(
    kube: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(kube)
    created = apps.create_namespaced_deployment(
        namespace, {**_deployment("web"), "status": {"replicas": 7}}
    )
    assert created.status is None or created.status.replicas is None  # dropped on create
    assert created.metadata.generation == 1

    status = apps.patch_namespaced_deployment_status(
        "web", namespace, {"status": {"replicas": 1, "readyReplicas": 1}, "spec": {"replicas": 9}}
    )
    assert status.status.ready_replicas == 1
    assert status.spec.replicas == 1  # spec ignored by /status
    assert status.metadata.generation == 1  # status changes never bump generation

    main = apps.patch_namespaced_deployment(
        "web", namespace, {"spec": {"replicas": 2}, "status": {"readyReplicas": 5}}
    )
    assert main.spec.replicas == 2
    assert main.status.ready_replicas == 1  # status ignored by the main resource
    assert main.metadata.generation == 2

    labelled = apps.patch_namespaced_deployment(
        "web", namespace, {"metadata": {"labels": {"x": "y"}}}
    )
    assert labelled.metadata.generation == 2  # metadata changes never bump generation


def test_scale_subresources(kube: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(kube)
    apps.create_namespaced_deployment(namespace, _deployment("web", replicas=2))
    scale = apps.read_namespaced_deployment_scale("web", namespace)
    assert (scale.spec.replicas, scale.status.selector) == (2, "app=web")
    apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 5}})
    assert apps.read_namespaced_deployment("web", namespace).spec.replicas == 5
    with pytest.raises(ApiException) as negative:
        apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": -1}})
    assert negative.value.status == 422

    custom = client.CustomObjectsApi(kube)
    custom.create_namespaced_custom_object("example.com", "v1", namespace, "widgets", {
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
        "spec": {"size": 5, "replicas": 2}})  # fmt: skip
    custom.patch_namespaced_custom_object_status(
        "example.com",
        "v1",
        namespace,
        "widgets",
        "w",
        {"status": {"replicas": 1, "selector": "a=b"}},
    )
    cr_scale = custom.get_namespaced_custom_object_scale(
        "example.com", "v1", namespace, "widgets", "w"
    )
    assert cr_scale["spec"] == {"replicas": 2}
    assert cr_scale["status"] == {"replicas": 1, "selector": "a=b"}
    custom.patch_namespaced_custom_object_scale(
        "example.com", "v1", namespace, "widgets", "w", {"spec": {"replicas": 4}}
    )
    widget = custom.get_namespaced_custom_object("example.com", "v1", namespace, "widgets", "w")
    assert widget["spec"]["replicas"] == 4
    assert widget["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as too_many:  # the CEL rule still guards scale writes
        custom.patch_namespaced_custom_object_scale(
            "example.com", "v1", namespace, "widgets", "w", {"spec": {"replicas": 6}}
        )
    assert too_many.value.status == 422


# -- deletion -------------------------------------------------------------------------------


def test_finalizers_hold_deletion(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "cm", "finalizers": ["example.com/hold"]}}
    )
    core.delete_namespaced_config_map("cm", namespace)
    held = core.read_namespaced_config_map("cm", namespace)
    assert held.metadata.deletion_timestamp is not None
    with pytest.raises(ApiException) as added:
        core.patch_namespaced_config_map("cm", namespace, {"metadata": {"finalizers": ["x/y"]}})
    assert added.value.status == 422
    core.patch_namespaced_config_map(
        "cm", namespace, [{"op": "remove", "path": "/metadata/finalizers"}]
    )
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_config_map("cm", namespace)
    assert gone.value.status == 404


def test_owner_references_cascade_and_orphan(kube: client.ApiClient, namespace: str) -> None:
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    deployment = apps.create_namespaced_deployment(
        namespace, _deployment("web", owner=_owner(owner, "ConfigMap", "v1"))
    )
    apps.create_namespaced_replica_set(
        namespace, {**_deployment("web-1", owner=_owner(deployment, "Deployment", "apps/v1"))}
    )
    core.delete_namespaced_config_map("owner", namespace)
    assert apps.list_namespaced_deployment(namespace).items == []
    assert apps.list_namespaced_replica_set(namespace).items == []  # cascaded two levels

    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    apps.create_namespaced_deployment(
        namespace, _deployment("kept", owner=_owner(owner, "ConfigMap", "v1"))
    )
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Orphan")
    kept = apps.read_namespaced_deployment("kept", namespace)
    assert not kept.metadata.owner_references


def test_namespace_deletion_removes_its_content(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespace({"metadata": {"name": "doomed"}})
    core.create_namespaced_config_map("doomed", {"metadata": {"name": "cm"}})
    core.delete_namespace("doomed")
    assert "doomed" not in {n.metadata.name for n in core.list_namespace().items}
    assert (
        core.list_config_map_for_all_namespaces(field_selector="metadata.namespace=doomed").items
        == []
    )


# -- selectors ------------------------------------------------------------------------------


def test_label_and_field_selectors(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    for name, labels in (("a", {"tier": "web", "env": "prod"}), ("b", {"tier": "db"}),
                         ("c", {"tier": "cache", "env": "dev"})):  # fmt: skip
        core.create_namespaced_config_map(namespace, {"metadata": {"name": name, "labels": labels}})

    def names(**kwargs: str) -> list[str]:
        return [i.metadata.name for i in core.list_namespaced_config_map(namespace, **kwargs).items]

    assert names(label_selector="tier in (web,db)") == ["a", "b"]
    assert names(label_selector="tier notin (web,db)") == ["c"]
    assert names(label_selector="tier!=web") == ["b", "c"]
    assert names(label_selector="!env") == ["b"]
    assert names(label_selector="env,tier=cache") == ["c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b", label_selector="env") == ["a", "c"]
    everywhere = core.list_config_map_for_all_namespaces(label_selector="tier=db")
    assert [i.metadata.name for i in everywhere.items] == ["b"]
    with pytest.raises(ApiException) as bad:
        names(label_selector="tier in web")
    assert bad.value.status == 400


# -- watch ----------------------------------------------------------------------------------


def test_watch_resumes_without_losing_events(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "before"}})
    listed = core.list_namespaced_config_map(namespace)
    resume_from = listed.metadata.resource_version
    # Changes while no watch is connected.
    for index in range(25):
        core.create_namespaced_config_map(namespace, {"metadata": {"name": f"cm-{index}"}})
    core.patch_namespaced_config_map("cm-0", namespace, {"data": {"k": "v"}})
    core.delete_namespaced_config_map("cm-1", namespace)

    events = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(core.list_namespaced_config_map, namespace,
                                      resource_version=resume_from, timeout_seconds=1)
    ]  # fmt: skip
    expected = [("ADDED", f"cm-{i}") for i in range(25)] + [
        ("MODIFIED", "cm-0"),
        ("DELETED", "cm-1"),
    ]
    assert events == expected

    versions = [
        int(e["object"].metadata.resource_version)
        for e in watch.Watch().stream(
            core.list_namespaced_config_map,
            namespace,
            resource_version=resume_from,
            timeout_seconds=1,
        )
    ]
    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)


def test_watch_without_resource_version_starts_with_the_current_state(
    kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "one"}})
    events = list(
        watch.Watch().stream(core.list_namespaced_config_map, namespace, timeout_seconds=1)
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "one")]


def test_cluster_wide_watch_and_selector_transitions(
    kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    start = core.list_config_map_for_all_namespaces().metadata.resource_version
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "x", "labels": {"sel": "1"}}}
    )
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": f"{namespace[:40]}-y", "labels": {"sel": "1"}}}
    )
    core.patch_namespaced_config_map("x", namespace, {"metadata": {"labels": {"sel": "0"}}})
    core.patch_namespaced_config_map("x", namespace, {"metadata": {"labels": {"sel": "1"}}})
    events = [
        (e["type"], e["object"].metadata.namespace)
        for e in watch.Watch().stream(core.list_config_map_for_all_namespaces,
                                      label_selector="sel=1", resource_version=start,
                                      timeout_seconds=1)
    ]  # fmt: skip
    assert events == [("ADDED", namespace), ("ADDED", "default"), ("DELETED", namespace),
                      ("ADDED", namespace)]  # fmt: skip


def test_too_old_resource_version_is_gone(api: ThreadedKubeAPI, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    old = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", {"metadata": {"generateName": "expire-"}})
    api.call(api.server.store.compact)
    with pytest.raises(ApiException) as expired:
        list(
            watch.Watch().stream(
                core.list_namespaced_config_map, "default", resource_version=old, timeout_seconds=1
            )
        )
    assert expired.value.status == 410
    assert "too old resource version" in str(expired.value.reason)


def test_watch_bookmarks_and_timeout(api: ThreadedKubeAPI) -> None:
    with run_in_thread(bookmark_interval=0.1) as fast, httpx.Client(base_url=fast.url) as http:
        rv = http.get("/api/v1/namespaces/default/configmaps").json()["metadata"]["resourceVersion"]
        response = http.get("/api/v1/namespaces/default/configmaps", params={
            "watch": "true", "allowWatchBookmarks": "true", "resourceVersion": rv,
            "timeoutSeconds": "1"}, timeout=10)  # fmt: skip
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert lines
        assert {line["type"] for line in lines} == {"BOOKMARK"}
        assert lines[-1]["object"]["metadata"]["resourceVersion"] == rv
        assert response.elapsed.total_seconds() < 5


# -- VLMService -----------------------------------------------------------------------------


def _vlmservice(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VLMService",
        "metadata": {"name": name},
        "spec": {"model": {"id": "Qwen/Qwen3-VL-2B-Instruct", "runtime": "fake"}, **spec},
    }


vlmservice_crd = pytest.mark.skipif(
    not VLMSERVICE_CRD.exists(), reason="crds/vlmservice.yaml missing"
)


@vlmservice_crd
def test_vlmservice_defaults_and_status(kube: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(kube)
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _vlmservice("svc")
    )
    autoscaling = created["spec"]["autoscaling"]
    assert autoscaling["minReplicas"] <= autoscaling["maxReplicas"]
    assert autoscaling["syncPeriodSeconds"] == 5.0  # defaulted from the schema
    assert autoscaling["scaleUp"]["maxPodsPerStep"] == 4  # nested defaults too
    status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "svc", {"status": {"replicas": 2, "selector": "a=b"}}
    )
    assert status["status"]["replicas"] == 2
    scale = custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "svc")
    assert scale["status"] == {"replicas": 2, "selector": "a=b"}


@vlmservice_crd
def test_vlmservice_cel_rule_rejects_min_above_max(kube: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(kube)
    bad = _vlmservice("bad", autoscaling={"minReplicas": 5, "maxReplicas": 2})
    with pytest.raises(ApiException) as invalid:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, bad)
    body = _status(invalid.value)
    assert (invalid.value.status, body["reason"]) == (422, "Invalid")
    cause = body["details"]["causes"][0]
    assert cause["field"] == "spec.autoscaling.minReplicas"
    assert "minReplicas must be less than or equal to maxReplicas" in cause["message"]
    assert "minReplicas must be less than or equal to maxReplicas" in body["message"]


@vlmservice_crd
def test_vlmservice_schema_validation_and_pruning(kube: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(kube)
    wrong_runtime = _vlmservice("bad")
    wrong_runtime["spec"]["model"]["runtime"] = "quantum"
    with pytest.raises(ApiException) as enum:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, wrong_runtime)
    cause = _status(enum.value)["details"]["causes"][0]
    assert (cause["field"], cause["reason"]) == ("spec.model.runtime", "FieldValueNotSupported")

    wrong_type = _vlmservice("bad", autoscaling={"maxReplicas": "ten"})
    with pytest.raises(ApiException) as typed:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, wrong_type)
    assert _status(typed.value)["details"]["causes"][0]["field"] == "spec.autoscaling.maxReplicas"

    missing = _vlmservice("bad")
    del missing["spec"]["model"]
    with pytest.raises(ApiException) as required:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, missing)
    assert _status(required.value)["details"]["causes"][0]["field"] == "spec.model"

    unknown = _vlmservice("pruned", replicaz=3)
    with pytest.raises(ApiException) as strict:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, unknown, field_validation="Strict"
        )
    # Strict refuses unknown fields while decoding, before validation: 400, not 422.
    assert (strict.value.status, _status(strict.value)["reason"]) == (400, "BadRequest")
    assert (
        _status(strict.value)["message"] == 'strict decoding error: unknown field "spec.replicaz"'
    )
    pruned = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, unknown)
    assert "replicaz" not in pruned["spec"]


def _example_vlmservices() -> list[Any]:
    found = []
    for path in sorted((REPO / "manifests").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") == "VLMService":
                found.append(
                    pytest.param(document, id=f"{path.name}:{document['metadata']['name']}")
                )
    return found


@vlmservice_crd
@pytest.mark.parametrize("example", _example_vlmservices())
def test_example_manifests_are_accepted(
    kube: client.ApiClient, namespace: str, example: dict[str, Any]
) -> None:
    custom = client.CustomObjectsApi(kube)
    body = {**example, "metadata": {**example["metadata"], "namespace": namespace}}
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict"
    )
    assert created["metadata"]["uid"]
    assert created["spec"]["model"]["id"] == example["spec"]["model"]["id"]


# -- recording and process mode -------------------------------------------------------------


def test_requests_are_recorded_with_rbac_verbs(
    api: ThreadedKubeAPI, kube: client.ApiClient
) -> None:
    before = len(api.requests)
    apps = client.AppsV1Api(kube)
    apps.create_namespaced_deployment("default", _deployment("recorded"))
    apps.read_namespaced_deployment("recorded", "default")
    apps.list_namespaced_deployment("default", label_selector="app=recorded")
    apps.patch_namespaced_deployment_scale("recorded", "default", {"spec": {"replicas": 3}})
    apps.replace_namespaced_deployment_status(
        "recorded", "default", apps.read_namespaced_deployment("recorded", "default")
    )
    apps.delete_namespaced_deployment("recorded", "default")
    apps.delete_collection_namespaced_deployment("default", label_selector="app=none")
    list(watch.Watch().stream(apps.list_namespaced_deployment, "default", timeout_seconds=0))
    verbs = [(r.verb, r.subresource) for r in api.requests[before:]]
    assert verbs == [("create", ""), ("get", ""), ("list", ""), ("patch", "scale"), ("get", ""),
                     ("update", "status"), ("delete", ""), ("deletecollection", ""),
                     ("watch", "")]  # fmt: skip
    assert api.requests[before] == RecordedRequest(
        "create", "apps", "v1", "deployments", "", "default", None
    )


def _gc_check(
    verb: str, resource: str, namespace: str, name: str, *, group: str = "", subresource: str = ""
) -> RecordedRequest:
    """An authorization check of the OwnerReferencesPermissionEnforcement admission plugin."""
    return RecordedRequest(verb, group, "v1", resource, subresource, namespace, name,
                           admission=OWNER_REFERENCES_PLUGIN)  # fmt: skip


def _config_map(name: str, refs: list[dict[str, Any]] | None = None, **metadata: Any) -> Any:
    """A ConfigMap body with these owner references (the client sends plain dicts as they are)."""
    return {"metadata": {"name": name, "ownerReferences": refs, **metadata}}


def test_a_blocking_owner_reference_asks_for_the_owners_finalizers(
    api: ThreadedKubeAPI, kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    owner = core.create_namespaced_config_map(namespace, _config_map("owner"))
    before = len(api.requests)
    core.create_namespaced_config_map(
        namespace, _config_map("child", [_owner(owner, "ConfigMap", "v1")])
    )
    # The request first, then the admission plugin's check; a create needs no delete right.
    assert api.requests[before:] == [
        RecordedRequest("create", "", "v1", "configmaps", "", namespace, None),
        _gc_check("update", "configmaps", namespace, "owner", subresource="finalizers"),
    ]
    # A dry run goes through admission too, and a reference that does not block asks nothing.
    widget = client.CustomObjectsApi(kube).create_namespaced_custom_object(
        "example.com", "v1", namespace, "widgets",
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
         "spec": {"size": 1}},
    )  # fmt: skip
    refs = [_owner(widget, "Widget", "example.com/v1"),
            {**_owner(owner, "ConfigMap", "v1"), "blockOwnerDeletion": False}]  # fmt: skip
    before = len(api.requests)
    core.create_namespaced_config_map(namespace, _config_map("dry", refs), dry_run="All")
    assert [r for r in api.requests[before:] if r.admission] == [
        _gc_check("update", "widgets", namespace, "w", group="example.com",
                  subresource="finalizers"),
    ]  # fmt: skip
    stored = core.list_namespaced_config_map(namespace).to_dict()["items"]
    assert "dry" not in {item["metadata"]["name"] for item in stored}


def test_changing_owner_references_asks_for_delete_on_the_object(
    api: ThreadedKubeAPI, kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    first = core.create_namespaced_config_map(namespace, _config_map("first"))
    second = core.create_namespaced_config_map(namespace, _config_map("second"))
    first_ref = _owner(first, "ConfigMap", "v1")
    core.create_namespaced_config_map(namespace, _config_map("child", [first_ref]))
    edits = itertools.count()

    def replace(refs: list[dict[str, Any]] | None) -> list[RecordedRequest]:
        """PUT the child with these references (and a new label: a real write); the checks."""
        stored = core.read_namespaced_config_map("child", namespace).to_dict()["metadata"]
        body = _config_map("child", refs, resourceVersion=stored["resource_version"],
                           labels={"edit": str(next(edits))})  # fmt: skip
        before = len(api.requests)
        core.replace_namespaced_config_map("child", namespace, body)
        return [r for r in api.requests[before:] if r.admission]

    # References left as they were (another label): no check.
    assert replace([first_ref]) == []
    # Two added: delete on the object, and the finalizers of the new owner the server serves
    # (a kind it does not serve has no resource to check).
    unknown = {"apiVersion": "example.com/v9", "kind": "Gadget", "name": "g",
               "uid": str(uuid.uuid4()), "blockOwnerDeletion": True}  # fmt: skip
    assert replace([first_ref, _owner(second, "ConfigMap", "v1"), unknown]) == [
        _gc_check("delete", "configmaps", namespace, "child"),
        _gc_check("update", "configmaps", namespace, "second", subresource="finalizers"),
    ]
    # Stripped by hand, then restored: a delete check, then the finalizers check again.
    assert replace(None) == [_gc_check("delete", "configmaps", namespace, "child")]
    assert replace([first_ref]) == [
        _gc_check("delete", "configmaps", namespace, "child"),
        _gc_check("update", "configmaps", namespace, "first", subresource="finalizers"),
    ]
    # A reference that starts blocking is checked as a new one.
    loose = {**first_ref, "blockOwnerDeletion": False}
    assert replace([loose]) == [_gc_check("delete", "configmaps", namespace, "child")]
    assert replace([first_ref]) == [
        _gc_check("delete", "configmaps", namespace, "child"),
        _gc_check("update", "configmaps", namespace, "first", subresource="finalizers"),
    ]


def test_standalone_process_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen(
        [sys.executable, "-m", "e2e.kubeapi", "--port", "0", "--crds", str(PODMONITOR_CRD),
         "--kubeconfig", str(kubeconfig)],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()
        assert ready.startswith("kubeapi ready at http://127.0.0.1:")
        url = ready.rsplit(" ", 1)[-1].strip()
        api_client = config.new_client_from_config(config_file=str(kubeconfig))
        with api_client:
            assert api_client.configuration.host == url
            groups = client.ApisApi(api_client).get_api_versions().groups
            assert "monitoring.coreos.com" in {g.name for g in groups}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_workload_selectors_must_match_their_templates(
    kube: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(kube)
    mismatched = _deployment("web")
    mismatched["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    with pytest.raises(ApiException) as invalid:
        apps.create_namespaced_deployment(namespace, mismatched)
    cause = _status(invalid.value)["details"]["causes"][0]
    assert cause["field"] == "spec.template.metadata.labels"
    assert "`selector` does not match template `labels`" in cause["message"]


def test_a_workload_selector_cannot_change(kube: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(kube)
    apps.create_namespaced_deployment(namespace, _deployment("web"))
    relabelled = {
        "spec": {
            "selector": {"matchLabels": {"app": "web", "tier": "model"}},
            "template": {"metadata": {"labels": {"app": "web", "tier": "model"}}},
        }
    }
    with pytest.raises(ApiException) as invalid:
        apps.patch_namespaced_deployment("web", namespace, relabelled)
    assert invalid.value.status == 422
    cause = _status(invalid.value)["details"]["causes"][0]
    assert cause["field"] == "spec.selector"
    assert cause["message"].endswith("field is immutable")
    stored = apps.read_namespaced_deployment("web", namespace)
    assert stored.spec.selector.match_labels == {"app": "web"}
    assert stored.spec.template.metadata.labels == {"app": "web"}
    # The same selector with an empty part spelled out is no change; a label the selector
    # does not name may come and go.
    same = {
        "spec": {
            "selector": {"matchLabels": {"app": "web"}, "matchExpressions": []},
            "template": {"metadata": {"labels": {"app": "web", "tier": "model"}}},
        }
    }
    patched = apps.patch_namespaced_deployment("web", namespace, same)
    assert patched.spec.template.metadata.labels == {"app": "web", "tier": "model"}
    # Empty and absent are one at any depth: a requirement's `values: []` is no change.
    expressions = {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}
    labelled = _deployment("api")
    labelled["spec"]["selector"].update(expressions)
    labelled["spec"]["template"]["metadata"]["labels"]["tier"] = "model"
    apps.create_namespaced_deployment(namespace, labelled)
    empty_values = {"matchExpressions": [{"key": "tier", "operator": "Exists", "values": []}]}
    body = {"spec": {"selector": {"matchLabels": {"app": "api"}, **empty_values}}}
    assert apps.patch_namespaced_deployment("api", namespace, body).metadata.name == "api"


def test_builtin_schemas_when_enabled() -> None:
    with (
        run_in_thread(validate_builtins=True) as strict_api,
        httpx.Client(base_url=strict_api.url) as http,
    ):
        url = "/apis/apps/v1/namespaces/default/deployments"
        wrong = _deployment("web")
        wrong["spec"]["replicas"] = "two"
        response = http.post(url, json=wrong)
        assert response.status_code == 422
        assert response.json()["details"]["causes"][0]["field"] == "spec.replicas"
        unknown = _deployment("web")
        unknown["spec"]["template"]["spec"]["containers"][0]["imag"] = "typo"
        strict = http.post(url, json=unknown, params={"fieldValidation": "Strict"})
        unknown_field = 'unknown field "spec.template.spec.containers[0].imag"'
        assert strict.status_code == 400
        assert strict.json()["message"] == f"strict decoding error: {unknown_field}"
        assert http.post(url, json=_deployment("web")).status_code == 201


@vlmservice_crd
@pytest.mark.parametrize("example", _example_vlmservices())
def test_rendered_children_pass_a_validating_api(example: dict[str, Any]) -> None:
    from vlm_operator.models import VLMServiceSpec
    from vlm_operator.render import render_children

    spec = VLMServiceSpec.model_validate(example["spec"])
    children = render_children(example["metadata"]["name"], "default", spec)
    with (
        run_in_thread(crds=[PODMONITOR_CRD], validate_builtins=True) as strict_api,
        httpx.Client(base_url=strict_api.url) as http,
    ):
        for child in children:
            group_version = child["apiVersion"]
            root = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
            plural = {"NetworkPolicy": "networkpolicies"}.get(
                child["kind"], child["kind"].lower() + "s"
            )
            response = http.post(
                f"{root}/namespaces/default/{plural}",
                json=child,
                params={"fieldValidation": "Strict"},
            )
            assert response.status_code == 201, (child["kind"], response.text)


def test_a_stricter_crd_ratchets_objects_stored_before_it(
    api: ThreadedKubeAPI, namespace: str
) -> None:
    # Gizmos are widgets under another name, first served without the CEL rule and the
    # bounds of spec.size, then with them (as when a CRD upgrade tightens validation).
    strict = yaml.safe_load(yaml.safe_dump(WIDGET_CRD))
    strict["metadata"]["name"] = "gizmos.example.com"
    strict["spec"]["names"] = {"kind": "Gizmo", "plural": "gizmos", "singular": "gizmo"}
    lax = yaml.safe_load(yaml.safe_dump(strict))
    spec_schema = lax["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec_schema["x-kubernetes-validations"]
    del spec_schema["properties"]["size"]["maximum"]
    url = f"/apis/example.com/v1/namespaces/{namespace}/gizmos"
    merge = {"Content-Type": "application/merge-patch+json"}
    api.register_crd(lax)
    with httpx.Client(base_url=api.url) as http:
        created = http.post(
            url, json={"metadata": {"name": "g"}, "spec": {"size": 20, "replicas": 30}}
        )
        assert created.status_code == 201, created.text
        api.register_crd(strict)
        assert (
            http.post(url, json={"metadata": {"name": "h"}, "spec": {"size": 20}}).status_code
            == 422
        )

        def patch(path: str, body: dict[str, Any]) -> httpx.Response:
            return http.patch(f"{url}/g{path}", content=json.dumps(body).encode(), headers=merge)

        # Writes that leave the invalid fields as they are pass.
        assert patch("/status", {"status": {"replicas": 1}}).status_code == 200
        assert patch("", {"metadata": {"labels": {"team": "a"}}}).status_code == 200
        # A rule of a changed object is evaluated again (spec.replicas > spec.size).
        recolored = patch("", {"spec": {"color": "blue"}})
        assert recolored.status_code == 422, recolored.text
        assert "replicas must not exceed size" in recolored.text
        # Fixing what the rule checks passes, while spec.size (unchanged) stays above its maximum.
        fixed = patch("", {"spec": {"replicas": 5}})
        assert fixed.status_code == 200, fixed.text
        assert fixed.json()["spec"] == {"size": 20, "replicas": 5, "color": "red"}
        # A changed field is held to the schema again.
        resized = patch("", {"spec": {"size": 15}})
        assert resized.status_code == 422
        assert [c["field"] for c in resized.json()["details"]["causes"]] == ["spec.size"]


# -- fidelity to kube-apiserver -------------------------------------------------------------

GAUGE_CRD: dict[str, Any] = yaml.safe_load("""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gauges.fidelity.example.com}
spec:
  group: fidelity.example.com
  scope: Namespaced
  names: {kind: Gauge, plural: gauges, singular: gauge}
  versions:
    - name: v1
      served: true
      storage: true
      selectableFields: [{jsonPath: .spec.color}]
      schema:
        openAPIV3Schema:
          type: object
          properties:
            metadata:
              type: object
              properties:
                name: {type: string, maxLength: 12, pattern: '^[a-z][-a-z0-9]*$'}
            spec:
              type: object
              properties:
                color: {type: string, default: red}
                note: {type: string}
                label: {type: string, nullable: true}
                parts:
                  type: array
                  items:
                    type: object
                    properties:
                      name: {type: string}
                      weight: {type: integer}
""")


def _create_gauge(custom: client.CustomObjectsApi, namespace: str, name: str, **spec: Any) -> Any:
    body = {"apiVersion": "fidelity.example.com/v1", "kind": "Gauge",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip
    return custom.create_namespaced_custom_object(
        "fidelity.example.com", "v1", namespace, "gauges", body
    )


def _watch_config_maps(
    core: client.CoreV1Api, namespace: str, since: str, done: Callable[[list[Any]], bool]
) -> list[Any]:
    """ConfigMap events after ``since``, watched until ``done(events)`` or until the server ends
    the stream (5 s): the deadline of every wait for the background garbage collector."""
    events: list[Any] = []
    stream = watch.Watch()
    for event in stream.stream(core.list_namespaced_config_map, namespace,
                               resource_version=since, timeout_seconds=5):  # fmt: skip
        events.append(event)
        if done(events):
            stream.stop()
    return events


def _deleted_names(
    core: client.CoreV1Api, namespace: str, since: str, expected: set[str]
) -> set[str]:
    def deleted(events: list[Any]) -> set[str]:
        return {e["object"].metadata.name for e in events if e["type"] == "DELETED"}

    return deleted(_watch_config_maps(core, namespace, since, lambda e: expected <= deleted(e)))


def test_garbage_collection_waits_for_every_owner(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    first = core.create_namespaced_config_map(namespace, {"metadata": {"name": "first"}})
    second = core.create_namespaced_config_map(namespace, {"metadata": {"name": "second"}})
    kept_ref = {**_owner(second, "ConfigMap", "v1"), "controller": False}
    refs = [_owner(first, "ConfigMap", "v1"), kept_ref]
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "dependent", "ownerReferences": refs}}
    )
    since = core.list_namespaced_config_map(namespace).metadata.resource_version
    core.delete_namespaced_config_map("first", namespace)

    # One owner left: the dependent stays, and the collector drops the reference to the other.
    def owners(event: Any) -> list[str]:
        return [ref.uid for ref in event["object"].metadata.owner_references or []]

    events = _watch_config_maps(
        core, namespace, since, lambda e: owners(e[-1]) == [second.metadata.uid]
    )
    assert owners(events[-1]) == [second.metadata.uid]
    assert [(e["type"], e["object"].metadata.name) for e in events][-1] == ("MODIFIED", "dependent")
    survivor = core.read_namespaced_config_map("dependent", namespace)
    since = survivor.metadata.resource_version
    core.delete_namespaced_config_map("second", namespace)
    assert "dependent" in _deleted_names(core, namespace, since, {"dependent"})


def test_garbage_collection_deletes_dependents_of_absent_owners(
    kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    elsewhere = core.create_namespaced_config_map(
        "default", {"metadata": {"generateName": "gc-owner-"}}
    )
    since = core.list_namespaced_config_map(namespace).metadata.resource_version

    def dependent(name: str, ref: dict[str, Any]) -> None:
        core.create_namespaced_config_map(
            namespace, {"metadata": {"name": name, "ownerReferences": [ref]}}
        )

    dependent("owned", _owner(owner, "ConfigMap", "v1"))
    dependent("cluster-owned", _owner(core.read_namespace(namespace), "Namespace", "v1"))
    # Written after the valid ones, so their deletion proves the collector has looked at all.
    dependent("wrong-uid", {**_owner(owner, "ConfigMap", "v1"), "uid": str(uuid.uuid4())})
    dependent("other-namespace", _owner(elsewhere, "ConfigMap", "v1"))
    never = {"name": "never-existed", "uid": str(uuid.uuid4())}
    dependent("dangling", {**_owner(owner, "ConfigMap", "v1"), **never})
    absent = {"wrong-uid", "other-namespace", "dangling"}
    assert _deleted_names(core, namespace, since, absent) == absent
    left = {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}
    assert left == {"owner", "owned", "cluster-owned"}


def test_replace_needs_a_resource_version_where_kubernetes_does(
    api: ThreadedKubeAPI, kube: client.ApiClient, namespace: str
) -> None:
    custom, core = client.CustomObjectsApi(kube), client.CoreV1Api(kube)
    widget = custom.create_namespaced_custom_object("example.com", "v1", namespace, "widgets", {
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
        "spec": {"size": 1}})  # fmt: skip
    del widget["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as unconditional:
        custom.replace_namespaced_custom_object(
            "example.com", "v1", namespace, "widgets", "w", widget
        )
    body = _status(unconditional.value)
    assert (unconditional.value.status, body["reason"]) == (422, "Invalid")
    assert body["message"] == ('widgets.example.com "w" is invalid: metadata.resourceVersion: '
                               "Invalid value: 0x0: must be specified for an update")  # fmt: skip
    service = core.create_namespaced_service(
        namespace, {"metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}]}}
    )
    service.metadata.resource_version = None
    with pytest.raises(ApiException) as service_update:
        core.replace_namespaced_service("svc", namespace, service)
    assert service_update.value.status == 422
    extensions = client.ApiextensionsV1Api(kube)
    crd = extensions.read_custom_resource_definition("widgets.example.com")
    crd.metadata.resource_version = None
    with pytest.raises(ApiException) as crd_update:
        extensions.replace_custom_resource_definition("widgets.example.com", crd)
    assert crd_update.value.status == 422
    # ConfigMaps and Deployments allow an unconditional update.
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cm"}})
    replaced = core.replace_namespaced_config_map(
        "cm", namespace, {"metadata": {"name": "cm"}, "data": {"k": "v"}}
    )
    assert replaced.data == {"k": "v"}
    apps = client.AppsV1Api(kube)
    apps.create_namespaced_deployment(namespace, _deployment("web"))
    assert (
        apps.replace_namespaced_deployment(
            "web", namespace, _deployment("web", replicas=3)
        ).spec.replicas
        == 3
    )


def test_replace_with_another_uid_is_a_conflict(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    created = core.create_namespaced_config_map(namespace, {"metadata": {"name": "cm"}})
    other_uid = "00000000-0000-0000-0000-000000000001"
    body = {"metadata": {"name": "cm", "uid": other_uid,
                         "resourceVersion": created.metadata.resource_version},
            "data": {"k": "v"}}  # fmt: skip
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_config_map("cm", namespace, body)
    status = _status(conflict.value)
    assert (conflict.value.status, status["reason"]) == (409, "Conflict")
    assert (f"Precondition failed: UID in precondition: {other_uid}, "
            f"UID in object meta: {created.metadata.uid}") in status["message"]  # fmt: skip
    assert core.read_namespaced_config_map("cm", namespace).data is None


def test_create_with_a_resource_version_is_refused(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_config_map(
            namespace, {"metadata": {"name": "cm", "resourceVersion": "5"}}
        )
    assert refused.value.status == 500
    assert _status(refused.value)["message"] == (
        "resourceVersion should not be set on objects to be created"
    )
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("cm", namespace)
    assert missing.value.status == 404


def test_custom_resource_names_follow_the_crds_metadata_schema(
    api: ThreadedKubeAPI, kube: client.ApiClient, namespace: str
) -> None:
    api.register_crd(GAUGE_CRD)
    custom = client.CustomObjectsApi(kube)
    for bad in ("9lives", "much-too-long-name"):  # the pattern, then maxLength (12)
        with pytest.raises(ApiException) as invalid:
            _create_gauge(custom, namespace, bad)
        assert invalid.value.status == 422
        assert [c["field"] for c in _status(invalid.value)["details"]["causes"]] == [
            "metadata.name"
        ]
    created = _create_gauge(custom, namespace, "fine-name")
    assert created["metadata"]["name"] == "fine-name"


@vlmservice_crd
def test_vlmservice_names_follow_its_crd(kube: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(kube)
    for bad in ("9starts-digit", "my.dotted"):  # valid object names, refused by the CRD's pattern
        with pytest.raises(ApiException) as invalid:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                   _vlmservice(bad))  # fmt: skip
        causes = _status(invalid.value)["details"]["causes"]
        assert [c["field"] for c in causes] == ["metadata.name"]


def test_null_fields_are_pruned_or_defaulted(api: ThreadedKubeAPI, namespace: str) -> None:
    api.register_crd(GAUGE_CRD)
    url = f"/apis/fidelity.example.com/v1/namespaces/{namespace}/gauges"
    with httpx.Client(base_url=api.url) as http:
        spec = {
            "color": None,
            "note": None,
            "label": None,
            "parts": [{"name": "a", "weight": None}],
        }
        created = http.post(url, json={"metadata": {"name": "g"}, "spec": spec})
        assert created.status_code == 201, created.text
        # A null with a default is defaulted, a nullable one kept, any other one dropped.
        assert created.json()["spec"] == {"color": "red", "label": None, "parts": [{"name": "a"}]}
        merged = http.patch(f"{url}/g", content=json.dumps(
            {"spec": {"note": "n", "parts": [{"name": "b", "weight": None}]}}),
            headers={"Content-Type": "application/merge-patch+json"})  # fmt: skip
        assert merged.status_code == 200, merged.text
        assert merged.json()["spec"]["parts"] == [{"name": "b"}]
        patched = http.patch(f"{url}/g", content=json.dumps(
            [{"op": "add", "path": "/spec/parts/0/weight", "value": None}]),
            headers={"Content-Type": JSON_PATCH})  # fmt: skip
        assert patched.status_code == 200, patched.text
        assert patched.json()["spec"]["parts"] == [{"name": "b"}]


def test_a_whole_float_in_an_integer_field_is_read_back_as_an_integer(
    api: ThreadedKubeAPI, namespace: str
) -> None:
    api.register_crd(GAUGE_CRD)
    url = f"/apis/fidelity.example.com/v1/namespaces/{namespace}/gauges"
    with httpx.Client(base_url=api.url) as http:
        spec = {"parts": [{"name": "a", "weight": 2.0}]}
        created = http.post(url, content=json.dumps({"metadata": {"name": "g"}, "spec": spec}))
        assert created.status_code == 201, created.text
        assert '"weight":2}' in created.text.replace(" ", "")
        assert http.get(f"{url}/g").json()["spec"]["parts"] == [{"name": "a", "weight": 2}]
        spec = {"parts": [{"name": "a", "weight": 2.5}]}
        refused = http.post(url, json={"metadata": {"name": "h"}, "spec": spec})
        assert refused.status_code == 422, refused.text
        assert "must be of type integer" in refused.text


def test_a_terminating_namespace_refuses_new_objects(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    name = f"terminating-{next(_NAMESPACES)}"
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_config_map(
        name, {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}
    )
    core.delete_namespace(name)
    assert core.read_namespace(name).status.phase == "Terminating"
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_config_map(name, {"metadata": {"name": "late"}})
    body = _status(refused.value)
    assert (refused.value.status, body["reason"]) == (403, "Forbidden")
    assert body["message"] == (f'configmaps "late" is forbidden: unable to create new content in '
                               f"namespace {name} because it is being terminated")  # fmt: skip
    assert body["details"]["causes"][0]["reason"] == "NamespaceTerminating"
    # What is already there can still be written: releasing it lets the namespace go.
    core.patch_namespaced_config_map("held", name, {"metadata": {"finalizers": None}})
    assert name not in {n.metadata.name for n in core.list_namespace().items}


def test_unknown_field_warnings_follow_field_validation(
    api: ThreadedKubeAPI, namespace: str
) -> None:
    url = f"/apis/example.com/v1/namespaces/{namespace}/widgets"

    def widget(name: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "spec": {"size": 1, "bogus": 1}}

    with httpx.Client(base_url=api.url) as http:
        warned = http.post(url, json=widget("warned"))
        assert warned.status_code == 201
        assert warned.headers.get_list("warning") == ['299 - "unknown field \\"spec.bogus\\""']
        strict = http.post(url, json=widget("strict"), params={"fieldValidation": "Strict"})
        assert (strict.status_code, strict.json()["reason"]) == (400, "BadRequest")
        assert strict.json()["message"] == 'strict decoding error: unknown field "spec.bogus"'
        ignored = http.post(url, json=widget("ignored"), params={"fieldValidation": "Ignore"})
        assert ignored.status_code == 201
        assert "warning" not in ignored.headers


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_prints_the_servers_warnings(
    api: ThreadedKubeAPI, namespace: str, tmp_path: Path
) -> None:
    with httpx.Client(base_url=api.url) as http:
        http.post(f"/apis/example.com/v1/namespaces/{namespace}/widgets",
                  json={"metadata": {"name": "w"}, "spec": {"size": 1}})  # fmt: skip
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(api.kubeconfig), "--cache-dir", str(tmp_path),
         "--namespace", namespace, "patch", "widgets.example.com", "w", "--type", "merge",
         "--patch", '{"spec": {"bogus": 1}}'],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert 'Warning: unknown field "spec.bogus"' in result.stderr


def test_openapi_v3_shows_field_validation_on_every_patch(api: ThreadedKubeAPI) -> None:
    """What kubectl reads to validate on the server instead of downloading every schema."""
    with httpx.Client(base_url=api.url) as http:
        root = http.get("/openapi/v3").json()["paths"]
        assert {"api/v1", "apis/apps/v1", "apis/example.com/v1"} <= set(root)
        document = http.get(root["apis/example.com/v1"]["serverRelativeURL"]).json()
        assert http.get("/openapi/v3/apis/nowhere.example.com/v1").status_code == 404
    item = document["paths"]["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"]
    patch = item["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {
        "group": "example.com", "version": "v1", "kind": "Widget"}  # fmt: skip
    assert {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}} in patch[
        "parameters"
    ]
    schema = document["components"]["schemas"]["com.example.v1.Widget"]
    assert schema["properties"]["spec"]["properties"]["size"]["maximum"] == 10  # the CRD's own
    assert schema["x-kubernetes-group-version-kind"] == [patch["x-kubernetes-group-version-kind"]]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_applies_validating_on_the_server(
    api: ThreadedKubeAPI, namespace: str, tmp_path: Path
) -> None:
    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(api.kubeconfig), "--cache-dir", str(tmp_path),
             "--namespace", namespace, *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "k"},
         "spec": {"size": 2}}))  # fmt: skip
    bad.write_text(yaml.safe_dump(
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "b"},
         "spec": {"size": 2, "bogus": 1}}))  # fmt: skip
    created = kubectl("apply", "-f", str(good))
    assert created.returncode == 0, created.stderr
    assert "widget.example.com/k created" in created.stdout
    again = kubectl("apply", "-f", str(good))
    assert "widget.example.com/k unchanged" in again.stdout, again.stderr
    refused = kubectl("apply", "-f", str(bad))
    assert refused.returncode != 0
    assert 'strict decoding error: unknown field "spec.bogus"' in refused.stderr
    explained = kubectl("explain", "widgets.spec")
    assert explained.returncode == 0, explained.stderr
    assert "size" in explained.stdout


def test_crds_are_validated_before_they_serve(kube: client.ApiClient) -> None:
    extensions = client.ApiextensionsV1Api(kube)
    broken = yaml.safe_load(yaml.safe_dump(GAUGE_CRD).replace("gauge", "broken"))
    spec_schema = broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["x-kubernetes-validations"] = [{"rule": "self.note >>> 1"}]
    spec_schema["properties"]["untyped"] = {}
    with pytest.raises(ApiException) as invalid:
        extensions.create_custom_resource_definition(broken)
    assert invalid.value.status == 422
    root = "spec.versions[0].schema.openAPIV3Schema.properties[spec]"
    assert sorted(c["field"] for c in _status(invalid.value)["details"]["causes"]) == [
        f"{root}.properties[untyped].type", f"{root}.x-kubernetes-validations[0].rule"]  # fmt: skip
    labelled = yaml.safe_load(yaml.safe_dump(GAUGE_CRD).replace("gauge", "labelled"))
    metadata = labelled["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "metadata"
    ]
    metadata["properties"]["labels"] = {"type": "object"}
    with pytest.raises(ApiException) as forbidden:
        extensions.create_custom_resource_definition(labelled)
    cause = _status(forbidden.value)["details"]["causes"][0]
    assert cause["field"] == "spec.versions[0].schema.openAPIV3Schema.properties[metadata]"
    with pytest.raises(ApiException) as gone:
        extensions.read_custom_resource_definition("brokens.fidelity.example.com")
    assert gone.value.status == 404


def _crd_documents() -> list[Any]:
    found = []
    for path in [*sorted((REPO / "crds").glob("*.yaml")), PODMONITOR_CRD,
                 *sorted((REPO / "charts").glob("*/crds/*.yaml")),
                 *sorted((REPO / "manifests").glob("*.yaml"))]:  # fmt: skip
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
                found.append(pytest.param(document, id=f"{path.relative_to(REPO)}"))
    return found


@pytest.mark.parametrize("crd", [*_crd_documents(), WIDGET_CRD, GAUGE_CRD])
def test_the_projects_crds_pass_crd_validation(crd: dict[str, Any]) -> None:
    with run_in_thread() as fresh, httpx.Client(base_url=fresh.url) as http:
        response = http.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
        assert response.status_code == 201, response.text


def test_dry_run_scale_answers_a_scale(kube: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(kube)
    apps.create_namespaced_deployment(namespace, _deployment("web", replicas=2))
    scale = apps.patch_namespaced_deployment_scale(
        "web", namespace, {"spec": {"replicas": 5}}, dry_run="All"
    )
    assert (scale.kind, scale.api_version, scale.spec.replicas) == ("Scale", "autoscaling/v1", 5)
    assert apps.read_namespaced_deployment("web", namespace).spec.replicas == 2
    custom = client.CustomObjectsApi(kube)
    custom.create_namespaced_custom_object("example.com", "v1", namespace, "widgets", {
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
        "spec": {"size": 5, "replicas": 1}})  # fmt: skip
    cr_scale = custom.patch_namespaced_custom_object_scale(
        "example.com", "v1", namespace, "widgets", "w", {"spec": {"replicas": 3}}, dry_run="All"
    )
    assert (cr_scale["kind"], cr_scale["spec"]) == ("Scale", {"replicas": 3})


def test_field_selectors_are_limited_to_selectable_fields(
    api: ThreadedKubeAPI, kube: client.ApiClient, namespace: str
) -> None:
    api.register_crd(GAUGE_CRD)
    core, custom = client.CoreV1Api(kube), client.CustomObjectsApi(kube)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cm"}, "data": {"k": "v"}})
    with pytest.raises(ApiException) as unsupported:
        core.list_namespaced_config_map(namespace, field_selector="data.k=v")
    assert (unsupported.value.status, _status(unsupported.value)["message"]) == (
        400, "field label not supported: data.k")  # fmt: skip
    with httpx.Client(base_url=api.url) as http:
        watched = http.get(f"/api/v1/namespaces/{namespace}/configmaps",
                           params={"watch": "true", "fieldSelector": "data.k=v"})  # fmt: skip
        assert watched.status_code == 400
    core.create_namespaced_pod(namespace, {"metadata": {"name": "p"}, "spec": {
        "nodeName": "node-1", "containers": [{"name": "c", "image": "i"}]}})  # fmt: skip
    pods = core.list_namespaced_pod(
        namespace, field_selector="spec.nodeName=node-1,status.phase!=Running"
    )
    assert [p.metadata.name for p in pods.items] == ["p"]
    involved = {"kind": "Pod", "name": "p"}
    core.create_namespaced_event(
        namespace, {"metadata": {"name": "e"}, "reason": "Tested", "involvedObject": involved}
    )
    events = core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=p,reason=Tested"
    )
    assert [e.metadata.name for e in events.items] == ["e"]
    with pytest.raises(ApiException) as custom_field:
        custom.list_namespaced_custom_object("example.com", "v1", namespace, "widgets",
                                             field_selector="spec.size=1")  # fmt: skip
    assert custom_field.value.status == 400
    _create_gauge(custom, namespace, "blue", color="blue")
    _create_gauge(custom, namespace, "red")  # the default color
    selected = custom.list_namespaced_custom_object(
        "fidelity.example.com", "v1", namespace, "gauges", field_selector="spec.color=red"
    )
    assert [g["metadata"]["name"] for g in selected["items"]] == ["red"]


def test_only_dry_run_all_is_accepted(api: ThreadedKubeAPI, namespace: str) -> None:
    url = f"/api/v1/namespaces/{namespace}/configmaps"
    with httpx.Client(base_url=api.url) as http:
        refused = http.post(url, json={"metadata": {"name": "cm"}}, params={"dryRun": "true"})
        assert (refused.status_code, refused.json()["reason"]) == (422, "Invalid")
        assert refused.json()["message"] == (
            'CreateOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: '
            '[]string{"true"}: supported values: "All"')  # fmt: skip
        assert http.get(f"{url}/cm").status_code == 404
        assert http.post(url, json={"metadata": {"name": "cm"}},
                         params={"dryRun": "All"}).status_code == 201  # fmt: skip
        assert http.get(f"{url}/cm").status_code == 404
        assert http.post(url, json={"metadata": {"name": "cm"}}).status_code == 201
        patched = http.patch(f"{url}/cm", params={"dryRun": "yes"}, content=b"{}",
                             headers={"Content-Type": "application/merge-patch+json"})  # fmt: skip
        assert (patched.status_code, patched.json()["details"]["kind"]) == (422, "PatchOptions")
        deleted = http.delete(f"{url}/cm", params={"dryRun": "1"})
        assert (deleted.status_code, deleted.json()["details"]["kind"]) == (422, "DeleteOptions")
        assert http.get(f"{url}/cm").status_code == 200
        validation = http.post(url, json={"metadata": {"name": "x"}},
                               params={"fieldValidation": "Loose"})  # fmt: skip
        assert validation.status_code == 422


_TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


def test_a_get_asked_for_a_table_answers_the_crds_printer_columns(
    api: ThreadedKubeAPI, namespace: str
) -> None:
    """What kubectl get prints: the CRD's additionalPrinterColumns, typed as the real server
    types them (a date as an age, a missing value as null)."""
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VLMService",
            "metadata": {"name": "shown"},
            "spec": {"model": {"id": "Qwen/Qwen3-VL-2B-Instruct", "runtime": "fake"}}}  # fmt: skip
    with httpx.Client(base_url=api.url) as http:
        assert http.post(base, json=body).status_code == 201
        status = {"status": {"replicas": 3, "readyReplicas": 2, "desiredReplicas": 4,
                             "signals": {"waiting": 1.5, "p95Seconds": 9.25}}}  # fmt: skip
        patched = http.patch(f"{base}/shown/status", json=status,
                             headers={"Content-Type": "application/merge-patch+json"})  # fmt: skip
        assert patched.status_code == 200, patched.text
        listed = http.get(base, headers={"Accept": _TABLE}).json()
        one = http.get(f"{base}/shown", headers={"Accept": _TABLE}).json()
        plain = http.get(f"{base}/shown").json()
    assert listed["kind"] == "Table"
    assert listed["apiVersion"] == "meta.k8s.io/v1"
    columns = [c["name"] for c in listed["columnDefinitions"]]
    assert columns == ["Name", "Ready", "Replicas", "Desired", "In-Flight/Pod", "Queue", "P95",
                       "Model", "Runtime", "Age"]  # fmt: skip
    priorities = {c["name"]: c["priority"] for c in listed["columnDefinitions"]}
    assert priorities["Model"] == 1  # kubectl shows it with -o wide only
    assert priorities["Ready"] == 0
    [row] = listed["rows"]
    name, ready, replicas, desired, per_pod, queue, p95, model, runtime, age = row["cells"]
    assert (name, ready, replicas, desired) == ("shown", 2, 3, 4)
    assert per_pod is None  # not in the status: kubectl prints <none>
    assert (queue, p95, model, runtime) == (1.5, 9.25, "Qwen/Qwen3-VL-2B-Instruct", "fake")
    assert re.fullmatch(r"\d+s", age), age  # an age, not the timestamp
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["namespace"] == namespace  # for kubectl get -A
    assert one["rows"][0]["cells"] == row["cells"]
    assert plain["kind"] == "VLMService"  # a client that asks for JSON still gets the object


def test_a_table_of_built_in_kinds_has_their_usual_columns(
    api: ThreadedKubeAPI, namespace: str
) -> None:
    template = {"metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]}}  # fmt: skip
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                  "spec": {"replicas": 3, "selector": {"matchLabels": {"a": "b"}},
                           "template": template}}  # fmt: skip
    with httpx.Client(base_url=api.url) as http:
        path = f"/apis/apps/v1/namespaces/{namespace}/deployments"
        assert http.post(path, json=deployment).status_code == 201
        table = http.get(path, headers={"Accept": _TABLE}).json()
        services = http.get(f"/api/v1/namespaces/{namespace}/services",
                            headers={"Accept": _TABLE}).json()  # fmt: skip
    assert [c["name"] for c in table["columnDefinitions"]] == [
        "Name", "Ready", "Up-to-date", "Available", "Age"]  # fmt: skip
    assert table["rows"][0]["cells"][:4] == ["d", "0/3", 0, 0]
    assert re.fullmatch(r"\d+s", table["rows"][0]["cells"][4])
    assert [c["name"] for c in services["columnDefinitions"]] == ["Name", "Age"]
    assert services["rows"] == []
    path = f"/api/v1/namespaces/{namespace}/pods"

    def pod_row(name: str, spec: dict[str, Any], status: dict[str, Any]) -> list[Any]:
        """Ready, Status and Restarts of a pod created with ``spec``, then given ``status``."""
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
        with httpx.Client(base_url=api.url) as http:
            assert http.post(path, json=pod).status_code == 201
            merge = {"Content-Type": "application/merge-patch+json"}
            patched = http.patch(f"{path}/{name}/status", json={"status": status}, headers=merge)
            assert patched.status_code == 200, patched.text
            pods = http.get(path, headers={"Accept": _TABLE}).json()
        assert [c["name"] for c in pods["columnDefinitions"]] == [
            "Name", "Ready", "Status", "Restarts", "Age"]  # fmt: skip
        (row,) = [r["cells"] for r in pods["rows"] if r["cells"][0] == name]
        return list(row[1:4])

    containers = [{"name": "a", "image": "i"}, {"name": "b", "image": "i"}]
    assert pod_row("p", {"containers": containers}, {"phase": "Running", "containerStatuses": [
        {"name": "a", "ready": True, "restartCount": 2},
        {"name": "b", "ready": False, "restartCount": 1}]}) == ["1/2", "Running", 3]  # fmt: skip
    # A native sidecar (an init container that keeps running) counts as kubectl counts
    # it; an init container that ran to its end does not.
    init = [{"name": "download", "image": "i"},
            {"name": "model", "image": "i", "restartPolicy": "Always"}]  # fmt: skip
    assert pod_row(
        "s",
        {"containers": [{"name": "gate", "image": "i"}], "initContainers": init},
        {"phase": "Running", "containerStatuses": [{"name": "gate", "ready": True}],
         "initContainerStatuses": [{"name": "download", "ready": False, "restartCount": 0},
                                   {"name": "model", "ready": True, "restartCount": 1}]},
    ) == ["2/2", "Running", 1]  # fmt: skip


def test_a_watch_asked_for_a_table_sends_rows(api: ThreadedKubeAPI, namespace: str) -> None:
    """kubectl get -w: each event's object is a Table of the one changed row."""
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VLMService",
            "metadata": {"name": "watched"},
            "spec": {"model": {"id": "Qwen/Qwen3-VL-2B-Instruct", "runtime": "fake"}}}  # fmt: skip
    with httpx.Client(base_url=api.url, timeout=30) as http:
        assert http.post(base, json=body).status_code == 201
        params = {"watch": "true", "timeoutSeconds": "1", "resourceVersion": "0"}
        with http.stream("GET", base, params=params, headers={"Accept": _TABLE}) as events:
            first = json.loads(next(events.iter_lines()))
        refused = http.get(base, params={"includeObject": "All"}, headers={"Accept": _TABLE})
    assert first["type"] == "ADDED"
    assert first["object"]["kind"] == "Table"
    assert first["object"]["columnDefinitions"][1]["name"] == "Ready"
    assert first["object"]["rows"][0]["cells"][0] == "watched"
    assert refused.status_code == 400
    assert "includeObject" in refused.json()["message"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_get_prints_the_printer_columns(
    api: ThreadedKubeAPI, namespace: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "vlm.yaml"
    manifest.write_text(yaml.safe_dump(
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VLMService", "metadata": {"name": "seen"},
         "spec": {"model": {"id": "Qwen/Qwen3-VL-2B-Instruct", "runtime": "fake"}}}))  # fmt: skip
    command = ["kubectl", "--kubeconfig", str(api.kubeconfig), "--cache-dir", str(tmp_path),
               "--namespace", namespace]  # fmt: skip
    run = subprocess.run([*command, "apply", "-f", str(manifest)], capture_output=True,
                         text=True, timeout=60, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = subprocess.run([*command, "get", "vlms", "-o", "wide"], capture_output=True,
                         text=True, timeout=60, check=False)  # fmt: skip
    assert got.returncode == 0, got.stderr
    header, row = got.stdout.splitlines()
    assert header.split() == ["NAME", "READY", "REPLICAS", "DESIRED", "IN-FLIGHT/POD", "QUEUE",
                              "P95", "MODEL", "RUNTIME", "AGE"]  # fmt: skip
    assert row.split()[0] == "seen"
    assert "Qwen/Qwen3-VL-2B-Instruct" in row.split()
    # --sort-by asks the rows to carry whole objects (includeObject=Object).
    sorted_by = subprocess.run([*command, "get", "vlms", "--sort-by=.spec.model.id"],
                               capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert sorted_by.returncode == 0, sorted_by.stderr
    assert sorted_by.stdout.splitlines()[1].split()[0] == "seen"


# -- what a real server refuses or rewrites ---------------------------------------------------


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_json_without_numbers_is_a_bad_request(
    api: ThreadedKubeAPI, namespace: str, token: str
) -> None:
    # Python's json reads these tokens (and the kubernetes client writes a float('nan')
    # as one); JSON has none of them, and a real server answers 400.
    body = '{"metadata": {"name": "w"}, "spec": {"size": 1, "ratio": ' + token + "}}"
    with httpx.Client(base_url=api.url) as http:
        answer = http.post(
            f"/apis/example.com/v1/namespaces/{namespace}/widgets",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert answer.status_code == 400, answer.text
        assert token.lstrip("-") in answer.json()["message"]
        assert http.get(f"/apis/example.com/v1/namespaces/{namespace}/widgets/w").status_code == 404


def test_quantities_are_stored_in_canonical_form(kube: client.ApiClient, namespace: str) -> None:
    manifest = _deployment("quantities")
    pod = manifest["spec"]["template"]["spec"]
    pod["containers"][0]["resources"] = {
        "requests": {"cpu": "0.5", "memory": "2048Mi", "ephemeral-storage": "1.5Gi"},
        "limits": {"cpu": "1000m", "memory": "3Gi"},
    }
    pod["volumes"] = [{"name": "scratch", "emptyDir": {"sizeLimit": "1024Ki"}}]
    apps = client.AppsV1Api(kube)
    apps.create_namespaced_deployment(namespace, manifest)
    stored = apps.read_namespaced_deployment("quantities", namespace).to_dict()
    resources = stored["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"] == {"cpu": "500m", "memory": "2Gi", "ephemeral-storage": "1536Mi"}
    assert resources["limits"] == {"cpu": "1", "memory": "3Gi"}
    assert stored["spec"]["template"]["spec"]["volumes"][0]["empty_dir"]["size_limit"] == "1Mi"


@pytest.mark.parametrize(
    ("written", "stored"),
    [("0.5", "500m"), ("2048Mi", "2Gi"), ("1000m", "1"), ("1536Mi", "1536Mi"), ("0.5Ki", "512"),
     ("2000", "2k"), ("1500", "1500"), ("1e3", "1e3"), ("12e9", "12e9"), ("0.1n", "1n"),
     ("0", "0"), ("8", "8"), ("12Gi", "12Gi"),
     # Kept as written where the parser finds the number canonical already.
     ("1.250", "1.250"), ("1.500k", "1.500k"), ("+1", "+1"), ("0100Mi", "0100Mi"),
     ("100E", "100E"), ("1e21", "1e21"), ("1e20", "100e18"), ("1e30", "1e30")],
)  # fmt: skip
def test_a_quantity_keeps_its_format_with_the_largest_whole_suffix(
    written: str, stored: str
) -> None:
    assert canonical_quantity(written) == stored


def test_a_service_name_must_start_with_a_letter(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    service = {"metadata": {"name": "1abc"}, "spec": {"ports": [{"port": 80}]}}
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_service(namespace, service)
    assert refused.value.status == 422
    assert "DNS-1035 label" in _status(refused.value)["message"]
    # Other kinds take a DNS subdomain, digits first included.
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "1abc"}})


def test_a_deployments_annotations_are_part_of_its_generation(
    kube: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(kube)
    apps.create_namespaced_deployment(namespace, _deployment("annotated"))
    patched = apps.patch_namespaced_deployment(
        "annotated", namespace, {"metadata": {"annotations": {"team": "vision"}}}
    )
    assert patched.metadata.generation == 2
    relabelled = apps.patch_namespaced_deployment(
        "annotated", namespace, {"metadata": {"labels": {"team": "vision"}}}
    )
    assert relabelled.metadata.generation == 2  # labels are not
    # Other kinds count the spec alone.
    core = client.CoreV1Api(kube)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "c"}, "data": {"a": "1"}})
    annotated = core.patch_namespaced_config_map(
        "c", namespace, {"metadata": {"annotations": {"team": "vision"}}}
    )
    assert annotated.metadata.generation in (None, 1)


def test_metadata_emptied_by_a_patch_is_not_kept_and_changes_nothing(
    kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    created = core.create_namespaced_config_map(namespace, {"metadata": {"name": "bare"}})
    again = core.patch_namespaced_config_map(
        "bare", namespace, {"metadata": {"annotations": {"gone": None}, "labels": {}}}
    )
    assert again.metadata.resource_version == created.metadata.resource_version
    assert again.metadata.annotations is None
    assert again.metadata.labels is None
    labelled = core.patch_namespaced_config_map(
        "bare", namespace, {"metadata": {"labels": {"a": "b"}}}
    )
    unlabelled = core.patch_namespaced_config_map(
        "bare", namespace, {"metadata": {"labels": {"a": None}}}
    )
    assert unlabelled.metadata.resource_version != labelled.metadata.resource_version
    assert unlabelled.metadata.labels is None


def test_a_put_into_another_namespace_is_a_bad_request(
    kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "here"}})
    stored = core.read_namespaced_config_map("here", namespace).to_dict()
    stored["metadata"]["namespace"] = "elsewhere"
    with pytest.raises(ApiException) as refused:
        core.replace_namespaced_config_map("here", namespace, stored)
    assert refused.value.status == 400
    assert "does not match the namespace" in _status(refused.value)["message"]


def test_a_trailing_newline_makes_names_labels_and_patterns_invalid(
    api: ThreadedKubeAPI, namespace: str
) -> None:
    # Go's `$` is the end of the text; Python's also matches before a final "\n".
    configmaps = f"/api/v1/namespaces/{namespace}/configmaps"
    with httpx.Client(base_url=api.url) as http:
        invalid = [({"name": "abc\n"}, "metadata.name"),
                   ({"name": "a", "labels": {"k\n": "v"}}, "metadata.labels"),
                   ({"name": "a", "labels": {"k": "v\n"}}, "metadata.labels")]  # fmt: skip
        for metadata, field in invalid:
            response = http.post(configmaps, json={"metadata": metadata})
            assert response.status_code == 422, response.text
            assert [c["field"] for c in response.json()["details"]["causes"]] == [field]
        widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
                  "spec": {"size": 1, "name": "abc\n"}}  # fmt: skip
        response = http.post(f"/apis/example.com/v1/namespaces/{namespace}/widgets", json=widget)
        assert response.status_code == 422, response.text
        assert [c["field"] for c in response.json()["details"]["causes"]] == ["spec.name"]


def test_a_crd_pattern_must_compile_as_a_go_regexp(api: ThreadedKubeAPI) -> None:
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    with httpx.Client(base_url=api.url) as http:
        for pattern in ("(", "^(?=a)"):  # a syntax error; a look-ahead, which RE2 lacks
            crd = yaml.safe_load(yaml.safe_dump(GAUGE_CRD).replace("gauge", "patterned"))
            spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            spec["properties"]["note"]["pattern"] = pattern
            response = http.post(crds, json=crd)
            assert response.status_code == 422, response.text
            (cause,) = response.json()["details"]["causes"]
            assert cause["field"] == (
                "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[note].pattern"
            )
            assert "must be a valid regular expression" in cause["message"]


def test_an_object_leaving_a_watched_selection_is_deleted_as_it_was(
    kube: client.ApiClient, namespace: str
) -> None:
    # The watch cache sends DELETED with the previous object at the new resourceVersion.
    core = client.CoreV1Api(kube)
    start = core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "x", "labels": {"sel": "1"}}}
    ).metadata.resource_version
    moved = core.patch_namespaced_config_map("x", namespace, {"metadata": {"labels": {"sel": "0"}}})
    events = list(watch.Watch().stream(core.list_namespaced_config_map, namespace,
                                       label_selector="sel=1", resource_version=start,
                                       timeout_seconds=1))  # fmt: skip
    assert [e["type"] for e in events] == ["DELETED"]
    assert events[0]["object"].metadata.labels == {"sel": "1"}
    assert events[0]["object"].metadata.resource_version == moved.metadata.resource_version


def test_undecodable_bodies_and_parameters_are_bad_requests(
    api: ThreadedKubeAPI, kube: client.ApiClient, namespace: str
) -> None:
    client.AppsV1Api(kube).create_namespaced_deployment(namespace, _deployment("d"))
    deployments = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    merge = {"Content-Type": "application/merge-patch+json"}
    with httpx.Client(base_url=api.url) as http:
        for response in (http.put(f"{deployments}/d/scale", json={"spec": 5}),
                         http.patch(f"{deployments}/d/scale", content=b'{"spec": 5}',
                                    headers=merge)):  # fmt: skip
            assert response.status_code == 400, response.text
            assert "Scale.spec" in response.json()["message"]
        broken = _deployment("e")
        broken["spec"]["selector"]["matchLabels"] = "x"
        response = http.post(deployments, json=broken)
        assert response.status_code == 400, response.text
        assert "spec.selector.matchLabels" in response.json()["message"]
        for timeout in ("nan", "inf", "1.5"):
            params = {"watch": "1", "timeoutSeconds": timeout}
            response = http.get(f"/api/v1/namespaces/{namespace}/configmaps", params=params)
            assert response.status_code == 400, timeout


def test_a_version_dropped_from_a_crd_is_no_longer_served(api: ThreadedKubeAPI) -> None:
    crd = yaml.safe_load(yaml.safe_dump(GAUGE_CRD).replace("gauge", "versioned"))
    crd["spec"]["versions"].append({**crd["spec"]["versions"][0], "name": "v2", "storage": False})
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    listing = "/apis/fidelity.example.com/v2/versioneds"
    with httpx.Client(base_url=api.url) as http:
        created = http.post(crds, json=crd).json()
        assert http.get(listing).status_code == 200
        created["spec"]["versions"][1]["served"] = False
        response = http.put(f"{crds}/{crd['metadata']['name']}", json=created)
        assert response.status_code == 200, response.text
        assert http.get(listing).status_code == 404
        group = http.get("/apis/fidelity.example.com").json()
        assert [v["version"] for v in group["versions"]] == ["v1"]
        assert http.get("/apis/fidelity.example.com/v1/versioneds").status_code == 200


def test_pod_specs_pdbs_and_service_ports_are_validated(
    api: ThreadedKubeAPI, namespace: str
) -> None:
    # What a real server's validation refuses and a rendering could get wrong.
    bad = _deployment("bad")
    pod = bad["spec"]["template"]["spec"]
    pod["containers"][0].update(
        ports=[{"containerPort": 70000}],
        env=[{"name": "1BAD", "value": "x"}],
        resources={"requests": {"memory": "2Gi"}, "limits": {"memory": "1024Mi"}},
    )
    pod["containers"].append({"name": "Bad_Name", "image": "x"})
    pod["initContainers"] = [{"name": "gate", "image": "x"}]  # the same name as a container
    base = f"/apis/apps/v1/namespaces/{namespace}"
    with httpx.Client(base_url=api.url) as http:
        response = http.post(f"{base}/deployments", json=bad)
        assert response.status_code == 422, response.text
        fields = sorted(c["field"] for c in response.json()["details"]["causes"])
        containers = "spec.template.spec.containers"
        assert fields == [
            f"{containers}[0].env[0].name",
            f"{containers}[0].name",
            f"{containers}[0].ports[0].containerPort",
            f"{containers}[0].resources.requests",
            f"{containers}[1].name",
        ]
        # Requests equal to their limits, written otherwise, are fine.
        good = _deployment("good")
        good["spec"]["template"]["spec"]["containers"][0]["resources"] = {
            "requests": {"memory": "1Gi", "cpu": "1"},
            "limits": {"memory": "1024Mi", "cpu": "1000m"},
        }
        assert http.post(f"{base}/deployments", json=good).status_code == 201
        pdb = {"metadata": {"name": "b"},
               "spec": {"minAvailable": 1, "maxUnavailable": 1,
                        "selector": {"matchLabels": {"app": "good"}}}}  # fmt: skip
        response = http.post(
            f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets", json=pdb
        )
        assert response.status_code == 422, response.text
        assert [c["field"] for c in response.json()["details"]["causes"]] == ["spec"]
        service = {"metadata": {"name": "s"},
                   "spec": {"selector": {"app": "good"},
                            "ports": [{"port": 80}, {"port": 80, "name": "again"}]}}  # fmt: skip
        response = http.post(f"/api/v1/namespaces/{namespace}/services", json=service)
        assert response.status_code == 422, response.text
        fields = sorted(c["field"] for c in response.json()["details"]["causes"])
        assert fields == ["spec.ports[0].name", "spec.ports[1]"]


def test_volumes_mounts_restart_policies_and_probes_are_validated(
    api: ThreadedKubeAPI, namespace: str
) -> None:
    bad = _deployment("bad")
    pod = bad["spec"]["template"]["spec"]
    pod["volumes"] = [{"name": "tmp", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    pod["containers"][0].update(
        volumeMounts=[{"name": "cache", "mountPath": "/c"}, {"name": "tmp", "mountPath": "/c"}],
        restartPolicy="Always",
        livenessProbe={"httpGet": {"path": "/", "port": 0}, "tcpSocket": {"port": 1},
                       "successThreshold": 2, "periodSeconds": -1},
        readinessProbe={"periodSeconds": 5, "terminationGracePeriodSeconds": 5},
    )  # fmt: skip
    pod["initContainers"] = [
        {"name": "setup", "image": "x", "livenessProbe": {"tcpSocket": {"port": "http"}}},
        {"name": "side", "image": "x", "restartPolicy": "OnFailure"},
    ]
    base = f"/apis/apps/v1/namespaces/{namespace}"
    with httpx.Client(base_url=api.url) as http:
        response = http.post(f"{base}/deployments", json=bad)
        assert response.status_code == 422, response.text
        causes = sorted((c["field"], c["reason"]) for c in response.json()["details"]["causes"])
        at = "spec.template.spec"
        probe = f"{at}.containers[0].livenessProbe"
        assert causes == sorted(
            [
                (f"{at}.containers[0].readinessProbe", "FieldValueRequired"),
                (
                    f"{at}.containers[0].readinessProbe.terminationGracePeriodSeconds",
                    "FieldValueInvalid",
                ),
                (f"{at}.containers[0].restartPolicy", "FieldValueForbidden"),
                (f"{at}.containers[0].volumeMounts[0].name", "FieldValueNotFound"),
                (f"{at}.containers[0].volumeMounts[1].mountPath", "FieldValueInvalid"),
                (f"{probe}.tcpSocket", "FieldValueForbidden"),
                (f"{probe}.httpGet.port", "FieldValueInvalid"),
                (f"{probe}.periodSeconds", "FieldValueInvalid"),
                (f"{probe}.successThreshold", "FieldValueInvalid"),
                (f"{at}.initContainers[0].livenessProbe", "FieldValueForbidden"),
                (f"{at}.initContainers[1].restartPolicy", "FieldValueNotSupported"),
                (f"{at}.volumes[1].name", "FieldValueDuplicate"),
            ]
        )
        # A sidecar (an init container that restarts) may have probes; a named port is fine.
        good = _deployment("good")
        pod = good["spec"]["template"]["spec"]
        pod["volumes"] = [{"name": "tmp", "emptyDir": {}}]
        pod["containers"][0]["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
        pod["initContainers"] = [
            {"name": "model", "image": "x", "restartPolicy": "Always",
             "livenessProbe": {"httpGet": {"path": "/", "port": "http"}, "successThreshold": 0,
                               "terminationGracePeriodSeconds": 5},
             "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]},
        ]  # fmt: skip
        response = http.post(f"{base}/deployments", json=good)
        assert response.status_code == 201, response.text


def test_a_crd_deletion_waits_for_its_resources_finalizers(
    api: ThreadedKubeAPI, namespace: str
) -> None:
    # As a real server: Terminating with the cleanup finalizer, each resource deleted, the
    # CRD gone with the last of them; no new resource meanwhile.
    crd = yaml.safe_load(yaml.safe_dump(GAUGE_CRD).replace("gauge", "doom"))
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    name = crd["metadata"]["name"]
    resources = f"/apis/fidelity.example.com/v1/namespaces/{namespace}/dooms"
    with httpx.Client(base_url=api.url) as http:
        assert http.post(crds, json=crd).status_code == 201
        held = {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}
        assert http.post(resources, json=held).status_code == 201
        assert http.post(resources, json={"metadata": {"name": "free"}}).status_code == 201
        response = http.delete(f"{crds}/{name}")
        assert response.status_code == 200, response.text
        terminating = http.get(f"{crds}/{name}").json()
        assert "deletionTimestamp" in terminating["metadata"]
        assert terminating["metadata"]["finalizers"] == [CRD_CLEANUP_FINALIZER]
        conditions = {c["type"]: c for c in terminating["status"]["conditions"]}
        assert conditions["Terminating"]["status"] == "True"
        assert http.get(f"{resources}/free").status_code == 404
        assert "deletionTimestamp" in http.get(f"{resources}/held").json()["metadata"]
        refused = http.post(resources, json={"metadata": {"name": "late"}})
        assert refused.status_code == 405, refused.text
        assert refused.json()["message"] == (
            "create not allowed while custom resource definition is terminating"
        )
        released = http.patch(
            f"{resources}/held",
            json={"metadata": {"finalizers": None}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert released.status_code == 200, released.text
        assert http.get(f"{crds}/{name}").status_code == 404
        assert http.get(resources).status_code == 404
