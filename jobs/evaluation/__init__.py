"""Reading a finished output location back: scoring against references (`scoring`) and the
one-page HTML report (`report`)."""
