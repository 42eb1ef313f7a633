-- The child Neovim's init for tests/nvim: the repository on 'runtimepath'
-- (plus $VIMRUNTIME, for :checkhealth), plugin/gpt2.lua, and nothing else.
-- Each test calls require('gpt2').setup() itself.
local root = vim.fn.fnamemodify(debug.getinfo(1, 'S').source:sub(2), ':p:h:h:h')
vim.o.runtimepath = root .. ',' .. vim.env.VIMRUNTIME
vim.o.packpath = ''
vim.o.loadplugins = false
dofile(root .. '/plugin/gpt2.lua')
