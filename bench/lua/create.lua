-- Scenario "create": POST {base}/Task with the admission Task (BENCH_TASK_FILE, compact JSON).
-- What varies per request: the Task's business identifier (run, thread, counter), as two
-- clients never send the same admission request twice.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local task = bench.read_file(os.getenv("BENCH_TASK_FILE"))
local marker = "SMR-2026-004217-03"
local s, e = string.find(task, marker, 1, true)
assert(s, "the Task file has no identifier " .. marker)
local head, tail = string.sub(task, 1, s - 1), string.sub(task, e + 1)
local path = bench.prefix .. "/Task"
local headers = bench.headers({
  ["Content-Type"] = "application/fhir+json",
  ["Accept"] = "application/fhir+json",
})

function init(args)
  bench.init_thread()
end

function request()
  local n = bench.next_n()
  local body = head .. string.format("SMR-B%d-T%d-%07d", bench.run, tid, n) .. tail
  return wrk.format("POST", path, headers, body)
end
