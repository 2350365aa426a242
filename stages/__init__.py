"""One thin module per pipeline stage: read inputs and params, call the core, write outputs."""
