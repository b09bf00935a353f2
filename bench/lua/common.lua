-- Shared by the wrk scripts of bench/run.sh (loaded with dofile, in every Lua state wrk makes:
-- the main one, where setup() and done() run, and one per thread).
--
-- Environment (set by run.sh):
--   BENCH_PREFIX     path of the FHIR base on the server: "/fhir" (Passerelle) or "" (Helios)
--   BENCH_RUN        a small number unique to this wrk invocation (keeps generated values unique
--                    across runs against the same database)
--   BENCH_CHECK      when "1", every response is looked at: non-2xx answers are counted and the
--                    first one is written to BENCH_CHECK_FILE (off during measured runs, since a
--                    response() callback makes wrk copy every answer into Lua)
--   BENCH_RESULT     file the JSON summary is written to (printed on stdout too)
--   BENCH_TOKEN      a gateway access token (Passerelle: a registered system client's); sent as
--                    `Authorization: Bearer` when set

bench = {}

bench.prefix = os.getenv("BENCH_PREFIX") or "/fhir"
bench.run = tonumber(os.getenv("BENCH_RUN") or "1") or 1
bench.check = os.getenv("BENCH_CHECK") == "1"
bench.token = os.getenv("BENCH_TOKEN")

-- The request headers of a scenario, with the caller's token when there is one.
function bench.headers(h)
  if bench.token and bench.token ~= "" then
    h["Authorization"] = "Bearer " .. bench.token
  end
  return h
end

-- The headers of a request that sends a FHIR JSON body (create, transaction, update).
function bench.body_headers()
  return bench.headers({
    ["Content-Type"] = "application/fhir+json",
    ["Accept"] = "application/fhir+json",
  })
end

-- The seeded Task ids (BENCH_IDS_FILE, one a line).
function bench.seeded_ids()
  local path = os.getenv("BENCH_IDS_FILE")
  local ids = bench.read_lines(path)
  assert(#ids > 0, "no ids in " .. tostring(path))
  return ids
end

-- `text` before and after the one literal `marker` it must contain.
function bench.split(text, marker)
  local s, e = string.find(text, marker, 1, true)
  assert(s, "no " .. marker .. " in the file")
  return string.sub(text, 1, s - 1), string.sub(text, e + 1)
end

function bench.read_file(path)
  local f = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
  local s = f:read("*a")
  f:close()
  return s
end

function bench.read_lines(path)
  local out = {}
  for line in io.lines(path) do
    if line ~= "" then out[#out + 1] = line end
  end
  return out
end

-- A template is text with {{NAME}} holes; compile() splits it once, render() fills it per request.
function bench.compile(text)
  local parts, pos = {}, 1
  while true do
    local s, e, name = string.find(text, "{{([%w_]+)}}", pos)
    if not s then break end
    parts[#parts + 1] = string.sub(text, pos, s - 1)
    parts[#parts + 1] = { name }
    pos = e + 1
  end
  parts[#parts + 1] = string.sub(text, pos)
  return parts
end

function bench.render(parts, vars)
  local buf = {}
  for i = 1, #parts do
    local p = parts[i]
    if type(p) == "table" then
      local v = vars[p[1]]
      if v == nil then error("template variable " .. p[1] .. " not set") end
      buf[i] = v
    else
      buf[i] = p
    end
  end
  return table.concat(buf)
end

-- Random version-4 UUID (math.random is seeded per thread in init()).
function bench.uuid()
  return string.format("%04x%04x-%04x-4%03x-%04x-%06x%06x",
    math.random(0, 0xffff), math.random(0, 0xffff), math.random(0, 0xffff),
    math.random(0, 0xfff), math.random(0x8000, 0xbfff),
    math.random(0, 0xffffff), math.random(0, 0xffffff))
end

-- Threads: numbered in setup(), so every thread makes its own unique values.
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  threads[#threads + 1] = thread
end

function bench.init_thread()
  tid = tid or 1
  counter = 0
  bad = 0
  checked = 0
  math.randomseed(os.time() * 100 + tid * 7919 + bench.run * 104729)
end

function bench.next_n()
  counter = counter + 1
  return counter
end

if bench.check then
  local check_file = os.getenv("BENCH_CHECK_FILE")
  function response(status, headers, body)
    checked = checked + 1
    if status < 200 or status > 299 then
      bad = bad + 1
      if bad == 1 and check_file then
        local f = io.open(check_file, "a")
        if f then
          f:write(string.format("HTTP %d\n%s\n", status, string.sub(body or "", 1, 4000)))
          f:close()
        end
      end
    end
  end
end

function done(summary, latency, requests)
  local non2xx, seen = nil, nil
  if bench.check then
    non2xx, seen = 0, 0
    for _, t in ipairs(threads) do
      non2xx = non2xx + (t:get("bad") or 0)
      seen = seen + (t:get("checked") or 0)
    end
  end
  local e = summary.errors
  local secs = summary.duration / 1e6
  local fields = {
    string.format('"requests":%d', summary.requests),
    string.format('"duration_s":%.3f', secs),
    string.format('"rps":%.1f', summary.requests / secs),
    string.format('"p50_us":%d', latency:percentile(50)),
    string.format('"p90_us":%d', latency:percentile(90)),
    string.format('"p99_us":%d', latency:percentile(99)),
    string.format('"max_us":%d', latency.max),
    string.format('"mean_us":%.1f', latency.mean),
    string.format('"errors_status":%d', e.status),
    string.format('"errors_socket":%d', e.connect + e.read + e.write + e.timeout),
    string.format('"bytes":%d', summary.bytes),
  }
  if non2xx then
    fields[#fields + 1] = string.format('"checked":%d', seen)
    fields[#fields + 1] = string.format('"non2xx":%d', non2xx)
  end
  local line = "{" .. table.concat(fields, ",") .. "}"
  io.write("BENCH_JSON " .. line .. "\n")
  local out = os.getenv("BENCH_RESULT")
  if out then
    local f = io.open(out, "w")
    if f then f:write(line .. "\n"); f:close() end
  end
end

return bench
