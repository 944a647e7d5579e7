"""Running the network: FlowEngine, the checks of what users pass in, the compiled forward and the
trace of RAFT's internals."""
