-- Keys: what <Tab> and the others do when nothing is shown; keymaps option.
local H = require('harness')
local T = {}
local function case(name, fn, opts)
  table.insert(T, vim.tbl_extend('force', opts or {}, { name = name, fn = fn }))
end

case('<Tab> with nothing shown inserts a tab (noexpandtab)', function(c)
  c:setup({ auto_trigger = false })
  c:lua('vim.bo.expandtab = false')
  c:edit({ 'ab' })
  c:input('<Tab>x')
  H.wait(function()
    return c:line() == 'ab\tx'
  end, 'a tab')
  H.eq(c:ghost(), nil, 'nothing shown')
end)

case('<Tab> with nothing shown inserts spaces (expandtab)', function(c)
  c:setup({ auto_trigger = false })
  c:lua('vim.bo.expandtab = true; vim.bo.shiftwidth = 4; vim.bo.softtabstop = 4')
  c:edit({ 'ab' })
  c:input('<Tab>x')
  H.wait(function()
    return c:line() == 'ab  x'
  end, 'spaces to the next stop of 4')
end)

case('<Tab>: a user mapping made before setup() runs when nothing is shown', function(c)
  c:cmd('inoremap <Tab> XYZ')
  c:setup({ auto_trigger = false })
  c:edit({ 'ab' })
  c:input('<Tab>')
  H.wait(function()
    return c:line() == 'abXYZ'
  end, 'the user mapping')
  c:complete()
  local g = c:wait_ghost()
  c:input('<Tab>')
  c:wait_no_ghost()
  H.eq(c:lines(), { 'abXYZ' .. g.full }, '<Tab> accepts when a suggestion is shown')
  c:input('<Tab>')
  H.wait(function()
    return c:line() == 'abXYZ' .. g.full .. 'XYZ'
  end, 'the user mapping again')
end)

case('<Tab>: a recursive user mapping and a Lua callback mapping', function(c)
  c:lua([[
    vim.keymap.set('i', '<F2>', 'F2!')
    vim.keymap.set('i', '<Tab>', '<F2>', { remap = true })
  ]])
  c:setup({ auto_trigger = false, keymaps = { next = '<C-n>' } })
  c:lua([[vim.keymap.set('i', '<C-n>', function() vim.api.nvim_put({'CB'}, 'c', false, true) end)]])
  -- <C-n> was mapped after setup(): the user's map replaced gpt2's; set up again
  c:setup({ auto_trigger = false, keymaps = { next = '<C-n>' } })
  c:edit({ 'ab' })
  c:input('<Tab>')
  H.wait(function()
    return c:line() == 'abF2!'
  end, 'the recursive mapping')
  c:input('<C-n>')
  H.wait(function()
    return c:line() == 'abF2!CB'
  end, 'the callback mapping')
end)

case('setup() twice keeps the user mapping as the fallback', function(c)
  c:cmd('inoremap <Tab> XYZ')
  c:setup({ auto_trigger = false })
  c:setup({ auto_trigger = false })
  c:edit({ 'ab' })
  c:input('<Tab>')
  H.wait(function()
    return c:line() == 'abXYZ'
  end, 'the user mapping')
end)

case('keymaps: a changed key and a key turned off', function(c)
  c:setup({ auto_trigger = false, keymaps = { accept = '<C-l>', dismiss = false } })
  c:edit({ 'ab' })
  c:complete()
  local g = c:wait_ghost()
  c:input('<C-]>') -- not mapped: the built-in key, the suggestion stays
  H.sleep(50)
  H.ok(c:ghost(), 'still shown after an unmapped <C-]>')
  c:input('<C-l>')
  c:wait_no_ghost()
  H.eq(c:lines(), { 'ab' .. g.full }, 'accepted with <C-l>')
  local m = c:lua("return vim.fn.maparg('<Tab>', 'i')")
  H.eq(m, '', '<Tab> is not mapped')
end)

case('keymaps = false: no keys mapped, <Plug> maps work', function(c)
  c:setup({ auto_trigger = false, keymaps = false })
  c:cmd('imap <C-l> <Plug>(gpt2-accept)')
  c:cmd('imap <C-j> <Plug>(gpt2-next)')
  c:cmd('imap <C-k> <Plug>(gpt2-complete)')
  c:edit({ 'ab' })
  c:input('<Tab>')
  H.wait(function()
    return c:line() == 'ab\t'
  end, 'a plain tab')
  c:input('<C-k>')
  local g1 = c:wait_ghost()
  c:input('<C-j>')
  local g2 = c:wait_ghost(function(g)
    return g.counter == ' (2/3)'
  end, 'the next suggestion')
  H.neq(g2.full, g1.full, 'second suggestion')
  c:input('<C-l>')
  c:wait_no_ghost()
  H.eq(c:lines(), { 'ab\t' .. g2.full }, 'accepted with <Plug>(gpt2-accept)')
end)

return T
