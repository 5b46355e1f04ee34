"""Azure RBAC for tests/infra/arm_fake.py: custom role definitions, role assignments, and what a VM's managed
identity may do with the token the instance metadata service gave it.

What it reproduces, as ARM documents it (Microsoft.Authorization, api-version 2022-04-01):
  role definitions  PUT (201, also for an update)/GET/DELETE
                    /subscriptions/S/providers/Microsoft.Authorization/roleDefinitions/ID
                    body {properties: {roleName, type, description, permissions: [{actions, notActions}],
                    assignableScopes}}; 400 InvalidRoleDefinition without assignableScopes or actions,
                    409 RoleDefinitionWithSameNameExists for a roleName another id has.
  role assignments  PUT/GET/DELETE {scope}/providers/Microsoft.Authorization/roleAssignments/NAME (scope: a
                    subscription or a resource group) body {properties: {roleDefinitionId, principalId,
                    principalType}}; 400 RoleDefinitionDoesNotExist, 400 PrincipalNotFound (a principal no
                    VM identity has), 409 RoleAssignmentExists (same principal, role and scope under another
                    name); DELETE of an absent one is 204; GET {scope}/providers/Microsoft.Authorization/
                    roleAssignments lists them. Like ARM, deleting a resource group leaves the assignments
                    at its scope behind (orphans a cleaner has to delete).
  who may do what   the broker's own token is the subscription's Owner, unless `deny_rbac` (a Contributor:
                    403 AuthorizationFailed on any Microsoft.Authorization write; `assignments_allowed`: only
                    that many more assignment PUTs succeed, a failure half-way through an arm). A managed identity's token
                    ("mi-<principalId>", handed out by tests/infra/metadata_fake.py to the VM's node) may do
                    exactly the actions of the roles assigned to it at a scope containing the resource
                    (wildcards as in role definitions, case-insensitive); anything else is ARM's 403
                    AuthorizationFailed message. Deleting a resource group also needs delete on every
                    resource type in it (as ARM checks).
Not reproduced: replication delay after an assignment, dataActions, deny assignments, conditions,
management groups, the roleName uniqueness across a real tenant's built-in roles.
"""
from __future__ import annotations

from fnmatch import fnmatchcase

MI_PREFIX = "mi-"


class Rbac:
    def __init__(self, subscription: str, error):
        self.subscription = subscription
        self.error = error  # arm_fake.ArmError
        self.roles: dict[str, dict] = {}  # lower(role definition id) → document
        self.assignments: dict[str, dict] = {}  # lower(assignment id) → document
        self.deny_rbac = False
        self.assignments_allowed: int | None = None  # fault: role assignment PUTs beyond this many get 403

    # -- the API -----------------------------------------------------------------------------------
    def handle(self, method: str, parts: list[str], body, caller: str | None, scope_exists) -> tuple[int, dict, object]:
        low = [p.lower() for p in parts]
        i = low.index("microsoft.authorization")
        scope = "/" + "/".join(parts[:i - 1])
        if len(parts) == i + 2 and low[i + 1] == "roleassignments" and method == "GET":
            # the subscription's (and below) assignments; ARM keeps them when their scope is deleted
            return 200, {}, {"value": [a for a in self.assignments.values()
                                       if (a["properties"]["scope"].lower() + "/").startswith(scope.lower() + "/")]}
        kind, name = (low[i + 1], parts[i + 2]) if len(parts) == i + 3 else (None, None)
        if kind not in ("roledefinitions", "roleassignments"):
            raise self.error(404, "InvalidResourceType", f"no route for /{'/'.join(parts)}")
        rid = f"{scope}/providers/Microsoft.Authorization/{parts[i + 1]}/{name}"
        if kind == "roleassignments" and method == "PUT" and self.assignments_allowed is not None:
            if self.assignments_allowed <= 0:
                caller = caller or "the broker (fault: no more assignments)"
            else:
                self.assignments_allowed -= 1
        if method != "GET" and (self.deny_rbac or caller is not None):
            who = caller or "the broker"
            raise self.error(403, "AuthorizationFailed", f"The client '{who}' does not have authorization to perform "
                             f"action 'Microsoft.Authorization/{parts[i + 1]}/write' over scope '{scope}' or the "
                             "scope is invalid. If access was recently granted, please refresh your credentials.")
        store = self.roles if kind == "roledefinitions" else self.assignments
        if method == "GET":
            doc = store.get(rid.lower())
            if doc is None:
                raise self.error(404, "RoleAssignmentNotFound" if kind == "roleassignments" else "RoleDefinitionDoesNotExist",
                                 f"The {kind[:-1]} '{name}' does not exist.")
            return 200, {}, doc
        if method == "DELETE":
            doc = store.pop(rid.lower(), None)
            return (200, {}, doc) if doc is not None else (204, {}, None)
        if method != "PUT":
            raise self.error(405, "MethodNotAllowed", method)
        if not scope_exists(scope):
            raise self.error(404, "ResourceGroupNotFound", f"scope '{scope}' could not be found.")
        props = dict((body or {}).get("properties") or {})
        if kind == "roledefinitions":
            return self._put_role(rid, name, props)
        return self._put_assignment(rid, name, scope, props)

    def _put_role(self, rid, name, props):
        perms = props.get("permissions") or []
        if not props.get("assignableScopes") or not any(p.get("actions") for p in perms):
            raise self.error(400, "InvalidRoleDefinition", "The role definition must have assignableScopes and "
                                                           "at least one action.")
        for other in self.roles.values():
            if other["name"] != name and other["properties"]["roleName"] == props.get("roleName"):
                raise self.error(409, "RoleDefinitionWithSameNameExists",
                                 f"A custom role with the same name '{props.get('roleName')}' already exists.")
        doc = {"id": rid, "name": name, "type": "Microsoft.Authorization/roleDefinitions",
               "properties": {**props, "type": props.get("type") or "CustomRole"}}
        self.roles[rid.lower()] = doc
        return 201, {}, doc  # ARM answers 201 to an update of a role definition too

    def _put_assignment(self, rid, name, scope, props):
        role = str(props.get("roleDefinitionId") or "")
        if role.lower() not in self.roles:
            raise self.error(400, "RoleDefinitionDoesNotExist", f"The specified role definition with ID "
                                                                f"'{role.rsplit('/', 1)[-1]}' does not exist.")
        pid = props.get("principalId")
        if pid not in self.known_principals():
            raise self.error(400, "PrincipalNotFound", f"Principal {pid} does not exist in the directory "
                                                       "00000000-0000-0000-0000-0000000be11a.")
        for key, other in self.assignments.items():
            p = other["properties"]
            if key != rid.lower() and p["principalId"] == pid and p["roleDefinitionId"].lower() == role.lower() \
                    and p["scope"].lower() == scope.lower():
                raise self.error(409, "RoleAssignmentExists", "The role assignment already exists.")
        created = rid.lower() not in self.assignments
        doc = {"id": rid, "name": name, "type": "Microsoft.Authorization/roleAssignments",
               "properties": {"roleDefinitionId": role, "principalId": pid, "scope": scope,
                              "principalType": props.get("principalType") or "ServicePrincipal"}}
        self.assignments[rid.lower()] = doc
        return (201 if created else 200), {}, doc

    known_principals = staticmethod(lambda: set())  # set by the fake: the principal ids of its VMs' identities

    # -- authorization of a managed identity ---------------------------------------------------------
    def actions_of(self, principal: str, resource_id: str) -> list[str]:
        rid = resource_id.lower().rstrip("/")
        out = []
        for a in self.assignments.values():
            p = a["properties"]
            scope = p["scope"].lower().rstrip("/")
            if p["principalId"] == principal and (rid == scope or rid.startswith(scope + "/")):
                role = self.roles.get(p["roleDefinitionId"].lower())
                if role is not None:
                    for perm in role["properties"].get("permissions") or []:
                        out += [x for x in perm.get("actions") or [] if x not in (perm.get("notActions") or [])]
        return out

    def authorize(self, principal: str, action: str, resource_id: str) -> None:
        if not any(fnmatchcase(action.lower(), a.lower()) for a in self.actions_of(principal, resource_id)):
            raise self.error(403, "AuthorizationFailed", f"The client '{principal}' with object id '{principal}' "
                             f"does not have authorization to perform action '{action}' over scope "
                             f"'{resource_id}' or the scope is invalid. If access was recently granted, please "
                             "refresh your credentials.")


def action_for(method: str, parts: list[str]) -> tuple[str, str]:
    """The RBAC action an ARM request needs and the resource it is on: (action, resource id)."""
    low = [p.lower() for p in parts]
    verb = {"GET": "read", "HEAD": "read", "PUT": "write", "PATCH": "write", "DELETE": "delete"}.get(method, "action")
    if len(parts) <= 4 and low[2:3] == ["resourcegroups"]:
        return f"Microsoft.Resources/subscriptions/resourceGroups/{verb}", "/" + "/".join(parts[:4])
    if len(parts) >= 8 and low[4] == "providers":
        rid = "/" + "/".join(parts[:8])
        if method == "POST" and len(parts) == 9:
            return f"{parts[5]}/{parts[6]}/{parts[8]}/action", rid
        return f"{parts[5]}/{parts[6]}/{verb}", rid
    return f"Microsoft.Resources/{verb}", "/" + "/".join(parts)
