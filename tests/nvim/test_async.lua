-- Replies that come too late, and the helper process dying or restarting.
local H = require('harness')
local T, case = H.suite()
local uv = vim.uv or vim.loop

-- Run code in the child right after :Gpt2Complete, in the same rpc call, so
-- the helper's reply can only be handled after code has run. Returns the
-- request's id.
local function complete_then(c, code, ...)
  return c:lua([[
    local code = ...
    local id = require('gpt2')._state.next_id + 1
    vim.cmd('Gpt2Complete')
    assert(loadstring(code))(select(2, ...))
    return id
  ]], code, ...)
end

case('stale reply: cursor moved before the reply arrived, nothing shown', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'hello world' })
  local id = complete_then(c, 'vim.api.nvim_win_set_cursor(0, {1, 5})')
  local ev = c:wait_reply(id)
  H.eq(ev.kind, 'final', 'the helper answered')
  H.never(function()
    return c:ghost()
  end, 'a suggestion after the cursor moved', 150)
  H.eq(c:cursor(), { 1, 5 }, 'cursor')
end)

case('stale reply: text changed before the reply arrived, nothing shown', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'hello world', 'below' })
  c:lua('vim.api.nvim_win_set_cursor(0, {1, 11})')
  -- change another line: the cursor stays, only b:changedtick moves
  local id = complete_then(c, "vim.api.nvim_buf_set_lines(0, 1, 2, false, {'changed'})")
  H.eq(c:wait_reply(id).kind, 'final', 'the helper answered')
  H.never(function()
    return c:ghost()
  end, 'a suggestion after the text changed', 150)
  H.eq(c:cursor(), { 1, 11 }, 'cursor')
end)

case('stale reply: an old request id is dropped, the new one shown', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'first line here', 'second line' })
  -- request 1 at the end of line 2, then request 2 at the end of line 1
  local id1 = complete_then(c, [[
    vim.api.nvim_win_set_cursor(0, {1, 15})
    vim.cmd('Gpt2Complete')
  ]])
  local id2 = id1 + 1
  c:wait_reply(id1)
  c:wait_reply(id2)
  local g = c:wait_ghost()
  H.eq({ g.row, g.col, g.n }, { 0, 15, 1 }, 'one mark, at the second request position')
  -- a late event for the first id changes nothing
  c:lua("require('gpt2')._on_event({ id = ..., kind = 'final', suggestions = { 'STALE' } })", id1)
  local g2 = c:ghost()
  H.eq(g2.raw, g.raw, 'shown after an event with an old id')
  H.eq({ g2.row, g2.col }, { 0, 15 }, 'position')
end)

case('stale reply: leaving insert mode before the reply, nothing shown', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'hello world' })
  local id = complete_then(c, [[vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes('<Esc>', true, false, true), 'n', false)]])
  c:wait_reply(id)
  H.eq(c:mode(), 'n', 'mode')
  H.never(function()
    return c:ghost()
  end, 'a suggestion in normal mode', 150)
end)

case('stale reply: a partial for an old position is not shown', function(c)
  c:setup({ auto_trigger = false, stream = true })
  c:edit({ 'hello world' })
  local id = complete_then(c, [[
    local id = require('gpt2')._state.req.id
    vim.api.nvim_win_set_cursor(0, {1, 3})
    require('gpt2')._on_event({ id = id, kind = 'partial', suggestions = { 'PARTIAL' } })
  ]])
  c:wait_reply(id)
  H.never(function()
    return c:ghost()
  end, 'a suggestion', 150)
end)

-- Is pid alive?
local function alive(pid)
  return pid and uv.kill(pid, 0) == 0
end

case('helper killed: one notification, error state, then a new helper after the backoff', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'The quick brown fox' })
  c:suggest()
  local st = c:status()
  local pid = st.helper_pid
  H.ok(type(pid) == 'number' and pid > 0, 'helper_pid in status(): ' .. vim.inspect(pid))
  H.eq(st.state, 'running', 'state')
  c:input('<C-]>')
  local t_kill = H.now()
  uv.kill(pid, 'sigkill')
  H.wait(function()
    return c:status().state == 'error'
  end, "state 'error'")
  local t_error = H.now()
  local notes = H.wait(function()
    local n = c:notes()
    return #n > 0 and n
  end, 'a notification')
  H.eq(#notes, 1, 'notifications')
  H.ok(notes[1].msg:match('helper'), 'the notification names the helper: ' .. notes[1].msg)
  H.eq(notes[1].level, vim.log.levels.WARN, 'notification level')
  H.eq(c:status().helper_pid, nil, 'no helper pid while it is down')
  H.ok(c:status().last_error, 'last_error is set')
  -- within the backoff (0.5 s after the crash) a request starts no helper
  -- (checked only when this machine was quick enough to ask that early)
  c:complete()
  if H.now() - t_kill < 300 then
    H.eq(c:status().helper_pid, nil, 'helper pid right after the crash (backing off)')
  end
  -- past the backoff, the next request starts a new helper
  H.sleep(math.max(0, 650 - (H.now() - t_error)))
  c:input('<C-]>')
  c:suggest(nil, 'a suggestion from the new helper')
  st = c:status()
  H.ok(st.helper_pid and st.helper_pid ~= pid, 'a new helper pid: ' .. vim.inspect(st.helper_pid))
  H.eq(st.state, 'running', 'state')
  H.eq(st.restarts, 1, 'restarts')
  H.eq(#c:notes(), 1, 'still one notification')
  H.ok(alive(st.helper_pid), 'the new helper runs')
end)

case('helper killed: suggestions still work by typing after the backoff', function(c)
  c:setup({})
  c:edit({ 'The quick brown fox' })
  c:suggest()
  local pid = c:status().helper_pid
  c:input('<C-]>')
  uv.kill(pid, 'sigkill')
  H.wait(function()
    return c:status().state == 'error'
  end, "state 'error'")
  H.sleep(650) -- the backoff (0.5 s) counts from the crash, which came before this
  c:type(' jumps')
  c:wait_ghost(function(g)
    return g.col == #'The quick brown fox jumps'
  end, 'a suggestion after typing')
  H.neq(c:status().helper_pid, pid, 'helper pid')
  H.eq(#c:notes(), 1, 'notifications')
end)

case(':Gpt2 restart gives a new helper at once, without a crash notice', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'The quick brown fox' })
  c:suggest()
  local pid = c:status().helper_pid
  c:cmd('Gpt2 restart')
  local st = c:status()
  H.ok(st.helper_pid and st.helper_pid ~= pid, 'a new pid at once: ' .. vim.inspect(st.helper_pid))
  H.eq(st.state, 'running', 'state')
  H.wait(function()
    return not alive(pid)
  end, 'the old helper to exit')
  H.sleep(300) -- the child has handled the old helper's exit by now
  local st2 = c:status()
  H.eq({ st2.helper_pid, st2.state, st2.restarts }, { st.helper_pid, 'running', 0 }, 'pid, state, restarts after the old one exited')
  local notes = c:notes()
  H.eq(#notes, 1, 'notifications: ' .. vim.inspect(notes))
  H.ok(notes[1].msg:match('restarted'), 'the notification says restarted: ' .. notes[1].msg)
  c:input('<C-]>')
  c:wait_no_ghost()
  c:suggest(nil, 'a suggestion from the restarted helper')
end)

case('the helper exits with Neovim', function(c)
  c:setup({ auto_trigger = false })
  c:edit({ 'The quick brown fox' })
  c:suggest()
  local pid = c:status().helper_pid
  c:stop()
  H.wait(function()
    return not alive(pid)
  end, 'the helper to exit', 3000)
end)

-- Quit with a request in flight, or due (the debounce may fire while Neovim
-- exits, which runs the event loop while it waits for its jobs): nothing may
-- start a new helper then, or Neovim waits for that one forever.
local quits = {
  { 'with a request in flight', "vim.cmd('Gpt2Complete') vim.cmd('qall!')" },
  { 'from insert mode, request due', "vim.api.nvim_feedkeys(' j', 'nt', false) vim.defer_fn(function() vim.cmd('qall!') end, 0)" },
  { 'a request due in 10 ms', "vim.api.nvim_feedkeys(' j', 'nt', false) vim.defer_fn(function() vim.cmd('qall!') end, 10)" },
}
for _, q in ipairs(quits) do
  case('quitting ' .. q[1] .. ': Neovim exits at once, no helper left', function(c)
    c:setup({ debounce_ms = 20 })
    c:edit({ 'The quick brown fox' })
    c:suggest()
    local pid = c:status().helper_pid
    pcall(c.lua, c, q[2])
    local t0 = H.now()
    H.wait(function()
      return c.exited
    end, 'the child to exit', 3000)
    H.ok(H.now() - t0 < 2000, string.format('quit took %.0f ms', H.now() - t0))
    H.wait(function()
      return not alive(pid)
    end, 'the helper to exit', 3000)
  end)
end

return T
