"""Drives Passerelle with fhirpy, a third-party FHIR client, unchanged.

Usage: python fhirpy_client.py BASE_URL TOKEN   (exit status 0 when every step behaved)

TOKEN is a gateway access token of a system client (`passerelle admin token`).
"""
import sys

from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome

base, token = sys.argv[1], sys.argv[2]
auth = f"Bearer {token}"
client = SyncFHIRClient(base, authorization=auth)

# create
org = client.resource("Organization", name="Hôpital Bichat", identifier=[
    {"system": "https://finess.esante.gouv.fr", "value": "750712184"}])
org.save()
assert org.id and org["meta"]["versionId"] == "1", org

# conditional create: fhirpy sends the criteria as the query string of the POST
ins = {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "1840399987654"}
p1 = client.resource("Patient", identifier=[ins], name=[{"family": "Durand"}])
p1.create(identifier="urn:oid:1.2.250.1.213.1.4.10|1840399987654")
p2 = client.resource("Patient", identifier=[ins], name=[{"family": "Durand"}])
p2.create(identifier="urn:oid:1.2.250.1.213.1.4.10|1840399987654")
assert p1.id == p2.id, (p1.id, p2.id)

# If-Match: the right version wins, a stale one is refused (412)
fresh = SyncFHIRClient(base, authorization=auth, extra_headers={"If-Match": 'W/"1"'})
p = fresh.resource("Patient", **client.reference("Patient", p1.id).to_resource())
p["gender"] = "male"
p.save()
assert p["meta"]["versionId"] == "2", p["meta"]
stale = SyncFHIRClient(base, authorization=auth, extra_headers={"If-Match": 'W/"1"'})
q = stale.resource("Patient", **client.reference("Patient", p1.id).to_resource())
q["gender"] = "female"
try:
    q.save()
    raise SystemExit("a stale If-Match was accepted")
except MultipleResourcesFound:  # fhirpy's name for a 412 answer
    pass

# paging: 45 tasks, pages of 10, fetch_all follows the next links
for i in range(45):
    client.resource("Task", status="requested", intent="order",
                    owner={"reference": f"Organization/{org.id}"},
                    groupIdentifier={"system": "https://passerelle.dev/dossier", "value": f"s{i}"}).save()
tasks = client.resources("Task").search(owner=f"Organization/{org.id}").limit(10).fetch_all()
assert len(tasks) == 45, len(tasks)
assert len({t.id for t in tasks}) == 45
assert client.resources("Task").search(status="requested").count() == 45

# a transaction with urn:uuid references
bundle = {
    "resourceType": "Bundle", "type": "transaction",
    "entry": [
        {"fullUrl": "urn:uuid:8c1e55f4-5e2b-4b7c-9d1a-2f0f0f0f0f01",
         "resource": {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                      "subject": {"reference": f"Patient/{p1.id}"}},
         "request": {"method": "POST", "url": "ServiceRequest"}},
        {"resource": {"resourceType": "Task", "status": "requested", "intent": "order",
                      "focus": {"reference": "urn:uuid:8c1e55f4-5e2b-4b7c-9d1a-2f0f0f0f0f01"}},
         "request": {"method": "POST", "url": "Task"}},
    ],
}
resp = client.execute("", method="post", data=bundle)
assert resp["type"] == "transaction-response", resp
sr_id = resp["entry"][0]["response"]["location"].split("/")[1]
linked = client.resources("Task").search(focus=f"ServiceRequest/{sr_id}").fetch()
assert len(linked) == 1

# errors come back as OperationOutcome
try:
    client.resource("Patient", bogus=True).save()
    raise SystemExit("an unknown element was accepted")
except OperationOutcome as e:
    assert "bogus" in str(e), e

print("fhirpy: all steps passed")
