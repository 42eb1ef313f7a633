-- gpt2.trigger: when to ask. Autocommands in the "gpt2" augroup, a trailing-
-- edge debounce on one libuv timer, and the context: the text before the
-- cursor (GPT-2 reads left to right), bounded by lines and bytes and cut at a
-- line start. The first line sent moves in steps of half of context_lines,
-- so consecutive requests share a long token prefix the helper can reuse.
local M = {}

local uv = vim.uv or vim.loop
local timer

-- Rest of the line after the cursor that still allows an automatic request:
-- nothing, or only closing brackets, quotes, punctuation and blanks.
-- (With other text after the cursor the suggestion would have to fit in the
-- middle of the line; only a manual request asks then.)
local QUIET_TAIL = '^[%s%)%]%}"\'`;,:%.]*$'

function M.tail_allows_auto(line, col)
  return line:sub(col + 1):match(QUIET_TAIL) ~= nil
end

function M.context(cfg, buf, row, col)
  local step = math.max(1, math.floor(cfg.context_lines / 2))
  local first = math.max(0, row - cfg.context_lines)
  first = math.floor((first + step - 1) / step) * step -- stable for `step` rows
  if first > row then
    first = row
  end
  local lines = vim.api.nvim_buf_get_lines(buf, first, row + 1, false)
  lines[#lines] = (lines[#lines] or ''):sub(1, col)
  local size = #lines - 1
  for _, l in ipairs(lines) do
    size = size + #l
  end
  local drop = 0
  while size > cfg.context_bytes and drop < #lines - 1 do
    drop = drop + 1
    size = size - #lines[drop] - 1
  end
  local text = table.concat(lines, '\n', drop + 1)
  if #text > cfg.context_bytes then -- one very long line
    text = text:sub(-cfg.context_bytes)
  end
  return text
end

function M.debounce(ms, fn)
  if not timer then
    timer = uv.new_timer()
  end
  timer:stop()
  timer:start(ms, 0, vim.schedule_wrap(fn))
end

function M.cancel()
  if timer then
    timer:stop()
  end
end

function M.autocmds(api)
  local group = vim.api.nvim_create_augroup('gpt2', { clear = true })
  local au = function(ev, fn)
    vim.api.nvim_create_autocmd(ev, { group = group, callback = fn })
  end
  au('InsertEnter', api._on_insert_enter)
  au('TextChangedI', api._on_text_changed)
  au('CursorMovedI', api._on_cursor_moved)
  -- (InsertLeave also fires for one command with i_CTRL-O)
  au({ 'InsertLeave', 'BufLeave', 'WinLeave' }, function()
    M.cancel()
    api.dismiss()
  end)
  au('ColorScheme', api._set_highlights)
  au('VimLeavePre', api._on_exit)
end

return M
