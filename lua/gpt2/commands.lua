-- gpt2.commands: what :Gpt2 status, log and restart show and do.
local M = {}

function M.status()
  local g = require('gpt2')
  local client = require('gpt2.client')
  local st = g.status()
  local lines = {
    'gpt2.nvim',
    '  state:        ' .. tostring(st.state),
    '  helper pid:   ' .. tostring(st.helper_pid or '-'),
    '  model:        ' .. tostring(st.model or '-'),
    '  device:       ' .. tostring(st.device or '(not known until the first suggestion)'),
    '  requests:     ' .. tostring(st.requests),
    '  last latency: ' .. (st.last_latency_ms and string.format('%.0f ms', st.last_latency_ms) or '-'),
    '  restarts:     ' .. tostring(st.restarts),
  }
  if st.last_error then
    table.insert(lines, '  last error:   ' .. st.last_error)
  end
  if client.chan then
    local h = client.request('status', {})
    if type(h) == 'table' then
      local c = h.counters or {}
      table.insert(lines, string.format('  helper:       gpt2 %s, up %.0f s, queue %d, %d completed, %d cancelled, %.1f tok/s',
        tostring(h.version), h.uptime_s or 0, (h.queue or {}).depth or 0, c.completed or 0,
        (c.cancelled or 0) + (c.superseded or 0), c.tokens_per_s or 0))
      for _, m in ipairs(h.models or {}) do
        table.insert(lines, string.format('  model %s:   %s%s', m.name, m.loaded and 'loaded' or 'not loaded',
          (m.error and m.error ~= '') and (' (' .. m.error .. ')') or ''))
      end
      if h.memory then
        table.insert(lines, string.format('  memory:       %.0f MB resident, %.0f MB KV cache',
          (h.memory.rss_bytes or 0) / 1e6, (h.memory.kv_cache_bytes or 0) / 1e6))
      end
    end
  end
  vim.api.nvim_echo({ { table.concat(lines, '\n') } }, false, {})
  return lines
end

-- The log buffer's name. (A URL-like name keeps Neovim from making it a file
-- path; 0.7 takes only letters and "-" before "://", so no "gpt2://".)
M.log_name = 'gpt://log'

-- Show the helper's log in a scratch window: the open one when there is
-- one, else a new one at the bottom.
function M.log()
  local client = require('gpt2.client')
  local buf
  for _, b in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_get_name(b) == M.log_name then
      buf = b
    end
  end
  local win = buf and vim.fn.bufwinid(buf) or -1
  if win ~= -1 then
    vim.api.nvim_set_current_win(win)
  else
    if buf then
      vim.api.nvim_buf_delete(buf, { force = true })
    end
    vim.cmd('botright new')
    buf = vim.api.nvim_get_current_buf()
    vim.bo[buf].buftype = 'nofile'
    vim.bo[buf].bufhidden = 'wipe'
    vim.bo[buf].swapfile = false
    vim.api.nvim_buf_set_name(buf, M.log_name)
  end
  vim.bo[buf].modifiable = true
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, #client.log > 0 and client.log or { '(the helper has logged nothing yet)' })
  vim.bo[buf].modifiable = false
end

function M.restart()
  local client = require('gpt2.client')
  if client.restart() then
    vim.notify('gpt2: helper restarted (pid ' .. tostring(client.pid) .. ')')
  else
    vim.notify('gpt2: cannot start the helper: ' .. tostring(client.last_error), vim.log.levels.ERROR)
  end
end

return M
