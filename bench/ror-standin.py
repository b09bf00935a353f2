#!/usr/bin/env python3
"""A stand-in of the ROR FHIR API serving N generated offers (HealthcareService) with their
organisations (EJ, EG, OI) and places (Location, with capacity records), generated on the fly
(nothing is held in memory): the client-credentials token endpoint, the four Ror-* headers
checked, searches paged by `link next` (the offers with the ROR's _include's, and the
organisations on their own, as a full sync lists them), and the bulk $export route (202,
Content-Location, ndjson files streamed line by line).

    python3 bench/ror-standin.py --port 8099 --units 100000

Standard library only. Used by bench/ror-sync.sh.
"""
import argparse
import json
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NOS = "https://mos.esante.gouv.fr/NOS"
ROR = "https://interop.esante.gouv.fr/ig/fhir/ror/StructureDefinition"
REGION = f"{NOS}/TRE_R30-RegionOM/FHIR/TRE-R30-RegionOM"
OLD = "2026-01-01T00:00:00Z"


def coding(system, code):
    return {"coding": [{"system": f"{NOS}/{system}", "code": code}]}


def capacity(status, n):
    def cc(url, sys_, code):
        return {"url": url, "valueCodeableConcept": coding(sys_, code)}
    return {"url": f"{ROR}/ror-location-supported-capacity", "extension": [
        cc("capacityType", "TRE_R329-NatureCapacite/FHIR/TRE-R329-NatureCapacite", "01"),
        cc("capacityStatus", "TRE_R330-TypeStatutCapacite/FHIR/TRE-R330-TypeStatutCapacite", status),
        cc("temporalityCapacity", "TRE_R331-TemporaliteCapacite/FHIR/TRE-R331-TemporaliteCapacite", "01"),
        {"url": "nbCapacity", "valueInteger": n},
        {"url": "capacityUpdateDate", "valueDateTime": "2026-11-20T08:00:00+01:00"}]}


def meta(i):
    return {"lastUpdated": OLD, "tag": [{"system": REGION, "code": "06" if i % 5 == 4 else "11"}]}


def ej(k):
    return {"resourceType": "Organization", "id": f"ej-{k}", "meta": meta(k * 4),
            "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.2", "value": f"1{k:08}"}],
            "active": True, "name": f"EJ {k}"}


def eg(k):
    return {"resourceType": "Organization", "id": f"eg-{k}", "meta": meta(k * 2),
            "identifier": [{"system": "https://finess.esante.gouv.fr", "value": f"2{k:08}"}],
            "active": True, "name": f"EG {k}", "partOf": {"reference": f"Organization/ej-{k // 2}"}}


def oi(i):
    return {"resourceType": "Organization", "id": f"oi-{i}", "meta": meta(i),
            "identifier": [{"system": "https://oi.esante.gouv.fr", "value": f"OI-{i}"}],
            "active": True, "name": f"Unité {i}", "partOf": {"reference": f"Organization/eg-{i // 2}"}}


def loc(i):
    return {"resourceType": "Location", "id": f"loc-{i}", "meta": {"lastUpdated": OLD},
            "extension": [capacity("02", i % 3), capacity("01", 20)], "status": "active",
            "name": f"Lieu {i}", "address": {"line": [f"{i} rue de la Paix"], "city": "Paris",
                                             "postalCode": f"{75001 + i % 20}"},
            "position": {"latitude": 48.85 + (i % 1000) / 1000.0, "longitude": 2.35}}


# champ d'activité, mode de prise en charge, type d'offre: SMR, HAD, EHPAD, MCO
KINDS = [("02", "28", "100"), ("01", "31", "128"), ("04", "46", "21"), ("01", "28", "238")]


def hs(i):
    activity, mode, offer_type = KINDS[i % 4]
    return {"resourceType": "HealthcareService", "id": f"hs-{i}", "meta": meta(i),
            "extension": [{"url": f"{ROR}/ror-healthcareservice-sensitive-unit", "valueBoolean": False}],
            "identifier": [{"value": f"11/{i:07}"}], "active": True,
            "providedBy": {"reference": f"Organization/oi-{i}"},
            "category": [coding("TRE_R244-CategorieOrganisation/FHIR/TRE-R244-CategorieOrganisation", offer_type)],
            "type": [coding("TRE_R227-ChampActivite/FHIR/TRE-R227-ChampActivite", activity)],
            "characteristic": [coding("JDV_J19-ModePriseEnCharge-ROR/FHIR/JDV-J19-ModePriseEnCharge-ROR", mode)],
            "location": [{"reference": f"Location/loc-{i}"}], "name": f"Offre {i}"}


def related(i):
    out = [oi(i), eg(i // 2), ej(i // 4), loc(i)]
    return out


def organisation(units, n):
    """The n-th organisation of the listing: the OIs, then the EGs, then the EJs."""
    egs = (units + 1) // 2
    if n < units:
        return oi(n)
    if n < units + egs:
        return eg(n - units)
    return ej(n - units - egs)


def organisations(units):
    return units + (units + 1) // 2 + (units + 3) // 4


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    units = 0
    base = ""

    def log_message(self, *args):
        pass

    def send_json(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/fhir+json")
        self.send_header("content-length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        form = urllib.parse.parse_qs(self.rfile.read(n).decode())
        if form.get("grant_type") != ["client_credentials"]:
            return self.send_json(401, {"error": "invalid_client"})
        self.send_json(200, {"access_token": "bench-token", "token_type": "Bearer", "expires_in": 3600})

    def checked(self):
        h = self.headers
        if h.get("authorization") != "Bearer bench-token":
            self.send_json(401, {"resourceType": "OperationOutcome"})
            return False
        for k in ("Ror-Profil-Utilisateur-Code", "Ror-Profil-Utilisateur-System",
                  "Ror-Role-Metier-Code", "Ror-Role-Metier-System"):
            if not h.get(k):
                self.send_json(403, {"resourceType": "OperationOutcome"})
                return False
        return True

    def do_GET(self):
        if not self.checked():
            return
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        path = url.path.removeprefix("/fhir/")
        if path == "$export":
            return self.send_json(202, {}, [("content-location", f"{self.base}/$export-poll-status?_jobId=1")])
        if path == "$export-poll-status":
            return self.send_json(200, {"transactionTime": OLD, "output": [
                {"type": t, "url": f"{self.base}/files/{t}.ndjson"}
                for t in ("Organization", "Location", "HealthcareService")]})
        if path.startswith("files/"):
            return self.stream(path.removeprefix("files/").removesuffix(".ndjson"))
        if path == "HealthcareService":
            count = int(q.get("_count", "200"))
            offset = int(q.get("_offset", "0"))
            entries, seen = [], set()
            for i in range(offset, min(offset + count, self.units)):
                entries.append({"resource": hs(i), "search": {"mode": "match"}})
                for r in related(i):
                    key = (r["resourceType"], r["id"])
                    if key not in seen:
                        seen.add(key)
                        entries.append({"resource": r, "search": {"mode": "include"}})
            links = []
            if offset + count < self.units:
                nq = dict(q, _offset=str(offset + count))
                links.append({"relation": "next", "url": f"{self.base}/HealthcareService?{urllib.parse.urlencode(nq)}"})
            return self.send_json(200, {"resourceType": "Bundle", "type": "searchset",
                                        "total": self.units, "link": links, "entry": entries})
        if path == "Organization":
            count = int(q.get("_count", "200"))
            offset = int(q.get("_offset", "0"))
            total = organisations(self.units)
            entries = [{"resource": organisation(self.units, n), "search": {"mode": "match"}}
                       for n in range(offset, min(offset + count, total))]
            links = []
            if offset + count < total:
                nq = dict(q, _offset=str(offset + count))
                links.append({"relation": "next", "url": f"{self.base}/Organization?{urllib.parse.urlencode(nq)}"})
            return self.send_json(200, {"resourceType": "Bundle", "type": "searchset",
                                        "total": total, "link": links, "entry": entries})
        self.send_json(404, {"resourceType": "OperationOutcome"})

    def stream(self, rtype):
        self.send_response(200)
        self.send_header("content-type", "application/fhir+ndjson")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        if rtype == "HealthcareService":
            gen = (hs(i) for i in range(self.units))
        elif rtype == "Location":
            gen = (loc(i) for i in range(self.units))
        else:
            def orgs():
                for i in range(self.units):
                    yield oi(i)
                    if i % 2 == 0:
                        yield eg(i // 2)
                    if i % 4 == 0:
                        yield ej(i // 4)
            gen = orgs()
        buf = []
        for r in gen:
            buf.append(json.dumps(r))
            if len(buf) == 500:
                self.chunk(("\n".join(buf) + "\n").encode())
                buf = []
        if buf:
            self.chunk(("\n".join(buf) + "\n").encode())
        self.wfile.write(b"0\r\n\r\n")

    def chunk(self, data):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8099)
    p.add_argument("--units", type=int, default=100000)
    a = p.parse_args()
    Handler.units = a.units
    Handler.base = f"http://127.0.0.1:{a.port}/fhir"
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print(f"ror stand-in: {a.units} units on {Handler.base}", file=sys.stderr, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
