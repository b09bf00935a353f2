-- Scenario "transaction": POST {base} with a transaction Bundle carrying one dossier
-- (BENCH_TRANSACTION_FILE, compact, with {{HOLES}}): a Patient created only if its INS is
-- new (ifNoneExist), the ServiceRequest, three Tasks to three units and the medical
-- QuestionnaireResponse, linked by urn:uuid.
-- What varies per request: the INS (a well-formed 15-character NIR with its key, unique per
-- run/thread/request), the IPP, the dossier number, every urn:uuid and the three units.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local template = bench.compile(bench.read_file(os.getenv("BENCH_TRANSACTION_FILE")))
local owners = tonumber(os.getenv("BENCH_OWNERS") or "50")
local path = bench.prefix == "" and "/" or bench.prefix
local headers = bench.body_headers()

-- NIR: sex(1) year(2) month(2) department(2) commune(3) order(3), then key = 97 - (n mod 97).
-- k, unique per request, is spread over year/month/commune/order.
local function nir(k)
  local order = k % 1000
  local commune = math.floor(k / 1000) % 999 + 1
  local month = math.floor(k / 999000) % 12 + 1
  local year = math.floor(k / 11988000) % 60 + 30
  local body = string.format("2%02d%02d44%03d%03d", year, month, commune, order)
  local key = 97 - (tonumber(body) % 97)
  return body .. string.format("%02d", key), year, month
end

function init(args)
  bench.init_thread()
end

function request()
  local n = bench.next_n()
  -- up to 99 runs x 64 threads x 1.8 M requests before a repeat
  local k = ((bench.run % 100) * 64 + (tid % 64)) * 1800000 + n
  local ins, year, month = nir(k)
  local a = math.random(owners)
  local b = (a + math.random(owners - 2)) % owners + 1
  local c = b % owners + 1
  if c == a then c = c % owners + 1 end
  local vars = {
    INS = ins,
    BIRTH_DATE = string.format("19%02d-%02d-15", year, month),
    IPP = string.format("%d%07d", bench.run, k % 10000000),
    DOSSIER = string.format("SMR-B%d-T%d-%07d", bench.run, tid, n),
    PATIENT_UUID = bench.uuid(),
    SR_UUID = bench.uuid(),
    QR_UUID = bench.uuid(),
    TASK1_UUID = bench.uuid(),
    TASK2_UUID = bench.uuid(),
    TASK3_UUID = bench.uuid(),
    OWNER1 = string.format("hs-bench-%02d", a),
    OWNER2 = string.format("hs-bench-%02d", b),
    OWNER3 = string.format("hs-bench-%02d", c),
  }
  return wrk.format("POST", path, headers, bench.render(template, vars))
end
