-- wrk script: POST one image per request as a multipart/form-data `file` field (what the
-- service, the alternatives and `python -m bench.loadtest --multipart` send), cycling
-- through the images given; at the end print one JSON line, prefixed `WRK_JSON `, with the
-- requests, errors by kind and by HTTP status, latency percentiles and req/s.
--
--   wrk -t1 -c16 -d10s --timeout 30s -s bench/wrk/multipart.lua \
--       'http://127.0.0.1:8000/classify?top_k=5' -- samples/cifar_cat.png samples/cifar_dog.png
--
-- Images: the arguments after `--`, else $WRK_IMAGES (paths separated by `:`). Read once per
-- wrk thread at start-up; every request is formatted up front, so sending costs no Lua work.

local BOUNDARY = "polynl-wrk-7d4f2a9c1e"
local TYPES = {jpg = "image/jpeg", jpeg = "image/jpeg", png = "image/png", webp = "image/webp",
               bmp = "image/bmp", gif = "image/gif", tif = "image/tiff", tiff = "image/tiff"}

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local function read_file(path)
   local file = assert(io.open(path, "rb"), "cannot open image " .. path)
   local data = file:read("*a")
   file:close()
   return data
end

local function multipart_request(path)
   local name = path:match("([^/]+)$")
   local kind = TYPES[(name:match("%.(%w+)$") or ""):lower()] or "application/octet-stream"
   local body = "--" .. BOUNDARY .. "\r\n"
      .. 'Content-Disposition: form-data; name="file"; filename="' .. name .. '"\r\n'
      .. "Content-Type: " .. kind .. "\r\n\r\n"
      .. read_file(path) .. "\r\n--" .. BOUNDARY .. "--\r\n"
   local headers = {["Content-Type"] = "multipart/form-data; boundary=" .. BOUNDARY}
   return wrk.format("POST", nil, headers, body)
end

function init(args)
   local paths = {}
   for _, path in ipairs(args) do table.insert(paths, path) end
   if #paths == 0 and os.getenv("WRK_IMAGES") then
      for path in os.getenv("WRK_IMAGES"):gmatch("[^:]+") do table.insert(paths, path) end
   end
   assert(#paths > 0, "no images: pass paths after `--` or set WRK_IMAGES")
   requests_ = {}
   for _, path in ipairs(paths) do table.insert(requests_, multipart_request(path)) end
   next_ = 0
   statuses = {}
end

function request()
   next_ = next_ % #requests_ + 1
   return requests_[next_]
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local by_status = {}
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses")) do
         by_status[status] = (by_status[status] or 0) + count
      end
   end
   local parts = {}
   for status, count in pairs(by_status) do
      table.insert(parts, string.format('"%d": %d', status, count))
   end
   local e = summary.errors
   local seconds = summary.duration / 1e6
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_s": %.6f, "requests_per_s": %.3f, "bytes_read": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"by_status": {%s}, "latency_ms": {"mean": %.3f, "stdev": %.3f, "max": %.3f, '
      .. '"p50": %.3f, "p90": %.3f, "p99": %.3f}}\n',
      summary.requests, seconds, summary.requests / seconds, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout, table.concat(parts, ", "),
      latency.mean / 1e3, latency.stdev / 1e3, latency.max / 1e3,
      latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3))
end
