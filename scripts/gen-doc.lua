-- Rewrite the options section of doc/gpt2.txt from lua/gpt2/config.lua's
-- schema. Run: nvim --headless -u NONE -c 'set rtp+=.' -c 'luafile scripts/gen-doc.lua' -c q
local path = 'doc/gpt2.txt'
local lines = vim.fn.readfile(path)
local out, i = {}, 1
while i <= #lines do
  table.insert(out, lines[i])
  if lines[i]:match('%*gpt2%-options%*') then
    table.insert(out, '')
    vim.list_extend(out, require('gpt2.config').doc_lines())
    i = i + 1
    while i <= #lines and not lines[i]:match('^=====') do
      i = i + 1
    end
  else
    i = i + 1
  end
end
vim.fn.writefile(out, path)
