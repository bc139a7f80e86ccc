"""Where the photos come from: finding them (files, folders, globs, stdin) and reading them."""
