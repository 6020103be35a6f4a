"""Communication: control messages (messages.py), bulk transport and collectives."""
