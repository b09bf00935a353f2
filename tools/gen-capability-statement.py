#!/usr/bin/env python3
"""Write conformance/CapabilityStatement.json from the search-parameter definitions kept in
conformance/ and the table of served types below.

The server loads the result and supports exactly what it lists (src/fhir/search/registry.rs
refuses to start on a listed parameter it cannot run); tests/capability.rs proves each one.

    python3 tools/gen-capability-statement.py > conformance/CapabilityStatement.json
"""
import json
import os

ROOT = os.path.join(os.path.dirname(__file__), "..")
CRUD = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type",
        "create", "search-type"]
READ_ONLY = ["read", "vread", "history-instance", "search-type"]
TYPES = {
    "Patient": CRUD, "Practitioner": CRUD, "PractitionerRole": CRUD, "Organization": CRUD,
    "HealthcareService": CRUD, "Location": CRUD, "ServiceRequest": CRUD, "Task": CRUD,
    "QuestionnaireResponse": CRUD, "Questionnaire": CRUD, "Communication": CRUD,
    "DocumentReference": CRUD, "Binary": ["read", "vread", "update", "delete", "create",
                                          "history-instance"],
    "Provenance": ["read", "vread", "create", "history-instance", "history-type", "search-type"],
    "AuditEvent": ["read", "search-type"], "Subscription": CRUD,
    # served so that the official R4 examples of the neighbouring types can be kept too
    "Encounter": CRUD, "Endpoint": CRUD, "CommunicationRequest": CRUD, "Bundle": CRUD,
    "CapabilityStatement": READ_ONLY, "StructureDefinition": READ_ONLY,
    "SearchParameter": READ_ONLY, "OperationDefinition": READ_ONLY, "CodeSystem": READ_ONLY,
    "ValueSet": READ_ONLY,
}
COMMON = ["_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"]
# AuditEvents live in the append-only audit table (src/store/audit.rs), which keeps these
# search columns only (src/audit/api.rs `columns`); they cannot be included or chained.
LOG = {"AuditEvent": {"action", "agent", "date", "entity", "outcome", "patient", "subtype", "type"}}
# The special parameters the server runs (src/fhir/search/mod.rs `near`).
SPECIAL = {"http://hl7.org/fhir/SearchParameter/Location-near"}
# Expressions outside the FHIRPath subset the server evaluates (src/fhir/search/fhirpath.rs).
UNSUPPORTED = ("exists()", "extension(", "!=", " and ", "resolve()).", "[")

defs = []
for name in sorted(os.listdir(os.path.join(ROOT, "conformance"))):
    if name.startswith("search-parameters") and name.endswith(".json"):
        bundle = json.load(open(os.path.join(ROOT, "conformance", name)))
        defs += [e["resource"] for e in bundle["entry"]]

common = [d for d in defs if d["code"] in COMMON and "Resource" in d["base"]]
resources = []
for rtype, interactions in TYPES.items():
    params, includes = [], []
    for d in defs:
        if rtype not in d["base"] or d["type"] == "composite":
            continue
        if d["type"] == "special" and d["url"] not in SPECIAL:
            continue
        if any(u in d.get("expression", "") for u in UNSUPPORTED):
            continue
        if rtype in LOG and d["code"] not in LOG[rtype]:
            continue
        params.append({"name": d["code"], "definition": d["url"], "type": d["type"]})
        if d["type"] == "reference" and rtype not in LOG:
            includes.append(f"{rtype}:{d['code']}")
    entry = {
        "type": rtype,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
        "interaction": [{"code": i} for i in interactions],
        "versioning": "versioned",
        "readHistory": True,
        "updateCreate": "update" in interactions,
        "conditionalCreate": "create" in interactions,
        "conditionalRead": "full-support",
        "conditionalUpdate": "update" in interactions,
        "conditionalDelete": "single" if "delete" in interactions else "not-supported",
        "referencePolicy": ["literal", "logical", "local"],
    }
    if "search-type" in interactions:
        entry["searchInclude"] = sorted(includes)
        entry["searchRevInclude"] = []
        entry["searchParam"] = sorted(params, key=lambda p: p["name"])
    resources.append(entry)

# what may be _revinclude'd into a type: every reference parameter that can point at it
targets = {}
for d in defs:
    if d["type"] != "reference":
        continue
    for base in d["base"]:
        if base in TYPES and "search-type" in TYPES[base] and base not in LOG:
            for t in d.get("target", []):
                targets.setdefault(t, set()).add(f"{base}:{d['code']}")
for r in resources:
    if "searchRevInclude" in r:
        r["searchRevInclude"] = sorted(targets.get(r["type"], []))

system_ops = []
# the gateway's own operations (conformance/OperationDefinition-*.json), on the types they name
for name in sorted(os.listdir(os.path.join(ROOT, "conformance"))):
    if name.startswith("OperationDefinition-") and name.endswith(".json"):
        od = json.load(open(os.path.join(ROOT, "conformance", name)))
        if od.get("system"):
            system_ops.append({"name": od["code"], "definition": od["url"]})
        for r in resources:
            if r["type"] in od.get("resource", []):
                r.setdefault("operation", []).append({"name": od["code"], "definition": od["url"]})

for r in resources:
    for k in [k for k, v in r.items() if v == []]:
        del r[k]

cs = {
    "resourceType": "CapabilityStatement",
    "id": "passerelle",
    "url": "https://passerelle.dev/fhir/CapabilityStatement/passerelle",
    "version": "0.1.0",
    "name": "Passerelle",
    "title": "Passerelle FHIR R4 gateway",
    "status": "active",
    "date": "2026-11-23",
    "publisher": "Passerelle",
    "kind": "instance",
    "software": {"name": "Passerelle", "version": "0.1.0"},
    "implementation": {"description": "Passerelle FHIR R4 gateway"},
    "fhirVersion": "4.0.1",
    "format": ["application/fhir+json", "json", "application/fhir+xml", "xml"],
    "patchFormat": ["application/json-patch+json", "application/fhir+json"],
    "rest": [{
        "mode": "server",
        "resource": resources,
        "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
        "searchParam": [{"name": d["code"], "definition": d["url"], "type": d["type"]} for d in common],
        "operation": [{"name": "validate",
                       "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}]
                     + system_ops,
    }],
}
print(json.dumps(cs, indent=1, ensure_ascii=False))
