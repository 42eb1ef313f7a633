-- Where suggestions are on: filetypes, b:gpt2_enabled, :Gpt2 enable/disable/toggle.
local H = require('harness')
local T, case = H.suite()

-- Nothing shown for ms after asking (typing, then :Gpt2Complete), and no
-- request sent.
local function nothing(c, what)
  local n = c:status().requests
  c:type(' more words')
  c:complete()
  H.never(function()
    return c:ghost()
  end, what, 300)
  H.eq(c:status().requests, n, 'requests (' .. what .. ')')
end

local function something(c, what)
  c:type(' more words')
  c:wait_ghost(nil, what)
end

case('filetypes: markdown = false, no suggestions in markdown, others on', function(c)
  c:setup({ filetypes = { markdown = false } })
  c:edit({ 'Some text' }, 'markdown')
  nothing(c, 'a suggestion in markdown')
  c:input('<Esc>')
  c:cmd('enew')
  c:edit({ 'local x = 1' }, 'lua')
  something(c, 'a suggestion in lua')
end)

case("filetypes: ['*'] = false with one filetype on", function(c)
  c:setup({ filetypes = { ['*'] = false, lua = true } })
  c:edit({ 'Some text' }, 'text')
  nothing(c, 'a suggestion in text')
  c:input('<Esc>')
  c:cmd('enew')
  c:edit({ 'local x = 1' }, 'lua')
  something(c, 'a suggestion in lua')
end)

case('b:gpt2_enabled = false turns one buffer off', function(c)
  c:setup({})
  c:edit({ 'Some text' })
  c:lua('vim.b.gpt2_enabled = false')
  nothing(c, 'a suggestion with b:gpt2_enabled = false')
  c:input('<Esc>')
  c:cmd('enew')
  c:edit({ 'Other text' })
  something(c, 'a suggestion in another buffer')
end)

case('b:gpt2_enabled = true wins over g:gpt2_enabled = false', function(c)
  c:setup({})
  c:cmd('Gpt2 disable')
  c:edit({ 'Some text' })
  c:lua('vim.b.gpt2_enabled = true')
  something(c, 'a suggestion with b:gpt2_enabled = true')
end)

case(':Gpt2 disable / enable / toggle', function(c)
  c:setup({})
  c:edit({ 'Some text' })
  c:cmd('Gpt2 disable')
  H.eq(c:status().state, 'disabled', 'state after disable')
  H.eq(c:lua('return vim.g.gpt2_enabled'), false, 'g:gpt2_enabled')
  nothing(c, 'a suggestion when disabled')
  c:cmd('Gpt2 enable')
  H.neq(c:status().state, 'disabled', 'state after enable')
  something(c, 'a suggestion when enabled')
  c:cmd('Gpt2 toggle')
  c:wait_no_ghost('disable clears what is shown')
  H.eq(c:status().state, 'disabled', 'state after toggle')
  nothing(c, 'a suggestion after toggling off')
  c:cmd('Gpt2 toggle')
  something(c, 'a suggestion after toggling on')
end)

case(':Gpt2 disable clears the shown suggestion; :Gpt2Complete does nothing', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'Some text' })
  c:suggest()
  c:input('<Cmd>Gpt2 disable<CR>')
  c:wait_no_ghost()
  H.eq(c:mode(), 'i', 'mode')
  local n = c:status().requests
  c:complete()
  H.never(function()
    return c:ghost()
  end, 'a suggestion', 300)
  H.eq(c:status().requests, n, 'requests')
end)

case('no suggestions in special buffers (buftype set)', function(c)
  c:setup({})
  c:lua("vim.bo.buftype = 'nofile'")
  c:edit({ 'Some text' })
  nothing(c, 'a suggestion in a nofile buffer')
end)

case(':Gpt2 with an unknown subcommand is an error', function(c)
  c:setup({})
  c:cmd('Gpt2 bogus')
  local notes = c:notes()
  H.eq(#notes, 1, 'notifications')
  H.eq(notes[1].level, vim.log.levels.ERROR, 'level')
  H.ok(notes[1].msg:match('bogus'), 'names the subcommand: ' .. notes[1].msg)
end)

case('setup() rejects unknown and mistyped options', function(c)
  local err = c:lua([[
    local ok, e = pcall(require('gpt2').setup, { no_such_option = 1 })
    return not ok and e
  ]])
  H.ok(err and err:match('no_such_option'), 'unknown option error: ' .. tostring(err))
  err = c:lua([[
    local ok, e = pcall(require('gpt2').setup, { debounce_ms = 'soon' })
    return not ok and e
  ]])
  H.ok(err and err:match('debounce_ms'), 'type error: ' .. tostring(err))
  err = c:lua([[
    local ok, e = pcall(require('gpt2').setup, { stop = 'never' })
    return not ok and e
  ]])
  H.ok(err and err:match('stop'), 'value error: ' .. tostring(err))
  err = c:lua([[
    local ok, e = pcall(require('gpt2').setup, { cpu_dtype = 'int2' })
    return not ok and e
  ]])
  H.ok(err and err:match('cpu_dtype'), 'cpu_dtype value error: ' .. tostring(err))
end)

return T
