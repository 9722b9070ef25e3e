"""What notebooks 01 (quantized route: bigdl-llm API and llm-cli) and 02 (OpenVINO route:
IR export, weight compression, optimum-intel and openvino-genai) call."""
