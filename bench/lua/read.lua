-- Scenario "read": GET {base}/Task/{id}, the id drawn at random among the seeded admission
-- Tasks (BENCH_IDS_FILE, one id a line), so reads are spread over the whole table.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local ids = bench.seeded_ids()
local paths = {}
for i, id in ipairs(ids) do paths[i] = bench.prefix .. "/Task/" .. id end
local headers = bench.headers({ ["Accept"] = "application/fhir+json" })

function init(args)
  bench.init_thread()
end

function request()
  return wrk.format("GET", paths[math.random(#paths)], headers)
end
