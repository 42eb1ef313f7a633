-- :checkhealth gpt2, read from the health buffer in the child.
local H = require('harness')
local T, case = H.suite()

local function health(c)
  return c:lua([[
    vim.cmd('checkhealth gpt2')
    return vim.api.nvim_buf_get_lines(0, 0, -1, false)
  ]])
end

-- The first line with kind (OK, WARNING, ERROR; nil: any) and then text,
-- or fail. (0.7 writes "- OK: text", 0.10 "- ✅ OK text".)
local function has(lines, kind, text, what)
  for _, l in ipairs(lines) do
    local i = kind and l:find(kind, 1, true) or 1
    if i and l:find(text, i, true) then
      return l
    end
  end
  H.fail((what or ('a line with ' .. (kind or '') .. ' ' .. vim.inspect(text))) .. ' in:\n' .. table.concat(lines, '\n'))
end

local function none(lines, kind, text)
  for _, l in ipairs(lines) do
    local i = l:find(kind, 1, true)
    if i and (not text or l:find(text, i, true)) then
      H.fail('unexpected ' .. vim.inspect(l))
    end
  end
end

case(':checkhealth gpt2: helper, model, handshake and device', function(c)
  c:setup({})
  local lines = health(c)
  has(lines, 'OK', 'setup() done')
  has(lines, 'OK', 'helper ' .. H.helper)
  has(lines, 'OK', 'model ' .. H.model)
  has(lines, 'OK', 'helper answered ping')
  has(lines, 'OK', 'model loaded and ran')
  none(lines, 'ERROR')
  local dev = c:lua([[
    local st = vim.fn.jobstart({ ... }, { rpc = true })
    vim.rpcrequest(st, 'complete', { text = 'Hi', n = 1, max_tokens = 1 })
    local d = vim.rpcrequest(st, 'status').device
    vim.fn.jobstop(st)
    return d
  ]], H.helper, 'serve', '--model', H.model)
  if dev == 'cpu' then
    has(lines, 'WARNING', 'device: cpu (')
    has(lines, 'WARNING', ' kernels, ')
    has(lines, 'WARNING', ' keys and values): ')
  else
    has(lines, 'OK', 'device: ' .. dev)
  end
  if c:lua("return vim.fn.has('nvim-0.10')") == 0 then
    has(lines, 'WARNING', 'no inline virtual text')
  end
end)

case(':checkhealth gpt2 with the helper running uses it', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'Hello' })
  c:suggest()
  local pid = c:status().helper_pid
  c:input('<Esc>')
  local lines = health(c)
  has(lines, 'OK', 'helper answered ping')
  has(lines, 'OK', 'model loaded and ran')
  none(lines, 'ERROR')
  H.eq(c:status().helper_pid, pid, 'helper pid after checkhealth')
end)

case(':checkhealth gpt2 with a bad helper path: ERROR with the fix', function(c)
  c:setup({ helper = '/nonexistent/gpt2' })
  local lines = health(c)
  has(lines, 'ERROR', 'helper not found: /nonexistent/gpt2')
  has(lines, nil, 'run `make` in the plugin directory', 'the advice to run make')
  none(lines, 'OK', 'helper answered ping')
end)

case(':checkhealth gpt2 with a missing model: ERROR with the fix', function(c)
  c:setup({ model = '/nonexistent/model' })
  local lines = health(c)
  has(lines, 'ERROR', 'missing /nonexistent/model/config.json')
  has(lines, nil, 'make weights', 'the advice to fetch weights')
end)

case(':checkhealth gpt2 with a broken checkpoint: ERROR from the handshake', function(c)
  local dir = vim.fn.tempname()
  vim.fn.mkdir(dir, 'p')
  for _, f in ipairs({ 'config.json', 'vocab.json', 'merges.txt' }) do
    vim.fn.writefile(vim.fn.readfile(H.model .. '/' .. f, 'b'), dir .. '/' .. f, 'b')
  end
  vim.fn.writefile({ 'not a safetensors file' }, dir .. '/model.safetensors')
  c:setup({ model = dir })
  local lines = health(c)
  has(lines, 'OK', 'helper answered ping')
  has(lines, 'ERROR', 'the model does not load or run')
  none(lines, 'OK', 'model loaded and ran')
  vim.fn.delete(dir, 'rf')
end)

case(':checkhealth gpt2 before setup(): ERROR setup() has not run', function(c)
  local lines = health(c)
  has(lines, 'ERROR', 'setup() has not run')
end)

return T
