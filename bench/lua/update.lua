-- Scenario "update": PUT {base}/Task/{id} on a seeded admission Task (BENCH_IDS_FILE), the id
-- drawn at random: the core's update path, as a unit's system sends a Task back with a change.
-- The body is the admission Task (BENCH_TASK_FILE) with that id and a new `lastModified`, so
-- every update makes a new version and rewrites the Task's index rows. No If-Match: two
-- updates of one Task at once both land, one after the other (10,000 Tasks make that rare).
-- The Task's owner and status become the file's (hs-bench-01, requested): this scenario runs
-- after the searches.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local task = bench.read_file(os.getenv("BENCH_TASK_FILE"))
local opening = '{"resourceType":"Task",'
assert(string.sub(task, 1, #opening) == opening, "the Task file must start with " .. opening)
local middle, tail = bench.split(string.sub(task, #opening + 1),
  '"lastModified":"2026-11-20T09:12:00+01:00"')

local ids = bench.seeded_ids()
local headers = bench.body_headers()

function init(args)
  bench.init_thread()
end

function request()
  local n = bench.next_n()
  local id = ids[math.random(#ids)]
  -- a new instant per request: hours from the run, minutes and seconds from the counter
  local modified = string.format('"lastModified":"2026-11-21T%02d:%02d:%02d+01:00"',
    (bench.run + tid) % 24, math.floor(n / 60) % 60, n % 60)
  local body = opening .. '"id":"' .. id .. '",' .. middle .. modified .. tail
  return wrk.format("PUT", bench.prefix .. "/Task/" .. id, headers, body)
end
