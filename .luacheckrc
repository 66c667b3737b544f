std = "lua54"
max_line_length = 110
files["spec/**/*.lua"] = { std = "+busted" }
exclude_files = { "build/**", "build-asan/**" }
