"""`axchat web`: an HTTP bridge to the daemon, an OpenAI-compatible API and a chat page.

A separate process and an ordinary protocol client (`axchat.aclient`); it imports no
actor and no model code.
"""
