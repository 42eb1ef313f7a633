-- gpt2.client: the helper process. Started lazily with jobstart(rpc=true),
-- one per Neovim; requests are rpc notifications, replies arrive as
-- nvim_exec_lua notifications that call M._on_event. If the helper dies, one
-- notification, then a restart with backoff when it is next needed.
local M = {}

M.state = 'stopped' -- stopped | running | error
M.chan = nil
M.pid = nil
M.last_error = nil
M.log = {}
M.restarts = 0
M.exiting = false -- set on VimLeavePre: no helper starts after it
M.on_event = function(_) end -- set by gpt2.init

local cfg
local stopping = false
local retry_at = 0
local uv = vim.uv or vim.loop

local function log_line(line)
  if line == '' then
    return
  end
  table.insert(M.log, line)
  local max = cfg and cfg.log_lines or 500
  while #M.log > max do
    table.remove(M.log, 1)
  end
end

local function fail(msg)
  M.state = 'error'
  M.last_error = msg
  log_line('gpt2.nvim: ' .. msg)
end

function M.configure(c)
  cfg = c
end

-- Start the helper unless it runs. Returns true when a channel is open.
function M.start()
  if M.chan then
    return true
  end
  if M.exiting or vim.v.exiting ~= vim.NIL then
    return false -- Neovim is quitting: a helper started now would keep it waiting
  end
  if uv.now() < retry_at then
    return false -- backing off after a crash
  end
  if vim.fn.executable(cfg.helper) ~= 1 then
    fail('helper not found or not executable: ' .. cfg.helper .. ' (run `make` in the plugin directory)')
    return false
  end
  if cfg.model == '' then
    fail('no model: set model = DIR in setup(), or run `make weights` in the plugin directory')
    return false
  end
  stopping = false
  local ok, chan = pcall(vim.fn.jobstart, require('gpt2.config').helper_cmd(cfg), {
    rpc = true,
    on_stderr = function(_, data)
      for _, l in ipairs(data or {}) do
        log_line(l)
      end
    end,
    on_exit = function(job, code)
      M.on_exit(code, job)
    end,
  })
  if not ok or chan <= 0 then
    fail('cannot start ' .. cfg.helper .. ': ' .. tostring(ok and chan or chan))
    return false
  end
  M.chan = chan
  M.pid = vim.fn.jobpid(chan)
  M.state = 'running'
  M.last_error = nil
  return true
end

-- job: the channel of the helper that exited. A helper that is no longer
-- the current one (stopped by M.stop(), e.g. for :Gpt2 restart, whose exit
-- arrives after the new one started) is not a crash.
function M.on_exit(code, job)
  if job ~= nil and job ~= M.chan then
    return
  end
  M.chan, M.pid = nil, nil
  if stopping then
    M.state = 'stopped'
    return
  end
  M.restarts = M.restarts + 1
  local delay = math.min(30000, 500 * 2 ^ math.min(M.restarts - 1, 6))
  retry_at = uv.now() + delay
  fail(string.format('the helper exited (code %d); restarting when next needed (in %.1f s or later)', code, delay / 1000))
  vim.schedule(function()
    vim.notify('gpt2: ' .. M.last_error .. ' — see :Gpt2 log', vim.log.levels.WARN)
  end)
end

function M.stop()
  if M.chan then
    stopping = true
    pcall(vim.fn.jobstop, M.chan)
  end
  M.chan, M.pid = nil, nil
  M.state = 'stopped'
end

-- Stop for good: Neovim is exiting (VimLeavePre).
function M.shutdown()
  M.exiting = true
  M.stop()
end

-- Restart now (:Gpt2 restart): no backoff.
function M.restart()
  M.stop()
  retry_at = 0
  M.restarts = 0
  return M.start()
end

function M.notify(method, params)
  if not M.start() then
    return false
  end
  local ok, err = pcall(vim.rpcnotify, M.chan, method, params)
  if not ok then
    fail('rpc: ' .. tostring(err))
  end
  return ok
end

-- A blocking request, for things the helper answers at once (status, ping).
function M.request(method, params, timeout_ms)
  if not M.start() then
    return nil, M.last_error
  end
  local ok, res = pcall(vim.rpcrequest, M.chan, method, params or {})
  if not ok then
    return nil, tostring(res)
  end
  return res
end

-- Called by the helper through nvim_exec_lua.
function M._on_event(ev)
  M.on_event(ev)
end

return M
