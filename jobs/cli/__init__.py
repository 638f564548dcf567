"""The `llmbatch` command line: one module per command group (local, serve, tokens, remote,
evaluate), registered by main.py; the HTTP client the remote commands use is client.py."""
