"""Worlds: plugins that give the generic core a domain (a renderer, captions, a checker, embedded models,
recipes). The core never imports a world; worlds, commands and the CLI import the core."""
