-- HTTP floor: GET / on the in-memory axum server (bench/floor), same reporting as the scenarios.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local headers = { ["Accept"] = "application/fhir+json" }

function init(args)
  bench.init_thread()
end

function request()
  return wrk.format("GET", "/", headers)
end
