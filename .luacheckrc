std = "lua54"
max_line_length = 110
exclude_files = { "build/**", "build-asan/**" }
local busted = { "describe", "it", "pending", "before_each", "after_each", "setup", "teardown",
  "lazy_setup", "lazy_teardown", "strict_setup", "strict_teardown", "finally", "spy", "stub",
  "mock", "insulate", "expose", "randomize" }
files["spec"] = { read_globals = busted, globals = { "assert" } }
