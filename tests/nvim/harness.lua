-- tests/nvim/harness.lua: drive a real child Neovim for the plugin tests.
--
-- The runner (tests/nvim/run.lua) calls H.begin() before a case and
-- H.finish() after it; a case gets a fresh child from H.spawn():
--
--   nvim --embed --headless -u tests/nvim/minimal_init.lua -i NONE
--
-- over msgpack-RPC (jobstart rpc=true). Child methods run Lua in it
-- (nvim_exec_lua), type keys (nvim_input) and read what it shows: buffer
-- lines, cursor, mode and the extmarks of the "gpt2" namespace. H.wait()
-- polls a condition from the parent with a timeout. Every case has a
-- deadline: a libuv watchdog kills the child with SIGKILL when it passes, so
-- a blocked rpcrequest returns and nothing hangs.
local H = {}
local uv = vim.uv or vim.loop

H.root = vim.fn.getcwd()
H.model = H.root .. '/tests/fixtures/models/tiny-f32'
H.helper = H.root .. '/build/gpt2'
H.ns_name = 'gpt2'

-- Options every test's setup() starts from: the tiny fixture model, a short
-- debounce, no streaming (so what is shown is the final answer), short
-- suggestions and one compute thread (CI has two cores).
H.defaults = {
  model = H.model,
  debounce_ms = 10,
  stream = false,
  max_tokens = 8,
  helper_args = { '--threads', '1' },
}

local children = {}
local deadline = math.huge
local watchdog = nil
local timed_out = false

-- A test file's list of cases and the function that adds one:
--   local T, case = H.suite()
--   case('name', function(c) ... end, { timeout = ms })
--   return T
function H.suite()
  local T = {}
  return T, function(name, fn, opts)
    table.insert(T, vim.tbl_extend('force', opts or {}, { name = name, fn = fn }))
  end
end

function H.now()
  return uv.hrtime() / 1e6
end

-- ==== Assertions ====

-- Errors raised by the harness carry no position (level 0); the runner adds
-- the line of the test file that was running.
function H.fail(msg)
  error(msg, 0)
end

function H.ok(cond, msg)
  if not cond then
    H.fail(msg or 'assertion failed')
  end
  return cond
end

function H.eq(got, want, what)
  if not vim.deep_equal(got, want) then
    H.fail(string.format('%s: expected %s, got %s', what or 'value',
      vim.inspect(want, { newline = ' ', indent = '' }), vim.inspect(got, { newline = ' ', indent = '' })))
  end
end

function H.neq(got, other, what)
  if vim.deep_equal(got, other) then
    H.fail(string.format('%s: expected something other than %s', what or 'value',
      vim.inspect(other, { newline = ' ', indent = '' })))
  end
end

-- Stop the case here and report it as skipped.
function H.skip(reason)
  error({ skip = reason }, 0)
end

-- ==== Time ====

function H.begin(timeout_ms)
  timed_out = false
  deadline = H.now() + timeout_ms
  watchdog = uv.new_timer()
  watchdog:start(timeout_ms, 0, function()
    -- libuv callback (fast context): kill the children, which makes any
    -- blocked rpcrequest in the parent return with an error.
    timed_out = true
    for _, c in pairs(children) do
      if c.pid and not c.exited then
        pcall(uv.kill, c.pid, 'sigkill')
      end
    end
  end)
end

-- Stop every child of the case. Returns whether the case ran past its
-- deadline, and a problem found while stopping (or nil).
function H.finish()
  if watchdog then
    watchdog:stop()
    watchdog:close()
    watchdog = nil
  end
  local problem
  for _, c in pairs(children) do
    local was_running = not c.exited
    if not c:stop() and was_running and not timed_out then
      problem = 'the child Neovim did not exit within 3 s of :qall!'
    end
  end
  children = {}
  deadline = math.huge
  return timed_out, problem
end

function H.timed_out()
  return timed_out
end

function H.sleep(ms)
  vim.wait(ms)
end

-- Poll cond() (in the parent; it may talk to the child) every 10 ms until it
-- returns a truthy value, which is returned; fails after timeout_ms (default
-- 5 s) or at the case's deadline.
function H.wait(cond, what, timeout_ms)
  local t_end = math.min(H.now() + (timeout_ms or 5000), deadline)
  while true do
    local v = cond()
    if v then
      return v
    end
    if timed_out or H.now() > t_end then
      H.fail('timed out waiting for ' .. (what or 'a condition'))
    end
    vim.wait(10)
  end
end

-- cond() must stay false for ms milliseconds.
function H.never(cond, what, ms)
  local t_end = H.now() + ms
  while H.now() < t_end do
    local v = cond()
    if v then
      H.fail('unexpected: ' .. (what or 'condition') .. ' (' .. vim.inspect(v, { newline = ' ', indent = '' }) .. ')')
    end
    vim.wait(10)
  end
end

-- ==== The child Neovim ====

local Child = {}
Child.__index = Child

local function clean(v)
  if v == vim.NIL then
    return nil
  end
  return v
end

function H.spawn()
  local c = setmetatable({ stderr = {}, exited = false }, Child)
  c.chan = vim.fn.jobstart({ 'nvim', '--embed', '--headless', '-u', 'tests/nvim/minimal_init.lua', '-i', 'NONE' }, {
    rpc = true,
    cwd = H.root,
    on_stderr = function(_, data)
      for _, l in ipairs(data or {}) do
        if l ~= '' then
          table.insert(c.stderr, l)
        end
      end
    end,
    on_exit = function()
      c.exited = true
    end,
  })
  if c.chan <= 0 then
    H.fail('cannot start nvim --embed')
  end
  c.pid = vim.fn.jobpid(c.chan)
  children[c.chan] = c
  c:lua('return 1') -- answered once the child is up
  return c
end

function Child:request(method, ...)
  local ok, res = pcall(vim.rpcrequest, self.chan, method, ...)
  if not ok then
    if timed_out then
      H.fail('test timed out (child killed)')
    end
    H.fail('child ' .. method .. ': ' .. tostring(res))
  end
  return clean(res)
end

-- Run Lua in the child: code is a chunk; its arguments are ...
function Child:lua(code, ...)
  return self:request('nvim_exec_lua', code, { ... })
end

function Child:cmd(ex)
  return self:request('nvim_command', ex)
end

-- Type keys (nvim_input: "<lt>" for "<").
function Child:input(keys)
  return self:request('nvim_input', keys)
end

-- Type text literally.
function Child:type(text)
  return self:input((text:gsub('<', '<lt>')))
end

-- :qall! in the child and wait for it to exit. Returns false when it did not
-- exit within 3 s (then it is stopped by force): Neovim waits on exit for
-- its jobs, so a helper left running makes quitting hang.
function Child:stop()
  if self.exited then
    return true
  end
  pcall(vim.rpcnotify, self.chan, 'nvim_command', 'qall!')
  local quit = vim.fn.jobwait({ self.chan }, 3000)[1] ~= -1
  if not quit then
    pcall(vim.fn.jobstop, self.chan)
    vim.fn.jobwait({ self.chan }, 2000)
  end
  self.exited = true
  return quit
end

-- ==== Setup and state ====

-- require('gpt2').setup(H.defaults + opts), after installing two probes:
-- vim.notify is captured into _G.test_notes, and every event the helper
-- sends is appended to _G.test_events ({ id, kind }) after the plugin has
-- handled it (so a test can wait for a reply to have arrived).
function Child:setup(opts)
  local o = vim.tbl_extend('force', vim.deepcopy(H.defaults), opts or {})
  self:lua([[
    _G.test_notes = {}
    vim.notify = function(msg, level)
      table.insert(_G.test_notes, { msg = tostring(msg), level = level })
    end
    local g = require('gpt2')
    g.setup(...)
    local client = require('gpt2.client')
    _G.test_events = {}
    if not client._test_wrapped then
      local handle = client.on_event
      client.on_event = function(ev)
        local rec = { kind = 'invalid' }
        if type(ev) == 'table' then
          rec = { id = ev.id, kind = ev.kind, n = type(ev.suggestions) == 'table' and #ev.suggestions or 0, error = ev.error }
        end
        table.insert(_G.test_events, rec)
        local ok, err = pcall(handle, ev)
        rec.handled = true
        if not ok then
          rec.lua_error = tostring(err)
          error(err, 0)
        end
      end
      client._test_wrapped = true
    end
  ]], o)
  return o
end

function Child:notes()
  return self:lua('return _G.test_notes or {}')
end

function Child:events()
  return self:lua('return _G.test_events or {}')
end

function Child:status()
  return self:lua("return require('gpt2').status()")
end

function Child:lines(buf)
  return self:request('nvim_buf_get_lines', buf or 0, 0, -1, false)
end

function Child:line()
  return self:request('nvim_get_current_line')
end

-- { row (1-based), col (0-based bytes) }
function Child:cursor()
  return self:request('nvim_win_get_cursor', 0)
end

function Child:mode()
  return self:request('nvim_get_mode').mode
end

-- Put lines in the current buffer (optionally set its filetype), clear its
-- undo history, put the cursor at the end of the last line and start
-- insert mode there ("A").
function Child:edit(lines, ft)
  self:lua([[
    local lines, ft = ...
    local ul = vim.bo.undolevels
    vim.bo.undolevels = -1
    vim.api.nvim_buf_set_lines(0, 0, -1, false, lines)
    vim.bo.undolevels = ul
    if ft then vim.bo.filetype = ft end
    vim.api.nvim_win_set_cursor(0, { #lines, 0 })
  ]], lines, ft)
  self:input('A')
  H.wait(function()
    return self:mode() == 'i'
  end, 'insert mode')
end

-- Ask for suggestions as a user would: :Gpt2Complete from insert mode.
function Child:complete()
  self:input('<Cmd>Gpt2Complete<CR>')
end

-- Raw extmarks of the gpt2 namespace in buf (default: current), with details.
function Child:marks(buf)
  return self:lua([[
    local buf = ...
    local ns = vim.api.nvim_create_namespace('gpt2')
    return vim.api.nvim_buf_get_extmarks(buf or 0, ns, 0, -1, { details = true })
  ]], buf)
end

-- What is shown: nil, or
--   { row, col (0-based), text (first line), hl, counter, counter_hl,
--     lines (the virt_lines, as strings), full (text and lines joined with
--     newlines), raw, pos (virt_text_pos), n (number of marks), chunks }
-- Neovim stores virt_text as it draws it (a control character as "^X",
-- other unprintable characters as "<200e>"); raw is the text itself, which
-- accepting inserts: require('gpt2').status().suggestion. Every call checks
-- that the mark shows exactly that (full == raw drawn the way Neovim draws
-- buffer text, tabs kept).
function Child:ghost(buf)
  local r = self:lua([[
    local buf = ...
    local ns = vim.api.nvim_create_namespace('gpt2')
    local marks = vim.api.nvim_buf_get_extmarks(buf or 0, ns, 0, -1, { details = true })
    local sug = require('gpt2').status().suggestion
    local drawn
    if sug then
      local parts = vim.split(sug, '\t', { plain = true })
      for i, p in ipairs(parts) do
        local lines = vim.split(p, '\n', { plain = true })
        for j, l in ipairs(lines) do
          lines[j] = vim.fn.strtrans(l)
        end
        parts[i] = table.concat(lines, '\n')
      end
      drawn = table.concat(parts, '\t')
    end
    return { marks = marks, sug = sug, drawn = drawn }
  ]], buf)
  local marks = r.marks
  if #marks == 0 then
    return nil
  end
  local m = marks[1]
  local d = m[4] or {}
  local vt = d.virt_text or {}
  local g = {
    row = m[2], col = m[3], pos = d.virt_text_pos, n = #marks,
    text = vt[1] and vt[1][1] or '', hl = vt[1] and vt[1][2],
    counter = vt[2] and vt[2][1], counter_hl = vt[2] and vt[2][2],
    lines = {}, chunks = vt, raw = r.sug,
  }
  for _, l in ipairs(d.virt_lines or {}) do
    local s = {}
    for _, chunk in ipairs(l) do
      table.insert(s, chunk[1])
    end
    table.insert(g.lines, table.concat(s))
  end
  g.full = table.concat(vim.list_extend({ g.text }, g.lines), '\n')
  if buf == nil and r.drawn ~= g.full then
    H.fail(string.format('the mark shows %s but status().suggestion is %s (drawn: %s)',
      vim.inspect(g.full), vim.inspect(r.sug), vim.inspect(r.drawn)))
  end
  return g
end

-- Wait for a suggestion to be shown (and for pred(ghost) when given).
function Child:wait_ghost(pred, what, timeout_ms)
  return H.wait(function()
    local g = self:ghost()
    return g and (not pred or pred(g)) and g
  end, what or 'a suggestion to be shown', timeout_ms)
end

function Child:wait_no_ghost(what, timeout_ms)
  H.wait(function()
    return self:ghost() == nil
  end, what or 'the suggestion to be cleared', timeout_ms)
end

-- Wait until the helper's reply (final or error) to request id has arrived
-- and been handled.
function Child:wait_reply(id, timeout_ms)
  local ok, res = pcall(H.wait, function()
    for _, ev in ipairs(self:events()) do
      if ev.lua_error then
        H.fail('the plugin failed on an event: ' .. ev.lua_error)
      end
      if ev.id == id and ev.handled and (ev.kind == 'final' or ev.kind == 'error') then
        return ev
      end
    end
  end, 'the reply to request ' .. tostring(id), timeout_ms)
  if not ok then
    local st = self:status()
    H.fail(tostring(res) .. '; events: ' .. vim.inspect(self:events(), { newline = ' ', indent = '' })
      .. '; status: ' .. vim.inspect(st, { newline = ' ', indent = '' }) .. '; mode: ' .. self:mode()
      .. '; log: ' .. table.concat(self:lua("return require('gpt2.client').log"), ' | '))
  end
  return res
end

-- :Gpt2Complete and wait for its reply until one gives a shown suggestion
-- (for which pred(ghost) holds, when given); returns the ghost. The fixture
-- model's random weights sometimes end a suggestion at once (eos) or give
-- fewer distinct ones, so a few tries are allowed.
function Child:suggest(pred, what, tries)
  for _ = 1, tries or 6 do
    local id = self:next_id()
    self:complete()
    self:wait_reply(id)
    local g = self:ghost()
    if g and (not pred or pred(g)) then
      return g
    end
    self:lua("require('gpt2').dismiss()")
    self:wait_no_ghost()
  end
  H.fail('no suggestion ' .. (what or '') .. ' in ' .. (tries or 6) .. ' requests')
end

-- A suggestion with three distinct texts (counter "(1/3)").
function Child:suggest3()
  return self:suggest(function(g)
    return g.counter == ' (1/3)'
  end, 'with three distinct texts')
end

-- The id the next request will get (requests are numbered from 1).
function Child:next_id()
  return self:lua("return require('gpt2')._state.next_id + 1")
end

-- Show a made-up suggestion list as the answer to a real request: start a
-- request at the cursor (as :Gpt2Complete does) and hand the plugin's event
-- handler a final reply with that request's id. Returns the id.
function Child:fake(suggestions)
  local id = self:lua([[
    local g = require('gpt2')
    g.complete()
    local req = g._state.req
    if not req then return nil end
    g._on_event({ id = req.id, kind = 'final', suggestions = ..., device = 'cpu' })
    return req.id
  ]], suggestions)
  H.ok(id, 'no request was started for the fake reply')
  return id
end

return H
