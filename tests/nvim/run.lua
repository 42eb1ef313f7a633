-- tests/nvim/run.lua: the plugin's headless test runner (make test-nvim):
--
--   nvim --headless -u NONE -i NONE --cmd 'set rtp^=.' -S tests/nvim/run.lua
--
-- Loads every tests/nvim/test_*.lua. Each returns a list of cases
-- { name, fn, child = false?, timeout = ms? }; fn(child) gets a fresh child
-- Neovim (tests/nvim/harness.lua) unless child = false. Prints "ok NAME",
-- "FAIL NAME: reason" or "SKIP NAME: reason" per case, then
-- "N passed, N failed[, N skipped]", and exits non-zero on any failure.
-- GPT2_TEST_FILTER='PAT1|PAT2' runs only the cases whose name matches one of
-- the Lua patterns.
local uv = vim.uv or vim.loop
local root = vim.fn.getcwd()
package.path = root .. '/tests/nvim/?.lua;' .. package.path
local H = require('harness')

local CASE_TIMEOUT_MS = 30000
local SUITE_TIMEOUT_MS = 10 * 60 * 1000

local function out(s)
  io.stdout:write(s, '\n')
  io.stdout:flush()
end

-- Last resort: whatever happens, the suite ends.
local suite_timer = uv.new_timer()
suite_timer:start(SUITE_TIMEOUT_MS, 0, function()
  io.stdout:write(string.format('FAIL suite: still running after %d s, giving up\n', SUITE_TIMEOUT_MS / 1000))
  io.stdout:flush()
  os.exit(1)
end)

-- "message (test_x.lua:42)": the line of the test file that was running.
local function handler(e)
  if type(e) == 'table' and e.skip then
    return e
  end
  local where
  for level = 2, 40 do
    local info = debug.getinfo(level, 'Sl')
    if not info then
      break
    end
    if info.source:match('test_[%w_]+%.lua$') and info.currentline > 0 then
      where = vim.fn.fnamemodify(info.source:sub(2), ':t') .. ':' .. info.currentline
      break
    end
  end
  local msg = tostring(e)
  if where then
    msg = msg .. ' (' .. where .. ')'
  end
  return { msg = msg, traceback = debug.traceback('', 2) }
end

local filters = vim.split(vim.env.GPT2_TEST_FILTER or '', '|', { plain = true, trimempty = true })
local function selected(name)
  if #filters == 0 then
    return true
  end
  for _, f in ipairs(filters) do
    if name:match(f) then
      return true
    end
  end
  return false
end
local passed, failed, skipped = 0, 0, 0
local t_suite = H.now()

if vim.fn.executable(H.helper) ~= 1 then
  out('FAIL suite: ' .. H.helper .. ' is missing: run `make` first')
  out('0 passed, 1 failed')
  vim.cmd('cquit 1')
end

local files = vim.fn.glob(root .. '/tests/nvim/test_*.lua', false, true)
table.sort(files)
for _, file in ipairs(files) do
  local base = vim.fn.fnamemodify(file, ':t:r')
  local ok, cases = pcall(dofile, file)
  if not ok or type(cases) ~= 'table' then
    failed = failed + 1
    out('FAIL ' .. base .. ': cannot load: ' .. tostring(cases))
  else
    for _, case in ipairs(cases) do
      local name, fn = case.name or case[1], case.fn or case[2]
      if selected(name) then
        local t0 = H.now()
        H.begin(case.timeout or CASE_TIMEOUT_MS)
        local child
        local okc, err = xpcall(function()
          if case.child ~= false then
            child = H.spawn()
          end
          fn(child)
        end, handler)
        local late, problem = H.finish()
        if okc and problem then
          okc, err = false, { msg = problem }
        end
        local secs = (H.now() - t0) / 1000
        if okc then
          passed = passed + 1
          out('ok ' .. name)
        elseif err.skip then
          skipped = skipped + 1
          out('SKIP ' .. name .. ': ' .. err.skip)
        else
          failed = failed + 1
          local msg = err.msg:gsub('\n', ' | ')
          if late then
            msg = msg .. string.format(' [case timeout: %.1f s]', secs)
          end
          out('FAIL ' .. name .. ': ' .. msg)
          if vim.env.GPT2_TEST_VERBOSE then
            for l in (err.traceback or ''):gmatch('[^\n]+') do
              out('#   ' .. l)
            end
          end
          if child and #child.stderr > 0 then
            for i = math.max(1, #child.stderr - 9), #child.stderr do
              out('#   child stderr: ' .. child.stderr[i])
            end
          end
        end
        if vim.env.GPT2_TEST_VERBOSE then
          out(string.format('#   %.2f s', secs))
        end
      end
    end
  end
end

if passed + failed + skipped == 0 and #filters == 0 then
  failed = failed + 1
  out('FAIL suite: no test cases found in tests/nvim/test_*.lua')
end
out(string.format('# %d cases in %.1f s', passed + failed + skipped, (H.now() - t_suite) / 1000))
local summary = string.format('%d passed, %d failed', passed, failed)
if skipped > 0 then
  summary = summary .. string.format(', %d skipped', skipped)
end
out(summary)
suite_timer:stop()
if failed > 0 then
  vim.cmd('cquit 1')
else
  vim.cmd('qall!')
end
