-- gpt2.config: the one schema of gpt2.nvim's options. It drives validation
-- in setup() and the options section of doc/gpt2.txt (a test fails when the
-- two drift apart).
local M = {}

local function plugin_root()
  local src = debug.getinfo(1, 'S').source:sub(2)
  return vim.fn.fnamemodify(src, ':p:h:h:h')
end

-- Each entry: name, default, type (for vim.validate), doc (one line).
M.schema = {
  { 'model', '', 'string', 'Model directory (Hugging Face layout). Empty: weights/gpt2 of the plugin when present.' },
  { 'helper', '', 'string', 'Path of the gpt2 helper. Empty: build/gpt2 of the plugin.' },
  { 'cpu_dtype', 'bf16', 'string', 'Weights the helper streams when it runs on the CPU: "bf16" (about twice fp32\'s speed, near-lossless), "int8" (faster, a little less exact), "int4" (fastest, clearly less exact) or "fp32" (exact).' },
  { 'helper_args', {}, 'table', 'Extra arguments for `gpt2 serve`, e.g. {"--threads", "2"} (see gpt2 serve --help).' },
  { 'auto_trigger', true, 'boolean', 'Ask for suggestions after a pause in insert mode.' },
  { 'debounce_ms', 60, 'number', 'The pause, in milliseconds, after the last key before asking.' },
  { 'n', 3, 'number', 'Suggestions per request (1..16).' },
  { 'max_tokens', 24, 'number', 'New tokens per suggestion.' },
  { 'temperature', 0.8, 'number', 'Sampling temperature; 0 is greedy.' },
  { 'top_k', 40, 'number', 'Keep the k most likely tokens; 0 keeps all.' },
  { 'top_p', 0.95, 'number', 'Nucleus sampling mass in (0, 1].' },
  { 'stop', 'line', 'string', 'Where a suggestion ends: "line", "sentence" or "none".' },
  { 'context_lines', 200, 'number', 'Lines before the cursor sent as context.' },
  { 'context_bytes', 8000, 'number', 'At most this many bytes of context, cut at a line start.' },
  { 'filetypes', { ['*'] = true }, 'table', 'Filetype -> true/false; "*" is the default for the rest.' },
  { 'keymaps', {
      accept = '<Tab>', accept_word = '<M-Right>', accept_line = '<M-C-Right>',
      next = '<M-]>', prev = '<M-[>', dismiss = '<C-]>', complete = false,
    }, 'table', 'Insert-mode keys; false turns one off; keymaps = false turns all off.' },
  { 'show_counter', true, 'boolean', 'Show "(2/3)" after the suggestion.' },
  { 'stream', true, 'boolean', 'Show partial text while the helper decodes.' },
  { 'log_lines', 500, 'number', 'Helper log lines kept for :Gpt2 log.' },
}

M.defaults = {}
for _, e in ipairs(M.schema) do
  M.defaults[e[1]] = e[2]
end

M.root = plugin_root()

-- Validate user options against the schema; returns the merged config or
-- raises an error naming the bad option.
function M.build(user)
  user = user or {}
  vim.validate({ opts = { user, 'table' } })
  local known = {}
  for _, e in ipairs(M.schema) do
    known[e[1]] = e
  end
  for k, v in pairs(user) do
    local e = known[k]
    if not e then
      error(string.format('gpt2: unknown option %q (see :help gpt2-options)', tostring(k)), 0)
    end
    local ok = type(v) == e[3] or (k == 'keymaps' and v == false)
    if not ok then
      error(string.format('gpt2: option %s must be a %s, got %s', k, e[3], type(v)), 0)
    end
  end
  local cfg = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), user)
  if user.keymaps == false then
    cfg.keymaps = false
  end
  if cfg.n < 1 or cfg.n > 16 then
    error('gpt2: option n must be in 1..16', 0)
  end
  if cfg.stop ~= 'line' and cfg.stop ~= 'sentence' and cfg.stop ~= 'none' then
    error('gpt2: option stop must be "line", "sentence" or "none"', 0)
  end
  if not vim.tbl_contains({ 'bf16', 'int8', 'int4', 'fp32' }, cfg.cpu_dtype) then
    error('gpt2: option cpu_dtype must be "bf16", "int8", "int4" or "fp32"', 0)
  end
  if cfg.helper == '' then
    cfg.helper = M.root .. '/build/gpt2'
  end
  if cfg.model == '' and vim.fn.isdirectory(M.root .. '/weights/gpt2') == 1 then
    cfg.model = M.root .. '/weights/gpt2'
  end
  return cfg
end

-- The command that starts the helper (helper_args last, so they win).
function M.helper_cmd(cfg)
  local cmd = { cfg.helper, 'serve', '--model', cfg.model, '--cpu-dtype', cfg.cpu_dtype }
  vim.list_extend(cmd, cfg.helper_args)
  return cmd
end

-- The options section of doc/gpt2.txt, as it must read (scripts/gen-doc.lua
-- writes it; tests/nvim/test_doc.lua fails when the file differs).
function M.doc_lines()
  local out = {}
  for _, e in ipairs(M.schema) do
    local name, default, typ, doc = e[1], e[2], e[3], e[4]
    local shown = vim.inspect(default, { newline = ' ', indent = '' })
    table.insert(out, string.format('%-40s*gpt2-option-%s*', name, name))
    table.insert(out, string.format('    Type: %s, default: %s', typ, shown))
    table.insert(out, '    ' .. doc)
    table.insert(out, '')
  end
  return out
end

return M
