"""Models a user can name: the bundled axchat-mini, the catalog of small hub models, the
local model store, and the `axchat pull` and `axchat models` commands.

Nothing here imports torch or transformers: `axchat models` reads config.json files and
`axchat pull` speaks HTTP.
"""
