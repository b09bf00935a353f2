#!/usr/bin/env python3
"""Helpers of bench/run.sh (Python standard library only).

    tool.py compact IN OUT                      JSON without insignificant whitespace, numbers
                                                kept as written (4.50 stays 4.50)
    tool.py free-port                           a free TCP port on 127.0.0.1
    tool.py wait-http URL SECONDS [PID]         until URL answers 200 (exit 1 on timeout, or as
                                                soon as process PID is gone)
    tool.py setup BASE [--lenient]              the resources the Tasks point at (PUT, one
                                                transaction): Organization, 50 units, prescriber
    tool.py seed BASE TASK_FILE N OWNERS IDS_OUT [--timeout S]
                                                N admission Tasks in transaction Bundles of 100,
                                                spread over OWNERS units and a few statuses;
                                                writes their ids, prints a JSON summary
    tool.py sqlite-floor DB PAYLOAD SECONDS     one row per durable commit (WAL, FULL)
    tool.py pgbench-latency PREFIX              p50/p99 of pgbench -l logs PREFIX.*
    tool.py mem PID                             VmRSS and VmHWM of a process, in kB
    tool.py record KIND [JSON_FILE|-] [key=value ...] [file:key=PATH ...]
                                                one line of results.jsonl on stdout
    tool.py report RESULTS META                 the Markdown report
"""

import glob
import http.client
import json
import math
import os
import random
import re
import socket
import sqlite3
import sys
import time
import urllib.parse
import urllib.request

# ---------------------------------------------------------------------------------------------
# small things


def compact(text):
    """Drops whitespace outside strings; everything else (numbers included) byte for byte."""
    out, in_str, esc = [], False, False
    for ch in text:
        if in_str:
            out.append(ch)
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
            out.append(ch)
        elif ch not in " \t\r\n":
            out.append(ch)
    return "".join(out)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(url, seconds, pid=None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pid and not os.path.exists(f"/proc/{pid}"):
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except Exception:
            pass
        time.sleep(0.05)
    return False


def mem(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return {
        "rss_kb": out.get("VmRSS"),
        "hwm_kb": out.get("VmHWM"),
        "anon_kb": out.get("RssAnon"),
        "file_kb": out.get("RssFile"),
    }


def scalar(v):
    if re.fullmatch(r"-?(0|[1-9][0-9]*)", v):
        return int(v)
    if re.fullmatch(r"-?[0-9]*\.[0-9]+", v):
        return float(v)
    return v


def record(kind, args):
    row = {"kind": kind}
    for a in args:
        if a.startswith("file:"):
            key, path = a[5:].split("=", 1)
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    row[key] = f.read()[:4000]
            except OSError:
                pass
        elif "=" in a:
            key, value = a.split("=", 1)
            row[key] = scalar(value)
        else:
            try:
                if a == "-":
                    text = sys.stdin.read()
                else:
                    with open(a, encoding="utf-8") as f:
                        text = f.read()
                data = json.loads(text.strip().splitlines()[-1])
                for k, v in data.items():
                    row.setdefault(k, v)
            except (OSError, ValueError, IndexError) as e:
                row["missing"] = f"no result ({e.__class__.__name__})"
    print(json.dumps(row, ensure_ascii=False))
    return 0


# ---------------------------------------------------------------------------------------------
# talking FHIR


class Fhir:
    def __init__(self, base):
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname, u.port or 80
        self.prefix = u.path.rstrip("/")
        self.conn = None
        self.headers = {
            "Content-Type": "application/fhir+json",
            "Accept": "application/fhir+json",
        }
        # Passerelle: a registered system client's gateway token (run.sh's BENCH_TOKEN)
        if os.environ.get("BENCH_TOKEN"):
            self.headers["Authorization"] = "Bearer " + os.environ["BENCH_TOKEN"]

    def post(self, path, body, timeout=120):
        data = body.encode() if isinstance(body, str) else body
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            try:
                self.conn.request(
                    "POST",
                    (self.prefix + path) or "/",
                    body=data,
                    headers=self.headers,
                )
                r = self.conn.getresponse()
                text = r.read().decode("utf-8", "replace")
                return r.status, text
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def entry_id(e):
    res = e.get("resource") or {}
    if res.get("id"):
        return res["id"]
    loc = (e.get("response") or {}).get("location", "")
    # Task/abc/_history/1, or an absolute URL
    parts = [p for p in loc.split("?")[0].split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-1] if parts else None


def setup(base, lenient):
    """Resources the admission Tasks reference, with fixed ids (PUT = create or update)."""
    org = {
        "resourceType": "Organization",
        "id": "org-bench-1",
        "identifier": [{"system": "https://finess.esante.gouv.fr", "value": "440000289"}],
        "active": True,
        "name": "Clinique du Parc",
        "address": [{"city": "Saint-Herblain", "postalCode": "44800", "country": "FRA"}],
    }
    practitioner = {
        "resourceType": "Practitioner",
        "id": "pra-bench-1",
        "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "810002345678"}],
        "name": [{"family": "DURAND", "given": ["Paul"], "prefix": ["Dr"]}],
    }
    role = {
        "resourceType": "PractitionerRole",
        "id": "prr-bench-1",
        "active": True,
        "practitioner": {"reference": "Practitioner/pra-bench-1"},
        "organization": {"reference": "Organization/org-bench-1"},
        "code": [
            {
                "coding": [
                    {
                        "system": "https://passerelle.dev/fhir/CodeSystem/habilitation-profile",
                        "code": "prescripteur-medical",
                    }
                ]
            }
        ],
    }
    patient = {
        "resourceType": "Patient",
        "id": "pat-bench-1",
        "name": [{"use": "official", "family": "MARTIN", "given": ["Jeanne"]}],
        "gender": "female",
        "birthDate": "1944-05-12",
    }
    sr = {
        "resourceType": "ServiceRequest",
        "id": "sr-bench-1",
        "identifier": [{"system": "https://passerelle.dev/fhir/sid/dossier", "value": "SMR-2026-004217"}],
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/pat-bench-1"},
        "requester": {"reference": "PractitionerRole/prr-bench-1"},
    }
    resources = [org, practitioner, role, patient, sr]
    for i in range(1, 51):
        resources.append(
            {
                "resourceType": "HealthcareService",
                "id": f"hs-bench-{i:02d}",
                "active": True,
                "providedBy": {"reference": "Organization/org-bench-1"},
                "name": f"Unité {i:02d} (SMR polyvalent)",
            }
        )
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in resources
        ],
    }
    status, text = Fhir(base).post("", json.dumps(bundle, ensure_ascii=False))
    if status // 100 != 2:
        msg = f"setup transaction answered {status}: {text[:2000]}"
        if lenient:
            print(f"warning: {msg}", file=sys.stderr)
            return 0
        print(msg, file=sys.stderr)
        return 1
    return 0


# (Task.status, businessStatus code, display, weight): the mix a unit's list shows
STATUSES = [
    ("requested", "sent", "Envoyée, en attente de réponse", 50),
    ("received", "read", "Lue", 15),
    ("accepted", "admission-proposed", "Date d'admission proposée", 10),
    ("completed", "admitted", "Admis", 10),
    ("rejected", "refused", "Refusée", 10),
    ("cancelled", "cancelled", "Annulée", 5),
]


def task_template(task_text):
    """The compact admission Task with holes for what the seed varies."""
    t = task_text
    swaps = [
        ('"SMR-2026-004217-03"', '"{ID}"'),
        ('"SMR-2026-004217"', '"{GROUP}"'),
        ('"HealthcareService/hs-bench-01"', '"HealthcareService/{OWNER}"'),
        ('"display":"SMR polyvalent, Clinique du Parc, Saint-Herblain"', '"display":"{OWNER_NAME}"'),
        ('"status":"requested"', '"status":"{STATUS}"'),
        ('"code":"sent","display":"Envoyée, en attente de réponse"', '"code":"{BS}","display":"{BS_DISPLAY}"'),
    ]
    for old, new in swaps:
        if t.count(old) != 1:
            raise SystemExit(f"seed: the Task file must contain {old} exactly once")
        t = t.replace(old, new)
    # keep every other brace literal
    t = t.replace("{", "{{").replace("}", "}}")
    for key in ("ID", "GROUP", "OWNER", "OWNER_NAME", "STATUS", "BS", "BS_DISPLAY"):
        t = t.replace("{{" + key + "}}", "{" + key + "}")
    return t


def seed(base, task_file, n, owners, ids_out, timeout):
    with open(task_file, encoding="utf-8") as f:
        template = task_template(f.read())
    rnd = random.Random(20261123)
    weights = [s[3] for s in STATUSES]
    client = Fhir(base)
    ids, per_status = [], {}
    started = time.monotonic()
    deadline = started + timeout
    batch = 100
    for start in range(0, n, batch):
        if time.monotonic() > deadline:
            print(f"seed: stopped after {len(ids)} Tasks ({timeout} s limit)", file=sys.stderr)
            break
        entries = []
        for i in range(start, min(n, start + batch)):
            st, bs, bs_display, _ = rnd.choices(STATUSES, weights)[0]
            owner = rnd.randrange(owners) + 1
            per_status[st] = per_status.get(st, 0) + 1
            dossier = f"SMR-S{i // 3:06d}"
            body = template.format(
                ID=f"{dossier}-{i % 3 + 1:02d}",
                GROUP=dossier,
                OWNER=f"hs-bench-{owner:02d}",
                OWNER_NAME=f"Unité {owner:02d} (SMR polyvalent)",
                STATUS=st,
                BS=bs,
                BS_DISPLAY=bs_display,
            )
            entries.append(
                '{"fullUrl":"urn:uuid:%s","resource":%s,"request":{"method":"POST","url":"Task"}}'
                % (uuid4(rnd), body)
            )
        bundle = '{"resourceType":"Bundle","type":"transaction","entry":[' + ",".join(entries) + "]}"
        status, text = client.post("", bundle)
        if status // 100 != 2:
            print(f"seed: transaction answered {status}: {text[:2000]}", file=sys.stderr)
            return 1
        for e in json.loads(text).get("entry", []):
            rid = entry_id(e)
            if rid:
                ids.append(rid)
    elapsed = time.monotonic() - started
    with open(ids_out, "w") as f:
        f.write("\n".join(ids) + "\n")
    print(
        json.dumps(
            {
                "tasks": len(ids),
                "seconds": round(elapsed, 2),
                "per_second": round(len(ids) / elapsed, 1) if elapsed else None,
                "statuses": per_status,
            }
        )
    )
    return 0 if ids else 1


def uuid4(rnd):
    h = "%032x" % rnd.getrandbits(128)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) % 4]}{h[17:20]}-{h[20:32]}"


# ---------------------------------------------------------------------------------------------
# storage floors


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def sqlite_floor(db, payload_file, seconds):
    """One ~2.3 KB row per commit, WAL, synchronous=FULL: the durable single-writer rate."""
    with open(payload_file, encoding="utf-8") as f:
        payload = f.read()
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE IF NOT EXISTS floor (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    lat = []
    end = time.monotonic() + seconds
    t0 = time.monotonic()
    while time.monotonic() < end:
        a = time.perf_counter()
        con.execute("BEGIN")
        con.execute("INSERT INTO floor (body) VALUES (?)", (payload,))
        con.execute("COMMIT")
        lat.append(time.perf_counter() - a)
    elapsed = time.monotonic() - t0
    con.close()
    lat.sort()
    print(
        json.dumps(
            {
                "requests": len(lat),
                "duration_s": round(elapsed, 3),
                "rps": round(len(lat) / elapsed, 1),
                "p50_us": int(percentile(lat, 50) * 1e6),
                "p99_us": int(percentile(lat, 99) * 1e6),
                "bytes_per_row": len(payload.encode()),
            }
        )
    )
    return 0


def pgbench_latency(prefix):
    """pgbench -l lines: client_id transaction_no time_us script_no epoch epoch_us."""
    lat = []
    for path in glob.glob(prefix + ".*"):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
    lat.sort()
    print(json.dumps({"p50_us": percentile(lat, 50), "p99_us": percentile(lat, 99), "logged": len(lat)}))
    return 0


# ---------------------------------------------------------------------------------------------
# the report

SCENARIOS = [
    ("create", "create `POST /Task` (admission Task)"),
    ("read", "read `GET /Task/{id}`"),
    ("search", "search `Task?owner=…&status=requested&_count=20`"),
    ("transaction", "transaction (Patient ifNoneExist + SR + 3 Tasks + QR)"),
    ("update", "update `PUT /Task/{id}` (new `lastModified`)"),
]


def ms(us):
    if us is None:
        return "—"
    v = us / 1000
    if v < 1:
        return f"{v:.2f} ms"
    if v < 10:
        return f"{v:.1f} ms"
    return f"{v:.0f} ms"


def rate(x):
    if x is None:
        return "—"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def ratio(a, b):
    if a is None or not b:
        return "—"
    r = a / b
    if r < 0.1:
        digits = 2 - int(math.floor(math.log10(r))) - 1 if r > 0 else 2
        return f"{r:.{digits}f}×"
    return f"{r:.2f}×" if r < 10 else f"{r:.0f}×"


def mb(kb):
    return "—" if kb is None else f"{kb / 1024:.1f} MB"


def load_rows(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def report(results_path, meta_path):
    rows = load_rows(results_path)
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    runs = {(r["engine"], r["scenario"], r["c"]): r for r in rows if r.get("kind") == "wrk"}
    checks = {(r["engine"], r["scenario"]): r for r in rows if r.get("kind") == "check"}
    floors = {(r["name"], r["c"]): r for r in rows if r.get("kind") == "floor"}
    mems = {r["engine"]: r for r in rows if r.get("kind") == "mem"}
    seeds = {r["engine"]: r for r in rows if r.get("kind") == "seed"}
    problems = [r for r in rows if r.get("kind") == "problem"]
    conc = [int(c) for c in str(meta.get("concurrency", "1 16")).split()]
    out = []
    w = out.append
    w(f"# Passerelle benchmark, {meta['date']}")
    w("")
    if meta.get("smoke"):
        w(f"**Smoke run** ({meta['seconds']} s per measurement): the figures only show that the harness works, "
          "not what the server can do.")
        w("")
    w(f"- Machine: {meta['nproc']} cores, {meta['cpu']}, {meta['mem']}; {meta['os']}")
    w(f"- Date: {meta['date']}; load average at start: {meta['load']}")
    w(f"- Passerelle: commit `{meta['commit']}`{' (with uncommitted changes)' if meta.get('dirty') else ''}, "
      f"release build `{meta['binary']}` ({'built by this run' if meta.get('build') == 'fresh' else 'existing binary, BENCH_SKIP_BUILD=1'}, {meta.get('binary_time', '?')})")
    w(f"- Load: `wrk` {meta['wrk']} on loopback, sharing the cores with the server; "
      f"c=1 is `wrk -t1 -c1`, c=16 is `wrk -t2 -c16`; {meta['seconds']} s per measurement after a 1 s checked warm-up; "
      f"{meta['tasks']:,} Tasks seeded over {meta['owners']} units before the runs")
    w(f"- Helios: {meta['helios']}")
    if meta.get("pg_analyze"):
        w("- PostgreSQL: `ANALYZE` after seeding (the statistics autovacuum would have a minute later)")
    try:
        load1 = float(str(meta.get("load", "0")).split()[0])
    except ValueError:
        load1 = 0.0
    if load1 > 0.5:
        w(f"- ⚠ The machine was not idle when the run started (load average {load1:.2f}): expect noise, "
          "above all in the p99 column.")
    w("")
    w("## Floors, measured in the same run")
    w("")
    w("| floor | c | rate /s | p50 | p99 |")
    w("|---|---:|---:|---:|---:|")
    floor_names = [
        ("http", "HTTP: axum 0.8 serving the Task from memory (`bench/floor`)"),
        ("sqlite-commit", "SQLite commit: WAL, synchronous=FULL, one Task row per commit (python3 sqlite3)"),
        ("pg-commit", "PostgreSQL commit: `pgbench`, one Task row INSERT per transaction"),
    ]
    for name, label in floor_names:
        for c in [1] + conc[1:]:
            f = floors.get((name, c))
            if f:
                w(f"| {label} | {c} | {rate(f.get('rps'))} | {ms(f.get('p50_us'))} | {ms(f.get('p99_us'))} |")
    w("")
    w("Ratios: read and search are divided by the HTTP floor at the same concurrency; create, transaction and "
      "update by the engine's commit floor (SQLite: its single-writer rate at both concurrencies, so group commit "
      "shows as a ratio above 1; PostgreSQL: pgbench at the same concurrency). A transaction is one commit.")
    w("")

    engines = [e for e in str(meta.get("engines", "")).split() if any(k[0] == e for k in runs)]
    helios_engine = "helios" if any(k[0] == "helios" for k in runs) else None
    for engine in engines + ([helios_engine] if helios_engine else []):
        title = {"sqlite": "SQLite", "postgres": "PostgreSQL 15", "helios": "Helios hfs 0.2.7 (peer, SQLite)"}[engine]
        w(f"## {title}")
        w("")
        with_peer = helios_engine and engine == "sqlite"
        head = "| scenario | c | req/s | p50 | p99 | errors | vs floor |"
        sep = "|---|---:|---:|---:|---:|---:|---:|"
        if with_peer:
            head += " Helios req/s | Helios p50 | Helios p99 | ours ÷ Helios |"
            sep += "---:|---:|---:|---:|"
        w(head)
        w(sep)
        commit_floor = "sqlite-commit" if engine in ("sqlite", "helios") else "pg-commit"
        for scen, label in SCENARIOS:
            for c in conc:
                r = runs.get((engine, scen, c))
                if not r:
                    continue
                errors = r.get("errors_status", 0) + r.get("errors_socket", 0)
                chk = checks.get((engine, scen))
                err = f"{errors:,}"
                if errors:
                    err = f"**{errors:,}**"
                if chk and chk.get("non2xx") and c == conc[0]:
                    err += f" (warm-up: {chk['non2xx']} non-2xx)"
                if scen in ("read", "search"):
                    fl = floors.get(("http", c))
                elif commit_floor == "sqlite-commit":
                    fl = floors.get(("sqlite-commit", 1))
                else:
                    fl = floors.get(("pg-commit", c))
                line = (f"| {label} | {c} | {rate(r['rps'])} | {ms(r['p50_us'])} | {ms(r['p99_us'])} | {err} | "
                        f"{ratio(r['rps'], fl and fl.get('rps'))} |")
                if with_peer:
                    h = runs.get(("helios", scen, c))
                    if h:
                        line += f" {rate(h['rps'])} | {ms(h['p50_us'])} | {ms(h['p99_us'])} | {ratio(r['rps'], h['rps'])} |"
                    else:
                        line += " — | — | — | — |"
                w(line)
        w("")
        m = mems.get(engine, {})
        s = seeds.get(engine, {})
        facts = []
        if m:
            facts.append(f"memory: idle {mb(m.get('idle_kb'))} (VmRSS right after start), peak {mb(m.get('peak_kb'))} "
                         f"(VmHWM after all runs); at the end {mb(m.get('end_rss_kb'))} resident, "
                         f"of which {mb(m.get('end_anon_kb'))} anonymous")
        if m.get("ready_s") is not None:
            facts.append(f"ready {m['ready_s']:.2f} s after start")
        if s:
            facts.append(f"seeding: {s.get('tasks', 0):,} Tasks in {s.get('seconds')} s ({rate(s.get('per_second'))} Tasks/s, transaction Bundles of 100)")
        if m.get("db_bytes"):
            facts.append(f"database after the runs: {m['db_bytes'] / 1048576:.1f} MB")
        for f in facts:
            w(f"- {f}")
        w("")
    if not helios_engine:
        w(f"Helios: {meta['helios']}")
        w("")
    if problems or any(c.get("non2xx") for c in checks.values()):
        w("## Problems seen")
        w("")
        for c in checks.values():
            if c.get("non2xx"):
                first = (c.get("first") or "").strip().replace("\n", " ")[:600]
                w(f"- {c['engine']} {c['scenario']}: {c['non2xx']} of {c.get('checked')} warm-up answers were not 2xx; first: `{first}`")
        for p in problems:
            w(f"- {p.get('engine', '')}: {p.get('message')}")
        w("")
    print("\n".join(out))
    return 0


# ---------------------------------------------------------------------------------------------


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "compact":
        with open(args[0], encoding="utf-8") as f:
            text = compact(f.read())
        json.loads(text)  # still JSON
        with open(args[1], "w", encoding="utf-8") as f:
            f.write(text)
        return 0
    if cmd == "free-port":
        print(free_port())
        return 0
    if cmd == "wait-http":
        return 0 if wait_http(args[0], float(args[1]), args[2] if len(args) > 2 else None) else 1
    if cmd == "record":
        return record(args[0], args[1:])
    if cmd == "setup":
        return setup(args[0], "--lenient" in args)
    if cmd == "seed":
        timeout = 600.0
        if "--timeout" in args:
            timeout = float(args[args.index("--timeout") + 1])
        return seed(args[0], args[1], int(args[2]), int(args[3]), args[4], timeout)
    if cmd == "sqlite-floor":
        return sqlite_floor(args[0], args[1], float(args[2]))
    if cmd == "pgbench-latency":
        return pgbench_latency(args[0])
    if cmd == "mem":
        print(json.dumps(mem(args[0])))
        return 0
    if cmd == "report":
        return report(args[0], args[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
