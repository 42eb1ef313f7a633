-- gpt2.nvim: commands and <Plug> maps only; nothing loads until first use.
if vim.g.loaded_gpt2 then
  return
end
vim.g.loaded_gpt2 = true

local function gpt2()
  return require('gpt2')
end

vim.api.nvim_create_user_command('Gpt2Complete', function()
  gpt2().complete()
end, { desc = 'gpt2: ask for suggestions now' })

local subcommands = {
  enable = function() gpt2().enable() end,
  disable = function() gpt2().disable() end,
  toggle = function() gpt2().toggle() end,
  status = function() require('gpt2.commands').status() end,
  log = function() require('gpt2.commands').log() end,
  restart = function() require('gpt2.commands').restart() end,
}

vim.api.nvim_create_user_command('Gpt2', function(o)
  local f = subcommands[o.args]
  if not f then
    vim.notify('gpt2: unknown subcommand ' .. o.args .. ' (enable, disable, toggle, status, log, restart)', vim.log.levels.ERROR)
    return
  end
  f()
end, {
  nargs = 1,
  desc = 'gpt2: enable | disable | toggle | status | log | restart',
  complete = function(lead)
    local out = {}
    for name in pairs(subcommands) do
      if name:sub(1, #lead) == lead then
        table.insert(out, name)
      end
    end
    table.sort(out)
    return out
  end,
})

for name, fn in pairs({
  accept = 'accept', ['accept-word'] = 'accept_word', ['accept-line'] = 'accept_line',
  next = 'next', prev = 'prev', dismiss = 'dismiss', complete = 'complete',
}) do
  vim.keymap.set('i', '<Plug>(gpt2-' .. name .. ')', function()
    gpt2()[fn]()
  end, { silent = true, desc = 'gpt2: ' .. fn })
end
