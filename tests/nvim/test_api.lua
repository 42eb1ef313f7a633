-- status(), statusline(), :Gpt2 status / log and command completion.
local H = require('harness')
local T, case = H.suite()

case('status() and statusline() before and after the first suggestion', function(c)
  c:setup({ auto_trigger = false })
  local st = c:status()
  H.eq(st.state, 'stopped', 'state before any use')
  H.eq(st.helper_pid, nil, 'helper_pid before any use')
  H.eq(st.model, H.model, 'model')
  H.eq(st.requests, 0, 'requests')
  H.eq(c:lua("return require('gpt2').statusline()"), 'gpt2:stopped', 'statusline before any use')
  c:edit({ 'Hello there' })
  -- in one call, so no reply can have been handled yet: the model is loading
  H.eq(c:lua("require('gpt2').complete(); return require('gpt2').statusline()"), 'gpt2:loading',
    'statusline while the first request is in flight')
  c:suggest()
  st = c:status()
  H.eq(st.state, 'running', 'state')
  H.ok(type(st.helper_pid) == 'number', 'helper_pid: ' .. vim.inspect(st.helper_pid))
  H.eq(st.model, H.model, 'model')
  H.ok(type(st.device) == 'string' and st.device ~= '', 'device: ' .. vim.inspect(st.device))
  H.eq(st.requests, 2, 'requests (the loading one and the suggestion)')
  H.ok(type(st.last_latency_ms) == 'number' and st.last_latency_ms >= 0, 'last_latency_ms: ' .. vim.inspect(st.last_latency_ms))
  H.eq(st.restarts, 0, 'restarts')
  H.eq(st.suggestion, c:ghost().raw, 'suggestion')
  local sl = c:lua("return require('gpt2').statusline()")
  H.eq(type(sl), 'string', 'statusline type')
  H.eq(sl, 'gpt2:' .. st.device, 'statusline when running')
  c:cmd('Gpt2 disable')
  H.eq(c:lua("return require('gpt2').statusline()"), 'gpt2:disabled', 'statusline when disabled')
end)

case('cpu_dtype reaches the helper (bf16 by default); helper_args come after it and win', function(c)
  for _, t in ipairs({
    { {}, 'cpu (bf16)' },
    { { cpu_dtype = 'int8' }, 'cpu (int8)' },
    { { cpu_dtype = 'int4' }, 'cpu (int4)' },
    { { cpu_dtype = 'int8', helper_args = { '--threads', '1', '--cpu-dtype', 'fp32' } }, 'cpu' },
  }) do
    c:setup(vim.tbl_extend('force', { auto_trigger = false }, t[1]))
    c:cmd('Gpt2 restart') -- a helper with the new options
    c:edit({ 'Hello there' })
    c:suggest()
    local dev = c:status().device
    if not dev:match('^cpu') then
      print('SKIP cpu_dtype: the helper runs on ' .. dev .. ', where it does not apply')
      return
    end
    H.eq(dev, t[2], 'device with ' .. vim.inspect(t[1]))
  end
end)

case('statusline() with a missing helper says error', function(c)
  c:setup({ helper = '/nonexistent/gpt2' })
  c:edit({ 'Hello' })
  c:complete()
  H.eq(c:status().state, 'error', 'state')
  H.ok(c:status().last_error:match('/nonexistent/gpt2'), 'last_error names the path')
  H.eq(c:lua("return require('gpt2').statusline()"), 'gpt2:error', 'statusline')
  H.eq(c:ghost(), nil, 'nothing shown')
end)

case(':Gpt2 completion lists the subcommands', function(c)
  local all = c:lua("return vim.fn.getcompletion('Gpt2 ', 'cmdline')")
  H.eq(all, { 'disable', 'enable', 'log', 'restart', 'status', 'toggle' }, 'completion')
  H.eq(c:lua("return vim.fn.getcompletion('Gpt2 re', 'cmdline')"), { 'restart' }, 'completion of "re"')
  H.eq(c:lua("return vim.fn.getcompletion('Gpt2', 'command')"), { 'Gpt2', 'Gpt2Complete' }, 'the commands')
end)

case(':Gpt2 status shows state, pid, model and device', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'Hello there' })
  c:suggest()
  local st = c:status()
  local lines = c:lua([[return require('gpt2.commands').status()]])
  local text = table.concat(lines, '\n')
  H.ok(text:find('state:%s+running'), 'state in ' .. text)
  H.ok(text:find('helper pid:%s+' .. st.helper_pid), 'pid in ' .. text)
  H.ok(text:find(H.model, 1, true), 'model in ' .. text)
  H.ok(text:find('device:%s+' .. vim.pesc(st.device)), 'device in ' .. text)
  H.ok(text:find('helper:%s+gpt2'), 'the helper status line in ' .. text)
  c:input('<Esc>')
  c:cmd('Gpt2 status') -- the command itself runs without error
end)

case(':Gpt2 log opens a scratch buffer with the helper log', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'Hello there' })
  c:suggest()
  c:input('<Esc>')
  c:cmd('Gpt2 log')
  local name = c:lua("return require('gpt2.commands').log_name")
  H.eq(c:lua('return vim.api.nvim_buf_get_name(0)'), name, 'buffer name (kept as given)')
  H.eq(c:lua('return vim.bo.buftype'), 'nofile', 'buftype')
  H.eq(c:lua('return vim.bo.modifiable'), false, 'modifiable')
  local lines = c:lines()
  H.ok(#lines > 0 and table.concat(lines, '\n'):find('gpt2'), 'log lines: ' .. vim.inspect(lines))
  local wins = c:lua('return #vim.api.nvim_list_wins()')
  c:cmd('wincmd p')
  c:cmd('Gpt2 log') -- again while it is open: the same window, no error
  H.eq(c:lua('return #vim.api.nvim_list_wins()'), wins, 'windows after a second :Gpt2 log')
  H.eq(c:lua('return vim.api.nvim_buf_get_name(0)'), name, 'current buffer')
  c:cmd('close')
  c:cmd('Gpt2 log') -- again after closing it
  H.eq(c:lua('return vim.api.nvim_buf_get_name(0)'), name, 'buffer name the third time')
end)

return T
