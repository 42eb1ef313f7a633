-- gpt2.ghost: drawing one suggestion as ghost text with extmarks in the
-- `gpt2` namespace. Inline virtual text where Neovim has it (0.10+, feature-
-- tested once); otherwise overlay at the cursor when nothing follows it on
-- the line, else at the end of the line. Further lines of a multi-line
-- suggestion are virtual lines below. The mark is updated in place (same
-- id), so streaming text does not flicker.
local M = {}

M.ns = vim.api.nvim_create_namespace('gpt2')
local inline_ok
local mark = nil -- { buf, id }

function M.has_inline()
  if inline_ok == nil then
    local buf = vim.api.nvim_create_buf(false, true)
    inline_ok = pcall(vim.api.nvim_buf_set_extmark, buf, M.ns, 0, 0, {
      virt_text = { { 'x', 'Gpt2Suggestion' } },
      virt_text_pos = 'inline',
    })
    vim.api.nvim_buf_delete(buf, { force = true })
  end
  return inline_ok
end

-- Show text at (row, col) (0-based, col in bytes) of buf; counter may be nil.
function M.show(buf, row, col, text, counter)
  if mark and mark.buf ~= buf then
    M.clear()
  end
  local lines = vim.split(text, '\n', { plain = true })
  local chunks = { { lines[1], 'Gpt2Suggestion' } }
  if counter then
    table.insert(chunks, { ' ' .. counter, 'Gpt2Counter' })
  end
  local opts = { virt_text = chunks, hl_mode = 'combine', id = mark and mark.id or nil }
  if M.has_inline() then
    opts.virt_text_pos = 'inline'
  else
    local line = vim.api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ''
    opts.virt_text_pos = col >= #line and 'overlay' or 'eol'
  end
  if #lines > 1 then
    opts.virt_lines = {}
    for i = 2, #lines do
      table.insert(opts.virt_lines, { { lines[i], 'Gpt2Suggestion' } })
    end
  end
  local ok, id = pcall(vim.api.nvim_buf_set_extmark, buf, M.ns, row, col, opts)
  if ok then
    mark = { buf = buf, id = id }
  else
    M.clear()
  end
end

function M.clear()
  if mark and vim.api.nvim_buf_is_valid(mark.buf) then
    vim.api.nvim_buf_clear_namespace(mark.buf, M.ns, 0, -1)
  end
  mark = nil
end

function M.visible()
  return mark ~= nil
end

return M
