"""Plays the story of domain.md with fhirpy, a third-party FHIR client, unchanged: a dossier
sent to three units; one reads, one agrees in principle, one refuses; the agreeing one proposes
a date; the prescriber confirms; the patient is admitted; the others are cancelled; the
observatory counts it right.

Usage: python fhirpy_workflow_story.py BASE_URL   (exit status 0 when every step behaved)
"""
import sys

from fhirpy import SyncFHIRClient

base = sys.argv[1]
CS = "https://passerelle.dev/fhir/CodeSystem/"


def as_role(role):
    return SyncFHIRClient(base, extra_headers={"X-Passerelle-Role": f"PractitionerRole/{role}"})


def params(*parts):
    return {"resourceType": "Parameters", "parameter": list(parts)}


def status(client, task_id):
    t = client.reference("Task", task_id).to_resource()
    return t["status"], t["businessStatus"]["coding"][0]["code"]


# The directory and the accounts: anonymous writes are allowed for those in dev mode.
anon = SyncFHIRClient(base)
anon.resource("Organization", id="org-chu", name="CHU de Rouen").save()
anon.resource("Organization", id="org-smr", name="Clinique des Bruyères").save()
for u in ("u1", "u2", "u3"):
    anon.resource("HealthcareService", id=u, active=True, name=f"SMR {u}",
                  providedBy={"reference": "Organization/org-smr"}).save()


def role(rid, profile, org, unit=None):
    r = anon.resource("PractitionerRole", id=rid, active=True,
                      organization={"reference": f"Organization/{org}"},
                      code=[{"coding": [{"system": CS + "habilitation-profile", "code": profile}]}])
    if unit:
        r["healthcareService"] = [{"reference": f"HealthcareService/{unit}"}]
    r.save()


role("doc", "prescripteur-medical", "org-chu")
for u in ("u1", "u2", "u3"):
    role(f"adm-{u}", "responsable-admission", "org-smr", u)

doc = as_role("doc")
patient = doc.resource("Patient", name=[{"family": "Lefèvre", "given": ["Marcel"]}], birthDate="1941-05-02")
patient.save()


def fill(items, given):
    """Answers every enabled item of a published Questionnaire (the first option of a choice,
    false for a boolean, a short text otherwise), as a prescriber's EHR would map its form."""
    out = []
    for q in items:
        def on(c):
            want = c.get("answerCoding", {}).get("code", c.get("answerBoolean"))
            return any(g == want for g in given.get(c["question"], []))
        if q["type"] == "display" or not all(on(c) for c in q.get("enableWhen", [])):
            continue
        if q["type"] == "group":
            out.append({"linkId": q["linkId"], "item": fill(q.get("item", []), given)})
            continue
        if q["linkId"] == "module":
            v, key = {"valueCoding": {"system": CS + "orientation-module", "code": "smr"}}, "smr"
        elif q["type"] == "choice" and q.get("answerOption"):
            coding = q["answerOption"][0]["valueCoding"]
            v, key = {"valueCoding": coding}, coding["code"]
        elif q["type"] == "boolean":
            v, key = {"valueBoolean": False}, False
        elif q["type"] == "date":
            v, key = {"valueDate": "2026-11-20"}, None
        elif q["type"] == "decimal":
            v, key = {"valueDecimal": 1.0}, None
        elif q["type"] == "integer":
            v, key = {"valueInteger": 1}, None
        else:
            v, key = {"valueString": "Voir le dossier"}, None
        given.setdefault(q["linkId"], []).append(key)
        out.append({"linkId": q["linkId"], "answer": [v]})
    return out


parts = []
for q in ("volet-medical", "volet-soins-projet", "volet-administratif-social"):
    url = f"https://passerelle.dev/fhir/Questionnaire/{q}"
    form = doc.resources("Questionnaire").search(url=url).get()
    qr = doc.resource("QuestionnaireResponse", status="completed", questionnaire=url,
                      subject={"reference": f"Patient/{patient.id}"},
                      item=fill(form["item"], {}))
    qr.save()
    parts.append({"reference": f"QuestionnaireResponse/{qr.id}"})
sr = doc.resource(
    "ServiceRequest",
    meta={"profile": ["https://passerelle.dev/fhir/StructureDefinition/AdmissionRequest"]},
    status="draft", intent="order",
    category=[{"coding": [{"system": CS + "orientation-module", "code": "smr"}]}],
    subject={"reference": f"Patient/{patient.id}"},
    requester={"reference": "PractitionerRole/doc"},
    occurrenceDateTime="2026-12-01",
    supportingInfo=parts)
sr.save()
number = sr["identifier"][0]["value"]
assert number.startswith("s"), sr["identifier"]

# send to three units
sent = doc.execute(f"ServiceRequest/{sr.id}/$send", data=params(
    *[{"name": "unit", "valueReference": {"reference": f"HealthcareService/{u}"}} for u in ("u1", "u2", "u3")]))
tasks = {e["resource"]["owner"]["reference"].split("/")[1]: e["resource"]["id"] for e in sent["entry"]}
assert len(tasks) == 3, sent

# one reads, one agrees in principle, one refuses
as_role("adm-u1").execute(f"Task/{tasks['u1']}/$mark-read", data=params())
as_role("adm-u2").execute(f"Task/{tasks['u2']}/$agree-in-principle", data=params(
    {"name": "window", "valuePeriod": {"start": "2026-12-01", "end": "2026-12-10"}}))
as_role("adm-u3").execute(f"Task/{tasks['u3']}/$refuse", data=params(
    {"name": "reason", "valueCoding": {"system": CS + "refusal-reason", "code": "no-bed"}}))
assert status(doc, tasks["u1"]) == ("received", "read")
assert status(doc, tasks["u2"]) == ("received", "agreed-in-principle")
assert status(doc, tasks["u3"]) == ("rejected", "refused")

# the agreeing unit proposes a date; the prescriber confirms; the patient is admitted
as_role("adm-u2").execute(f"Task/{tasks['u2']}/$propose-admission", data=params(
    {"name": "date", "valueDateTime": "2026-12-04T14:00:00+01:00"}))
doc.execute(f"Task/{tasks['u2']}/$confirm", data=params())
as_role("adm-u2").execute(f"Task/{tasks['u2']}/$admit", data=params(
    {"name": "date", "valueDateTime": "2026-12-04T15:30:00+01:00"}))
assert status(doc, tasks["u2"]) == ("completed", "admitted")
assert status(doc, tasks["u1"]) == ("cancelled", "cancelled")
assert status(doc, tasks["u3"]) == ("rejected", "refused")
assert doc.reference("ServiceRequest", sr.id).to_resource()["status"] == "completed"

# the dashboards see it
assert doc.resources("Task").search(requester="PractitionerRole/doc", tab="admitted").count() == 1
assert doc.resources("Task").search(**{"patient.name": "lefevre"}).count() == 3
assert doc.resources("Task").search(**{"group-identifier": number}).count() == 3

# the observatory counts it right
obs = doc.execute("$observatory", method="get", params={"establishment": "Organization/org-smr"})
total = {p["name"]: p.get("valueInteger", p.get("valueDecimal"))
         for p in next(x for x in obs["parameter"] if x["name"] == "total")["part"] if "part" not in p}
expected = {"received": 3, "read": 3, "agreed": 1, "proposed": 1, "admitted": 1, "refused": 1,
            "cancelled": 1, "auto-cancelled": 0, "open": 0}
for k, v in expected.items():
    assert total[k] == v, (k, total)
assert abs(float(total["admission-rate"]) - 33.3) < 0.01, total
units = [x for x in obs["parameter"] if x["name"] == "unit"]
assert len(units) == 3, units
u2 = next(u for u in units if u["part"][0]["valueReference"]["reference"] == "HealthcareService/u2")
u2 = {p["name"]: p.get("valueInteger", p.get("valueDecimal")) for p in u2["part"] if "part" not in p}
assert u2["admitted"] == 1 and float(u2["admission-rate"]) == 100.0, u2
assert u2["wished-to-actual-days-median"] is not None, u2
print("story played:", number)
