"""What the emulated API records so tests can compare it with RBAC rules.

A real API server authorizes each request, and some admission plugins ask the authorizer more
on the request's behalf (setting an owner reference needs rights on the owner too). A client's
RBAC must grant both, so both are recorded in one shape, the authorizer's attributes; the
store builds the admission plugins' entries and the server the requests' (it imports this
module, and the store cannot import the server).
"""

from __future__ import annotations

from dataclasses import dataclass

#: The admission plugin, on by default on OpenShift, that checks who may set owner references.
OWNER_REFERENCES_PLUGIN = "OwnerReferencesPermissionEnforcement"


@dataclass(frozen=True)
class RecordedRequest:
    """One authorization, named the way RBAC rules name it: a resource request, or a check an
    admission plugin made for one (``admission`` names the plugin; empty for the request)."""

    verb: str
    group: str
    version: str
    resource: str
    subresource: str
    namespace: str | None
    name: str | None
    admission: str = ""
