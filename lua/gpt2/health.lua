-- :checkhealth gpt2 — Neovim features, the helper binary, the model, a
-- handshake with a helper and the device it uses; each problem with its fix.
-- Works with 0.7's `health` module and 0.8+'s vim.health.
local M = {}

local function reporter()
  local h = vim.health
  if h and h.start then
    return h.start, h.ok, h.warn, h.error, h.info
  end
  h = require('health')
  return h.report_start, h.report_ok, h.report_warn, h.report_error, h.report_info
end

local function model_problem(dir)
  if dir == '' then
    return 'no model configured'
  end
  for _, f in ipairs({ 'config.json', 'model.safetensors', 'vocab.json', 'merges.txt' }) do
    if vim.fn.filereadable(dir .. '/' .. f) ~= 1 then
      return 'missing ' .. dir .. '/' .. f
    end
  end
end

-- Start a helper (or use the running one), ping it, have it load the model
-- and compute one token (models load on first use, and only then does the
-- helper know its device), and read its status. Returns status, the
-- completion (nil on failure) and the completion's error.
local function handshake(cfg)
  local client = require('gpt2.client')
  local chan, own = client.chan, false
  if not chan then
    chan = vim.fn.jobstart(require('gpt2.config').helper_cmd(cfg), { rpc = true })
    own = true
    if chan <= 0 then
      return nil, nil, 'cannot start ' .. cfg.helper
    end
  end
  local ok, pong = pcall(vim.rpcrequest, chan, 'ping')
  local done, res = false, nil
  if ok and pong == 'pong' then
    done, res = pcall(vim.rpcrequest, chan, 'complete', { text = 'Hello', n = 1, max_tokens = 1 })
  end
  local ok2, st = pcall(vim.rpcrequest, chan, 'status')
  if own then
    pcall(vim.fn.jobstop, chan)
  end
  if not ok or pong ~= 'pong' then
    return nil, nil, 'no answer to ping: ' .. tostring(pong)
  end
  st = (ok2 and type(st) == 'table') and st or {}
  if not done or type(res) ~= 'table' then
    return st, nil, tostring(res)
  end
  return st, res
end

function M.check()
  local start, ok, warn, error, info = reporter()
  start('gpt2.nvim: Neovim')
  local v = vim.version()
  ok(string.format('Neovim %d.%d.%d', v.major, v.minor, v.patch))
  if require('gpt2.ghost').has_inline() then
    ok('inline virtual text: suggestions render at the cursor')
  else
    warn('no inline virtual text (Neovim < 0.10): suggestions are drawn over the empty end of the line, or after it when text follows the cursor', { 'Neovim 0.10 or newer draws them inline' })
  end

  start('gpt2.nvim: setup')
  local st = package.loaded['gpt2'] and require('gpt2')._state
  local cfg = st and st.cfg
  if not cfg then
    error('setup() has not run', { "call require('gpt2').setup({ model = '/path/to/model' }) in your config" })
    cfg = require('gpt2.config').build({})
  else
    ok('setup() done')
  end

  start('gpt2.nvim: helper')
  if vim.fn.executable(cfg.helper) ~= 1 then
    error('helper not found: ' .. cfg.helper, { 'run `make` in the plugin directory (lazy.nvim: build = "make")', 'or set helper = PATH' })
    return
  end
  local out = vim.fn.system({ cfg.helper, 'version' })
  if vim.v.shell_error ~= 0 then
    error('helper does not run: ' .. out, { 'rebuild it: make clean && make' })
    return
  end
  ok('helper ' .. cfg.helper .. ': ' .. vim.trim(out))

  start('gpt2.nvim: model')
  local problem = model_problem(cfg.model)
  if problem then
    error(problem, { 'run `make weights` in the plugin directory, or set model = DIR (config.json, model.safetensors, vocab.json, merges.txt)' })
    return
  end
  ok('model ' .. cfg.model)

  start('gpt2.nvim: handshake')
  local status, result, err = handshake(cfg)
  if not status then
    error('helper handshake failed: ' .. err, { 'run :Gpt2 log, or the helper by hand: ' .. cfg.helper .. ' serve --model ' .. cfg.model })
    return
  end
  ok('helper answered ping (gpt2 ' .. tostring(status.version) .. ')')
  local m = (status.models or {})[1] or {}
  if not result then
    local why = (m.error and m.error ~= '') and m.error or err
    error('the model does not load or run: ' .. tostring(why), {
      'check the checkpoint in ' .. cfg.model .. ' (config.json, model.safetensors, vocab.json, merges.txt), or fetch it again with `make weights`',
      'run the helper by hand: ' .. cfg.helper .. ' complete --model ' .. cfg.model .. ' --prompt Hello',
    })
    return
  end
  ok(string.format('model loaded and ran%s', m.load_ms and string.format(' (loaded in %.0f ms)', m.load_ms) or ''))
  local device = result.device or m.device or status.device or 'unknown'
  if device:match('^cpu') then -- "cpu", or "cpu (bf16)" and the like
    local note = (m.device_note and m.device_note ~= '') and m.device_note or 'no usable GPU'
    local kernels = (m.cpu_kernels and m.cpu_kernels ~= '') and (' (' .. m.cpu_kernels .. ' kernels' ..
      ((m.cpu_kv and m.cpu_kv ~= '') and (', ' .. m.cpu_kv .. ' keys and values') or '') .. ')') or ''
    warn('device: cpu' .. kernels .. ': ' .. note .. '; suggestions are computed on the CPU, slower',
      { 'a CUDA GPU with its driver makes them faster' })
  else
    ok('device: ' .. device)
  end
  info('status: ' .. vim.inspect(require('gpt2').status()))
end

return M
