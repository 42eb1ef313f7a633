-- gpt2: GPT-2 ghost-text suggestions. setup() validates and applies the
-- config (gpt2.config), creates the "gpt2" augroup (gpt2.trigger), the
-- insert-mode keys and the highlights. The helper process lives in
-- gpt2.client, the drawing in gpt2.ghost.
--
-- Async hygiene: every request carries a fresh id and remembers buffer,
-- cursor and changedtick; a reply whose id is old or whose buffer, cursor or
-- changedtick moved is dropped. While the user types exactly what is shown,
-- the rest stays on screen without a new request (typed-through).
local config = require('gpt2.config')
local client = require('gpt2.client')
local ghost = require('gpt2.ghost')
local trigger = require('gpt2.trigger')

local M = {}
local uv = vim.uv or vim.loop

local S = {
  cfg = nil,
  req = nil, -- in flight: { id, buf, row, col, tick, t0 }
  sug = nil, -- shown: { buf, row, col, tick, prefix, items, index }
  next_id = 0,
  requests = 0,
  last_ms = nil,
  device = nil,
  fallbacks = {},
  mapped = {},
}

-- ==== Position and eligibility ====

local function pos()
  local cur = vim.api.nvim_win_get_cursor(0)
  local buf = vim.api.nvim_get_current_buf()
  return buf, cur[1] - 1, cur[2], vim.api.nvim_buf_get_changedtick(buf)
end

local function enabled_here()
  if not S.cfg then
    return false
  end
  local b, g = vim.b.gpt2_enabled, vim.g.gpt2_enabled
  if b ~= nil then
    if b == false or b == 0 then
      return false
    end
  elseif g == false or g == 0 then
    return false
  end
  if vim.bo.buftype ~= '' or not vim.bo.modifiable then
    return false
  end
  local ft = S.cfg.filetypes[vim.bo.filetype]
  if ft == nil then
    ft = S.cfg.filetypes['*']
  end
  return ft ~= false
end

local function in_insert()
  local m = vim.api.nvim_get_mode().mode
  return m:sub(1, 1) == 'i' or m:sub(1, 1) == 'R'
end

-- ==== Showing ====

local function render()
  local s = S.sug
  local counter = nil
  if S.cfg.show_counter and #s.items > 1 then
    counter = string.format('(%d/%d)', s.index, #s.items)
  end
  ghost.show(s.buf, s.row, s.col, s.items[s.index], counter)
end

local function clear()
  S.sug = nil
  ghost.clear()
end

-- A suggestion as it can be shown and inserted alike: CR LF becomes LF, and
-- it ends before any other control character (Neovim would draw one as
-- "^X" in the ghost text; it is never wanted in the buffer).
local function printable(t)
  t = t:gsub('\r\n', '\n')
  local cut = t:find('[%z\1-\8\11-\31\127]')
  return cut and t:sub(1, cut - 1) or t
end

-- Non-blank, distinct suggestions in order.
local function usable(list)
  local out, seen = {}, {}
  for _, t in ipairs(list or {}) do
    t = type(t) == 'string' and printable(t) or nil
    if t and t:match('%S') and not seen[t] then
      seen[t] = true
      table.insert(out, t)
    end
  end
  return out
end

local function show(items, req, partial)
  local line = vim.api.nvim_buf_get_lines(req.buf, req.row, req.row + 1, false)[1] or ''
  local index = 1
  if partial and S.sug and S.sug.partial then
    index = math.min(S.sug.index, #items)
  end
  S.sug = {
    buf = req.buf, row = req.row, col = req.col, tick = req.tick,
    prefix = line:sub(1, req.col), items = items, index = index, partial = partial,
  }
  render()
end

-- ==== Requests and replies ====

local function request(manual)
  if not enabled_here() or not in_insert() then
    return
  end
  local buf, row, col, tick = pos()
  local line = vim.api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ''
  if not manual and not trigger.tail_allows_auto(line, col) then
    return
  end
  S.next_id = S.next_id + 1
  S.req = { id = S.next_id, buf = buf, row = row, col = col, tick = tick, t0 = uv.hrtime() }
  local c = S.cfg
  client.notify('complete', {
    text = trigger.context(c, buf, row, col), id = S.next_id, buffer = buf, n = c.n,
    max_tokens = c.max_tokens, temperature = c.temperature, top_k = c.top_k,
    top_p = c.top_p, stop = c.stop, stream = c.stream, partial_every = 2,
  })
  S.requests = S.requests + 1
end

function M._on_event(ev)
  local req = S.req
  if not req or type(ev) ~= 'table' or ev.id ~= req.id then
    return -- an old request
  end
  local buf, row, col, tick = pos()
  if buf ~= req.buf or row ~= req.row or col ~= req.col or tick ~= req.tick or not in_insert() then
    S.req = nil -- the world moved on
    return
  end
  if ev.kind == 'error' then
    S.req = nil
    if not tostring(ev.error):match('^cancelled') then
      client.last_error = tostring(ev.error)
    end
    return
  end
  local items = usable(ev.suggestions)
  if ev.kind == 'partial' then
    if S.cfg.stream and #items > 0 then
      show(items, req, true)
    end
    return
  end
  S.req = nil
  S.last_ms = (uv.hrtime() - req.t0) / 1e6
  S.device = ev.device
  if #items == 0 then
    return clear()
  end
  show(items, req, false)
end

-- ==== Autocommand handlers ====

function M._on_insert_enter()
  if enabled_here() then
    client.start()
  end
end

-- The suggestions of s that go on after `done` (typed or accepted), with
-- `done` taken off, and where the shown one is among them.
local function after(s, done)
  local items, index = {}, 1
  for i, t in ipairs(s.items) do
    if t:sub(1, #done) == done and #t > #done then
      table.insert(items, t:sub(#done + 1))
      if i == s.index then
        index = #items
      end
    end
  end
  return items, index
end

-- Typed the next characters of the shown suggestion? Then keep showing the
-- rest (of every suggestion that agrees) without asking again.
local function typed_through(buf, row, col)
  local s = S.sug
  if not s or s.buf ~= buf or s.row ~= row or col <= s.col then
    return false
  end
  local line = vim.api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ''
  if line:sub(1, s.col) ~= s.prefix then
    return false
  end
  local typed = line:sub(s.col + 1, col)
  local cur = s.items[s.index]
  if cur:sub(1, #typed) ~= typed or #cur == #typed then
    return false
  end
  s.items, s.index = after(s, typed)
  s.col, s.prefix = col, line:sub(1, col)
  s.tick = vim.api.nvim_buf_get_changedtick(buf)
  render()
  return true
end

function M._on_text_changed()
  local buf, row, col, tick = pos()
  if S.sug and S.sug.tick == tick then
    return -- our own edit (a partial accept), already accounted for
  end
  if typed_through(buf, row, col) then
    S.req = nil
    return
  end
  clear()
  S.req = nil
  if S.cfg.auto_trigger and enabled_here() then
    trigger.debounce(S.cfg.debounce_ms, function()
      request(false)
    end)
  end
end

function M._on_cursor_moved()
  local s = S.sug
  if not s then
    return
  end
  local buf, row, col, tick = pos()
  if tick ~= s.tick then
    return -- text changed too: TextChangedI decides
  end
  if buf ~= s.buf or row ~= s.row or col ~= s.col then
    clear()
  end
end

-- VimLeavePre: nothing may start a helper from here on (a pending debounce
-- would, and Neovim would then wait for it to exit).
function M._on_exit()
  trigger.cancel()
  S.req = nil
  clear()
  client.shutdown()
end

function M._set_highlights()
  vim.api.nvim_set_hl(0, 'Gpt2Suggestion', { link = 'Comment', default = true })
  vim.api.nvim_set_hl(0, 'Gpt2Counter', { link = 'NonText', default = true })
end

client.on_event = function(ev)
  M._on_event(ev)
end

-- ==== Accepting ====

-- Insert text at the suggestion's position and put the cursor after it.
local function insert(s, text)
  local lines = vim.split(text, '\n', { plain = true })
  vim.api.nvim_buf_set_text(s.buf, s.row, s.col, s.row, s.col, lines)
  local erow = s.row + #lines - 1
  local ecol = #lines == 1 and s.col + #lines[1] or #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { erow + 1, ecol })
  return erow, ecol
end

-- Accept piece (a prefix of the shown text): the rest stays shown.
local function accept_piece(piece)
  local s = S.sug
  if not s then
    return false
  end
  local cur = s.items[s.index]
  if piece == '' then
    return false
  end
  if piece == cur then
    return M.accept()
  end
  local row, col = insert(s, piece)
  local line = vim.api.nvim_buf_get_lines(s.buf, row, row + 1, false)[1] or ''
  s.items, s.index = after(s, piece)
  s.row, s.col = row, col
  s.prefix, s.tick = line:sub(1, col), vim.api.nvim_buf_get_changedtick(s.buf)
  render()
  return true
end

-- The next word of t: blanks, then a run of word characters (bytes >= 0x80
-- count as word characters, so UTF-8 stays whole) or of punctuation.
function M._next_word(t)
  return t:match('^%s*[%w_\128-\255]+') or t:match('^%s*[^%w_%s\128-\255]+') or t:match('^%s*\n?') or t
end

-- The rest of the line of t; a suggestion that starts on the next line gives
-- that newline and the following line.
function M._next_line(t)
  if t:sub(1, 1) == '\n' then
    return '\n' .. (t:sub(2):match('^[^\n]*'))
  end
  return t:match('^[^\n]*')
end

function M.accept()
  local s = S.sug
  if not s then
    return false
  end
  local text = s.items[s.index]
  clear()
  S.req = nil
  insert(s, text)
  return true
end

function M.accept_word()
  return S.sug ~= nil and accept_piece(M._next_word(S.sug.items[S.sug.index]))
end

function M.accept_line()
  return S.sug ~= nil and accept_piece(M._next_line(S.sug.items[S.sug.index]))
end

-- ==== Cycling, dismissing, state ====

local function cycle(step)
  local s = S.sug
  if not s or #s.items < 2 then
    return s ~= nil
  end
  s.index = (s.index - 1 + step) % #s.items + 1
  render()
  return true
end

function M.next()
  return cycle(1)
end

function M.prev()
  return cycle(-1)
end

function M.dismiss()
  local shown = S.sug ~= nil
  trigger.cancel()
  if S.req then
    client.notify('cancel', { id = S.req.id })
    S.req = nil
  end
  clear()
  return shown
end

function M.complete()
  client.start()
  request(true)
end

function M.enable()
  vim.g.gpt2_enabled = true
end

function M.disable()
  vim.g.gpt2_enabled = false
  M.dismiss()
end

function M.toggle()
  if vim.g.gpt2_enabled == false or vim.g.gpt2_enabled == 0 then
    M.enable()
  else
    M.disable()
  end
end

function M.status()
  local g = vim.g.gpt2_enabled
  local state = client.state
  if g == false or g == 0 then
    state = 'disabled'
  end
  return {
    helper_pid = client.pid, model = S.cfg and S.cfg.model or nil, device = S.device,
    state = state, last_error = client.last_error, requests = S.requests,
    last_latency_ms = S.last_ms, restarts = client.restarts,
    suggestion = S.sug and S.sug.items[S.sug.index] or nil,
  }
end

function M.statusline()
  local st = M.status()
  if st.state == 'running' then
    -- the helper loads the model on the first request: until its first
    -- answer a request in flight means the model is loading
    return 'gpt2:' .. (st.device or (S.req and 'loading' or 'ready'))
  end
  return 'gpt2:' .. st.state
end

-- ==== Keys ====

local ACTIONS = {
  accept = M.accept, accept_word = M.accept_word, accept_line = M.accept_line,
  next = M.next, prev = M.prev, dismiss = M.dismiss,
}

-- Do what the key did before gpt2 mapped it: the user's global mapping
-- (rhs, expr or Lua callback), else the built-in key. The keys go to the
-- front of the typeahead, so keys typed after this one stay after it.
local function fallback(key)
  local m = S.fallbacks[key]
  local keys
  if m and m.callback then
    local r = m.callback()
    if m.expr ~= 1 or type(r) ~= 'string' then
      return
    end
    keys = r
  elseif m and m.expr == 1 then
    keys = vim.api.nvim_eval(m.rhs or '""')
  elseif m and m.rhs then
    keys = vim.api.nvim_replace_termcodes(m.rhs, true, false, true)
  else
    keys = vim.api.nvim_replace_termcodes(key, true, false, true)
  end
  local remap = m and m.noremap == 0
  vim.api.nvim_feedkeys(keys, remap and 'mti' or 'nti', false)
end

local function same_key(a, b)
  local t = vim.api.nvim_replace_termcodes
  return t(a, true, true, true) == t(b, true, true, true)
end

-- The global insert-mode mapping of key, if any. (nvim_get_keymap, unlike
-- maparg() on 0.7, gives a Lua callback as a function.)
local function global_map(key)
  for _, m in ipairs(vim.api.nvim_get_keymap('i')) do
    if same_key(m.lhs, key) then
      return m
    end
  end
end

-- Put back the mapping gpt2 replaced.
local function restore(key, m)
  local opts = {
    noremap = m.noremap == 1, expr = m.expr == 1, silent = m.silent == 1,
    nowait = m.nowait == 1, script = m.script == 1, desc = m.desc, callback = m.callback,
  }
  pcall(vim.api.nvim_set_keymap, 'i', key, m.rhs or '', opts)
end

local function map_keys(cfg)
  for key in pairs(S.mapped) do
    pcall(vim.keymap.del, 'i', key)
    if S.fallbacks[key] then
      restore(key, S.fallbacks[key])
    end
  end
  S.mapped, S.fallbacks = {}, {}
  if cfg.keymaps == false then
    return
  end
  for action, key in pairs(cfg.keymaps) do
    if key then
      local prev = global_map(key)
      if prev and not (prev.desc and prev.desc:match('^gpt2:')) then
        S.fallbacks[key] = prev
      end
      local fn = action == 'complete' and function()
        M.complete()
      end or function()
        if not (S.sug and ACTIONS[action]()) then
          fallback(key)
        end
      end
      vim.keymap.set('i', key, fn, { silent = true, desc = 'gpt2: ' .. action })
      S.mapped[key] = true
    end
  end
end

-- ==== Setup ====

function M.setup(opts)
  local cfg = config.build(opts)
  S.cfg = cfg
  client.configure(cfg)
  M._set_highlights()
  trigger.autocmds(M)
  map_keys(cfg)
  if vim.g.gpt2_enabled == nil then
    vim.g.gpt2_enabled = true
  end
  return M
end

M._state = S -- for tests and :Gpt2 status
return M
