"""One module per command group; each parses options, calls skybroker.api and renders."""
