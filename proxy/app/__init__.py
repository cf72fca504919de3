"""The process: the server that wires everything together, the command line, the demo and `pgwarden init`."""
