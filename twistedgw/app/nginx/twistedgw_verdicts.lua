-- twistedgw verdicts kept in a lua_shared_dict (libnginx-mod-http-lua / OpenResty).
--
-- The optional variant of `twistedgw nginx-config --variant lua`: instead of
-- auth_request + proxy_cache (a subrequest and a cache file read on every request),
-- a cached verdict is one shared-memory lookup in access_by_lua. On a miss it asks
-- twistedgw's authz endpoint over the same internal location (Unix socket), keeps an
-- allow for as long as the answer's X-Accel-Expires says (never past cache_seconds
-- nor the certificate's expiry: twistedgw computes it), and hands any refusal to
-- twistedgw whole (@twistedgw_gateway), so the client gets twistedgw's JSON.
--
-- Needs in http {}: lua_shared_dict twistedgw_verdicts 10m; and this directory in
-- lua_package_path (the rendered include sets both).

local _M = {}

local SEP = "\n"  -- identity header values never hold a line break (twistedgw strips them)
local MAX_HEADERS = 100  -- ngx.req.get_headers' default; more: the request goes whole

local now = ngx.now

local function gateway()
    return ngx.exec("@twistedgw_gateway")
end

local REASONS = {
    [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden",
    [404] = "Not Found", [405] = "Method Not Allowed", [413] = "Payload Too Large",
    [421] = "Misdirected Request", [429] = "Too Many Requests",
    [500] = "Internal Server Error", [502] = "Bad Gateway",
    [503] = "Service Unavailable", [504] = "Gateway Timeout",
}
local LINGER = 2  -- seconds a refusal waits for (and drops) a body, as the direct mode

local function one(value)
    if type(value) == "table" then return value[1] end
    return value
end

-- A refusal to a client that waits for "100 Continue": NGINX would send that before
-- discarding the body of any answer it writes, so the answer goes on the raw
-- connection (HTTP/1.1), which then closes after at most LINGER seconds of dropping
-- whatever the client sends anyway. Nothing of the body is kept.
local function send_raw(status, body, headers, extra)
    local sock = ngx.req.socket(true)
    if not sock then
        return false
    end
    local out = {"HTTP/1.1 ", status, " ", REASONS[status] or "Error",
                 "\r\nServer: nginx\r\nDate: ", ngx.http_time(ngx.time()),
                 "\r\nContent-Type: application/json\r\nContent-Length: ", #body, "\r\n"}
    for _, list in ipairs({headers, extra or {}}) do  -- extra: the API's response-headers
        for _, pair in ipairs(list) do
            if pair[2] and pair[2] ~= "" then
                out[#out + 1] = pair[1] .. ": " .. pair[2] .. "\r\n"
            end
        end
    end
    out[#out + 1] = "Connection: close\r\n\r\n"
    if ngx.req.get_method() ~= "HEAD" then
        out[#out + 1] = body
    end
    sock:send(table.concat(out))
    local deadline = ngx.now() + LINGER
    while true do
        local left = deadline - ngx.now()
        if left <= 0 then break end
        sock:settimeout(left * 1000)
        local data = sock:receiveany(65536)
        if not data then break end
    end
    ngx.exit(444)  -- close, NGINX writes nothing more
    return true
end

-- Answer a refusal as twistedgw's direct mode would (its status, JSON and headers),
-- before any of the request body is read.
local function send(status, body, headers, spec)
    local expect = ngx.var.http_expect
    if expect and expect:lower() == "100-continue" and ngx.req.http_version() == 1.1
            and send_raw(status, body, headers, spec and spec.response_headers) then
        return true
    end
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Content-Length"] = #body
    for _, pair in ipairs(headers) do
        if pair[2] and pair[2] ~= "" then
            ngx.header[pair[1]] = pair[2]
        end
    end
    ngx.print(body)
    ngx.exit(ngx.HTTP_OK)
    return true  -- answered: the caller returns at once
end

-- The authz endpoint refused: it says with which status and JSON (X-Twistedgw-Status,
-- X-Twistedgw-Error), or leaves the request to the gateway path (no status: a refusal
-- about the subrequest itself, e.g. another API than this location's).
local function refused(res, spec)
    local header = {}
    for name, value in pairs(res.header) do
        header[string.lower(name)] = one(value)
    end
    local status = tonumber(header["x-twistedgw-status"])
    local body = header["x-twistedgw-error"]
    if not status or not body then
        return gateway()
    end
    return send(status, body, {
        {"WWW-Authenticate", header["www-authenticate"]},
        {"Retry-After", header["retry-after"]},
        {"Allow", header["allow"]},
    }, spec)
end

-- SHA-256 from the OpenSSL NGINX already links (LuaJIT's FFI): credentials go into the
-- verdict cache key as their digest, never in clear. SHA256_Init/Update/Final first:
-- OpenSSL 3's one-shot SHA256() fetches the algorithm on every call (EVP_Q_digest, ~5,000
-- instructions for a short key); the context functions hash directly. SHA256() where an
-- OpenSSL built without its deprecated API lacks them.
local ffi = require("ffi")
pcall(ffi.cdef, "unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);")
pcall(ffi.cdef, [[
int SHA256_Init(void *c);
int SHA256_Update(void *c, const void *data, size_t len);
int SHA256_Final(unsigned char *md, void *c);
]])
local digest_buf = ffi.new("unsigned char[32]")
local sha_ctx = ffi.new("unsigned char[256]")  -- SHA256_CTX is 112 bytes
local has_sha256 = pcall(function() return ffi.C.SHA256 end)
local has_sha256_ctx = pcall(function() return ffi.C.SHA256_Init and ffi.C.SHA256_Final end)

local function sha256(value)
    if has_sha256_ctx then
        local C = ffi.C
        C.SHA256_Init(sha_ctx)
        C.SHA256_Update(sha_ctx, value, #value)
        C.SHA256_Final(digest_buf, sha_ctx)
    else
        ffi.C.SHA256(value, #value, digest_buf)
    end
    return ffi.string(digest_buf, 32)
end

-- Small worker-local memos (a Lua table per NGINX worker, never shared, never on disk),
-- each emptied whole when it reaches MEMO_MAX entries.
local MEMO_MAX = 4096

local function memo()
    return {n = 0, t = {}}
end

local function remember(m, k, v)
    if m.n >= MEMO_MAX then
        m.t = {}
        m.n = 0
    end
    m.t[k] = v
    m.n = m.n + 1
    return v
end

-- What a connection keeps (worker-local, by a serial number never reused while the worker
-- lives): the client certificate's fingerprint ($ssl_client_fingerprint
-- hashes the certificate on every read, ~2,700 instructions; a connection's certificate
-- never changes: NGINX refuses renegotiation), the last value of each credential header
-- with its SHA-256 (a client sends the same token on every request of a connection: a
-- 700-byte bearer token's digest is ~15,000 instructions), and per location the last
-- verdict's cache key, parsed answer and expiry, so a warm request reads neither the
-- shared dict nor builds its key; its last good Host and the [[tls.sni]] entry its SNI
-- names (host, sni). Nothing
-- of it is shared or written anywhere, and a verdict kept here never outlives the shared
-- dict's copy (the same expiry).
local conns = memo()

-- The connection's serial: the worker's own number, written in its TLS object's ex_data
-- slot (OpenSSL's per-object storage, empty in every new SSL object, so a connection
-- whose SSL object reuses a closed one's memory gets a new number) the first time a
-- request of it is seen, and read back by two C calls on every later request; $connection
-- (NGINX's number, formatted as text and looked up by name per read: ~600 instructions)
-- where the request has no TLS object or OpenSSL's functions cannot be reached. HTTP/2
-- streams share their connection's SSL object, as they share $connection.
local connection_id = function(var)
    return var.connection
end

do
    local C = ffi.C
    for _, decl in ipairs({
        "void *ngx_http_lua_ffi_get_req_ssl_pointer(void *r);",
        "int CRYPTO_get_ex_new_index(int class_index, long argl, void *argp, void *new_func,"
            .. " void *dup_func, void *free_func);",
        "int SSL_set_ex_data(void *ssl, int idx, void *data);",
        "void *SSL_get_ex_data(const void *ssl, int idx);",
    }) do
        pcall(ffi.cdef, decl)
    end
    local ok, base = pcall(require, "resty.core.base")
    local usable = ok and base.get_request and pcall(function()
        return C.ngx_http_lua_ffi_get_req_ssl_pointer and C.CRYPTO_get_ex_new_index
            and C.SSL_set_ex_data and C.SSL_get_ex_data
    end)
    -- CRYPTO_EX_INDEX_SSL is 0 (OpenSSL 1.1 and 3); SSL_get_ex_new_index is its macro.
    local index = usable and C.CRYPTO_get_ex_new_index(0, 0, nil, nil, nil, nil) or -1
    if index >= 0 then
        local get_request, ssl_of = base.get_request, C.ngx_http_lua_ffi_get_req_ssl_pointer
        local get_ex, set_ex, cast = C.SSL_get_ex_data, C.SSL_set_ex_data, ffi.cast
        local serial = 0
        connection_id = function(var)
            local r = get_request()
            local ssl = r ~= nil and ssl_of(r) or nil
            if ssl == nil then
                return var.connection
            end
            local mark = get_ex(ssl, index)
            if mark ~= nil then
                return tonumber(cast("uintptr_t", mark))
            end
            serial = serial + 1
            if set_ex(ssl, index, cast("void *", serial)) ~= 1 then
                return var.connection
            end
            return serial
        end
    end
end

local function connection(var)
    local id = connection_id(var)
    local c = conns.t[id]
    if c == nil then
        c = remember(conns, id, {fp = var.ssl_client_fingerprint or "", cred = {}, keyed = {},
                                 base = {}, seen = {}})
    end
    return c
end

-- A credential's digest, from the connection's memo when it is the value sent last.
local function digest(c, name, value)
    local last = c.cred[name]
    if last ~= nil and last[1] == value then
        return last[2]
    end
    local d = sha256(value)
    c.cred[name] = {value, d}
    return d
end

-- The values of the API key headers (lower-case names), in names' order: a value, nil
-- when absent, false when repeated; nil for them all when the request has more than
-- MAX_HEADERS headers. With the request-header functions resty.core declares (the FFI of
-- ngx_http_lua_module), read in place: a Lua string only for a header whose name has
-- the length of one wanted, no table of every header (ngx.req.get_headers: ~1,000
-- instructions for two headers). ngx.req.get_headers where they are missing.
local key_found = {}
local key_values

-- ngx.req.get_headers' way: a table of every header.
local function key_values_table(names)
    local headers, err = ngx.req.get_headers(MAX_HEADERS)
    if err == "truncated" then
        return nil
    end
    local found = key_found
    for i, name in ipairs(names) do
        -- rawget: the table's own lookup would take Api-Key for api_key
        local value = rawget(headers, name)
        if type(value) == "table" then
            value = false
        end
        found[i] = value
    end
    return found
end

do
    local C = ffi.C
    local ok, base = pcall(require, "resty.core.base")
    local usable = ok and pcall(function()
        return C.ngx_http_lua_ffi_req_get_headers_count and C.ngx_http_lua_ffi_req_get_headers
            and ffi.typeof("ngx_http_lua_ffi_table_elt_t*") and base.get_request
            and base.get_string_buf
    end)
    key_values = key_values_table
    if usable then
        local get_request, get_string_buf = base.get_request, base.get_string_buf
        local elt_ptr = ffi.typeof("ngx_http_lua_ffi_table_elt_t*")
        local elt_size = ffi.sizeof("ngx_http_lua_ffi_table_elt_t")
        local truncated = ffi.new("int[1]")
        local ffi_string, cast = ffi.string, ffi.cast
        local count = C.ngx_http_lua_ffi_req_get_headers_count
        local probed = false

        key_values = function(names)
            local r = get_request()
            local n
            if probed then
                n = count(r, MAX_HEADERS, truncated)
            else
                -- resty.core before 0.1.23 declares it without `truncated`: the call
                -- then fails before reaching C, and get_headers takes over for good.
                local called, got = pcall(count, r, MAX_HEADERS, truncated)
                if not called then
                    key_values = key_values_table
                    return key_values_table(names)
                end
                probed, n = true, got
            end
            if n < 0 or truncated[0] ~= 0 then
                return nil
            end
            local found = key_found
            local k = #names
            for i = 1, k do
                found[i] = nil
            end
            if n == 0 then
                return found
            end
            local buf = cast(elt_ptr, get_string_buf(n * elt_size))
            if C.ngx_http_lua_ffi_req_get_headers(r, buf, n, 0) ~= 0 then
                return nil
            end
            for j = 0, n - 1 do
                local h = buf[j]
                local len = tonumber(h.key.len)
                for i = 1, k do
                    local name = names[i]
                    if #name == len and ffi_string(h.key.data, len) == name then
                        if found[i] == nil then
                            found[i] = ffi_string(h.value.data, h.value.len)
                        else
                            found[i] = false
                        end
                    end
                end
            end
            return found
        end
    end
end

-- The request headers a verdict's key reads besides the certificate (lower-case names):
-- the API key headers of its schemes, then Authorization when they read bearer tokens.
-- Read in one pass over the request's headers with the Host (checks), not as ngx.var's
-- http_authorization (a variable lookup and a header scan per read: with the bearer's
-- key built per request, ~1,400 instructions of a warm JWT request).
local function credential_names(spec)
    local names = spec.cred
    if names == nil then
        names = {}
        for i, name in ipairs(spec.keys) do
            names[i] = name
        end
        if spec.bearer then
            names[#names + 1] = "authorization"
        end
        spec.cred = names
    end
    return names
end

-- The verdict cache key: the API, the client certificate's fingerprint, the digest of
-- each credential header the API's schemes read (its API key headers, Authorization for
-- bearer tokens), and for an API from an OpenAPI definition the method and target.
-- Returns nil when the request must go to twistedgw whole (a repeated credential header,
-- or more headers than get_headers reads), and false when it may not be cached.
local function cache_key(spec, var, c, scanned)
    local key = c.base[spec]
    if key == nil then
        key = spec.api .. "|" .. c.fp
        c.base[spec] = key
    end
    local names = credential_names(spec)
    local n = #names
    if n > 0 then
        -- Past MAX_HEADERS headers a key built from part of them could name another
        -- caller's verdict, so such a request is never cached nor judged here:
        -- twistedgw answers it whole.
        local values, first = scanned, 1  -- the checks' read: Host first
        if values == nil then
            values, first = key_values(names), 0
            if values == nil then
                return nil
            end
        end
        -- The key as far as here, kept per location with the values it was built from:
        -- a client sends the same credentials on every request of a connection.
        local last = c.keyed[spec]
        if last ~= nil then
            for i = 1, n do
                if last[i] ~= values[i + first] then
                    last = nil
                    break
                end
            end
        end
        if last ~= nil then
            key = last.key
        else
            last = {}
            local bearer = spec.bearer and n or 0  -- Authorization's place in names
            for i = 1, n do
                local value = values[i + first]
                if value == false then
                    -- repeated: twistedgw refuses it as in direct mode (NGINX itself
                    -- refuses a repeated Authorization header: 400)
                    return nil
                end
                last[i] = value
                if value == nil then
                    key = key .. "|-"
                elseif has_sha256 then
                    key = key .. "|" .. digest(c, i == bearer and "\0authorization" or names[i],
                                               value)
                else
                    return false  -- no digest: ask twistedgw, keep nothing
                end
            end
            last.key = key
            c.keyed[spec] = last
        end
    end
    if spec.per_operation then
        key = key .. "|" .. var.request_method .. "|" .. var.request_uri
    end
    return key
end

-- Asking twistedgw's authz endpoint: one HTTP/1.1 request on a kept-alive cosocket (the
-- Unix socket of [nginx] authz), with every header of the client's request (as an
-- auth_request subrequest would carry them) and the ones the rendered config sets.
-- A cosocket, not ngx.location.capture: capture refuses HTTP/2 requests, and it costs a
-- whole subrequest. Returns {status, header (lower-case names), body}, or nil when the
-- request must go to twistedgw whole (more headers than get_headers reads).
local HOP = {connection = true, ["keep-alive"] = true, ["proxy-connection"] = true,
             te = true, trailer = true, ["transfer-encoding"] = true, upgrade = true,
             ["content-length"] = true, expect = true, host = true}

local function connect(address)
    local sock = ngx.socket.tcp()
    sock:settimeouts(5000, 60000, 60000)
    local ok, err
    if address:sub(1, 5) == "unix:" then
        ok, err = sock:connect(address)
    else
        local host, port = address:match("^%[?(.-)%]?:(%d+)$")
        ok, err = sock:connect(host, tonumber(port))
    end
    if not ok then return nil, err end
    return sock
end

-- The client certificate as the ask sends it: $ssl_client_escaped_cert writes the
-- certificate as PEM and URL-escapes it on every read (~45,000 instructions), and a
-- connection's certificate never changes, so the connection keeps it. A server-level
-- variable ($tgw_client_cert: servers that ask and servers that do not) is read each time:
-- a connection's requests may name other servers.
local function client_cert(var, cert_var, c)
    if cert_var ~= "ssl_client_escaped_cert" then
        return var[cert_var] or ""
    end
    local cert = c.cert
    if cert == nil then
        cert = var.ssl_client_escaped_cert or ""
        c.cert = cert
    end
    return cert
end

local find, sub, lower, byte = string.find, string.sub, string.lower, string.byte
local MAX_HEAD = 65536  -- an answer's head longer than this: a failed ask

-- What an ask sends whatever the request, built once per spec: the request line's
-- start, and the lower-case names the ask sets itself (the client's are not passed on).
local function ask_parts(a)
    local skip = a.skip
    if skip == nil then
        skip = {}
        for _, name in ipairs({a.uri_header, a.method_header, a.cert_header,
                               "X-SSL-Client-Verify", "X-Forwarded-For", "X-Forwarded-Proto",
                               "X-Twistedgw-Nginx", "X-Twistedgw-Api-Expected"}) do
            skip[lower(name)] = true
        end
        a.skip = skip
        a.head = "GET " .. a.path .. " HTTP/1.1\r\nHost: "
        a.fixed = "X-Forwarded-Proto: https\r\nX-Twistedgw-Nginx: " .. a.asker
                  .. "\r\nX-Twistedgw-Api-Expected: " .. a.expected
                  .. "\r\n\r\n"  -- (a GET without Content-Length has no body: one line less)
    end
    return skip
end

-- One header line of the answer (without its line end) into header (lower-case names,
-- the first of a repeated name), without patterns: no backtracking per character.
local function header_line(header, line)
    local i = find(line, ":", 1, true)
    if i == nil or i == 1 then
        return
    end
    local name = lower(sub(line, 1, i - 1))
    local j, k = i + 1, #line
    local b = byte(line, j)
    while b == 32 or b == 9 do
        j = j + 1
        b = byte(line, j)
    end
    b = byte(line, k)
    while k >= j and (b == 32 or b == 9) do
        k = k - 1
        b = byte(line, k)
    end
    if header[name] == nil then
        header[name] = sub(line, j, k)
    end
end

-- The answer, read in as few receives as it arrives in (usually one): {status, header,
-- body}, or nil when it is not one well-formed HTTP/1.1 answer with a Content-Length.
-- keep: whether the connection may be kept alive (nothing after the body, no close).
local function read_answer(sock)
    local data = sock:receiveany(MAX_HEAD)
    if not data then return nil end
    local stop = find(data, "\r\n\r\n", 1, true)
    while stop == nil do
        if #data > MAX_HEAD then return nil end
        local more = sock:receiveany(MAX_HEAD)
        if not more then return nil end
        data = data .. more
        stop = find(data, "\r\n\r\n", 1, true)
    end
    local eol = find(data, "\n", 1, true)
    local first = sub(data, 1, eol - 1)
    if byte(first, #first) == 13 then first = sub(first, 1, #first - 1) end
    -- "HTTP/1.x NNN": by bytes (string.match is not compiled: the trace would stop here)
    if sub(first, 1, 7) ~= "HTTP/1." or byte(first, 9) ~= 32 then return nil end
    local status = 0
    for i = 10, 12 do  -- three digits
        local d = byte(first, i)
        if d == nil or d < 48 or d > 57 then return nil end
        status = status * 10 + d - 48
    end
    local d = byte(first, 8)
    if d == nil or d < 48 or d > 57 or status < 100
       or (#first > 12 and byte(first, 13) ~= 32) then
        return nil
    end
    local header = {}
    local pos = eol + 1
    while pos <= stop do  -- the lines up to the blank one
        eol = find(data, "\n", pos, true)
        local line = sub(data, pos, eol - 1)
        if byte(line, #line) == 13 then line = sub(line, 1, #line - 1) end
        if line ~= "" then header_line(header, line) end
        pos = eol + 1
    end
    local length = tonumber(header["content-length"])
    if not length or header["transfer-encoding"] then return nil end
    local rest = sub(data, stop + 4)
    while #rest < length do
        local more = sock:receiveany(length - #rest)
        if not more then return nil end
        rest = rest .. more
    end
    local keep = #rest == length and lower(header["connection"] or "") ~= "close"
    return {status = status, header = header, body = sub(rest, 1, length)}, keep
end

-- An ask that failed: the gateway path answers (refused() reads only its status).
local FAILED = {status = 502, header = {}, body = ""}

local has_new_tab, new_tab = pcall(require, "table.new")  -- LuaJIT's (OpenResty's too)
if not has_new_tab then
    new_tab = function() return {} end
end

local function ask(spec, c)
    local a = spec.ask
    local headers, err = ngx.req.get_headers(MAX_HEADERS, true)
    if err == "truncated" then
        return nil
    end
    local skip = ask_parts(a)
    local var = ngx.var
    local out = new_tab(48, 0)  -- (grown one line at a time, it would be resized ~4 times)
    out[1], out[2], out[3] = a.head, var.http_host or "", "\r\n"
    local n = 3
    local name, value = next(headers)
    while name ~= nil do
        local low = lower(name)
        if not HOP[low] and not skip[low] then
            if type(value) == "table" then
                for _, v in ipairs(value) do
                    out[n + 1], out[n + 2], out[n + 3], out[n + 4] = name, ": ", v, "\r\n"
                    n = n + 4
                end
            else
                out[n + 1], out[n + 2], out[n + 3], out[n + 4] = name, ": ", value, "\r\n"
                n = n + 4
            end
        end
        name, value = next(headers, name)
    end
    -- The connection's verification result never changes (NGINX refuses renegotiation):
    -- read once per connection, as its certificate (client_cert).
    local verify = c.verify
    if verify == nil then
        verify = var.ssl_client_verify or ""
        c.verify = verify
    end
    local own = {a.uri_header, var.request_uri, a.method_header, ngx.req.get_method(),
                 a.cert_header, client_cert(var, a.cert_var, c),
                 "X-SSL-Client-Verify", verify,
                 "X-Forwarded-For", var.remote_addr}
    for i = 1, 10, 2 do  -- an empty value is no header (as proxy_set_header)
        local value = own[i + 1]
        if value and value ~= "" then
            out[n + 1], out[n + 2], out[n + 3], out[n + 4] = own[i], ": ", value, "\r\n"
            n = n + 4
        end
    end
    out[n + 1] = a.fixed
    local sock = connect(a.address)
    if not sock then return FAILED end
    if not sock:send(table.concat(out, "", 1, n + 1)) then sock:close() return FAILED end
    local res, keep = read_answer(sock)
    if not res then sock:close() return FAILED end
    if keep then
        sock:setkeepalive(60000, 64)
    else
        sock:close()
    end
    return res
end

-- Several backends: the direct mode's order (load_balance: round-robin, a turn per
-- request; failover: as written), a backend that failed in the last SUSPEND seconds
-- tried last, not never. Each worker keeps its own turn (as direct mode's workers do);
-- the down-marks are in the shared dict, so every worker shares them: a worker reads
-- them at most once per DOWN_READ seconds (its own marks at once), not per request.
local SUSPEND = 30  -- upstream/_forward.py endpoint_suspend_seconds
local DOWN_READ = 1
local IDEMPOTENT = {GET = true, HEAD = true, OPTIONS = true, PUT = true, DELETE = true,
                    TRACE = true}

-- $tgw_peers is "k|rest": the backend tried now and the ones left, in order. Left empty
-- by the usual pick (no backend down: the ones left follow from $tgw_peer).
local function use_peer(spec, k, rest)
    local var = ngx.var
    local peer = spec.backends[k]
    var.tgw_peer = peer[1]
    var.tgw_peer_host = peer[2]
    if spec.peer_name then
        var.tgw_peer_name = peer[3]
    end
    if rest then
        var.tgw_peers = k .. "|" .. rest
    end
end

-- What pick_backend needs of a spec, built once per worker: the shared dict's keys, for
-- each first backend the order of the others when none is down, the backends by
-- upstream name, the turn and the worker's view of the down-marks. By API: the retry
-- location's spec is another table for the same backends.
local peer_states = {}

local function peer_state(spec)
    local state = peer_states[spec.api]
    if state == nil then
        local n = #spec.backends
        local down, rests, index = {}, {}, {}
        for k = 1, n do
            down[k] = "down|" .. spec.backends[k][4]
            index[spec.backends[k][1]] = k
        end
        for first = 0, n - 1 do
            local rest = {}
            for j = 1, n - 1 do
                rest[j] = (first + j) % n + 1
            end
            rests[first] = table.concat(rest, ",")
        end
        state = {down = down, rests = rests, index = index, n = n, turn = 0,
                 read_at = 0, any_down = false}
        peer_states[spec.api] = state
    end
    return state
end

-- Whether any of the spec's backends is marked down (the worker's view, read again from
-- the shared dict once it is DOWN_READ seconds old).
local function any_down(state, dict)
    local t = now()
    if t >= state.read_at then
        local found = false
        for k = 1, state.n do
            if dict:get(state.down[k]) then
                found = true
                break
            end
        end
        state.any_down = found
        state.read_at = t + DOWN_READ
    end
    return state.any_down
end

local function pick_backend(spec)
    local dict = ngx.shared.twistedgw_verdicts
    local state = peer_state(spec)
    local n = state.n
    local first = 0
    if spec.backend_mode == "load_balance" then
        first = state.turn % n
        state.turn = first + 1
    end
    if not any_down(state, dict) then  -- the usual case: the turn's order, no table built
        return use_peer(spec, first + 1, nil)
    end
    local down_keys = state.down
    local up, down = {}, {}
    for j = 0, n - 1 do
        local k = (first + j) % n + 1
        if dict:get(down_keys[k]) then
            down[#down + 1] = k
        else
            up[#up + 1] = k
        end
    end
    for _, k in ipairs(down) do
        up[#up + 1] = k
    end
    local k = table.remove(up, 1)
    use_peer(spec, k, table.concat(up, ","))
end

-- A backend failed before answering (502/504 of its try): skip it for SUSPEND seconds
-- and go to the next where direct mode would (nothing was sent, or an idempotent method
-- without a body); else direct mode's 503 (could not connect) or 504.
function _M.retry(spec)
    local var = ngx.var
    local dict = ngx.shared.twistedgw_verdicts
    local state = peer_state(spec)
    local index, rest = (var.tgw_peers or ""):match("^(%d+)|(.*)$")
    if index == nil then  -- the usual pick's try: the others follow in turn
        local k = state.index[var.tgw_peer or ""]
        if k == nil then
            return ngx.exec("@twistedgw_503")
        end
        index, rest = k, state.rests[k - 1]
    end
    local failed = spec.backends[tonumber(index)]
    dict:set("down|" .. failed[4], true, SUSPEND)
    state.read_at = 0  -- this worker's own mark counts at once
    local connect = var.upstream_connect_time or "-"
    local nothing_sent = connect:match("%-%s*$") ~= nil
    local body = (tonumber(var.http_content_length) or 0) > 0 or var.http_transfer_encoding
    local safe = nothing_sent or (IDEMPOTENT[ngx.req.get_method()] and not body)
    if rest == "" or not safe then
        local status = tonumber((var.upstream_status or ""):match("(%d+)%s*$"))
        if status == 504 and not nothing_sent then
            return ngx.exec("@twistedgw_504")
        end
        return ngx.exec("@twistedgw_503")
    end
    local k, more = rest:match("^(%d+),?(.*)$")
    use_peer(spec, tonumber(k), more)
end

-- Tiers: the bucket twistedgw's answer names (X-Twistedgw-Tier: capacity, period,
-- hex key, l|c) is spent here on every request, cached verdict or not, as direct mode
-- spends it: a token bucket holding `capacity` tokens, refilled evenly over `period`
-- seconds. In a lua_shared_dict shared by NGINX's workers (a short lock makes the
-- read-modify-write atomic across them), or with [cluster] in Redis, with the key and
-- Lua script twistedgw's own requests spend, so both paths spend one bucket.

local bucket = ffi.new("double[2]")

local function unhex(text)
    return (text:gsub("..", function(pair) return string.char(tonumber(pair, 16)) end))
end

local function take_dict(key, capacity, period)
    local dict = ngx.shared.twistedgw_tiers
    -- One worker: nothing below yields, so no other request can interleave. Several:
    -- a short lock (it expires by itself if a worker dies holding it).
    local lock = ngx.worker.count() > 1 and "lock|" .. key
    local locked = false
    if lock then
        for _ = 1, 100 do
            if dict:add(lock, true, 0.05) then
                locked = true
                break
            end
            ngx.sleep(0.001)
        end
    end
    local now = ngx.now()
    local state = dict:get(key)
    local tokens, updated = capacity, now
    if state then
        if #state == 16 then  -- two doubles: tokens, when (no formatting per request)
            ffi.copy(bucket, state, 16)
            tokens, updated = bucket[0], bucket[1]
        else  -- "%.17g %.17g", as an older module wrote it
            local t, u = state:match("^(%S+) (%S+)$")
            tokens, updated = tonumber(t) or capacity, tonumber(u) or now
        end
        local elapsed = now - updated
        if elapsed < 0 then elapsed = 0 end
        tokens = math.min(capacity, tokens + elapsed * capacity / period)
    end
    local wait = nil
    if tokens >= 1 then
        tokens = tokens - 1
    else
        wait = (1 - tokens) * period / capacity
    end
    bucket[0], bucket[1] = tokens, now
    dict:set(key, ffi.string(bucket, 16), period + 1)
    if locked then
        dict:delete(lock)
    end
    return wait
end

local function resp(args)
    local out = {"*", #args, "\r\n"}
    for _, a in ipairs(args) do
        a = tostring(a)
        out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
    end
    return table.concat(out)
end

local function read_reply(sock)
    local line, err = sock:receive("*l")
    if not line then return nil, err end
    local kind, rest = line:sub(1, 1), line:sub(2)
    if kind == ":" then return tonumber(rest) end
    if kind == "+" then return rest end
    if kind == "-" then return {err = rest} end
    if kind == "$" then
        local n = tonumber(rest)
        if n < 0 then return false end
        local data, e = sock:receive(n + 2)
        if not data then return nil, e end
        return data:sub(1, n)
    end
    if kind == "*" then
        local items = {}
        for i = 1, tonumber(rest) do
            local item, e = read_reply(sock)
            if item == nil then return nil, e end
            items[i] = item
        end
        return items
    end
    return nil, "unexpected reply " .. line:sub(1, 40)
end

local redis_warned = 0

-- One token from Redis (EVALSHA of twistedgw's script, EVAL after NOSCRIPT): the seconds
-- to wait, nil when allowed, or false, why when Redis cannot answer within the timeout.
local function take_redis(t, key, capacity, period)
    local sock = ngx.socket.tcp()
    sock:settimeouts(t.timeout, t.timeout, t.timeout)
    local ok, err
    if t.path ~= "" then
        ok, err = sock:connect("unix:" .. t.path)
    else
        ok, err = sock:connect(t.host, t.port)
    end
    if not ok then return false, "connect: " .. tostring(err) end
    if sock:getreusedtimes() == 0 then
        local setup = {}
        if t.password ~= "" then
            setup[#setup + 1] = t.username ~= "" and {"AUTH", t.username, t.password}
                                or {"AUTH", t.password}
        end
        if t.db ~= 0 then setup[#setup + 1] = {"SELECT", t.db} end
        for _, command in ipairs(setup) do
            sock:send(resp(command))
            local reply, e = read_reply(sock)
            if type(reply) ~= "string" then
                sock:close()
                return false, (command[1] .. ": " .. tostring(e or (reply and reply.err)))
            end
        end
    end
    local period_ms = period * 1000
    local args = {"EVALSHA", t.sha, 1, key, capacity, period_ms, period_ms + 1000}
    sock:send(resp(args))
    local reply, e = read_reply(sock)
    if type(reply) == "table" and reply.err and reply.err:find("^NOSCRIPT") then
        args[1], args[2] = "EVAL", t.script
        sock:send(resp(args))
        reply, e = read_reply(sock)
    end
    if type(reply) ~= "table" or reply.err or #reply ~= 2 then
        sock:close()
        return false, tostring(e or (reply and reply.err) or "unexpected reply")
    end
    sock:setkeepalive(60000, 64)
    if reply[1] == 1 then return nil end
    return math.max(reply[2], 1) / 1000000
end

-- X-Twistedgw-Tier values, parsed once per worker: {capacity, period, key, kind}.
local tier_values = memo()

local function tier_value(value)
    local known = tier_values.t[value]
    if known == nil then
        local capacity, period, hex, kind = value:match("^(%d+) (%d+) (%x+) ([lc])$")
        known = capacity and {tonumber(capacity), tonumber(period), unhex(hex), kind} or false
        remember(tier_values, value, known)
    end
    return known
end

local function spend_tier(spec, value)
    local t = spec.tiers
    local parsed = tier_value(value)
    if not parsed then return false end
    local capacity, period, key, kind = parsed[1], parsed[2], parsed[3], parsed[4]
    local wait, why
    if t.store == "redis" then
        wait, why = take_redis(t, key, capacity, period)
        if wait == false then
            local now = ngx.now()
            if now - redis_warned > 60 then
                redis_warned = now
                ngx.log(ngx.WARN, "twistedgw tiers: Redis cannot answer (", why, "); ",
                        t.closed and "throttled APIs answer 503" or "serving without the limit")
            end
            if t.closed then
                return send(503, t.unavailable, {}, spec)
            end
            return false
        end
    else
        wait = take_dict(key, capacity, period)
    end
    if wait then
        local retry = tostring(math.max(1, math.ceil(wait)))
        return send(429, t[kind], {{"Retry-After", retry}}, spec)
    end
    return false
end

-- One API's access phase. spec (rendered per location by nginx-config):
--   api: the API's index (names the internal authz location; first part of the key)
--   keys: the API key headers its schemes read; bearer: it reads bearer tokens
--   per_operation: an API from an OpenAPI definition (method and target in the key)
--   answers: {answer header, variable} pairs: the authz answer header whose value the
--            variable (declared with `set` in the location) takes
--   backends, backend_mode: several backends ({upstream, Host, TLS name, endpoint}
--            each), picked per request into $tgw_peer, $tgw_peer_host and $tgw_peers
--            ("k|rest": the try and the ones left, for the retry location)
--   peer_name: the location reads $tgw_peer_name (an https API whose [backend_tls]
--            names no server): set only then
-- Each location's spec, built the first time its access_by_lua_block runs in a worker
-- (`v.specs[id] or v.define(id, {...})`): no table is built per request.
_M.specs = {}

function _M.define(id, spec)
    _M.specs[id] = spec
    return spec
end

-- underscores_in_headers on (an API reads a credential from a header such as api_key):
-- direct mode never forwards a header whose name holds "_" (WSGI and CGI read
-- X_Client_Cert as X-Client-Cert), so neither does NGINX's path. Their names, or nil
-- when get_headers cannot read every header (the request then goes to twistedgw whole).
local function underscored()
    local headers, err = ngx.req.get_headers(MAX_HEADERS, true)
    if err == "truncated" then
        return nil
    end
    local names = {}
    for name in pairs(headers) do
        if name:find("_", 1, true) then
            names[#names + 1] = name
        end
    end
    return names
end

-- An allowed request goes on to the backend: without the headers direct mode drops,
-- to the backend direct mode would pick.
local function forward(spec, drop)
    if drop then
        for _, name in ipairs(drop) do
            ngx.req.clear_header(name)
        end
    end
    if spec.backends then
        pick_backend(spec)
    end
end

-- A cached verdict as {variable, value, ...} (and .tier: the bucket to spend), parsed
-- once per worker and location.
local EMPTY = {}
local verdicts_parsed = {}  -- by spec (one per location): a memo each

local function parsed_verdict(spec, verdict)
    local by_spec = verdicts_parsed[spec]
    if by_spec == nil then
        by_spec = memo()
        verdicts_parsed[spec] = by_spec
    end
    local known = by_spec.t[verdict]
    if known ~= nil then
        return known
    end
    local answers = spec.answers
    local sets = {}
    local i = 1
    for value in string.gmatch(verdict .. SEP, "(.-)" .. SEP) do
        if value ~= "" and answers[i] then
            local variable = answers[i][2]
            if variable == "" then
                sets.tier = value  -- X-Twistedgw-Tier: the bucket to spend
            else
                sets[#sets + 1] = variable
                sets[#sets + 1] = value
            end
        end
        i = i + 1
    end
    if #sets == 0 and sets.tier == nil then
        sets = EMPTY
    end
    return remember(by_spec, verdict, sets)
end

-- The verdict for key: the connection's last one for this location while it lasts,
-- else the shared dict's (its flags: the expiry, whole seconds, rounded down), else nil.
local function cached(spec, key, c)
    local seen = c.seen[spec]
    if seen ~= nil and seen[1] == key and now() < seen[3] then
        return seen[2]
    end
    local verdict, expires = ngx.shared.twistedgw_verdicts:get(key)
    if not verdict then
        return nil
    end
    local sets = parsed_verdict(spec, verdict)
    if expires and expires > 0 then  -- 0: kept by an older module, its expiry unknown
        c.seen[spec] = {key, sets, expires}
    end
    return sets
end

-- server: given when the location makes the Host and SNI checks (the rendered config
-- has hosts or [[tls.sni]] entries): the [[tls.sni]] entry of the location's server
-- ("-1": the default one; "": no entries). Before anything else, as direct mode: a Host
-- that is not a host is answered 400 ($tgw_bad_host, read only when the Host is not the
-- connection's last good one), a request on a server of another entry than the one its
-- connection's SNI names 421 ($tgw_sni_entry, read once per connection: a connection's
-- SNI never changes). Returns the values of the headers it read (Host first, then the
-- API's key headers: cache_key takes them from there), or nil.
local function checks(spec, server, var, c)
    local scan = spec.scan
    if scan == nil then
        scan = {"host"}
        for i, name in ipairs(credential_names(spec)) do
            scan[i + 1] = name
        end
        spec.scan = scan
    end
    local values = key_values(scan)
    local host = values and values[1]
    if values == nil or host ~= c.host then
        if var.tgw_bad_host ~= "0" then
            ngx.exec("@twistedgw_bad_host")
            return nil, true
        end
        if values ~= nil then
            c.host = host
        end
    end
    if server ~= "" then
        local sni = c.sni
        if sni == nil then
            sni = var.tgw_sni_entry or ""
            c.sni = sni
        end
        if sni ~= server then
            ngx.exec("@twistedgw_421")
            return nil, true
        end
    end
    return values, false
end

function _M.access(spec, server)
    local var = ngx.var
    local c = connection(var)
    local scanned = nil
    if server ~= nil then
        local answered
        scanned, answered = checks(spec, server, var, c)
        if answered then
            return
        end
    end
    local drop = nil
    if spec.drop_underscored then
        drop = underscored()
        if drop == nil then
            return gateway()
        end
    end
    local key = cache_key(spec, var, c, scanned)
    if key == nil then
        return gateway()
    end
    local sets = key and cached(spec, key, c)
    if not sets then
        local res = ask(spec, c)
        if res == nil then
            return gateway()
        end
        if res.status ~= 200 then
            return refused(res, spec)
        end
        local header = res.header  -- by lower-case name, the first of a repeated one
        local parts = {}
        for i, pair in ipairs(spec.answers) do
            parts[i] = header[pair[1]] or ""
        end
        local verdict = table.concat(parts, SEP)
        sets = parsed_verdict(spec, verdict)
        -- X-Accel-Expires: at most cache_seconds, never past a certificate's expiry nor a
        -- token's exp; 0 (or anything but whole seconds) keeps nothing. twistedgw sends
        -- the rendered config's questions no Cache-Control (one line less to parse).
        local ttl = tonumber(header["x-accel-expires"]) or 0
        if ttl ~= ttl or ttl < 1 or ttl ~= math.floor(ttl) then
            ttl = 0
        end
        if ttl > 0 and key then
            local expires = math.floor(now() + ttl)
            ngx.shared.twistedgw_verdicts:set(key, verdict, ttl, expires)
            c.seen[spec] = {key, sets, expires}
        end
    end
    if sets == EMPTY then
        return forward(spec, drop)  -- nothing to set: the variables start empty
    end
    for i = 1, #sets, 2 do
        var[sets[i]] = sets[i + 1]
    end
    local tier = sets.tier
    if tier and spec.tiers and spend_tier(spec, tier) then
        return  -- refused (429, or 503 when [cluster] is closed and Redis cannot answer)
    end
    return forward(spec, drop)
end

return _M
