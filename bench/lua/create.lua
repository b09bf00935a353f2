-- Scenario "create": POST {base}/Task with the admission Task (BENCH_TASK_FILE, compact JSON).
-- What varies per request: the Task's business identifier (run, thread, counter), as two
-- clients never send the same admission request twice.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local task = bench.read_file(os.getenv("BENCH_TASK_FILE"))
local head, tail = bench.split(task, "SMR-2026-004217-03")
local path = bench.prefix .. "/Task"
local headers = bench.body_headers()

function init(args)
  bench.init_thread()
end

function request()
  local n = bench.next_n()
  local body = head .. string.format("SMR-B%d-T%d-%07d", bench.run, tid, n) .. tail
  return wrk.format("POST", path, headers, body)
end
