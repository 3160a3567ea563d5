"""Roles and what each may do. The console checks every HTTP action and websocket message against this matrix."""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Permission(enum.StrEnum):
    """One thing a person may do or see. The value is the name, so handlers may also say `"VIEW_FLEET"`."""

    VIEW_FLEET = "VIEW_FLEET"  # positions, statuses, link state, incident list
    VIEW_ALERTS = "VIEW_ALERTS"  # the alert list, without vitals
    VIEW_PATIENT_LIVE = "VIEW_PATIENT_LIVE"  # live vitals, ECG, NEWS2, handoff of active encounters
    VIEW_ENCOUNTER = "VIEW_ENCOUNTER"  # encounter records, closed ones included
    MANAGE_INCIDENTS = "MANAGE_INCIDENTS"  # create/assign/close incidents, dispatcher-entered times
    ACK_ALERT = "ACK_ALERT"
    ACTIVATE_TEAM = "ACTIVATE_TEAM"
    ACK_ACTIVATION = "ACK_ACTIVATION"
    RECORD_MILESTONE = "RECORD_MILESTONE"  # door, wire crossing, needle, puncture, ...
    EDIT_HANDOFF = "EDIT_HANDOFF"
    LINK_IDENTITY = "LINK_IDENTITY"  # link the encounter's alias to a real patient
    DISCHARGE = "DISCHARGE"
    RECORD_OUTCOME = "RECORD_OUTCOME"
    VIEW_QUALITY = "VIEW_QUALITY"
    EXPORT_FHIR = "EXPORT_FHIR"
    VIEW_FEEDBACK = "VIEW_FEEDBACK"  # crew feedback: what became of the patients a unit brought in (by alias)
    QUERY_AUDIT = "QUERY_AUDIT"
    MANAGE_USERS = "MANAGE_USERS"


class Role(enum.StrEnum):
    DISPATCHER = "dispatcher"
    ED_PHYSICIAN = "ed_physician"
    ED_NURSE = "ed_nurse"
    FOLLOWUP = "followup"
    ADMIN = "admin"


_DISPATCHER = "VIEW_FLEET VIEW_ALERTS MANAGE_INCIDENTS VIEW_FEEDBACK"
_ED_NURSE = (
    "VIEW_FLEET VIEW_ALERTS VIEW_PATIENT_LIVE VIEW_ENCOUNTER ACK_ALERT RECORD_MILESTONE EDIT_HANDOFF LINK_IDENTITY"
)
_ED_PHYSICIAN = _ED_NURSE + " ACTIVATE_TEAM ACK_ACTIVATION DISCHARGE EXPORT_FHIR VIEW_QUALITY"
_FOLLOWUP = "VIEW_ENCOUNTER RECORD_OUTCOME VIEW_QUALITY VIEW_FEEDBACK"
# The administrator manages accounts and reads the audit log; no patient data.
_ADMIN = "VIEW_FLEET VIEW_QUALITY QUERY_AUDIT MANAGE_USERS"

ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    role: frozenset(Permission(name) for name in names.split())
    for role, names in (
        (Role.DISPATCHER, _DISPATCHER),
        (Role.ED_PHYSICIAN, _ED_PHYSICIAN),
        (Role.ED_NURSE, _ED_NURSE),
        (Role.FOLLOWUP, _FOLLOWUP),
        (Role.ADMIN, _ADMIN),
    )
}


def permissions_of(role: Role | str) -> frozenset[Permission]:
    """What a role may do; an unknown role (a row from a newer version, a typo) may do nothing."""
    try:
        return ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return frozenset()
