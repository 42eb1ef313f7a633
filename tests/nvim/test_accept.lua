-- Accepting (all, a word, a line), undo, dismissing and typing through.
local H = require('harness')
local T, case = H.suite()

-- Lines after inserting text at (row, col) (0-based) of lines, and the cursor
-- ({ row 1-based, col }) right after the inserted text.
local function inserted(lines, row, col, text)
  local out = vim.deepcopy(lines)
  local line = out[row + 1]
  local parts = vim.split(text, '\n', { plain = true })
  local before, after = line:sub(1, col), line:sub(col + 1)
  parts[1] = before .. parts[1]
  local ecol = #parts[#parts]
  parts[#parts] = parts[#parts] .. after
  table.remove(out, row + 1)
  for i, p in ipairs(parts) do
    table.insert(out, row + i, p)
  end
  return out, { row + #parts, ecol }
end

-- The next word as documented: blanks, then a run of word characters
-- (letters, digits, _, any byte >= 0x80) or a run of other non-blanks.
local function next_word(t)
  local lead = t:match('^%s*')
  local rest = t:sub(#lead + 1)
  if rest == '' then
    return t
  end
  local function wordy(ch)
    return ch:match('[%w_]') ~= nil or ch:byte() >= 128
  end
  local cls = wordy(rest:sub(1, 1))
  local i = 1
  while i <= #rest do
    local ch = rest:sub(i, i)
    if ch:match('%s') or wordy(ch) ~= cls then
      break
    end
    i = i + 1
  end
  return lead .. rest:sub(1, i - 1)
end

case('accept: <Tab> inserts exactly what was shown, cursor after it', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'first line', 'The quick brown fox' })
  local g = c:suggest()
  local before = c:lines()
  c:input('<Tab>')
  c:wait_no_ghost('the suggestion to go on accept')
  local want, cur = inserted(before, g.row, g.col, g.raw)
  H.eq(c:lines(), want, 'buffer after accept')
  H.eq(c:cursor(), cur, 'cursor after accept')
  H.eq(c:mode(), 'i', 'still in insert mode')
end)

case('accept: a multi-line suggestion is inserted as lines', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'The quick brown fox', 'tail' })
  c:lua('vim.api.nvim_win_set_cursor(0, {1, 19})')
  c:fake({ ' jumps over\n  the lazy dog', 'other' })
  local g = c:wait_ghost()
  H.eq(g.raw, ' jumps over\n  the lazy dog', 'shown')
  c:input('<Tab>')
  c:wait_no_ghost()
  H.eq(c:lines(), { 'The quick brown fox jumps over', '  the lazy dog', 'tail' }, 'buffer')
  H.eq(c:cursor(), { 2, #'  the lazy dog' }, 'cursor')
end)

case('accept: <Esc>u undoes the insert in one step', function(c)
  -- Observed on 0.7.2: the accepted text is part of the insert session's
  -- undo unit (Vim's normal insert-mode undo), so one "u" after <Esc>
  -- removes it together with what was typed in the same session.
  c:setup({ auto_trigger = false })
  c:edit({ 'The quick brown fox' })
  c:type(' jumps')
  local typed = c:lines()
  local g = c:suggest()
  c:input('<Tab>')
  c:wait_no_ghost()
  local want = inserted(typed, g.row, g.col, g.raw)
  H.eq(c:lines(), want, 'buffer after accept')
  c:input('<Esc>u')
  local got = H.wait(function()
    local l = c:lines()
    return c:mode() == 'n' and not vim.deep_equal(l, want) and l
  end, 'undo')
  H.ok(vim.deep_equal(got, { 'The quick brown fox' }) or vim.deep_equal(got, typed),
    'after undo: expected the buffer before the insert session or before the accept, got ' .. vim.inspect(got))
  local n = c:lua('return vim.fn.undotree().seq_cur')
  H.ok(n == 0 or vim.deep_equal(got, typed), 'undo went back to the start (seq_cur ' .. tostring(n) .. ')')
  c:input('<C-r>')
  H.wait(function()
    return vim.deep_equal(c:lines(), want)
  end, 'redo brings the accepted text back')
end)

case('accept: <Tab> accepts the suggestion shown after cycling', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'The quick brown fox' })
  c:suggest()
  c:input('<M-]>')
  local g = c:wait_ghost(function(x)
    return x.counter == ' (2/3)'
  end)
  c:input('<Tab>')
  c:wait_no_ghost()
  H.eq(c:lines(), { 'The quick brown fox' .. g.raw }, 'buffer')
end)

case('accept word: <M-Right> inserts the next word, the rest stays shown', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'The quick brown fox' })
  local g = c:suggest3()
  local word = next_word(g.raw)
  c:input('<M-Right>')
  H.wait(function()
    return c:line() ~= 'The quick brown fox'
  end, 'the word to be inserted')
  H.eq(c:lines(), { 'The quick brown fox' .. word }, 'buffer after accepting a word of ' .. vim.inspect(g.raw))
  H.eq(c:cursor(), { 1, #'The quick brown fox' + #word }, 'cursor')
  local rest = g.raw:sub(#word + 1)
  if rest == '' then
    c:wait_no_ghost('nothing left to show')
  else
    local r = c:wait_ghost()
    H.eq(r.raw, rest, 'the rest is still shown')
    H.eq({ r.row, r.col }, { 0, #'The quick brown fox' + #word }, 'at the cursor')
    H.eq(r.hl, 'Gpt2Suggestion', 'highlight')
  end
end)

case('accept word: words, punctuation and UTF-8 one at a time', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'x' })
  c:fake({ ' héllo, wörld_2  foo' })
  local steps = { ' héllo', ',', ' wörld_2', '  foo' }
  local line = 'x'
  for i, w in ipairs(steps) do
    c:input('<M-Right>')
    line = line .. w
    H.wait(function()
      return c:line() == line
    end, 'step ' .. i .. ': ' .. vim.inspect(line))
    if i < #steps then
      H.eq(c:ghost().raw, (' héllo, wörld_2  foo'):sub(#line), 'rest after step ' .. i)
    end
  end
  c:wait_no_ghost('all accepted')
  H.eq(c:cursor(), { 1, #line }, 'cursor')
end)

case('accept line: <M-C-Right> inserts the rest of the line, the rest stays shown', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'a' })
  c:fake({ ' one two\nthree four\nfive' })
  c:input('<M-C-Right>')
  H.wait(function()
    return c:line() == 'a one two'
  end, 'the first line to be inserted')
  local g = c:wait_ghost()
  H.eq(g.raw, '\nthree four\nfive', 'the rest is shown')
  H.eq(g.text, '', 'first line of the rest (empty: it starts with a line break)')
  H.eq(g.lines, { 'three four', 'five' }, 'virt_lines')
  c:input('<M-C-Right>')
  H.wait(function()
    return #c:lines() == 2
  end, 'the second line')
  H.eq(c:lines(), { 'a one two', 'three four' }, 'buffer')
  H.eq(c:cursor(), { 2, #'three four' }, 'cursor')
  H.eq(c:ghost().raw, '\nfive', 'rest')
  c:input('<M-C-Right>')
  c:wait_no_ghost()
  H.eq(c:lines(), { 'a one two', 'three four', 'five' }, 'buffer')
end)

case('accept line: with the real helper, a one-line suggestion is all inserted', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'The quick brown fox' })
  local g = c:suggest()
  local line = g.raw:match('^[^\n]*')
  c:input('<M-C-Right>')
  H.wait(function()
    return c:line() ~= 'The quick brown fox'
  end, 'the line to be inserted')
  H.eq(c:lines()[1], 'The quick brown fox' .. line, 'buffer')
  if line == g.raw then
    c:wait_no_ghost('nothing left')
  else
    H.eq(c:ghost().raw, g.raw:sub(#line + 1), 'rest')
  end
end)

case('dismiss: <C-]> clears the suggestion', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'The quick brown fox' })
  c:suggest()
  c:input('<C-]>')
  c:wait_no_ghost()
  H.eq(c:lines(), { 'The quick brown fox' }, 'buffer')
  H.eq(c:mode(), 'i', 'mode')
  H.eq(c:status().suggestion, nil, 'status().suggestion')
  c:input('<Tab>')
  H.wait(function()
    return c:line() == 'The quick brown fox\t'
  end, '<Tab> inserts a tab once nothing is shown')
end)

case('dismiss: leaving insert mode (<Esc>) clears the suggestion', function(c)
  c:setup({})
  c:edit({ 'The quick brown fox' })
  c:suggest()
  c:input('<Esc>')
  c:wait_no_ghost()
  H.eq(c:mode(), 'n', 'mode')
  H.never(function()
    return c:ghost()
  end, 'a suggestion in normal mode', 200)
end)

case('dismiss: one command with <C-o> clears it', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'The quick brown fox' })
  c:suggest()
  c:input('<C-o>')
  c:wait_no_ghost('the suggestion to go when insert mode is left for one command')
  H.eq(c:lines(), { 'The quick brown fox' }, 'buffer')
end)

case('typed-through: typing what is shown keeps the rest, no new request', function(c)
  c:setup({ max_tokens = 12 })
  c:edit({ 'The quick brown fox' })
  local g = c:suggest(function(x)
    return vim.fn.strchars(x.raw) >= 3
  end, 'a suggestion of 3 characters or more')
  local requests = c:status().requests
  local text, col = g.raw, g.col
  for _ = 1, 2 do
    local ch = vim.fn.strcharpart(text, 0, 1)
    c:type(ch)
    text, col = text:sub(#ch + 1), col + #ch
    local r = c:wait_ghost(function(x)
      return x.col == col
    end, 'the rest after typing ' .. vim.inspect(ch))
    H.eq(r.raw, text, 'shown after typing ' .. vim.inspect(ch))
  end
  H.never(function()
    local n = c:status().requests
    return n ~= requests and n
  end, 'a new request while typing through', 250)
  H.eq(c:ghost().raw, text, 'still shown')
  c:input('<Tab>')
  c:wait_no_ghost()
  H.eq(c:lines(), { 'The quick brown fox' .. g.raw }, 'accepting the rest gives the whole suggestion')
end)

case('typed-through: typing something else clears it and asks again', function(c)
  c:setup({})
  c:edit({ 'The quick brown fox' })
  local g = c:suggest()
  local requests = c:status().requests
  local other = g.raw:sub(1, 1) == 'Q' and 'Z' or 'Q'
  local id = c:next_id()
  c:type(other)
  c:wait_reply(id)
  H.eq(c:status().requests, requests + 1, 'one new request')
  H.eq(c:lines(), { 'The quick brown fox' .. other }, 'buffer')
  local r = c:ghost()
  if r then -- (unless all three new suggestions were blank)
    H.eq({ r.n, r.row, r.col }, { 1, 0, g.col + 1 }, 'one extmark, after the typed character')
    H.eq(r.raw, c:status().suggestion, 'shown')
  end
end)

return T
