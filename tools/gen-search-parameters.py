#!/usr/bin/env python3
"""Keep the official R4 SearchParameters of the resource types the gateway serves.

Writes conformance/search-parameters-r4.json: a Bundle of SearchParameter whose `base` and
`expression` are cut down to those types. Composite parameters are left out (not served).

    python3 tools/gen-search-parameters.py package/dist/fhir/r4 > conformance/search-parameters-r4.json
"""
import json
import re
import sys

SERVED = ["Patient", "Practitioner", "PractitionerRole", "Organization", "HealthcareService",
          "Location", "ServiceRequest", "Task", "QuestionnaireResponse", "Questionnaire",
          "Communication", "DocumentReference", "Binary", "Provenance", "AuditEvent", "Subscription",
          "CapabilityStatement", "StructureDefinition", "SearchParameter", "OperationDefinition",
          "CodeSystem", "ValueSet", "Encounter", "Endpoint", "CommunicationRequest", "Bundle"]

src = sys.argv[1]
bundle = json.load(open(f"{src}/search-parameters.json"))


def split_union(expr):
    """Split a FHIRPath union at top-level `|` (not inside parentheses or quotes)."""
    parts, depth, cur, quote = [], 0, "", False
    for ch in expr:
        if ch == "'":
            quote = not quote
        if not quote:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            elif ch == "|" and depth == 0:
                parts.append(cur.strip())
                cur = ""
                continue
        cur += ch
    parts.append(cur.strip())
    return parts


def root_type(part):
    m = re.match(r"^\(?([A-Z][A-Za-z]+)\b", part)
    return m.group(1) if m else None


out = {"resourceType": "Bundle", "id": "search-parameters-r4", "type": "collection", "entry": []}
for e in bundle["entry"]:
    sp = e["resource"]
    if sp["type"] == "composite":
        continue
    bases = [b for b in sp["base"] if b in SERVED or b in ("Resource", "DomainResource")]
    if not bases:
        continue
    expr = sp.get("expression")
    if expr and "Resource" not in bases:
        parts = [p for p in split_union(expr) if root_type(p) in bases]
        # `Person.address…` style parts of other types are dropped with their type
        expr = " | ".join(parts)
        bases = [b for b in bases if any(root_type(p) == b for p in parts)]
        if not bases:
            continue
    keep = {k: sp[k] for k in ("resourceType", "id", "url", "name", "code", "type", "target",
                                "modifier", "comparator", "multipleOr", "multipleAnd", "chain",
                                "xpathUsage", "description") if k in sp}
    keep["version"] = "4.0.1"
    keep["status"] = "active"
    keep["base"] = bases
    if expr:
        keep["expression"] = expr
    # FHIR forbids empty arrays and strings
    keep = {k: v for k, v in keep.items() if v not in ([], "")}
    if "target" in keep:
        keep["target"] = [t for t in keep["target"]]
    out["entry"].append({"fullUrl": sp["url"], "resource": keep})

json.dump(out, sys.stdout, indent=1, ensure_ascii=False)
print()
