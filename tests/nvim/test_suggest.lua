-- Asking for suggestions (manual and automatic) and cycling through them.
local H = require('harness')
local T = {}
local function case(name, fn, opts)
  table.insert(T, vim.tbl_extend('force', opts or {}, { name = name, fn = fn }))
end

case('manual trigger: :Gpt2Complete shows ghost text and a counter', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'The quick brown fox' })
  local g = c:suggest3()
  H.eq(g.n, 1, 'extmarks in the gpt2 namespace')
  H.eq({ g.row, g.col }, { 0, #'The quick brown fox' }, 'mark position')
  H.eq(g.hl, 'Gpt2Suggestion', 'highlight of the text')
  H.ok(g.text:match('%S'), 'the suggestion is not blank: ' .. vim.inspect(g.text))
  H.eq(g.counter, ' (1/3)', 'counter chunk')
  H.eq(g.counter_hl, 'Gpt2Counter', 'highlight of the counter')
  H.eq(c:lines(), { 'The quick brown fox' }, 'buffer (ghost text is not inserted)')
  H.eq(c:mode(), 'i', 'mode')
  H.eq(c:status().suggestion, g.raw, 'status().suggestion is what is shown')
end)

case('auto trigger: typing then a pause shows a suggestion', function(c)
  c:setup({ debounce_ms = 30 })
  c:edit({ '' })
  c:type('Once upon a time')
  local g = c:wait_ghost()
  H.eq({ g.row, g.col }, { 0, #'Once upon a time' }, 'mark position')
  H.eq(c:lines(), { 'Once upon a time' }, 'buffer')
  H.ok(c:status().requests >= 1, 'at least one request')
end)

case('auto trigger: debounce sends one request for a burst of keys', function(c)
  c:setup({ debounce_ms = 500 })
  c:edit({ '' })
  for _, ch in ipairs({ 'a', 'b', 'c', ' ', 'd', 'e' }) do
    c:type(ch)
    H.sleep(20)
  end
  c:wait_ghost(nil, 'a suggestion after the pause')
  H.eq(c:status().requests, 1, 'requests for six keys typed about 20 ms apart (debounce 500 ms)')
end)

case('auto_trigger = false: typing shows nothing, :Gpt2Complete still works', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ '' })
  c:type('Once upon a time')
  H.never(function()
    return c:ghost()
  end, 'a suggestion without a manual request', 300)
  H.eq(c:status().requests, 0, 'requests')
  c:suggest()
  H.eq(c:status().requests, 1, 'requests')
end)

case('auto trigger: no automatic request with text after the cursor', function(c)
  c:setup({})
  c:edit({ 'hello world' })
  c:lua('vim.api.nvim_win_set_cursor(0, {1, 5})')
  c:type('x')
  H.never(function()
    return c:ghost()
  end, 'a suggestion in the middle of a line', 300)
  H.eq(c:status().requests, 0, 'requests')
end)

-- The texts of the three suggestions, by cycling with next().
local function texts(c)
  local seen = {}
  for _ = 1, 3 do
    local g = c:ghost()
    table.insert(seen, g.raw)
    c:lua("require('gpt2').next()")
  end
  return seen
end

case('cycling: <M-]> and <M-[> change text and counter, and wrap', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'It was a dark and stormy night' })
  local g1 = c:suggest3()
  H.eq(g1.counter, ' (1/3)', 'counter')
  c:input('<M-]>')
  local g2 = c:wait_ghost(function(g)
    return g.counter == ' (2/3)'
  end, 'counter (2/3)')
  H.neq(g2.raw, g1.raw, 'second suggestion text')
  c:input('<M-]>')
  local g3 = c:wait_ghost(function(g)
    return g.counter == ' (3/3)'
  end, 'counter (3/3)')
  H.neq(g3.raw, g1.raw, 'third vs first')
  H.neq(g3.raw, g2.raw, 'third vs second')
  c:input('<M-]>')
  local w = c:wait_ghost(function(g)
    return g.counter == ' (1/3)'
  end, 'wrap to (1/3)')
  H.eq(w.raw, g1.raw, 'after wrapping forward')
  c:input('<M-[>')
  local b = c:wait_ghost(function(g)
    return g.counter == ' (3/3)'
  end, 'wrap back to (3/3)')
  H.eq(b.raw, g3.raw, 'after wrapping backward')
  c:input('<M-[>')
  b = c:wait_ghost(function(g)
    return g.counter == ' (2/3)'
  end, '(2/3) again')
  H.eq(b.raw, g2.raw, 'previous')
  H.eq(c:lines(), { 'It was a dark and stormy night' }, 'buffer untouched')
  H.eq({ b.row, b.col }, { 0, #'It was a dark and stormy night' }, 'mark position')
end)

case('cycling: require("gpt2").next() / prev()', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'The rain in Spain' })
  c:suggest3()
  local seen = texts(c) -- ends back at 1
  H.eq(c:ghost().counter, ' (1/3)', 'three next() calls wrap to 1')
  H.eq(c:ghost().raw, seen[1], 'text after wrapping')
  H.eq(c:lua("return require('gpt2').prev()"), true, 'prev() returns true when shown')
  H.eq(c:ghost().counter, ' (3/3)', 'prev() from 1 wraps to 3')
  H.eq(c:ghost().raw, seen[3], 'text of 3')
  H.eq(c:lua("return require('gpt2').prev()"), true, 'prev()')
  H.eq(c:ghost().raw, seen[2], 'text of 2')
  c:input('<C-]>')
  c:wait_no_ghost()
  H.eq(c:lua("return require('gpt2').next()"), false, 'next() with nothing shown')
end)

case('n = 1: no counter', function(c)
  c:setup({ auto_trigger = false, n = 1 })
  c:edit({ 'The rain in Spain' })
  local g = c:suggest()
  H.eq(g.counter, nil, 'counter chunk')
  H.eq(#g.chunks, 1, 'virt_text chunks')
end)

case('show_counter = false: no counter', function(c)
  c:setup({ auto_trigger = false, show_counter = false })
  c:edit({ 'The rain in Spain' })
  local g = c:suggest()
  H.eq(g.counter, nil, 'counter chunk')
end)

case('temperature = 0: greedy, the same suggestion twice', function(c)
  c:setup({ auto_trigger = false, temperature = 0 })
  c:edit({ 'The rain in Spain' })
  local g1 = c:suggest()
  H.eq(g1.counter, nil, 'greedy gives one distinct suggestion, so no counter')
  c:input('<C-]>')
  c:wait_no_ghost()
  local g2 = c:suggest()
  H.eq(g2.raw, g1.raw, 'second greedy suggestion')
end)

case('stream = true: the final suggestion is shown', function(c)
  c:setup({ auto_trigger = false, stream = true, max_tokens = 16 })
  c:edit({ 'Streaming text' })
  local id = c:next_id()
  c:complete()
  c:wait_reply(id)
  local g = c:wait_ghost()
  H.eq(c:status().suggestion, g.raw, 'status().suggestion')
  local kinds = {}
  for _, ev in ipairs(c:events()) do
    kinds[ev.kind] = (kinds[ev.kind] or 0) + 1
  end
  H.ok(kinds.final == 1, 'one final event: ' .. vim.inspect(kinds))
end)

-- Hand the plugin an event for the request in flight (started by complete()).
local function event(c, kind, suggestions)
  c:lua([[
    local kind, sug = ...
    local g = require('gpt2')
    g._on_event({ id = g._state.req.id, kind = kind, suggestions = sug, device = 'cpu' })
  ]], kind, suggestions)
end

case('stream: partial text is shown and updated in place, then the final', function(c)
  c:setup({ auto_trigger = false, stream = true })
  c:edit({ 'Hello' })
  c:lua("require('gpt2').complete()")
  event(c, 'partial', { ' wor', ' the' })
  local g = c:ghost()
  H.eq({ g.raw, g.counter }, { ' wor', ' (1/2)' }, 'first partial')
  local id = c:marks()[1][1]
  c:lua("require('gpt2').next()")
  event(c, 'partial', { ' world', ' there' })
  g = c:ghost()
  H.eq({ g.raw, g.counter }, { ' there', ' (2/2)' }, 'second partial keeps the chosen one')
  H.eq(c:marks()[1][1], id, 'the same extmark (updated in place)')
  event(c, 'final', { ' world!', ' there.', ' again' })
  g = c:ghost()
  H.eq({ g.raw, g.counter, g.n }, { ' world!', ' (1/3)', 1 }, 'final')
  H.eq(c:lua("return require('gpt2')._state.req"), nil, 'no request in flight after the final')
end)

case('stream = false: partial text is not shown', function(c)
  c:setup({ auto_trigger = false, stream = false })
  c:edit({ 'Hello' })
  c:lua("require('gpt2').complete()")
  event(c, 'partial', { ' wor', ' the' })
  H.eq(c:ghost(), nil, 'after a partial')
  event(c, 'final', { ' world' })
  H.eq(c:ghost().raw, ' world', 'after the final')
end)

case('blank and duplicate suggestions are dropped', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'Hello' })
  c:lua("require('gpt2').complete()")
  event(c, 'final', { '', '  ', ' a', ' a', '\n', ' b' })
  local g = c:ghost()
  H.eq({ g.raw, g.counter }, { ' a', ' (1/2)' }, 'shown')
  c:lua("require('gpt2').dismiss()")
  c:lua("require('gpt2').complete()")
  event(c, 'final', { '', ' ' })
  H.eq(c:ghost(), nil, 'nothing for all-blank suggestions')
end)

return T
