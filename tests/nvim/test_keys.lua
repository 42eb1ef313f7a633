-- Keys: what <Tab> and the others do when nothing is shown; keymaps option.
local H = require('harness')
local T, case = H.suite()

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
  local g = c:suggest()
  c:input('<Tab>')
  c:wait_no_ghost()
  H.eq(c:lines(), { 'abXYZ' .. g.raw }, '<Tab> accepts when a suggestion is shown')
  c:input('<Tab>')
  H.wait(function()
    return c:line() == 'abXYZ' .. g.raw .. 'XYZ'
  end, 'the user mapping again')
end)

case('<Tab>: a recursive user mapping and a Lua callback mapping as fallbacks', function(c)
  c:lua([[
    vim.keymap.set('i', '<F2>', 'F2!')
    vim.keymap.set('i', '<Tab>', '<F2>', { remap = true })
    vim.keymap.set('i', '<C-n>', function() vim.api.nvim_put({ 'CB' }, 'c', false, true) end)
    vim.keymap.set('i', '<C-p>', function() return 'EXPR' end, { expr = true })
  ]])
  c:setup({ auto_trigger = false, keymaps = { next = '<C-n>', prev = '<C-p>' } })
  c:edit({ 'ab' })
  c:input('<Tab>')
  H.wait(function()
    return c:line() == 'abF2!'
  end, 'the recursive mapping')
  c:input('<C-n>')
  H.wait(function()
    return c:line() == 'abF2!CB'
  end, 'the callback mapping')
  c:input('<C-p>1')
  H.wait(function()
    return c:line() == 'abF2!CBEXPR1'
  end, 'the expr callback mapping, then the next key')
  H.eq(c:notes(), {}, 'no errors')
end)

case('setup() with other keys gives the user mapping back', function(c)
  c:cmd('inoremap <Tab> XYZ')
  c:setup({ auto_trigger = false })
  c:setup({ auto_trigger = false, keymaps = { accept = '<C-l>' } })
  H.eq(c:lua("return vim.fn.maparg('<Tab>', 'i')"), 'XYZ', 'the user mapping of <Tab>')
  c:setup({ auto_trigger = false, keymaps = false })
  H.eq(c:lua("return vim.fn.maparg('<C-l>', 'i')"), '', '<C-l> after keymaps = false')
  H.eq(c:lua("return vim.fn.maparg('<M-]>', 'i')"), '', '<M-]> after keymaps = false')
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
  local g = c:suggest()
  c:input('<C-]>') -- not mapped: the built-in key, the suggestion stays
  H.sleep(50)
  H.ok(c:ghost(), 'still shown after an unmapped <C-]>')
  c:input('<C-l>')
  c:wait_no_ghost()
  H.eq(c:lines(), { 'ab' .. g.raw }, 'accepted with <C-l>')
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
  -- <C-k>: <Plug>(gpt2-complete); retried until three distinct texts come
  local g1
  for _ = 1, 6 do
    local id = c:next_id()
    c:input('<C-k>')
    c:wait_reply(id)
    g1 = c:ghost()
    if g1 and g1.counter == ' (1/3)' then
      break
    end
    c:lua("require('gpt2').dismiss()")
  end
  H.eq(g1 and g1.counter, ' (1/3)', 'counter after <Plug>(gpt2-complete)')
  c:input('<C-j>')
  local g2 = c:wait_ghost(function(g)
    return g.counter == ' (2/3)'
  end, 'the next suggestion')
  H.neq(g2.raw, g1.raw, 'second suggestion')
  c:input('<C-l>')
  c:wait_no_ghost()
  H.eq(c:lines(), { 'ab\t' .. g2.raw }, 'accepted with <Plug>(gpt2-accept)')
end)

return T
