-- Scenario "search": a receiving unit's dashboard, first page:
--   GET {base}/Task?owner=HealthcareService/hs-bench-NN&status=requested&_count=20
-- The unit is drawn at random among the BENCH_OWNERS seeded ones.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local owners = tonumber(os.getenv("BENCH_OWNERS") or "50")
local paths = {}
for i = 1, owners do
  paths[i] = string.format(
    "%s/Task?owner=HealthcareService/hs-bench-%02d&status=requested&_count=20", bench.prefix, i)
end
local headers = bench.headers({ ["Accept"] = "application/fhir+json" })

function init(args)
  bench.init_thread()
end

function request()
  return wrk.format("GET", paths[math.random(#paths)], headers)
end
