"""The converters and native tools behind the backends: OpenVINO IR export and weight
compression, bigdl's llm-convert / llm-cli, and bigdl's per-ISA kernel builds."""
