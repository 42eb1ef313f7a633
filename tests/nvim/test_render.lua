-- How a suggestion is drawn: overlay / eol / inline, virtual lines.
local H = require('harness')
local T, case = H.suite()

local function has_inline(c)
  return c:lua("return vim.fn.has('nvim-0.10')") == 1
end

case('render: at the end of a line, overlay (before 0.10)', function(c)
  if has_inline(c) then
    H.skip('Neovim >= 0.10 draws inline; see the inline case')
  end
  c:setup({ auto_trigger = false })
  c:edit({ 'The quick brown fox' })
  local g = c:suggest()
  H.eq(g.pos, 'overlay', 'virt_text_pos')
  H.eq({ g.row, g.col }, { 0, 19 }, 'at the cursor')
end)

case('render: text after the cursor (manual trigger mid-line), eol (before 0.10)', function(c)
  if has_inline(c) then
    H.skip('Neovim >= 0.10 draws inline; see the inline case')
  end
  c:setup({ auto_trigger = false })
  c:edit({ 'The quick brown fox' })
  c:lua('vim.api.nvim_win_set_cursor(0, {1, 9})')
  local g = c:suggest()
  H.eq(g.pos, 'eol', 'virt_text_pos')
  H.eq({ g.row, g.col }, { 0, 9 }, 'anchored at the cursor')
  c:input('<Tab>')
  c:wait_no_ghost()
  H.eq(c:lines(), { 'The quick' .. g.raw .. ' brown fox' }, 'accepting inserts at the cursor')
  H.eq(c:cursor(), { 1, 9 + #g.raw }, 'cursor')
end)

case('render: inline virtual text (0.10+)', function(c)
  if not has_inline(c) then
    local v = c:lua('local v = vim.version() return string.format("%d.%d.%d", v.major, v.minor, v.patch)')
    H.skip('Neovim ' .. v .. ' has no inline virtual text (needs 0.10); overlay/eol are checked instead')
  end
  c:setup({ auto_trigger = false })
  c:edit({ 'The quick brown fox' })
  c:lua('vim.api.nvim_win_set_cursor(0, {1, 9})')
  local g = c:suggest()
  H.eq(g.pos, 'inline', 'virt_text_pos mid-line')
  c:input('<End>')
  c:wait_no_ghost()
  g = c:suggest()
  H.eq(g.pos, 'inline', 'virt_text_pos at the end')
end)

case('render: a multi-line suggestion: first line in virt_text, the rest in virt_lines', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'local x =', 'after' })
  c:lua('vim.api.nvim_win_set_cursor(0, {1, 9})')
  c:fake({ ' {\n  a = 1,\n}', ' 2' })
  local g = c:wait_ghost()
  H.eq(g.text, ' {', 'virt_text first chunk')
  H.eq(g.hl, 'Gpt2Suggestion', 'highlight')
  H.eq(g.counter, ' (1/2)', 'counter after the first line')
  H.eq(g.lines, { '  a = 1,', '}' }, 'virt_lines')
  local d = c:marks()[1][4]
  for _, l in ipairs(d.virt_lines) do
    H.eq(l[1][2], 'Gpt2Suggestion', 'virt_lines highlight')
  end
  H.eq({ g.row, g.col }, { 0, 9 }, 'position')
  H.eq(c:lines(), { 'local x =', 'after' }, 'buffer untouched')
  c:input('<M-]>')
  g = c:wait_ghost(function(x)
    return x.counter == ' (2/2)'
  end)
  H.eq(g.raw, ' 2', 'second suggestion')
  H.eq(c:marks()[1][4].virt_lines, nil, 'no virt_lines for a one-line suggestion')
end)

case('render: a suggestion with a tab and a control character', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'x' })
  c:fake({ ' a\tb\27c' })
  local g = c:wait_ghost()
  H.eq(g.raw, ' a\tb', 'shown (cut before the control character)')
  c:input('<Tab>')
  c:wait_no_ghost()
  H.eq(c:lines(), { 'x a\tb' }, 'inserted as shown')
end)

case('render: an unprintable character is drawn as Neovim draws it in the buffer', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'x' })
  c:fake({ ' a\u{200e}b' })
  local g = c:wait_ghost() -- ghost() checks full == strtrans(raw)
  H.eq(g.raw, ' a\u{200e}b', 'the text')
  H.eq(g.full, ' a<200e>b', 'as drawn')
  c:input('<Tab>')
  c:wait_no_ghost()
  H.eq(c:lines(), { 'x a\u{200e}b' }, 'inserted')
end)

case('render: one mark at a time, cleared when the buffer changes', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'first buffer' })
  c:suggest()
  local b1 = c:lua('return vim.api.nvim_get_current_buf()')
  c:input('<Esc>')
  c:cmd('enew')
  c:edit({ 'second buffer' })
  c:suggest()
  H.eq(#c:marks(b1), 0, 'marks left in the first buffer')
  H.eq(#c:marks(), 1, 'marks in the second buffer')
end)

return T
