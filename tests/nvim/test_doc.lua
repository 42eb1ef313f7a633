-- doc/gpt2.txt against the code: the options section, and a tag for every
-- option, API function, command, subcommand, key and highlight group.
-- These run in the runner's own Neovim (no child, no helper).
local H = require('harness')
local T, add = H.suite()
local function case(name, fn) -- no child Neovim for these
  add(name, fn, { child = false })
end

local DOC = H.root .. '/doc/gpt2.txt'

local function doc()
  return vim.fn.readfile(DOC)
end

local function tags()
  local set = {}
  for _, l in ipairs(doc()) do
    for t in l:gmatch('%*([^%s*|]+)%*') do
      set[t] = true
    end
  end
  return set
end

local function fresh(mod)
  package.loaded[mod] = nil
  return require(mod)
end

case('doc: the options section is config.doc_lines()', function()
  local lines = doc()
  local start
  for i, l in ipairs(lines) do
    if l:match('%*gpt2%-options%*') then
      start = i
      break
    end
  end
  H.ok(start, 'a *gpt2-options* heading')
  H.eq(lines[start + 1], '', 'the blank line after the heading')
  local got = {}
  for i = start + 2, #lines do
    if lines[i]:match('^====') then
      break
    end
    table.insert(got, lines[i])
  end
  local want = fresh('gpt2.config').doc_lines()
  for i = 1, math.max(#got, #want) do
    if got[i] ~= want[i] then
      H.fail(string.format('doc/gpt2.txt line %d: expected %s, got %s (regenerate with scripts/gen-doc.lua)',
        start + 1 + i, vim.inspect(want[i]), vim.inspect(got[i])))
    end
  end
end)

case('doc: every option has a *gpt2-option-NAME* tag', function()
  local t = tags()
  for _, e in ipairs(fresh('gpt2.config').schema) do
    H.ok(t['gpt2-option-' .. e[1]], 'no tag *gpt2-option-' .. e[1] .. '*')
  end
end)

case('doc: every Lua API function has a *gpt2.NAME()* tag', function()
  local t = tags()
  local listed = { 'complete', 'next', 'prev', 'accept', 'accept_word', 'accept_line', 'dismiss', 'status',
    'enable', 'disable', 'toggle', 'statusline', 'setup' }
  for _, name in ipairs(listed) do
    H.ok(t['gpt2.' .. name .. '()'], 'no tag *gpt2.' .. name .. '()*')
  end
  -- and every public function of the module is documented
  local src = table.concat(vim.fn.readfile(H.root .. '/lua/gpt2/init.lua'), '\n')
  for name in src:gmatch('\nfunction M%.([%a][%w_]*)%(') do
    H.ok(t['gpt2.' .. name .. '()'], 'public function M.' .. name .. ' has no tag *gpt2.' .. name .. '()*')
  end
end)

case('doc: every command, subcommand, key, <Plug> map and highlight group has a tag', function()
  local t = tags()
  local src = table.concat(vim.fn.readfile(H.root .. '/plugin/gpt2.lua'), '\n')
  for cmd in src:gmatch("nvim_create_user_command%('([%w]+)'") do
    H.ok(t[':' .. cmd], 'no tag *:' .. cmd .. '*')
  end
  local block = src:match('local subcommands = (%b{})')
  H.ok(block, 'the subcommands table in plugin/gpt2.lua')
  local n = 0
  for sub in block:gmatch('\n%s*([%a_]+) = function') do
    n = n + 1
    H.ok(t[':Gpt2-' .. sub], 'no tag *:Gpt2-' .. sub .. '*')
  end
  H.eq(n, 6, 'subcommands found')
  local text = table.concat(doc(), '\n')
  local plugs = src:match('for name, fn in pairs(%b())')
  for name in plugs:gmatch("%[?'?([%a-]+)'?%]? = '") do
    H.ok(text:find('<Plug>(gpt2-' .. name .. ')', 1, true), 'no <Plug>(gpt2-' .. name .. ') in the doc')
  end
  for _, key in pairs(fresh('gpt2.config').defaults.keymaps) do
    if key then
      H.ok(t['gpt2-' .. key], 'no tag *gpt2-' .. key .. '*')
    end
  end
  local init = table.concat(vim.fn.readfile(H.root .. '/lua/gpt2/init.lua'), '\n')
  local groups = 0
  for group in init:gmatch("nvim_set_hl%(0, '([%w]+)'") do
    groups = groups + 1
    H.ok(t['hl-' .. group], 'no tag *hl-' .. group .. '*')
  end
  H.eq(groups, 2, 'highlight groups found')
  H.ok(t['g:gpt2_enabled'] and t['b:gpt2_enabled'], 'tags for g:gpt2_enabled and b:gpt2_enabled')
end)

case('doc: :helptags has no error (no duplicate tags)', function()
  local dir = vim.fn.tempname()
  vim.fn.mkdir(dir, 'p')
  vim.fn.writefile(doc(), dir .. '/gpt2.txt')
  local ok, err = pcall(vim.cmd, 'helptags ' .. vim.fn.fnameescape(dir))
  local tagfile = vim.fn.readfile(dir .. '/tags')
  vim.fn.delete(dir, 'rf')
  H.ok(ok, 'helptags: ' .. tostring(err))
  H.ok(#tagfile > 20, 'tags written: ' .. #tagfile)
  local seen = {}
  for _, l in ipairs(tagfile) do
    local tag = l:match('^([^\t]+)')
    H.ok(not seen[tag], 'duplicate tag ' .. tostring(tag))
    seen[tag] = true
  end
end)

case('doc: every |link| points at a tag of this file or of Neovim', function()
  local t = tags()
  local rt = vim.env.VIMRUNTIME .. '/doc/tags'
  if vim.fn.filereadable(rt) == 1 then
    for _, l in ipairs(vim.fn.readfile(rt)) do
      t[l:match('^([^\t]+)')] = true
    end
  end
  for i, l in ipairs(doc()) do
    for link in l:gmatch('|([^%s|]+)|') do
      H.ok(t[link], string.format('doc/gpt2.txt line %d: |%s| is no tag', i, link))
    end
  end
end)

return T
