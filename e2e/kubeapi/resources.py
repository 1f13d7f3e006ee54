"""The resource-kind table: what the emulated API serves and how each kind behaves.

One generic store serves every kind; the differences between kinds (scope, subresources, scale
paths, schema) live here as data, so a CRD registered at runtime is just one more row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ScalePaths:
    """Where a scalable kind keeps its replicas, as in a CRD's ``subresources.scale``."""

    spec_replicas: str = ".spec.replicas"
    status_replicas: str = ".status.replicas"
    label_selector: str | None = None


@dataclass(frozen=True)
class ResourceKind:
    """One served resource (group, version, plural) and its behaviour."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status: bool = False
    scale: ScalePaths | None = None
    schema: dict[str, Any] | None = None
    preserve_unknown: bool = True
    custom: bool = False
    verbs: tuple[str, ...] = _VERBS
    extra_subresources: tuple[str, ...] = field(default=())
    # A PUT without metadata.resourceVersion overwrites unconditionally (most built-in kinds) or
    # is refused with 422 (custom resources, CRDs, Services: their strategies disallow it).
    unconditional_update: bool = True
    # Field-selector labels besides metadata.name/namespace (a CRD's selectableFields).
    selectable_fields: tuple[str, ...] = ()
    # A CRD version's additionalPrinterColumns, for the Tables kubectl get asks for.
    printer_columns: tuple[dict[str, Any], ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """``deployments.apps``: how Kubernetes names the resource in error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def subresources(self) -> tuple[str, ...]:
        found = []
        if self.status:
            found.append("status")
        if self.scale is not None:
            found.append("scale")
        return (*found, *self.extra_subresources)


def _kind(
    group: str,
    version: str,
    plural: str,
    kind: str,
    *,
    namespaced: bool = True,
    short: tuple[str, ...] = (),
    status: bool = False,
    scale: ScalePaths | None = None,
    verbs: tuple[str, ...] = _VERBS,
    unconditional_update: bool = True,
) -> ResourceKind:
    return ResourceKind(
        group=group,
        version=version,
        plural=plural,
        kind=kind,
        namespaced=namespaced,
        singular=kind.lower(),
        short_names=short,
        status=status,
        scale=scale,
        verbs=verbs,
        unconditional_update=unconditional_update,
    )


_DEPLOYMENT_SCALE = ScalePaths(".spec.replicas", ".status.replicas", ".spec.selector")

BUILTIN_KINDS: tuple[ResourceKind, ...] = (
    _kind("", "v1", "namespaces", "Namespace", namespaced=False, short=("ns",), status=True),
    _kind("", "v1", "pods", "Pod", short=("po",), status=True),
    _kind("", "v1", "services", "Service", short=("svc",), status=True, unconditional_update=False),
    _kind("", "v1", "events", "Event", short=("ev",)),
    _kind("", "v1", "configmaps", "ConfigMap", short=("cm",)),
    _kind("", "v1", "secrets", "Secret"),
    _kind("", "v1", "serviceaccounts", "ServiceAccount", short=("sa",)),
    _kind("", "v1", "endpoints", "Endpoints", short=("ep",)),
    _kind("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short=("pvc",), status=True),
    _kind(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        short=("deploy",),
        status=True,
        scale=_DEPLOYMENT_SCALE,
    ),
    _kind(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        short=("rs",),
        status=True,
        scale=_DEPLOYMENT_SCALE,
    ),
    _kind(
        "policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", short=("pdb",), status=True
    ),
    _kind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", short=("netpol",)),
    _kind("events.k8s.io", "v1", "events", "Event", short=("ev",)),
    _kind("coordination.k8s.io", "v1", "leases", "Lease"),
    _kind(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        short=("hpa",),
        status=True,
    ),
    _kind(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        short=("crd", "crds"),
        status=True,
        unconditional_update=False,
    ),
    _kind("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _kind("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    _kind(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        namespaced=False,
    ),
)


def kinds_from_crd(crd: dict[str, Any]) -> list[ResourceKind]:
    """Every served version of an apiextensions.k8s.io/v1 CustomResourceDefinition."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group")
    plural = names.get("plural")
    kind = names.get("kind")
    if not (group and plural and kind):
        raise ValueError("spec.group, spec.names.plural and spec.names.kind are required")
    kinds = []
    for version in spec.get("versions") or []:
        # A bool the real server decodes without omitempty: absent is false, not served.
        if version.get("served") is not True:
            continue
        subresources = version.get("subresources") or {}
        scale = subresources.get("scale")
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        kinds.append(
            ResourceKind(
                group=group,
                version=version["name"],
                plural=plural,
                kind=kind,
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular") or kind.lower(),
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                status="status" in subresources,
                scale=None
                if scale is None
                else ScalePaths(
                    scale.get("specReplicasPath", ".spec.replicas"),
                    scale.get("statusReplicasPath", ".status.replicas"),
                    scale.get("labelSelectorPath"),
                ),
                schema=schema,
                preserve_unknown=bool((schema or {}).get("x-kubernetes-preserve-unknown-fields")),
                custom=True,
                unconditional_update=False,
                selectable_fields=tuple(
                    str(selectable.get("jsonPath", "")).lstrip(".")
                    for selectable in version.get("selectableFields") or []
                ),
                printer_columns=tuple(
                    dict(column) for column in version.get("additionalPrinterColumns") or []
                ),
            )
        )
    if not kinds:
        raise ValueError("spec.versions has no served version")
    return kinds
