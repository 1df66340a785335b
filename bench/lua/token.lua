-- wrk script: POST a client_credentials token request, bounded in count, optionally paced.
--
-- Environment (all optional):
--   BENCH_BODY           form body            (default "grant_type=client_credentials")
--   BENCH_AUTHORIZATION  Authorization value  (direct requests to a real AS; never printed)
--   BENCH_MAX_REQUESTS   stop the thread after this many requests (default 10,000,000)
--   BENCH_RATE           requests/s for the whole run (0 or unset: closed loop, no pacing)
--   BENCH_ONE_SHOT       1: every connection sends exactly one request, all at once; the
--                        thread stops when all have answered (a storm of first contacts), and
--                        done() also prints when each answer came, in ms since the first send
--
-- Pacing: wrk has no rate option. With BENCH_RATE set, delay() hands out send slots 1/rate s
-- apart from one schedule shared by the thread's connections (LuaJIT's ffi gives the monotonic
-- clock; without ffi each connection simply waits connections/rate s). A connection that
-- finds its slot in the past sends at once, so a stall is not hidden by a fixed sleep. wrk's
-- delay() has 1 ms granularity, and its latency starts when the request is written (no
-- coordinated-omission correction, unlike wrk2).
--
-- done() prints one line "BENCH_RESULT {json}" that bench/wrk.py reads.

local body = os.getenv("BENCH_BODY") or "grant_type=client_credentials"
local authorization = os.getenv("BENCH_AUTHORIZATION")
local max_requests = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "10000000")
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local one_shot = os.getenv("BENCH_ONE_SHOT") == "1"
local connections = tonumber(os.getenv("BENCH_CONNECTIONS") or "1")

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Accept"] = "application/json"
if authorization and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end

local have_ffi, ffi = pcall(require, "ffi")
local now_ms
if have_ffi then
  ffi.cdef([[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clk_id, bench_timespec *tp);
    int getpid(void);
    int kill(int pid, int sig);
  ]])
  local ts = ffi.new("bench_timespec")
  now_ms = function()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
end

-- wrk's main thread sleeps for the whole -d even when every thread has stopped; its SIGINT
-- handler ends that sleep. The marker line tells bench/wrk.py to send SIGINT (again until wrk
-- exits: a signal that comes before the main thread sleeps is lost); the self-signal saves
-- that round trip in the common case.
local function stop_run()
  wrk.thread:stop()
  io.write("BENCH_STOPPED\n")
  io.flush()
  if have_ffi then
    ffi.C.kill(ffi.C.getpid(), 2) -- SIGINT
  end
end

-- main state: keep the threads to read their counters in done()
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

-- thread state
local req = nil
issued = 0
first_ms = -1
stopped_ms = -1

function init(args)
  req = wrk.format()
end

function request()
  issued = issued + 1
  if issued == 1 and now_ms then
    first_ms = now_ms()
  end
  if issued >= max_requests then
    if now_ms then
      stopped_ms = now_ms()
    end
    stop_run()
  end
  return req
end

if rate > 0 then
  local gap_ms = 1000 / rate
  local next_slot = -1
  function delay()
    if not now_ms then
      return math.floor(connections * gap_ms)
    end
    local now = now_ms()
    if next_slot < now then
      next_slot = now
    end
    local slot = next_slot
    next_slot = next_slot + gap_ms
    return math.floor(slot - now)
  end
end

-- One-shot: the first `connections` sends go at once, later ones would wait an hour; the
-- thread stops as soon as every connection has its answer.
answered = 0
last_answer_ms = -1
answers_csv = ""
if one_shot then
  local answers = {}
  local sends = 0
  function delay()
    sends = sends + 1
    if sends <= connections then
      return 0
    end
    return 3600000
  end
  function response(status, headers, body)
    answered = answered + 1
    if now_ms then
      last_answer_ms = now_ms()
      table.insert(answers, string.format("%.3f", last_answer_ms - first_ms))
    end
    if answered >= connections then
      answers_csv = table.concat(answers, ", ")
      stop_run()
    end
  end
end

function done(summary, latency, requests)
  local percentiles = {}
  for _, p in ipairs({ 50, 75, 90, 95, 99, 99.9 }) do
    table.insert(percentiles, string.format('"%s": %d', tostring(p), latency:percentile(p)))
  end
  local capped_ms, issued_total, span_ms, answers = -1, 0, -1, {}
  for _, thread in ipairs(threads) do
    issued_total = issued_total + (thread:get("issued") or 0)
    local first, stopped = thread:get("first_ms"), thread:get("stopped_ms")
    if stopped and stopped > 0 and first and first > 0 then
      capped_ms = math.max(capped_ms, stopped - first)
    end
    local csv = thread:get("answers_csv")
    if csv and csv ~= "" then
      table.insert(answers, csv)
    end
    local last = thread:get("last_answer_ms")
    if last and last > 0 and first and first > 0 then
      span_ms = math.max(span_ms, last - first)
    end
  end
  local extra = one_shot and (', "answers_ms": [' .. table.concat(answers, ", ") .. "]") or ""
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "issued": %d, "duration_us": %d, "capped_ms": %.3f, '
      .. '"span_ms": %.3f, "bytes": %d, "errors": {"connect": %d, "read": %d, "write": %d, '
      .. '"status": %d, "timeout": %d}, "latency_us": {"min": %d, "mean": %.1f, "max": %d, '
      .. '"stdev": %.1f, %s}%s}\n',
    summary.requests, issued_total, summary.duration, capped_ms, span_ms, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev, table.concat(percentiles, ", "), extra))
end
